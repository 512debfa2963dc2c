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
# # Circuits on an SSM: patching, attribution, direct logit attribution, circuit identification
#
# The TransformerLens circuit toolkit, run on `tokfsm-mamba` (Mamba-1) with one `tokfsm-transformer` cell for
# comparison:
#
# 1. the task: TokFSM prompt pairs with a known answer;
# 2. activation patching of the residual stream, layer × position (`patch_sweep`);
# 3. the recurrent state as a patching site;
# 4. attribution patching (gradients, and integrated gradients) against activation patching;
# 5. direct logit attribution per block and per channel group;
# 6. per-component patching (`component_sweep`);
# 7. circuit identification on a planted circuit: ground truth vs activation patching vs SAE codes;
# 8. path patching between two sites;
# 9. a tuned lens trained for a few steps against the logit lens;
# 10. the same first steps on the transformer.
#
# Edit the `.py` file (jupytext percent format); the `.ipynb` is generated with
# `jupytext --to ipynb notebooks/05_circuits.py`.

# %%
import os
import time

import numpy as np
import plotly.io as pio
import torch

import interp
from interp.data import tokfsm_dataset, tokfsm_patching_pairs
from interp.lens import TunedLensConfig, direct_logit_attribution, lens_kl, logit_attribution_figure, train_tuned_lens
from interp.patching import (LogitDiff, SAECodeConfig, attribution_sweep, circuit_ground_truth, component_figure,
                             component_sweep, patch_figure, patch_sweep, path_patch, sae_code_circuit)
from interp.tasks.circuits import planted_circuit

pio.renderers.default = os.environ.get("PLOTLY_RENDERER", "plotly_mimetype+notebook")
torch.set_num_threads(1)
t_start = time.perf_counter()

# %% [markdown]
# ## 1. The task
#
# `tokfsm_patching_pairs(n)`: a TokFSM walk of 8 two-digit states, then the tens digit of the next state. The
# answer is its units digit, which the last whole state determines. The corrupted prompt swaps that last state
# for another successor of the one before, whose continuation has another units digit (the *wrong* answer).
# The metric is the logit difference answer − wrong at the last position; patching results are normalised so
# that the clean run is 1 and the corrupted run 0.

# %%
model = interp.load("tokfsm-mamba")
clean, corrupted, answer, wrong = tokfsm_patching_pairs(12, seed=0)
metric = LogitDiff(answer, wrong)
str_tokens = model.to_str_tokens(clean[0])
print("clean    ", " ".join(str_tokens))
print("corrupted", " ".join(model.to_str_tokens(corrupted[0])))
print("answer", int(answer[0]), "wrong", int(wrong[0]))
with torch.no_grad():
    rows = torch.arange(len(answer))
    for name, toks in (("clean", clean), ("corrupted", corrupted)):
        last = model(toks)[:, -1]
        diff = last[rows, answer] - last[rows, wrong]
        acc = (last[:, :10].argmax(-1) == answer).float().mean()
        print(f"{name:9s} logit diff {diff.mean():6.2f}   accuracy {acc:.2f}")

# %% [markdown]
# ## 2. Activation patching of the residual stream
#
# Each cell (layer l, position p) runs the corrupted prompts with `blocks.{l}.hook_resid_pre` at p replaced by
# its clean value (denoising). The cells are batched (and on an SSM each cell restarts from the corrupted run's
# decoding state at p instead of re-running the prefix), so the grid costs a few forwards, not one per cell.
# The prompts differ only in the last whole state (positions 15–16): the information sits there early on and moves
# to the last position in later layers.

# %%
kw = dict(corrupted=corrupted, metric=metric)
resid = patch_sweep(model, clean, hook="resid_pre", **kw)
print(f"{resid.values.numel()} cells in {resid.n_forwards} forwards")
patch_figure(resid, str_tokens=str_tokens)

# %% [markdown]
# ## 3. The recurrent state as a site
#
# `hook="state"` patches the SSM state h_p after position p (`blocks.{l}.ssm.hook_state`); the edit runs through
# the rest of the recurrence exactly. No `state_positions` and no slicing of the [b, k, d_inner, N] states by
# hand. Positions before the swapped state carry nothing (same prefix); after it, the state at p holds what the
# block remembers of the swapped state.

# %%
state = patch_sweep(model, clean, hook="state", positions=slice(14, None), **kw)
patch_figure(state, str_tokens=str_tokens)

# %% [markdown]
# ## 4. Attribution patching against activation patching
#
# Attribution patching estimates the whole grid from one forward and one backward pass: m(patched) ≈ m(base) +
# (a′ − a)·∂m/∂a. With `steps=k > 1` the gradient is averaged along the straight line from the corrupted to the
# clean input (integrated gradients, EAP-IG). Correlation with the activation-patching grid, per site:

# %%
for hook in ("resid_pre", "mixer_out"):
    exact = resid if hook == "resid_pre" else patch_sweep(model, clean, hook=hook, **kw)
    for steps in (1, 8):
        approx = attribution_sweep(model, clean, hook=hook, steps=steps, **kw)
        r = np.corrcoef(exact.values.flatten().numpy(), approx.values.flatten().numpy())[0, 1]
        print(f"{hook:10s} steps={steps}: correlation with activation patching {r:.3f}")

# %% [markdown]
# ## 5. Direct logit attribution
#
# The final residual stream is the embedding plus every block's mixer output; with the final RMSNorm's scale frozen
# at its value in the run, the logit difference splits exactly into one term per component
# (Σ values + bias = the logit difference). Per block, then per channel group of the out-projection
# (`L{l}G{g}`: 16 of Mamba-1's `d_inner` channels each).

# %%
dla = direct_logit_attribution(model, clean, answer=answer, wrong=wrong)
print("max |Σ + bias − target|:", float((dla.values.sum(0) + dla.bias - dla.target).abs().max()))
logit_attribution_figure(dla, title="DLA per block (tokfsm-mamba, clean prompts)")

# %%
dla_heads = direct_logit_attribution(model, clean, answer=answer, wrong=wrong, per_head=True)
print("max |Σ + bias − target|:", float((dla_heads.values.sum(0) + dla_heads.bias - dla_heads.target).abs().max()))
logit_attribution_figure(dla_heads, title="DLA per channel group (tokfsm-mamba, clean prompts)")

# %% [markdown]
# ## 6. Per-component patching
#
# `component_sweep` patches one component (Mamba-1 channel group of `ssm.hook_gated`, Mamba-2 head, transformer
# head) at every position per cell. Denoising: how much of the clean behaviour one group restores on its own.

# %%
comps = component_sweep(model, clean, **kw)
print("top 5:", comps.top(5))
component_figure(comps)

# %% [markdown]
# ## 7. Circuit identification on a planted circuit
#
# `planted_circuit(model)` copies the model and zeroes the out-projection columns of every channel group outside
# a known set `keep` (half of them): those groups write nothing, so the circuit is known. On the planted model we
# compare the resample-ablation ground truth (`circuit_ground_truth`), one denoising `component_sweep`, and the
# SAE-code method (O'Neill & Bui 2024: a small SAE on the component outputs, argmax codes, components ranked by
# codes unique to the clean prompts), each taking its top |keep| components. The SAE here is small (64 latents, 150
# steps) to keep the notebook fast; `bench/circuits.py --planted` runs the full settings.

# %%
task = planted_circuit(model, n_pairs=16, seed=1)
k = len(task.keep)
print(f"known circuit: {k} of {task.mask.numel()} groups:", " ".join(task.keep))
held = planted_circuit(model, keep=task.keep, n_pairs=32, seed=100)
t0 = time.perf_counter()
gt = circuit_ground_truth(task.model, held.clean, corrupted=held.corrupted, metric=held.metric, threshold=0.02)
results = {"resample ablation (ground truth)": (gt.components, time.perf_counter() - t0)}
t0 = time.perf_counter()
sweep = component_sweep(task.model, task.clean, corrupted=task.corrupted, metric=task.metric)
results["activation patching"] = (sweep.top(k), time.perf_counter() - t0)
ranking = sae_code_circuit(task.model, task.clean, negatives=task.corrupted,
                           cfg=SAECodeConfig(d_sae=64, steps=150, seed=0))
results["SAE codes"] = (ranking.top(k), ranking.seconds)
print(f"{'method':34s} {'precision':>9s} {'recall':>7s} {'seconds':>8s}")
for method, (found, secs) in results.items():
    p, r = task.score(found)
    print(f"{method:34s} {p:9.2f} {r:7.2f} {secs:8.2f}")

# %% [markdown]
# On the planted model a zeroed group's output is exactly 0 on every prompt, so both methods can only miss kept
# groups, never prefer a zeroed one: this checks that a method finds a circuit that is there. On the full model
# (no planted answer) the reference is the resample-ablation ground truth; `bench/circuits.py` scores both
# methods against it.
#
# ## 8. Path patching
#
# `path_patch` measures one site's effect on another through the residual stream only, with every component in
# between frozen at its corrupted value. Sender: block 1's clean mixer output at the last position. Receivers: block
# 2's input (nothing in between: the same as activation patching of the sender), block 3's input (the path that
# skips block 2) and the final residual stream (the sender's direct effect on the logits).

# %%
sender = "blocks.1.hook_mixer_out"
every = patch_sweep(model, clean, hook="mixer_out", layers=[1], positions=[-1], **kw)
print(f"{sender} at the last position, every path (activation patching): {float(every.values[0, 0]):.3f}")
for receiver in ("blocks.2.hook_resid_pre", "blocks.3.hook_resid_pre", "blocks.3.hook_resid_post"):
    path = path_patch(model, clean, sender=sender, receiver=receiver, positions=[-1], **kw)
    print(f"  direct path to {receiver:24s} {path.value:.3f}")

# %% [markdown]
# ## 9. Tuned lens vs logit lens
#
# A tuned lens learns an affine translator per layer (Belrose et al. 2023) so that the residual stream entering
# block l, read through the final norm and the unembedding, matches the model's output. Trained here for 40 steps
# on TokFSM sequences (no `out_dir`: nothing written); KL to the model's output per layer, held-out prompts:

# %%
lens = train_tuned_lens(model, tokfsm_dataset(256, seed=1, seq_len=64), cfg=TunedLensConfig(steps=40),
                        progress=False)
held_out = tokfsm_dataset(32, seed=2, seq_len=64)
kl_tuned, kl_logit = lens_kl(model, held_out, lens=lens), lens_kl(model, held_out)
for layer, (t, l) in enumerate(zip(kl_tuned.tolist(), kl_logit.tolist())):
    print(f"blocks.{layer}.hook_resid_pre: logit lens KL {l:6.3f}   tuned lens KL {t:6.3f}")

# %% [markdown]
# ## 10. The same on the transformer
#
# The same calls on `tokfsm-transformer` (4 layers, 4 heads): the residual-stream patching grid and DLA per head.
# Components are heads of `attn.hook_z`; no recurrent state.

# %%
tf = interp.load("tokfsm-transformer")
tf_resid = patch_sweep(tf, clean, hook="resid_pre", **kw)
tf_dla = direct_logit_attribution(tf, clean, answer=answer, wrong=wrong, per_head=True)
top = sorted(zip(tf_dla.labels, tf_dla.values.mean(1).tolist()), key=lambda t: -abs(t[1]))[:5]
print("largest direct contributions (heads and MLPs):", [(label, round(v, 2)) for label, v in top])
patch_figure(tf_resid, str_tokens=tf.to_str_tokens(clean[0]))

# %%
print(f"notebook ran in {time.perf_counter() - t_start:.0f} s")
