"""Patching cells of a recurrent model from the base run's state: only the blocks and positions a patch can change.

A cell (layer l, position p) of an activation-patching sweep changes nothing before block l and nothing before
position p (the model is causal). On an SSM the base run's decoding state after position p - 1 (each block's conv
window and recurrent state, :class:`~interp.hooks.mamba.SSMState`) holds everything the positions before p pass on,
so the patched run is

    logits[:, :p]  = the base run's logits there (unchanged)
    logits[:, p:]  = blocks l.. on positions p.. from the base run's state at p and its resid_pre of block l

which is ``(n_layers - l) / n_layers × (L - p) / L`` of a full forward. The cells of one position p share the
position range, so they run together, block by block: the copy of the b prompts for cell (l, p) joins the batch at
block l, so block k runs one copy per patched layer <= k (no block is run for a copy that it cannot change).
Each group is one partial forward per block: ``model(resid, start_at_layer=k, stop_at_layer=k + 1, state=...)``.

The numbers equal one full forward per cell up to float rounding: the base run's states come from the recurrent
step (as in generation), the full forward's from the chunked scan (≤ 1e-6 apart on the embedded models).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from interp.hooks.mamba import SSMState

__all__ = ["supports_prefix", "base_states", "prefix_cells"]


def supports_prefix(model: Any) -> bool:
    """Whether ``model`` can continue a forward from a decoding state at any block (an SSM)."""
    return hasattr(model, "blocks") and callable(getattr(model, "_check_resid", None))


@torch.no_grad()
def base_states(model: Any, tokens: Tensor, *, positions: Sequence[int]) -> dict[int, SSMState | None]:
    """{p: the decoding state after reading ``tokens[:, :p]``} for each p in ``positions`` (None for p = 0): one
    pass of recurrent steps over the prompts, as generation reads a prompt."""
    wanted = set(positions)
    out: dict[int, SSMState | None] = {0: None} if 0 in wanted else {}
    state = SSMState()
    for t in range(max(wanted, default=0)):
        model(tokens[:, t:t + 1], state=state, return_type=None)
        if t + 1 in wanted:
            out[t + 1] = state.copy()
    return out


def _repeat(snapshot: SSMState | None, layer: int, copies: int, position: int) -> SSMState | None:
    """The base state of block ``layer`` for ``copies`` stacked copies of the prompts (other layers' entries are
    not read by that block)."""
    if snapshot is None:
        return None
    conv, ssm = list(snapshot.conv), list(snapshot.ssm)
    conv[layer] = conv[layer].repeat(copies, *(1,) * (conv[layer].dim() - 1))
    ssm[layer] = ssm[layer].repeat(copies, *(1,) * (ssm[layer].dim() - 1))
    return SSMState(conv=conv, ssm=ssm, offset=position)


@torch.no_grad()
def prefix_cells(
    model: Any,
    *,
    resid_pre: dict[int, Tensor],
    base_logits: Tensor,
    states: dict[int, SSMState | None],
    layers: Sequence[int],
    position: int,
    fwd_hooks: list[tuple[str, Any]],
    state_site: bool,
) -> Tensor:
    """Logits [c, b, L, V] of the cells (l, ``position``) for l in ``layers`` (sorted, distinct; copy i is cell
    (layers[i], position)).

    ``resid_pre``: {l: the base run's residual stream entering block l, [b, L, d_model]}; ``base_logits``: the base
    run's logits [b, L, V]; ``states``: :func:`base_states` at ``position``; ``fwd_hooks``: the patching hooks
    (fwd_hooks as for run_with_hooks), each patching copy i (of the b prompts) at its layer's hook only, where
    copy i is the i-th joined of those in the batch; ``state_site``: the site is ``ssm.hook_state`` (fire it at
    ``position``).
    """
    b, L = base_logits.shape[:2]
    p = position
    kwargs: dict[str, Any] = {"state_positions": [p]} if state_site else {}
    resid: Tensor | None = None
    joined = 0
    with model.hooks(fwd_hooks=fwd_hooks):
        for k in range(layers[0], model.cfg.n_layers):
            if joined < len(layers) and layers[joined] == k:  # cell (k, p) joins: block k's base input from p on
                new = resid_pre[k][:, p:]
                resid = new if resid is None else torch.cat([resid, new.to(resid.dtype)])
                joined += 1
            state = _repeat(states[p], k, joined, p)
            resid = model(resid, start_at_layer=k, stop_at_layer=k + 1, state=state, **kwargs)
        logits = model(resid, start_at_layer=model.cfg.n_layers, state=SSMState(offset=p))  # [c·b, L-p, V]
    c = len(layers)
    before = base_logits[:, :p].to(logits.dtype)[None].expand(c, b, p, -1)
    return torch.cat([before, logits.unflatten(0, (c, b))], dim=2)  # [c, b, L, V]


def cell_groups(layers: Sequence[int], positions: Sequence[int], copies: int) -> Iterator[tuple[int, list[int]]]:
    """(position, up to ``copies`` sorted distinct layers) groups covering every (layer, position) cell."""
    distinct = sorted(set(layers))
    for p in sorted(set(positions)):
        for start in range(0, len(distinct), copies):
            yield p, distinct[start:start + copies]
