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
# # Token interactions: hidden attention, LaTIM, LRP, and how to evaluate them
#
# One interface gives token-to-token interaction maps for Mamba-1, Mamba-2 and transformers
# (`interp.attention`, formulas in `docs/design.md` §3). This notebook runs them on the embedded
# copy model `copy-mamba` (a 2-layer Mamba-1 trained on `BOS a_1..a_n SEP a_1..a_n`), where the
# right answer is known: the prediction at copy position *t* reads the token at *t - n*.
#
# Sections: the hidden-attention map of one layer; channel aggregations and normalisations; query
# rows; rollout and Mamba-Attr; unified attention and LaTIM; LRP rows with the conservation check;
# the same calls on a transformer; a small copying benchmark; a perturbation curve.
#
# Everything runs on the CPU in well under a minute. Edit the `.py` file (jupytext percent format);
# the `.ipynb` is generated from it with `jupytext --to ipynb notebooks/02_token_interactions.py`.

# %%
import os
import time

import numpy as np
import plotly.io as pio
import torch
from IPython.display import HTML, display

import interp
from interp import zoo
from interp.attention import grad_weighted_rollout, interaction_map, latim, mamba_attr, query_rows, rollout, unified
from interp.attention.benchmarks import copying_benchmark
from interp.attention.figures import (
    interaction_heatmap, perturbation_figure, thumbnail_grid, token_highlight_html,
)
from interp.attention.methods import method_rows
from interp.attention.perturbation import perturbation_test
from interp.data import COPY_PAD, copy_tokenizer, sample_copy_batch
from interp.lrp import conservation_error, explain, interaction_rows, zero_biases

# plotly.js is inlined by the "notebook" renderer (no CDN); set PLOTLY_RENDERER to override
pio.renderers.default = os.environ.get("PLOTLY_RENDERER", "plotly_mimetype+notebook")
torch.set_num_threads(min(2, torch.get_num_threads()))
t_start = time.perf_counter()

# %% [markdown]
# ## The model and one copying sequence
#
# `interp.load("copy-mamba")` loads the embedded model by name, offline. If its weights are not
# installed in this checkout, a tiny random Mamba-1 over the same vocabulary stands in (the maps
# are then meaningless, but every call below runs the same way).

# %%
TOK = copy_tokenizer()


def tiny_random_mamba(family="mamba1", seed=0):
    """A random 2-layer Mamba over the copying vocabulary (stand-in while the embedded weights are missing)."""
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    torch.manual_seed(seed)
    if family == "mamba1":
        hf = MambaForCausalLM(MambaConfig(vocab_size=TOK.vocab_size, hidden_size=32, state_size=8,
                                          num_hidden_layers=2, expand=2, conv_kernel=4))
    else:
        hf = Mamba2ForCausalLM(Mamba2Config(vocab_size=TOK.vocab_size, hidden_size=32, state_size=8,
                                            num_hidden_layers=2, expand=2, head_dim=16, num_heads=4,
                                            n_groups=1, chunk_size=16))
    return interp.load(hf.eval())


def load_or_tiny(name, family):
    if zoo.embedded_path(name) is not None:
        return interp.load(name)
    print(f"note: embedded model {name!r} is not installed (python -m interp.zoo.train {name} --install); "
          f"using a tiny random {family} instead")
    return tiny_random_mamba(family)


model = load_or_tiny("copy-mamba", "mamba1")
batch = sample_copy_batch(1, np.random.default_rng(0), n_range=16)  # n in the training range 16..32
L = int(batch.seq_lengths[0])
tokens = batch.tokens[:, :L]
str_tokens = [TOK.decode([int(t)]) for t in tokens[0]]
n = int(batch.lengths[0])
copy_positions = torch.nonzero(batch.loss_mask[0, :L]).flatten().tolist()
logits = model(tokens)
acc = (logits[0, copy_positions].argmax(-1) == tokens[0, [p + 1 for p in copy_positions]]).float().mean()
print(model.cfg.family, f"{model.cfg.n_layers} layers, d_model {model.cfg.d_model};", "L =", L, "n =", n)
print(" ".join(str_tokens))
print(f"copy accuracy on this sequence: {acc:.2f}")

# %% [markdown]
# ## Hidden attention of one layer
#
# `interaction_map(model, tokens, layer=...)` is the hidden attention α (Ali et al.) reduced over the
# channels, here with the default mean |α|: a [b, L, L] map, query rows i by source columns j,
# zero above the diagonal. It is exact: Σ_j α[d,i,j] u_j + D u_i reproduces the SSM output
# (`tests/test_attention_hidden.py`). Tick labels carry the position, so repeated symbols stay apart.

# %%
last = model.cfg.n_layers - 1
alpha = interaction_map(model, tokens, layer=last)
interaction_heatmap(alpha[0], str_tokens, title=f"layer {last}: hidden attention, mean |α| over channels").show()

# %% [markdown]
# ## Channel aggregations and normalisations
#
# `aggregate` picks how channels (Mamba-1) or heads (Mamba-2) are combined: `"mean"` (signed),
# `"mean_abs"`, `"max"` (of |α|), `"topk"` (mean |α| over the k channels with the most mass) or an
# integer channel; `"none"` keeps them all (memory-checked). `normalize_` rescales: `"raw"`,
# `"minmax"` (|·| to [0, 1] per map) or `"row"` (each row sums to 1).

# %%
aggs = {"mean": "mean", "mean_abs": "mean_abs", "max": "max", "topk (k=4)": "topk", "channel 0": 0}
maps = torch.stack([interaction_map(model, tokens, layer=last, aggregate=a, k=4, normalize_="minmax")[0]
                    for a in aggs.values()])
thumbnail_grid(maps, list(aggs), cols=5, title="aggregations (min-max normalised)").show()

per_channel = interaction_map(model, tokens, layer=last, aggregate="none")[0]  # [H, L, L]
mass = per_channel.abs().sum((1, 2))
top = mass.topk(8).indices.tolist()
thumbnail_grid(per_channel[top], [f"channel {c}" for c in top], cols=4, signed=True,
               title="the 8 channels with the most |α| mass (signed)").show()

norms = torch.stack([interaction_map(model, tokens, layer=last, normalize_=h)[0] for h in ("raw", "minmax", "row")])
thumbnail_grid(norms, ["raw", "minmax", "row"], cols=3, title="normalisations of mean |α|").show()

# %% [markdown]
# ## Query rows
#
# `query_rows` computes a few rows without the full map (O(L) memory per row, what long contexts
# need). The row of a copy position should light up its source t - n.

# %%
t = copy_positions[len(copy_positions) // 2]
row = query_rows(model, tokens, layer=last, positions=[t])[0, 0]
assert torch.allclose(row, alpha[0, t], atol=1e-6)  # the rows of the full map
print(f"query t = {t} predicts {str_tokens[t - n + 1]!r}; true source j = {t - n} ({str_tokens[t - n]!r})")
display(HTML(token_highlight_html(str_tokens, row, query=t, title=f"hidden attention row of position {t}")))

# %% [markdown]
# ## Rollout across layers and Mamba-Attr
#
# `rollout` chains the per-layer maps, ρ = Π_l rownorm(I + A_l) (the identity stands for the residual
# stream). `grad_weighted_rollout` weights each layer's map by its gradient for the predicted logit before
# rolling out (attention × gradient). `mamba_attr` is Ali et al.'s Mamba-Attr as their code computes it: per
# layer the min-max-normalised row of α times the min-max-normalised positive residual gradient, rolled out
# into one relevance row for the prediction at `t`.

# %%
layer_maps = [interaction_map(model, tokens, layer=layer) for layer in range(model.cfg.n_layers)]
rho = rollout(layer_maps)
grad_rho = grad_weighted_rollout(model, tokens, position=t)
thumbnail_grid(torch.stack([rho[0], grad_rho[0]]), ["rollout of mean |α|", f"attention × gradient (logit at {t})"],
               cols=2).show()
attr = mamba_attr(model, tokens, position=t)[0]
display(HTML(token_highlight_html(str_tokens, attr, query=t, title=f"Mamba-Attr of the prediction at {t}")))

# %% [markdown]
# ## Unified implicit attention and LaTIM
#
# Unified attention (Zimerman et al.) maps the in_proj x-branch to the gated output, folding the conv
# and the gate into the map; LaTIM (Pitorro & Treviso) decomposes each layer's output into vector
# contributions T_i(x_j) in model space and scores them by ‖·‖₁, ‖·‖₂ or ALTI. With f = SiLU the
# decomposition is the paper's approximation: its reconstruction error per layer is reported.

# %%
_, cache = model.run_with_cache(tokens)
uni = unified.unified_layer(model, cache, layer=last, aggregate="mean_abs").map[0]
contrib = latim.latim_layer(model, cache, layer=last, f="silu")
print("LaTIM reconstruction error per layer (f = SiLU):",
      [f"{e:.2e}" for e in latim.reconstruction_errors(model, cache, f="silu")])
lat = {s: latim.latim_scores(contrib, score=s)[0] for s in ("l1", "l2", "alti")}
thumbnail_grid(torch.stack([uni] + list(lat.values())), ["unified mean |α̂|", "LaTIM ℓ1", "LaTIM ℓ2", "LaTIM ALTI"],
               cols=4, title=f"layer {last}").show()

# %% [markdown]
# ## LRP rows and the conservation check
#
# MambaLRP (Jafari et al.) is gradient × input on a modified forward with the same values; with the
# biases zeroed the relevances of the input tokens sum to the explained logit. `interaction_rows`
# explains the argmax logit at each query position, giving an LRP "map" (signed: diverging colours).

# %%
with zero_biases(model):
    a = explain(model, tokens, position=t)
print(f"LRP, biases zeroed: Σ_j R_j = {a.relevance.sum():.5f}, logit = {a.logit:.5f}, "
      f"relative error {conservation_error(a):.1e}")
assert conservation_error(a) < 1e-4

lrp_map = interaction_rows(model, tokens, positions=copy_positions)
interaction_heatmap(lrp_map, str_tokens, rows=copy_positions, signed=True,
                    title="MambaLRP rows of the copy positions").show()
display(HTML(token_highlight_html(str_tokens, lrp_map[copy_positions.index(t)], query=t, title=f"LRP row of {t}")))

# %% [markdown]
# ## The same calls on a transformer
#
# For transformers the interaction map is the softmax pattern (`hook_pattern`), aggregated over
# heads with the same options; LRP is CP-LRP. The embedded `tokfsm-transformer` is used when it is
# installed, otherwise a tiny random GPT-2.

# %%
if zoo.embedded_path("tokfsm-transformer") is not None:
    tf = interp.load("tokfsm-transformer")
    from interp.data import tokfsm_dataset

    tf_tokens = tokfsm_dataset(1, seed=0)[:, :24]
else:
    from transformers import GPT2Config, GPT2LMHeadModel

    print("note: embedded 'tokfsm-transformer' is not installed: using a tiny random GPT-2")
    torch.manual_seed(0)
    tf = interp.load(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=TOK.vocab_size,
                                                n_positions=64)).eval())
    tf_tokens = tokens[:, :24]
pattern = interaction_map(tf, tf_tokens, layer=0)  # method "auto": softmax attention, mean over heads
heads = interaction_map(tf, tf_tokens, layer=0, aggregate="none")[0]
thumbnail_grid(torch.cat([pattern, heads]), ["mean over heads"] + [f"head {h}" for h in range(heads.shape[0])],
               cols=5, title="transformer layer 0 attention").show()
with zero_biases(tf):
    print(f"CP-LRP conservation error (transformer): {conservation_error(explain(tf, tf_tokens)):.1e}")

# %% [markdown]
# ## A small copying benchmark
#
# `copying_benchmark` scores each method's row at every copy position against the one-hot true
# source (ROC-AUC, average precision, recall@1; candidates: positions j < t). The full run over the
# embedded models is `interp attention copying` (`python -m interp.attention.cli copying`) (numbers in `docs/benchmarks.md`);
# here: 2 sequences on the model above. `random` is the chance reference.

# %%
methods = ["hidden", "hidden_last", "latim_l2", "lrp", "random"]
table = copying_benchmark({"copy-mamba" if zoo.embedded_path("copy-mamba") else "tiny": model}, methods=methods,
                          n_sequences=2, n_range=(16, 20), seed=1)
print(table.to_text())

# %% [markdown]
# ## Perturbation curves
#
# Replace the tokens j <= t by PAD, most relevant first (MoRF) or least relevant first (LeRF), and
# follow the logit of the token the model predicted on the clean input. A faithful method makes the
# MoRF curve fall fast and the LeRF curve stay high: ΔA = A_LeRF - A_MoRF > 0. All k go through the
# model in one batch.

# %%
curves = {}
for m in ("hidden_last", "lrp", "random"):
    scores = method_rows(model, tokens, positions=[t], method=m)[0]
    res = perturbation_test(model, tokens, position=t, scores=scores, baseline_id=COPY_PAD)
    curves[m] = {"morf": res.morf, "lerf": res.lerf}
    print(f"{m:12s} A_MoRF {res.a_morf:7.3f}  A_LeRF {res.a_lerf:7.3f}  ΔA {res.delta:7.3f}")
perturbation_figure(curves, title=f"perturbation at copy position {t}").show()
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s")
