# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Sparse autoencoders on a model whose features are known
#
# The embedded TokFSM models (`tokfsm-mamba`, `tokfsm-mamba2`) were trained on walks through a 100-state
# finite-state machine, written two digits per state (`docs/design.md` §4.1). The ground truth is known for every
# token: which state the walk is in. So we can ask the question SAEs are used for, and check the answer: does a
# sparse autoencoder on the residual stream find one latent per state, and do those latents do what a state
# would do when we write them back into the model?
#
# Sections: cache activations to disk; train a TopK SAE; metrics (explained variance, L0, CE loss recovered,
# density histogram); top-activating examples; state latents against the best single neuron; logit effects;
# steering with a latent.
#
# Runs on the CPU in about a minute. Edit the `.py` file (jupytext percent format); the `.ipynb` is generated
# with `jupytext --to ipynb notebooks/03_sparse_autoencoders.py`.

# %%
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
import torch

import interp
from interp import zoo
from interp.activations import ActivationStore, cache_activations
from interp.data import TOKFSM_VOCAB_SIZE, TokFSM, tokfsm_batches, tokfsm_dataset, tokfsm_labels
from interp.sae import (
    SAEConfig, activation_density, latent_intervention, logit_effects, splice_metrics, spliced,
    top_activating_examples, train_sae,
)
from interp.sae import metrics
from interp.sae.evaluate import labelled_activations, sae_vs_neurons
from interp.steering import Intervention, SAELatents

# plotly.js is inlined by the "notebook" renderer (no CDN); set PLOTLY_RENDERER to override
pio.renderers.default = os.environ.get("PLOTLY_RENDERER", "plotly_mimetype+notebook")
torch.set_num_threads(1)  # small matrices: one thread is fastest and leaves the other core alone
torch.manual_seed(0)
t_start = time.perf_counter()

# %% [markdown]
# ## The model
#
# `interp.load("tokfsm-mamba")` loads the embedded Mamba-1 by name, offline (the Mamba-2 one if it is the only
# one installed). We read the residual stream after block 2 of 4: the state is linearly readable there, and it is
# not yet the final layer's next-token code.

# %%
NAME = next((n for n in ("tokfsm-mamba", "tokfsm-mamba2") if zoo.embedded_path(n) is not None), None)
if NAME is None:
    raise RuntimeError("no TokFSM model installed: python -m interp.zoo.train tokfsm-mamba --install")
model = interp.load(NAME)
HOOK = "blocks.2.hook_resid_post"
fsm = TokFSM()
print(NAME, f"{model.cfg.n_layers} layers, d_model {model.cfg.d_model}; reading {HOOK}")
print("model card:", zoo.model_card(NAME)["metrics"])

# %% [markdown]
# ## Cache activations to disk
#
# `cache_activations` runs the model over a token stream and writes the hook's rows to safetensors shards with
# a manifest (model weight hash, filters, checksums). BOS rows are dropped. Killed and restarted with the same
# arguments, it resumes without losing or duplicating a token. `ActivationStore` reads them back as shuffled
# training batches.

# %%
workdir = Path(tempfile.mkdtemp(prefix="nb03_"))
N_TRAIN_SEQ = 512  # 512 x 127 = 65k training tokens
manifest = cache_activations(model, tokfsm_batches(64, seed=1), hook=[HOOK], out=workdir / "cache",
                             max_batches=N_TRAIN_SEQ // 64, shard_tokens=16384, progress=False,
                             dataset={"name": "tokfsm", "seed": 1})
store = ActivationStore(workdir / "cache")
print(store)

# %% [markdown]
# ## Train a TopK SAE
#
# 2048 latents (32x the width of the stream), k = 4 active per token (`tests/test_sae_tokfsm.py` trains a larger
# one for longer). The batch stream is re-creatable, so a killed run resumes from its last checkpoint when
# `train_sae(...)` is called again with the same `out` folder.

# %%
BATCH, STEPS = 256, 2000
cfg = SAEConfig(d_in=store.d_in, d_sae=2048, architecture="topk", k=4, lr=1e-3, lr_warmup_steps=20,
                lr_decay="cosine", min_lr_ratio=0.1, batch_size=BATCH, total_training_tokens=BATCH * STEPS,
                dead_window_tokens=BATCH * 50, checkpoint_every=0, log_every=100, hook_name=HOOK, model_name=NAME)
epochs = -(-BATCH * STEPS // len(store))
t0 = time.perf_counter()
result = train_sae(cfg, lambda: store.shuffled_batches(BATCH, seed=0, epochs=epochs), out=workdir / "sae",
                   progress=False)
sae = result.sae
print(f"trained {result.steps} steps ({result.tokens} tokens) in {time.perf_counter() - t0:.0f}s;",
      {k: round(v, 4) for k, v in result.final.items() if k in ("l0", "explained_variance", "dead_fraction")})

steps = [h["step"] for h in result.history]
go.Figure(go.Scatter(x=steps, y=[h["explained_variance"] for h in result.history], mode="lines")).update_layout(
    title="explained variance of the training batch", xaxis_title="step", yaxis_title="EV", template="plotly_white",
    height=300).show()

# %% [markdown]
# ## Metrics on held-out tokens
#
# `splice_metrics` runs the model with the SAE's reconstruction in place of the hook's value and reports the
# cross-entropy loss recovered against zero- and mean-ablating the hook (docs/design.md §5.3: 1 = as good as the clean
# model, 0 = no better than the ablation), the KL to the clean model, and L0 / explained variance at the hook.

# %%
held_out = tokfsm_dataset(128, seed=2)
m = splice_metrics(model, held_out, sae=sae)
print({k: round(v, 4) for k, v in m.to_dict().items()})

density = activation_density(model, held_out, sae=sae)
metrics.density_histogram(density, title="latent density on held-out tokens").show()
print(f"dead (never active on these tokens): {metrics.dead_fraction(density):.2f}, "
      f"dense (>10% of tokens): {metrics.dense_fraction(density):.3f}")

# %% [markdown]
# ## State latents against the best single neuron
#
# For every state s and every latent, the threshold that maximises the precision of "latent >= threshold"
# for "current state = s" while keeping recall >= 0.5; the best latent per state; the mean over the 100 states
# (`interp.sae.evaluate`, definition in its docstring). The same procedure over the 64 neurons of the residual
# stream (both signs) is the baseline; the codebook-features paper reports 97.1% for its state codes and 70.5%
# for the best neuron of its transformer.
#
# Recall 0.5 is the natural bar here: a state's two tokens are its tens digit and its units digit, and at the
# tens digit the model has not yet seen which state it is in.

# %%
states = tokfsm_labels(held_out)["state"]
la = labelled_activations(model, held_out, hook=HOOK, labels=states)
acts, labels = la.acts, la.labels
cmp = sae_vs_neurons(sae, acts, labels, n_classes=100)
print(f"EV {cmp.explained_variance:.4f}, L0 {cmp.l0:.1f}")
print(f"mean precision at recall >= 0.5: best latent {cmp.sae_mean_precision:.3f}, "
      f"best neuron {cmp.neuron_mean_precision:.3f}")
fig = go.Figure()
fig.add_bar(x=list(range(100)), y=cmp.sae.precision.tolist(), name="best SAE latent")
fig.add_bar(x=list(range(100)), y=cmp.neuron.precision.tolist(), name="best neuron")
fig.update_layout(title="precision per state (recall >= 0.5)", xaxis_title="state", yaxis_title="precision",
                  barmode="overlay", template="plotly_white", height=320).show()

# %% [markdown]
# ## Top-activating examples
#
# The tokens on which a state latent fires most, with context (`[[·]]` marks the token). For a state latent they
# should all be the units digit of that state.

# %%
clean_states = torch.nonzero(cmp.sae.precision >= cmp.sae.precision.nan_to_num(0).quantile(0.9)).flatten()
STATE = int(clean_states[cmp.sae.support[clean_states].argmax()])  # a frequent state with a clean latent
LATENT = int(cmp.sae.feature[STATE])
print(f"state {STATE:02d}: latent {LATENT}, precision {float(cmp.sae.precision[STATE]):.3f}, "
      f"recall {float(cmp.sae.recall[STATE]):.3f}")
examples = top_activating_examples(model, held_out, sae=sae, latents=[LATENT], k=6, context=(6, 0))[LATENT]
for ex in examples:
    state_here = int(states[ex.sequence, ex.position])
    print(f"{ex.activation:7.2f}  state {state_here:02d}  " + " ".join(
        f"[[{t}]]" if i == ex.focus else t for i, t in enumerate(ex.str_tokens)))

# %% [markdown]
# ## Logit effects
#
# A latent's decoder row read through the final norm's weight and the unembedding: the tokens it directly
# promotes. A latent for state s at its units digit should promote the tens digits of s's out-edges (the next
# token).

# %%
eff = logit_effects(model, sae=sae, latents=[LATENT], k=5)
next_tens = sorted({int(e) // 10 for e in fsm.edges[STATE]})
print(f"out-edges of {STATE:02d}: {sorted(fsm.edges[STATE].tolist())}; their tens digits {next_tens}")
print("most promoted tokens:", eff.top_tokens[0], [round(v, 2) for v in eff.top_values[0].tolist()])
print("most suppressed tokens:", eff.bottom_tokens[0])
go.Figure(go.Bar(x=[model.tokenizer.decode([i]) for i in range(eff.effects.shape[1])],
                 y=eff.effects[0].tolist())).update_layout(
    title=f"direct logit effect of latent {LATENT}", template="plotly_white", height=280).show()

# %% [markdown]
# ## Steering with a latent
#
# Write the state latent into the residual stream at the last prompt token, the units digit of some other
# state p, and read the next-token distribution there. Unsteered, the model predicts the tens digit of one of
# p's out-edges, so its distribution should be close to q_p (the tens digits of p's 10 out-edges, 0.1 each).
# Behaviour: the total-variation distance (TV) of the prediction to q_s, the same for the latent's state s
# (lower = steered further), next to its TV to q_p; cost: the KL to the unsteered prediction. Two interventions
# (`interp.steering.Intervention`):
#
# * `SAELatents` with operator "add": add α times the latent's (unit-norm) decoder row at the model's hook, α from
#   0 to 8 times the latent's largest held-out activation (dose-response);
# * a latent swap on the spliced SAE (`spliced(..., with_error=True)`, `latent_intervention`: a clamp at
#   `<hook>.sae.hook_sae_acts_post`): set every state latent to 0 and this one to its largest held-out activation
#   (times a factor), keeping the SAE's error term, so only the state code changes.

# %%
def next_digit_distribution(state):
    """[vocab]: the fraction of `state`'s out-edges with each tens digit (the ideal next token after it)."""
    q = torch.zeros(TOKFSM_VOCAB_SIZE)
    for e in fsm.edges[state]:
        q[int(e) // 10] += 1 / len(fsm.edges[state])
    return q


prompts = tokfsm_dataset(64, seed=3)[:, :21]  # BOS + 10 whole states: the next token is a tens digit
last = prompts.shape[1] - 1
prev = torch.as_tensor(fsm.decode(prompts)[:, -1])
prompts, prev = prompts[prev != STATE], prev[prev != STATE]
q_target = next_digit_distribution(STATE)
q_prompt = torch.stack([next_digit_distribution(int(p)) for p in prev])


def score(iv, sae_spliced=None):
    with torch.no_grad(), contextlib.ExitStack() as stack:
        if sae_spliced is not None:
            stack.enter_context(spliced(model, sae=sae_spliced, with_error=True))
        p = model.run_with_hooks(prompts, fwd_hooks=iv.hooks(model))[:, -1].softmax(-1)
    tv = lambda q: float(0.5 * (p - q).abs().sum(-1).mean())
    kl = float((clean * (clean.log() - p.log())).sum(-1).mean())
    return tv(q_target), tv(q_prompt), kl


with torch.no_grad():
    clean = model(prompts)[:, -1].softmax(-1)
    v_max = float(sae.encode(acts[labels == STATE])[:, LATENT].max())  # the latent's largest held-out value
alphas = [f * v_max for f in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)]
dose = [score(Intervention(SAELatents(sae, LATENT), HOOK, "add", scale=a, positions=[last])) for a in alphas]
for a, (tv_t, tv_p, kl) in zip(alphas, dose):
    print(f"add α={a:6.2f} ({a / v_max:.1f} x max): TV to state {STATE:02d}'s next digits {tv_t:.3f}, "
          f"to the prompt state's {tv_p:.3f}; KL {kl:.3f}")

others = [int(i) for i in cmp.sae.feature[cmp.sae.support > 0].unique() if int(i) != LATENT]  # other state latents
for factor in (1, 2, 4):
    swap = latent_intervention(sae, [*others, LATENT], "clamp", value=[0.0] * len(others) + [factor * v_max],
                               positions=[last])
    tv_t, tv_p, kl = score(swap, sae_spliced=sae)
    print(f"swap to latent {LATENT} = {factor} x max: TV to target {tv_t:.3f}, to prompt state {tv_p:.3f}; "
          f"KL {kl:.3f}")

fig = go.Figure()
fig.add_scatter(x=alphas, y=[d[0] for d in dose], name=f"TV to state {STATE:02d}'s next digits (target)")
fig.add_scatter(x=alphas, y=[d[1] for d in dose], name="TV to the prompt state's next digits")
fig.add_scatter(x=alphas, y=[d[2] for d in dose], name="KL to unsteered", line=dict(dash="dot"))
fig.update_layout(title="adding a state latent's decoder row: dose-response", xaxis_title="α (residual units)",
                  template="plotly_white", height=320).show()

# %% [markdown]
# Both interventions move the prediction away from the prompt's state and part of the way toward the latent's
# state, not all the way: the last block also reads the state through its own recurrence over the earlier,
# unsteered positions, so one position of one layer is only a partial handle on it.

# %%
shutil.rmtree(workdir, ignore_errors=True)  # the activation cache and the SAE's run folder
print(f"notebook ran in {time.perf_counter() - t_start:.0f}s")
