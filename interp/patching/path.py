"""Path patching: the effect of one site on another through the residual stream only, not through the blocks in
between (Wang et al. 2022, "Interpretability in the Wild"; Goldowsky-Dill et al. 2023).

    from interp.patching import path_patch, LogitDiff
    path = path_patch(model, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong),
                      sender="blocks.1.hook_mixer_out", receiver="blocks.3.hook_resid_pre", positions=[15])
    path.value          # normalised: 1 = the path alone restores the clean behaviour, 0 = it does nothing

Denoising (the default; noising swaps the prompts' roles), three runs:

1. the clean and corrupted runs, cached;
2. the corrupted run with the sender (at ``positions``) set to its clean value and the output of every component
   after the sender (each SSM block's mixer, each transformer block's attention and MLP) frozen at its corrupted
   value: the receiver now differs from its corrupted value by the direct path only. Its value is recorded;
3. the corrupted run with the receiver (all positions) set to that recorded value; the metric of this run is the
   path's effect. Everything downstream of the receiver follows.

A receiver right after the sender (``blocks.l.hook_mixer_out`` -> ``blocks.{l+1}.hook_resid_pre``) has no block in
between, so the path effect equals activation patching of the sender (a test checks it); a receiver at the last
block's ``hook_resid_post`` gives the sender's direct effect on the logits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks.hook_points import UnknownHookError, suggest
from interp.hooks.positions import Positions, PositionsLike

from .activation import DIRECTIONS, STATE_HOOK, _pair, _patcher
from .metrics import NormalisedMetric, PatchMetric, describe, normalise

__all__ = ["PathPatch", "path_patch", "execution_rank"]


@dataclass(frozen=True)
class PathPatch:
    """The effect of the path sender -> receiver.

    Attributes:
        value: the normalised metric of run 3 (clean 1, corrupted 0); raw: the metric averaged over the prompts;
            per_prompt: float [b], each prompt pair's metric.
        sender, receivers: the hook names; positions: the sender's patched positions (absolute).
        frozen: the component outputs held at the base run's values in run 2.
        metric, direction ("denoise" / "noise"), clean, corrupted: as for :class:`~interp.patching.PatchSweep`.
    """

    value: float
    raw: float
    per_prompt: Tensor
    sender: str
    receivers: tuple[str, ...]
    positions: tuple[int, ...]
    frozen: tuple[str, ...]
    metric: str
    direction: str
    clean: float
    corrupted: float


_BLOCK = re.compile(r"blocks\.(\d+)\.(.*)")
#: where a hook of a block runs, within the block: 0 its input, 1 the mixer / attention, 2 the residual stream between
#: attention and MLP, 3 the MLP, 4 its output
_STAGE = (("hook_resid_pre", 0), ("hook_resid_mid", 2), ("hook_resid_post", 4), ("ln2.", 3), ("mlp.", 3),
          ("hook_mlp_in", 3), ("hook_mlp_out", 3))
#: the outputs of a block's components: what run 2 freezes
_COMPONENTS = {"hook_mixer_out": 1, "hook_attn_out": 1, "hook_mlp_out": 3}


def execution_rank(model: Any, hook: str) -> tuple[int, int]:
    """(layer, stage) of ``hook`` in the order a forward runs the hooks: ``hook_embed`` first, then each block's
    input (stage 0), mixer / attention (1), ``resid_mid`` (2), MLP (3), output (4), then the final norm."""
    if hook == "hook_embed":
        return (-1, 4)
    m = _BLOCK.fullmatch(hook)
    if m is None:
        return (model.cfg.n_layers, 0)  # ln_final, unembed
    layer, rest = int(m.group(1)), m.group(2)
    for prefix, stage in _STAGE:
        if rest.startswith(prefix):
            return (layer, stage)
    return (layer, 1)  # ln1, the mixer's / attention's hooks, their inputs and outputs


def _check_hook(model: Any, hook: str, role: str) -> str:
    if not isinstance(hook, str) or hook not in model.hook_dict:
        close = suggest(str(hook), model.hook_dict)
        raise UnknownHookError(f"{role}={hook!r} is not a hook of this model (a full name, e.g. "
                               f"'blocks.1.hook_mixer_out')" + (f"; closest: {close}" if close else ""))
    return hook


@torch.no_grad()
def path_patch(
    model: Any,
    tokens: Any,
    *,
    corrupted: Any,
    metric: PatchMetric,
    sender: str,
    receiver: str | Sequence[str],
    positions: PositionsLike = "all",
    direction: str = "denoise",
) -> PathPatch:
    """Path patching from ``sender`` (at ``positions``) to ``receiver`` (all positions): see the module docstring.

    Args:
        tokens, corrupted: prompt pairs [b, L] (as :func:`interp.patching.patch_sweep`).
        metric: a :class:`~interp.patching.metrics.PatchMetric`.
        sender: a full hook name (``"blocks.1.hook_mixer_out"``, ``"blocks.0.attn.hook_z"``,
            ``"blocks.2.ssm.hook_state"``: the state after each position in ``positions``).
        receiver: one full hook name or several, each after the sender (``"blocks.3.hook_resid_pre"``,
            ``"blocks.3.ssm.hook_in"``, ``"blocks.2.hook_q_input"``); not the recurrent state.
        positions: the sender's positions (a Positions spec, default "all").
        direction: "denoise" (base = corrupted, sender from clean) or "noise".

    Returns a :class:`PathPatch`.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    clean, corr = _pair(model, tokens, corrupted)
    sender = _check_hook(model, sender, "sender")
    receivers = [receiver] if isinstance(receiver, str) else list(receiver)
    if not receivers:
        raise ValueError("receiver: give at least one hook name")
    for r in receivers:
        _check_hook(model, r, "receiver")
        if r.endswith(STATE_HOOK):
            raise ValueError(f"receiver={r!r}: the recurrent state cannot be a receiver (its hook shows chosen "
                             "positions only); use the inputs it is made of (ssm.hook_x / hook_dt / hook_B)")
        if execution_rank(model, r) <= execution_rank(model, sender):
            raise ValueError(f"receiver {r!r} runs before or beside sender {sender!r}: a receiver must come after "
                             "the sender's block component (e.g. a later block's hook_resid_pre)")
    pos = sorted(set(Positions.parse(positions).indices(clean.shape[1])))
    base, source = (corr, clean) if direction == "denoise" else (clean, corr)
    b = base.shape[0]
    state = sender.endswith(STATE_HOOK)

    rank = execution_rank(model, sender)
    frozen = [n for n in model.hook_dict
              if (m := _BLOCK.fullmatch(n)) and m.group(2) in _COMPONENTS and n != sender
              and (int(m.group(1)), _COMPONENTS[m.group(2)]) > rank and n not in receivers]
    fwd: dict[str, Any] = {"state_positions": pos} if state else {}

    # 1. the clean and corrupted runs
    clean_logits, corr_logits = model(clean), model(corr)
    score = NormalisedMetric(metric, clean_logits, corr_logits)
    _, src_cache = model.run_with_cache(source, names_filter=[sender], **fwd)
    _, base_cache = model.run_with_cache(base, names_filter=frozen)
    # 2. sender patched, the components after it frozen: the receivers see the direct path only
    patch = _patcher(src_cache[sender], torch.zeros(len(pos), dtype=torch.long), torch.tensor(pos), b,
                     model.pos_dim(sender), {p: i for i, p in enumerate(pos)} if state else None)
    seen: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> None:
        seen[hook.name] = act.clone()

    hooks = [(sender, patch)] + [(n, lambda act, hook: base_cache[hook.name]) for n in frozen] + \
        [(r, keep) for r in receivers]
    model.run_with_hooks(base, fwd_hooks=hooks, return_type=None, **fwd)
    if missing := [r for r in receivers if r not in seen]:
        raise ValueError(f"receiver hook(s) {missing} did not fire in a forward of this model (TransformerLens's "
                         "split-input hooks need cfg.use_split_qkv_input / use_hook_mlp_in)")
    # 3. the receivers set to what they saw
    logits = model.run_with_hooks(base, fwd_hooks=[(r, lambda act, hook: seen[hook.name]) for r in receivers])
    per_prompt = metric(logits, clean_logits).float().cpu()
    raw = score.raw(logits).float().cpu()
    value = normalise(raw, score.clean.float().cpu(), score.corrupted.float().cpu())
    return PathPatch(value=float(value), raw=float(raw), per_prompt=per_prompt, sender=sender,
                     receivers=tuple(receivers), positions=tuple(pos), frozen=tuple(frozen), metric=describe(metric),
                     direction=direction, clean=float(score.clean), corrupted=float(score.corrupted))
