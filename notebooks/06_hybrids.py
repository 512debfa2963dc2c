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
# # Hybrid models: SSM layers and attention layers in one model
#
# Most state-space models studied today are hybrids: Mamba mixers interleaved with softmax attention (Jamba,
# Bamba, Zamba2, Falcon-H1, Granite-4.0-H, Nemotron-H). `interp.load` returns a `HookedHybrid` for each of them;
# SSM layers keep the `blocks.{i}.ssm.*` hooks of a pure Mamba, attention layers have TransformerLens's
# `blocks.{i}.attn.*`, and `model.cfg.layer_types` says which layer is which.
#
# This notebook asks the question everyone asks of a hybrid: how do the information paths through its SSM
# layers compare with those through its attention layer? It uses the embedded `copy-hybrid` (Mamba-2, attention,
# Mamba-2, Bamba's layout, trained by `python -m interp.zoo.train copy-hybrid` on `BOS a_1..a_n SEP a_1..a_n`),
# where the right answer is known: the prediction at a copy position reads the token n positions back.
#
# Sections: the model; one map per layer (hidden attention on SSM layers, the softmax pattern on the attention
# layer); how much of each layer's map lands on the copy source, per layer and per head; rollout across the mixed
# layers and LRP with its conservation check; a copying benchmark; generation with the mixed recurrent + KV cache.
#
# Everything runs on the CPU in well under a minute. Edit the `.py` file (jupytext percent format); the `.ipynb`
# is generated from it with `jupytext --to ipynb notebooks/06_hybrids.py`.

# %%
import os
import time

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch

import interp
from interp import zoo
from interp.attention import interaction_map, rollout
from interp.attention.benchmarks import copying_benchmark
from interp.attention.figures import thumbnail_grid
from interp.attention.views import rollout_map
from interp.data import copy_tokenizer, sample_copy_batch
from interp.lrp import conservation_error, explain, interaction_rows, zero_biases

pio.renderers.default = os.environ.get("PLOTLY_RENDERER", "plotly_mimetype+notebook")
torch.set_num_threads(min(2, torch.get_num_threads()))
t_start = time.perf_counter()

# %% [markdown]
# ## The model and one copying sequence
#
# If the embedded weights are not installed in this checkout, a randomly initialised model of the same recipe
# stands in (the maps are then meaningless, but every call below runs the same way).

# %%
TOK = copy_tokenizer()
if zoo.embedded_path("copy-hybrid") is not None:
    model = interp.load("copy-hybrid")
else:
    from interp.zoo.recipes import get_recipe
    from interp.zoo.train import build_model

    print("note: copy-hybrid is not installed (python -m interp.zoo.train copy-hybrid --install); using a random one")
    model = build_model(get_recipe("copy-hybrid")).eval()
model.requires_grad_(False)

print(type(model).__name__, model.cfg.layer_types, f"d_model {model.cfg.d_model}")
batch = sample_copy_batch(1, np.random.default_rng(0), n_range=20)
L, n = int(batch.seq_lengths[0]), int(batch.lengths[0])
tokens = batch.tokens[:, :L]
str_tokens = [TOK.decode([int(t)]) for t in tokens[0]]
copy_positions = torch.nonzero(batch.loss_mask[0, :L]).flatten().tolist()
sources = batch.source_positions[0, copy_positions]  # where the token predicted at each copy position sits
with torch.no_grad():
    logits = model(tokens)
acc = (logits[0, copy_positions].argmax(-1) == tokens[0, [p + 1 for p in copy_positions]]).float().mean()
print(f"L = {L}, n = {n}; copy accuracy on this sequence: {acc:.2f}")

# %% [markdown]
# ## One map per layer
#
# `interaction_map(model, tokens, layer=i)` picks the map of the layer's kind: hidden attention α (Ali et al.;
# Σ_j α_ij u_j + D u_i is exactly the SSM output) on SSM layers, the softmax pattern on attention layers, both
# reduced over heads (mean |·|). Both are [b, L, L], query rows i by source columns j.

# %%
kinds = model.cfg.layer_types
maps = [interaction_map(model, tokens, layer=layer)[0] for layer in range(model.cfg.n_layers)]
labels = [f"layer {layer}: {'hidden attention (SSM)' if kind == 'ssm' else 'softmax attention'}"
          for layer, kind in enumerate(kinds)]
thumbnail_grid(torch.stack([m / m.amax(-1, keepdim=True).clamp_min(1e-12) for m in maps]), labels,
               cols=len(maps), title="each layer's map, rows scaled to max 1").show()

# %% [markdown]
# ## How much of each map lands on the copy source
#
# For every copy position t, the share of the row's |mass| on the source of the token to predict (the
# `source_positions` of the batch), on t itself, and the mean distance looked back. The attention layer is where
# a copy model can read the source directly; the SSM layers carry the position information it needs.


# %%
def source_share(m):
    """[L, L] map -> (mean share on the source, mean share on the diagonal, mean look-back distance)."""
    rows = m[copy_positions].abs()
    rows = rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)
    on_source = rows[torch.arange(len(copy_positions)), sources].mean().item()
    on_self = rows[torch.arange(len(copy_positions)), copy_positions].mean().item()
    distance = (rows * (torch.tensor(copy_positions)[:, None] - torch.arange(L)[None]).clamp_min(0)).sum(-1)
    return on_source, on_self, distance.mean().item()


print(f"{'layer':>5} {'kind':>10} {'on source':>10} {'on self':>8} {'look-back':>10}")
shares = []
for layer, (kind, m) in enumerate(zip(kinds, maps)):
    s, d, back = source_share(m)
    shares.append(s)
    print(f"{layer:5d} {kind:>10} {s:10.3f} {d:8.3f} {back:10.1f}")
print(f"(a uniform row over the positions before t would give {np.mean([1 / (t + 1) for t in copy_positions]):.3f} "
      "on the source)")

# %% [markdown]
# On the shipped `copy-hybrid` the attention layer puts almost all of each copy row (0.995) on the source, while
# both SSM layers stay at or below the uniform share: the model copies through its attention layer, and its SSM
# layers' hidden attention looks a few tokens back (they supply the position information the attention's queries
# and keys need). The copying benchmark below makes the same point.
#
# Per head: `aggregate="none"` keeps the heads (Mamba-2 heads on SSM layers, attention heads on the attention
# layer). Which heads of which layer do the copying?

# %%
fig = go.Figure()
for layer, kind in enumerate(kinds):
    heads = interaction_map(model, tokens, layer=layer, aggregate="none")[0]  # [H, L, L]
    per_head = [source_share(h)[0] for h in heads]
    fig.add_bar(name=f"layer {layer} ({kind})", x=[f"L{layer}H{h}" for h in range(len(per_head))], y=per_head)
fig.update_layout(title="share of each head's map on the copy source", yaxis_title="share", height=320)
fig.show()

# %% [markdown]
# ## Through depth: rollout across mixed layers, and LRP
#
# `rollout_map(method="auto")` chains the maps of every layer, ρ = Π_l rownorm(I + |A_l|), hidden attention on
# the SSM layers and the softmax pattern on the attention layer (an MLP-only layer, as Nemotron-H has, would be the
# identity). LRP attributes the predicted logit to the input tokens through the whole model: MambaLRP rules on the
# SSM layers, CP-LRP (pattern held constant) on the attention layer, the gated-MLP rule on every MLP. With the
# biases zeroed its relevances add up to the logit.

# %%
rho = torch.as_tensor(rollout_map(model, tokens, method="auto"))
assert torch.allclose(rho, rollout([m.abs() for m in maps]), atol=1e-5)  # the same chain, built by hand
t = copy_positions[len(copy_positions) // 2]
lrp = interaction_rows(model, tokens, positions=copy_positions)
thumbnail_grid(torch.stack([rho, torch.zeros(L, L).index_copy(0, torch.tensor(copy_positions), lrp)]),
               ["rollout across the mixed layers", "LRP rows at the copy positions"], cols=2, signed=False).show()
with zero_biases(model):
    a = explain(model, tokens, position=t)
print(f"LRP at t = {t}, biases zeroed: Σ_j R_j = {a.relevance.sum():.5f}, logit = {a.logit:.5f}, "
      f"relative error {conservation_error(a):.1e}")
assert conservation_error(a) < 1e-4

# %% [markdown]
# ## A small copying benchmark
#
# `copying_benchmark` scores each method's row at every copy position against the true source (ROC-AUC, average
# precision, recall@1). On a hybrid a layer-wise method uses its own map where it applies and the layer kind's
# default elsewhere: `hidden` is the rollout above, `hidden@1` the attention layer alone, `hidden@0` / `hidden@2`
# one SSM layer. `random` is the chance reference. The full run: `interp attention copying --models copy-hybrid`.

# %%
methods = ["hidden", "hidden@0", "hidden@1", "hidden@2", "lrp", "random"]
table = copying_benchmark({"copy-hybrid": model}, methods=methods, n_sequences=3, n_range=(16, 20), seed=1)
print(table.to_text())

# %% [markdown]
# ## Generation with the mixed cache
#
# `generate` carries a `HybridState`: the recurrent state (conv window + h) of each SSM layer and the keys and
# values of each attention layer. Greedy decoding of the copy equals the argmax of one full forward.

# %%
prompt = tokens[:, : n + 2]  # BOS a_1..a_n SEP
out = model.generate(prompt, max_new_tokens=n, stop_at_eos=False, verbose=False)
with torch.no_grad():
    full = model(out).argmax(-1)
assert torch.equal(out[0, n + 2:], full[0, n + 1:-1])
print("copied:", "".join(TOK.decode([int(x)]) for x in out[0, n + 2:]) == "".join(str_tokens[1:n + 1]))
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s")
