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
# # Probes and steering on the TokFSM models
#
# `interp.probes` fits linear probes on the activations of any hook; `interp.steering` writes
# directions and maps back into the model through one `Intervention` object (source + operator + hooks
# + positions), in a forward pass or at every step of `model.generate`, recurrent SSM decoding
# included. Definitions: `docs/design.md` §5.2 (probe metrics) and §6 (steering sources).
#
# The models are the embedded TokFSM models (`tokfsm-mamba`, `tokfsm-mamba2`, `tokfsm-transformer`):
# trained on walks of a 100-state finite-state machine written as two digits per state, so the
# quantity to read out, the current state, is known at every token.
#
# Sections: a layer × position probe sweep with the control task; one probe attached through our hook
# API and through nnsight tracing; sparse and regression probes; steering toward a target state, with
# dose-response curves (behaviour against KL cost); which layer to steer; other sources (affine maps,
# LEACE); saving and composing interventions.
#
# Everything runs on the CPU in one to two minutes. Edit the `.py` file (jupytext percent format); the
# `.ipynb` is generated from it with `jupytext --to ipynb notebooks/01_probes_and_steering.py`.

# %%
import os
import tempfile
import time

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch

import interp
from interp import zoo
from interp.data import TokFSM, tokfsm_dataset, tokfsm_labels
from interp.probes import LinearRegressionProbe, LogisticProbe, SparseProbe, collect_rows, probe_sweep
from interp.steering import AffineMap, Direction, Intervention, dose_response_figure
from interp.tasks.tokfsm import (
    tokfsm_next_states, tokfsm_patching_success, tokfsm_prompts, tokfsm_state_activations, tokfsm_state_steering,
    tokfsm_steering_curve,
)

# plotly.js is inlined by the "notebook" renderer (no CDN); set PLOTLY_RENDERER to override
pio.renderers.default = os.environ.get("PLOTLY_RENDERER", "plotly_mimetype+notebook")
torch.set_num_threads(1)  # the fits are small full-batch problems: one thread is fastest on a busy machine
t_start = time.perf_counter()
fsm = TokFSM()

# %% [markdown]
# ## The models
#
# Every embedded TokFSM model that is installed in this checkout is used; a missing one is skipped with
# the command that trains it.

# %%
models = {}
for name in ("tokfsm-mamba", "tokfsm-mamba2", "tokfsm-transformer"):
    if zoo.embedded_path(name) is None:
        print(f"note: {name!r} is not installed here (python -m interp.zoo.train {name} --install); skipped")
        continue
    models[name] = interp.load(name, dtype=torch.float32)
    cfg = models[name].cfg
    print(f"{name:20s} {type(models[name]).__name__:22s} {cfg.n_layers} layers, d_model {cfg.d_model}")
assert models, "no TokFSM model is installed"
first = next(iter(models))

# %% [markdown]
# ## A layer × position probe sweep
#
# Labels come from `tokfsm_labels`: the current state (100 classes) of every digit token. The "position"
# axis groups tokens by digit phase: on the *units* digit the state is fully determined by the prefix;
# on the *tens* digit its second half is still in the future, so accuracy is capped by how predictable
# that digit is (about 0.7). Probes are held out by sequence.
#
# The control task (Hewitt & Liang) gives each token *type* one random label (drawn from the task's label
# distribution); selectivity = accuracy - control accuracy. What counts as the type decides whether the
# number says anything on TokFSM. With the token as the type (10 digit types) the control task is decodable
# from any layer that still carries the current token: control accuracy ≈ 1, a ceiling set by the number of
# types, and selectivity ≤ 0 whatever the representation. With (previous token, token) the type of a units
# digit *is* the current state, so the control task is the task relabelled and selectivity is 0 as soon as
# the state is decodable. The sweep below therefore uses `control_context=2`: the type is the trigram ending
# at the token (up to 1,000 types), which a probe can fit only if the layer also keeps the previous state's
# last digit, which the task does not need; selectivity then measures how specifically a layer holds the
# state rather than the local tokens (numbers for the three controls in `docs/benchmarks.md`).

# %%
tokens = tokfsm_dataset(128, seed=1)
lab = tokfsm_labels(tokens)
phases = {"tens digit": lab["digit_pos"] == 0, "units digit": lab["digit_pos"] == 1}
sweeps = {}
for name, model in models.items():
    sweeps[name] = probe_sweep(model, tokens, labels=lab["state"], positions=phases, control_context=2)
    best = sweeps[name].best(position="units digit")
    print(f"{name:20s} sweep in {sweeps[name].seconds:4.1f} s; best (units digit): {best['hook']} "
          f"accuracy {best['accuracy']:.4f}, trigram control {best['control_accuracy']:.3f}, "
          f"selectivity {best['selectivity']:+.3f}")
sweeps[first].figure(title=f"{first}: current-state probe, held-out accuracy and selectivity").show()

# %% [markdown]
# ## One probe, attached through our hook API and through nnsight
#
# `collect_rows` runs the model once for any list of hooks (the activation store's collector: stops
# after the deepest block, flattens per-token dims) and returns rows with their sequence and position,
# so labels are gathered with `rows.gather(...)`. The same probe then reads activations taken inside an
# nnsight trace of the same model.

# %%
import nnsight

model = models[first]
hook = sweeps[first].best(position="units digit")["hook"]
rows = collect_rows(model, tokens, hook=hook, keep=phases["units digit"])
probe = LogisticProbe().fit(rows.acts[hook], rows.gather(lab["state"]), groups=rows.seq)  # C by 3-fold CV
print(f"{hook}: C = {probe.C_} (cross-validated accuracy per C: {np.round(probe.cv_scores_, 4).tolist()})")

test = tokfsm_dataset(2, seed=99, seq_len=25)
units = tokfsm_labels(test)["digit_pos"] == 1
via_hooks = probe.predict(collect_rows(model, test, hook=hook, keep=units).acts[hook])

wrapped = nnsight.NNsight(model)
layer = int(hook.split(".")[1]) if hook.startswith("blocks.") else None
with wrapped.trace(test):
    point = wrapped.blocks[layer].hook_resid_post if layer is not None else wrapped.hook_embed
    resid = point.output.save()
via_nnsight = probe.predict(resid[units])
print("probe through nnsight == through hooks:", np.array_equal(via_hooks, via_nnsight))
print("true states:   ", fsm.decode(test[0]).tolist())
print("probe (nnsight):", via_nnsight[: units[0].sum()].tolist())

# %% [markdown]
# ## Sparse and regression probes
#
# A k-sparse probe keeps the k best-ranked features of the residual stream (mean difference,
# F-statistic, mutual information or entry order along an L1 path) and fits a logistic probe on them.
# Here: "is the current state S?" (one-vs-rest) on the units digit, k = 1..8. A regression probe reads a
# continuous quantity: the position in the sequence.

# %%
X, y = rows.acts[hook], rows.gather(lab["state"])
S = 42
binary = (y == S).long()
ks = [1, 2, 4, 8]
fig = go.Figure()
for method in ("mean_diff", "f_stat", "mutual_info", "l1"):
    bal = [SparseProbe(k=k, method=method, C=1.0).fit(X, binary).metrics(X, binary)["balanced_accuracy"] for k in ks]
    fig.add_trace(go.Scatter(x=ks, y=bal, mode="lines+markers", name=method))
fig.update_layout(title=f"k-sparse probes for 'state = {S}' at {hook}", xaxis_title="k (features kept)",
                  yaxis_title="balanced accuracy (train)", width=620, height=360, plot_bgcolor="white")
fig.show()

for name, m in models.items():  # does the residual stream track the position? (TokFSM is Markov: no need)
    last_hook = f"blocks.{m.cfg.n_layers - 1}.hook_resid_post"
    r = collect_rows(m, tokens, hook=last_hook, keep=phases["units digit"])
    train = r.seq < 96
    reg = LinearRegressionProbe().fit(r.acts[last_hook][train], r.pos[train].float())
    r2 = reg.score(r.acts[last_hook][~train].numpy(), r.pos[~train].float().numpy())
    print(f"{name:20s} position from {last_hook}: held-out R² = {r2:.3f} (ridge α = {reg.alpha_:g})")

# %% [markdown]
# ## Steering toward a target state
#
# The trial: a prompt is a valid TokFSM prefix that ends right after a complete state, chosen so that the
# state before the last one has an edge to the target S (S could have been the last state) while the last
# state is not S. The model generates the next two digits greedily (one prefill, then recurrent or
# KV-cached decoding); the trial succeeds when the generated state is one of S's 10 out-edges, as if the
# last state were S. The unsteered baseline is about 0.1.
#
# The intervention writes "the current state is S" into the residual stream entering block 0
# (`blocks.0.hook_resid_pre`) at the last state's two digit positions, one direction per digit phase:
# the mean difference (mean activation where the state is S minus the mean over all states) or the probe
# direction for class S (`state_probe`: a 100-class probe fitted without standardising, so its direction
# stays in the span of the activations; given the mean difference's length). Two operators:
#
# * `add` (CAA): h + s·v. What is left of the true last state competes with S.
# * erase + add (the default of `tokfsm_state_steering`): LEACE erases the current state (fitted on the
#   state labels at that hook and phase), then v is added: one affine map h ↦ E(h) + v, applied as
#   h + s·(E(h) + v - h), so s = 1 *replaces* the state by S.
#
# Each is a `Compose` of two interventions at absolute positions, passed to `model.generate(fwd_hooks=...)`.

# %%
STEER_HOOK = "blocks.0.hook_resid_pre"
n_states = 8
prompt_len = 1 + 2 * n_states
prompts = tokfsm_prompts(6, n_states, seed=5, lead_to=S)
acts = tokfsm_state_activations(model, STEER_HOOK, n_seq=128)
steer = tokfsm_state_steering(model, S, prompt_len, STEER_HOOK, "mean_difference", scale=1.0, acts=acts)
print(steer.interventions[1])
plain = tokfsm_next_states(model, prompts)
steered = tokfsm_next_states(model, prompts, steer.hooks(model))
print(f"out-edges of {S}: {sorted(fsm.edges[S].tolist())}")
for p, a, b in zip(fsm.decode(prompts), plain, steered):
    print(f"... {int(p[-2]):2d} -> {int(p[-1]):2d} | next: unsteered {int(a):2d}, steered {int(b):2d} "
          f"({'valid for S' if fsm.is_valid_transition(S, int(b)) else 'not valid for S'})")

# %% [markdown]
# ## Dose-response: behaviour against cost
#
# For each model, source and operator: the fraction of trials valid for S (averaged over four target
# states, 32 trials each) against the scale, and against the KL divergence between the unsteered and
# steered next-token distributions on neutral prompts (fresh random prefixes of the same length), averaged
# over the positions the intervention can affect. The first row of every curve is the unsteered baseline.
# Replacing the last state rewrites the next-token distribution, so a KL of a few nats at full effect is
# the price of the behaviour here, not a side effect.
#
# Erase + add reaches 1.0 on all three models at s = 1. Pure addition passes 0.9 on the two Mambas from
# s ≈ 2 but not on the transformer, where it peaks below 0.7 at s ≈ 2-3 and falls beyond: adding S's
# direction to the true digit's embedding leaves both digits in the stream, and a scale large enough to
# outvote the true one swamps what the blocks write at those positions (`docs/benchmarks.md` has the
# ten-state sweep over hooks, sources and scales: no hook does better).

# %%
targets = [1, 25, 58, 81]
grids = {True: [0.25, 0.5, 1.0], False: [1.0, 2.0, 3.0, 4.0, 8.0]}
curves, summary = {}, []
for name, m in models.items():
    a = acts if m is model else tokfsm_state_activations(m, STEER_HOOK, n_seq=128)
    for erase in (True, False):
        for source in ("mean_difference", "probe"):
            c = tokfsm_steering_curve(m, targets, grids[erase], STEER_HOOK, source, erase, n_trials=32,
                                      n_neutral=32, acts=a)
            curves[f"{name} / {c.rows[1]['label']}"] = c
            summary.append((name, c.rows[1]["label"], c))
for name, label, c in summary:
    hit = c.first_reaching(0.9)
    best = max(c.rows[1:], key=lambda r: r["behaviour"])
    what = f"{hit['behaviour']:.3f} at scale {hit['scale']:g}, KL {hit['kl']:.2f} nats" if hit else \
        f"best {best['behaviour']:.3f} at scale {best['scale']:g} (KL {best['kl']:.2f})"
    print(f"{name:20s} {label:24s} baseline {c.baseline['behaviour']:.3f} -> {what}")
dose_response_figure({k: v for k, v in curves.items() if "erase" in k}, behaviour_name="transitions valid for S",
                     title=f"erase + add at {STEER_HOOK}").show()
dose_response_figure({k: v for k, v in curves.items() if "erase" not in k}, behaviour_name="transitions valid for S",
                     title=f"add only (CAA) at {STEER_HOOK}").show()

# %% [markdown]
# ## Which layer? Activation patching
#
# Why the embedding: the second generated digit is decided at the first generated position, which reads the
# last state through what block 0 computes there, layer 0's attention over the digit tokens, or block 0's
# causal convolution and recurrent state. An edit of a later hook at the last state's positions leaves
# that untouched. `tokfsm_patching_success` measures the ceiling: it *replaces* the hook's activations at
# those two positions by the ones the model computes when the prompt does end in S. At the embedding that
# is the S prompt itself (1.0); from the next hook on it no longer carries to the generated state (about
# 0.5 on the transformer at `blocks.0.hook_resid_mid` already), so no edit of a single later hook at
# these positions, additive or not, can steer reliably.

# %%
for name, m in models.items():
    hooks = [STEER_HOOK] + [f"blocks.{i}.hook_resid_pre" for i in range(1, m.cfg.n_layers)]
    if "blocks.0.hook_resid_mid" in m.hook_dict:
        hooks.insert(1, "blocks.0.hook_resid_mid")
    ceiling = {h: tokfsm_patching_success(m, h, targets, n_trials=24)["success"] for h in hooks}
    cells = [f"{h.replace('blocks.', '').replace('hook_', '')} {v:.2f}" for h, v in ceiling.items()]
    print(f"{name:20s} patching at the last state's digits: " + ", ".join(cells))

# %% [markdown]
# ## Other sources: affine maps and LEACE erasure
#
# Affine sources act on whole distributions. The Gaussian optimal-transport map fitted from the
# activations of one state to those of another moves the first distribution onto the second (mean and
# covariance): the state probe then reads the mapped activations as the target state. LEACE (Belrose et
# al.) erases the linearly decodable information about a concept with the smallest least-squares edit:
# fitted on the units-digit rows of one layer for the current state, a fresh probe on the erased
# activations falls to chance. Applied inside the model (operator `affine`, every position), it shows how
# much the model relies on that linear information: the next-token loss rises.

# %%
h_mid = "blocks.1.hook_resid_post"
r = collect_rows(model, tokens, hook=h_mid, keep=phases["units digit"])
Xm, ym = r.acts[h_mid], r.gather(lab["state"])
tr = r.seq < 96
eraser = AffineMap.leace(Xm[tr], ym[tr])
before = LogisticProbe(C=1.0).fit(Xm[tr], ym[tr]).score(Xm[~tr], ym[~tr].numpy())
after = LogisticProbe(C=1.0).fit(eraser(Xm)[tr], ym[tr]).score(eraser(Xm)[~tr], ym[~tr].numpy())
print(f"{h_mid}: state probe {before:.3f} before LEACE, {after:.3f} after (chance ≈ {1 / 100:.2f})")

state_probe = LogisticProbe(C=1.0).fit(Xm[tr], ym[tr])
src, tgt = Xm[ym == 7], Xm[ym == S]
maps = {"mean matching": AffineMap.mean_matching(src, tgt), "Gaussian OT": AffineMap.gaussian_ot(src, tgt)}
for label, f in maps.items():
    share = float((state_probe.predict(f(src)) == S).mean())
    print(f"{label:14s} state 7 -> {S}: the probe reads {share:.2f} of the mapped state-7 rows as state {S}")

erase = Intervention(eraser, h_mid, "affine", positions="all", name="LEACE current state")
sample = tokfsm_dataset(32, seed=7, seq_len=65)
with torch.no_grad():
    for label, hooks in (("clean", []), ("LEACE at every position", erase.hooks(model))):
        logits = model.run_with_hooks(sample, fwd_hooks=hooks)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), sample[:, 1:])
        print(f"{label:24s} next-token loss {float(loss):.3f}")

# %% [markdown]
# ## Saving, loading and composing
#
# An intervention saves to a folder as `intervention.json` (hooks, operator, scale, positions, source
# config) and `intervention.safetensors` (the tensors); no pickle. A `Compose` (`iv1 + iv2`) applies its
# parts in order and saves the same way. Loading gives identical outputs.

# %%
with tempfile.TemporaryDirectory() as folder:
    combo = steer + Intervention(Direction.mean_difference(Xm[ym == S], Xm), h_mid, "add", 0.5, positions="last")
    combo.save(folder)
    print(open(os.path.join(folder, "intervention.json")).read()[:600], "...")
    loaded = Intervention.load(folder)
    same = torch.equal(model.generate(prompts, 4, fwd_hooks=combo.hooks(model), stop_at_eos=False),
                       model.generate(prompts, 4, fwd_hooks=loaded.hooks(model), stop_at_eos=False))
    print("loaded intervention gives identical generations:", same)
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s")
