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
# # Codebook features on TokFSM, for a Mamba and a transformer
#
# Codebook features (Tamkin, Taufeeque, Goodman 2023) put a discrete bottleneck into a network: at a chosen
# layer, the hidden state is replaced by the mean of its k best codes from a large codebook. With k = 1 the
# network still works, and single codes turn out to mean single things: on TokFSM, one code per FSM state.
# Activating a code during generation then steers the model.
#
# This notebook reproduces that study on the embedded TokFSM models, `tokfsm-mamba` (Mamba-1) and
# `tokfsm-transformer` (4-layer transformer, the paper's setting), with k = 1 codebooks at every layer's
# sequence-mixer output (the SSM mixer output for Mamba, the attention output for the transformer):
#
# 1. the codebook models and their transition accuracy (paper: 96.39% with codebooks vs 96.77% without);
# 2. code usage and dead codes;
# 3. state codes against the best single neuron (paper: 97.1% vs 70.5% precision);
# 4. what a code means: top examples, similar codes;
# 5. steering by forcing the codes of a state during generation;
# 6. post-hoc codebooks on a frozen model from cached activations.
#
# The codebook models ship with the package (`python -m interp.codebook.zoo NAME --install` retrains them);
# if one is missing the notebook trains a short version here. Edit the `.py` file (jupytext percent format);
# the `.ipynb` is generated with `jupytext --to ipynb notebooks/04_codebooks.py`.

# %%
import os
import time

import plotly.graph_objects as go
import plotly.io as pio
import torch

import interp
from interp.codebook import (
    attach, code_intervention, code_label_precision, collect_codes, fit_post_hoc, load_codebook_model,
    hook_activations, make_codebooks, similar_codes, top_examples, usage_stats,
)
from interp.codebook.zoo import CODEBOOK_RECIPES, train_recipe, training_batches
from interp.data import TokFSM, tokfsm_dataset, tokfsm_labels
from interp.tasks.tokfsm import tokfsm_code_steering_table, tokfsm_prompts, tokfsm_state_codes
from interp.zoo import WEIGHTS_DIR, model_card
from interp.zoo.evaluate import evaluate, recipe_of

pio.renderers.default = os.environ.get("PLOTLY_RENDERER", "plotly_mimetype+notebook")
torch.set_num_threads(1)
t_start = time.perf_counter()
fsm = TokFSM()

# %% [markdown]
# ## 1. The codebook models
#
# `load_codebook_model(name)` loads the base model and attaches its codebooks: each is a child module of the hook
# point it replaces, so the codes have hook names of their own (`blocks.0.ssm.hook_out.codebook.hook_codes`) and
# every forward pass and generation step, recurrent decoding included, goes through them.

# %%
NAMES = ["tokfsm-mamba-codebooks", "tokfsm-transformer-codebooks"]
models = {}
for name in NAMES:
    if not (WEIGHTS_DIR / name / "codebooks.json").is_file():
        print(f"{name} is not installed: training a short version here (the shipped one is longer)")
        train_recipe(name, f"runs/notebook04/{name}", steps=60, progress=False)
        models[name] = load_codebook_model(f"runs/notebook04/{name}/final")
    else:
        models[name] = load_codebook_model(name)
    base = CODEBOOK_RECIPES[name].base
    print(name, "sites:", list(interp.codebook.attached(models[name])))

# %% [markdown]
# Transition accuracy (the paper's metric: 100 sequences sampled at temperature 1 from BOS, fraction of
# consecutive states that are edges of the FSM), with and without the codebooks.

# %%
for name, model in models.items():
    base = CODEBOOK_RECIPES[name].base
    with_cb = evaluate(model, recipe_of(base), loss=False)["transition_accuracy"]
    without = model_card(base)["metrics"]["transition_accuracy"]
    print(f"{name}: transition accuracy {with_cb:.4f} with k=1 codebooks at all layers, {without:.4f} without")

# %% [markdown]
# ## 2. Code usage
#
# On held-out TokFSM sequences: how many of each codebook's codes are used, and how evenly.

# %%
held_out = tokfsm_dataset(128, seed=99)
lab = tokfsm_labels(held_out)
runs = {name: collect_codes(model, held_out) for name, model in models.items()}
for name, run in runs.items():
    for site, u in usage_stats(run, mask=lab["state"] >= 0).items():
        print(f"{name:30s} {site:26s} used {u['used']:5.0f}/{u['n_codes']}  dead {u['dead_fraction']:.2f}  "
              f"entropy {u['entropy']:.2f} nats")

# %% [markdown]
# ## 3. State codes against the best neuron
#
# For each state S, the code (over all sites) with the best precision for "the current state is S" among codes
# that fire on at least a given share (the minimum recall) of S's tokens, on units-digit tokens (where the prefix
# determines the state). The baseline is the best single neuron of the codebook inputs at the same sites, at the
# recall the code reached. Codes and neurons are chosen on one set of sequences and scored on another
# (`code_label_precision(..., held_out=...)`). A state's tokens may be split over a few codes (by context), so
# the precision depends on how much recall is asked for: we show three floors.

# %%
fit_tokens = tokfsm_dataset(128, seed=7)
fit_lab = tokfsm_labels(fit_tokens)
units = lambda lb: torch.where(lb["digit_pos"] == 1, lb["state"], torch.full_like(lb["state"], -1))  # noqa: E731
labels = units(lab)
reports = {}
for name, model in models.items():
    fit_run = collect_codes(model, fit_tokens)
    for mr in (0.5, 0.25, 0.1):
        rep = code_label_precision(fit_run, units(fit_lab), n_classes=100, min_recall=mr,
                                   held_out=(runs[name], labels))
        s = rep.summary()
        print(f"{name} recall >= {mr}: state codes precision {s['code_mean_precision']:.3f} "
              f"(recall {s['code_mean_recall']:.3f}); best neuron at matched recall {s['neuron_mean_precision']:.3f}")
        reports[(name, mr)] = rep
fig = go.Figure()
for name in models:
    rep = reports[(name, 0.25)]
    fig.add_bar(x=list(range(100)), y=rep.codes.precision.tolist(), name=f"{name}: code")
    fig.add_bar(x=list(range(100)), y=rep.neurons.precision.tolist(), name=f"{name}: neuron")
fig.update_layout(title="held-out precision per state (codes chosen at recall >= 0.25)", xaxis_title="state",
                  yaxis_title="precision", barmode="group", template="plotly_white", height=340).show()

# %% [markdown]
# ## 4. What a code means
#
# The state code of one state: where it fires (the last token of each context is the one the code was chosen
# at), and its nearest codes by cosine similarity.

# %%
name = NAMES[0]
model, run, rep = models[name], runs[name], reports[(name, 0.25)]
STATE = int(rep.codes.support.argmax())
site, group, code = rep.best_code(STATE)
print(f"state {STATE:02d}: code {code} at {site}, precision {float(rep.codes.precision[STATE]):.3f}, "
      f"recall {float(rep.codes.recall[STATE]):.3f}")
for ex in top_examples(run, held_out, hook=site, code=code, n=6, context=6, decode=lambda ids: " ".join(
        "<s>" if i == 10 else str(i) for i in ids)):
    print(f"  seq {ex['seq']:3d} pos {ex['pos']:3d}: {ex['context']}   state {int(lab['state'][ex['seq'], ex['pos']]):02d}")
print("similar codes:", [(c, round(s, 2)) for c, s in similar_codes(model, hook=site, code=code, n=5)])

# %% [markdown]
# ## 5. Steering by codes
#
# For a target state S, take prompts whose last state is not S but could have been (their second-to-last state
# has an edge to S), force each site's code of S, and generate the next state greedily with the recurrent state /
# KV cache. Success: the generated state is one of S's 10 out-edges. Two ways of forcing:
#
# * `mode="prompt"`: the codes of "the current state is S" at the prompt's last position only;
# * `mode="follow"`: those, then at the generated tens digit d the codes of "the previous state was S, this digit
#   is d" (`tokfsm_transition_codes`), i.e. the codes of S at the last position of every forward.
#
# The first generated digit follows S either way; the second is predicted at a position where the model reads the
# previous state again (through attention to, or the recurrent state of, the prompt's digit tokens), so codes
# forced only at the prompt's last token steer it less.

# %%
for name, model in models.items():
    codes = tokfsm_state_codes(model)
    for mode in ("prompt", "follow"):
        table = tokfsm_code_steering_table(model, codes, targets=list(range(0, 100, 10)), n_prompts=16, mode=mode)
        print(f"{name} ({mode}): next state valid for S {table['steered']:.3f} vs unsteered {table['baseline']:.3f}; "
              f"first digit {table['steered_first_digit']:.3f} vs {table['baseline_first_digit']:.3f} "
              f"({table['n_trials']} trials)")

# %% [markdown]
# One trial in detail: a forced code is an ordinary `interp.steering.Intervention`, so it saves, loads and
# composes with the other steering sources.

# %%
model = models[NAMES[1]]
codes = tokfsm_state_codes(model)
TARGET = 42
prompt = tokfsm_prompts(1, n_states=8, seed=3, lead_to=TARGET)
L = prompt.shape[1]
ivs = [code_intervention(model, hook=s, code=int(codes[s][TARGET]), mode="force", positions=[L - 1]) for s in codes]
hooks = [h for iv in ivs for h in iv.hooks(model)]
plain = model.generate(prompt, max_new_tokens=2, do_sample=False, return_type="tokens")[0, -2:].tolist()
steered = model.generate(prompt, max_new_tokens=2, do_sample=False, return_type="tokens", fwd_hooks=hooks)[0, -2:].tolist()
print(f"prompt ends in state {int(prompt[0, -2]) * 10 + int(prompt[0, -1]):02d}; unsteered next state "
      f"{plain[0]}{plain[1]}; codes of {TARGET} forced at the last position: {steered[0]}{steered[1]} "
      f"(out-edges of {TARGET}: {sorted(fsm.edges[TARGET].tolist())})")

# %% [markdown]
# ## 6. Post-hoc codebooks on a frozen model
#
# The other training mode: leave the model alone, cache the activations at a site and fit a codebook to
# reconstruct them (k-means start, then gradient steps on the reconstruction loss). Inserted afterwards, it
# shows how much of the layer a code book of this size can carry without any fine-tuning.

# %%
base = interp.load("tokfsm-mamba")
site = "blocks.2.ssm.hook_out"

batches = training_batches(recipe_of("tokfsm-mamba"), CODEBOOK_RECIPES[NAMES[0]].train)
acts = hook_activations(base, batches, hook=site, n_tokens=8192)
books = make_codebooks(base, hook=site, n_codes=256, k=1)
curve = fit_post_hoc(books, acts, steps=150, batch_size=1024, progress=False)[site]
go.Figure(go.Scatter(y=curve, mode="lines")).update_layout(
    title=f"post-hoc codebook at {site}: normalised reconstruction loss", xaxis_title="step",
    template="plotly_white", height=280).show()
attach(base, books)
print(f"transition accuracy with one post-hoc codebook at {site}: "
      f"{evaluate(base, recipe_of('tokfsm-mamba'), loss=False)['transition_accuracy']:.4f}")
print(f"notebook ran in {time.perf_counter() - t_start:.0f}s")
