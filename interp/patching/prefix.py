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
from dataclasses import fields, replace
from typing import Any

import torch
from torch import Tensor

from interp.hooks.mamba import SSMState

__all__ = ["supports_prefix", "base_states", "prefix_cells"]


def supports_prefix(model: Any, *, default: bool = False) -> bool:
    """Whether ``model`` can continue a forward from a decoding state at any block (an SSM, a hybrid). With
    ``default``: whether that is the cheaper way, so the sweeps' default: not on a model with attention layers (a
    hybrid), whose decoding state after p tokens holds every key and value so far and takes a forward per position
    (measured slower than whole forwards on ``copy-hybrid``)."""
    able = hasattr(model, "blocks") and callable(getattr(model, "decoding_states", None))
    return able and not (default and any(hasattr(block, "attn") for block in model.blocks))


def base_states(model: Any, tokens: Tensor, *, positions: Sequence[int]) -> dict[int, SSMState | None]:
    """{p: the decoding state after reading ``tokens[:, :p]``} for each p in ``positions`` (None for p = 0), from
    one forward (:meth:`~interp.hooks.mamba.HookedSSM.decoding_states`)."""
    return model.decoding_states(tokens, list(positions))


def _repeat(snapshot: SSMState | None, copies: int, position: int, memo: dict[int, dict[str, list]]
            ) -> SSMState | None:
    """The base state for ``copies`` stacked copies of the prompts: a new state of the snapshot's class (an
    :class:`SSMState`, or a hybrid's with its attention layers' keys and values too) whose every per-layer tensor
    is repeated along the batch axis; a forward given it replaces its entries, the snapshot is left as it was.
    ``memo``: {copies: the repeated lists}, so that the blocks of one partial forward share the copies."""
    if snapshot is None:
        return None
    if copies not in memo:
        memo[copies] = {f.name: [t.repeat(copies, *(1,) * (t.dim() - 1)) for t in getattr(snapshot, f.name)]
                        for f in fields(snapshot) if isinstance(getattr(snapshot, f.name), list)}
    return replace(snapshot, **{name: list(ts) for name, ts in memo[copies].items()}, offset=position)


@torch.no_grad()
def prefix_cells(
    model: Any,
    *,
    resid_pre: dict[int, Tensor],
    base_logits: Tensor,
    state: SSMState | None,
    cells: Sequence[tuple[int, int]],
    start: int,
    fwd_hooks: list[tuple[str, Any]],
    state_site: bool,
) -> Tensor:
    """Logits [c, b, L, V] of the cells (layer, position) in ``cells`` (sorted; copy i of the b prompts is cell
    ``cells[i]``), run on positions ``start``.. (<= every cell's position) from the base run's decoding state there.

    ``resid_pre``: {l: the base run's residual stream entering block l, [b, L, d_model]}; ``base_logits``: the base
    run's logits [b, L, V]; ``state``: :func:`base_states` at ``start``; ``fwd_hooks``: the patching hooks
    (as for run_with_hooks), patching copy i at its cell's layer and position only; ``state_site``: the site is
    ``ssm.hook_state`` (fire it at the cells' positions). A copy's positions before its own are the base run's
    (nothing is patched there yet), so cells of several positions share one partial forward.
    """
    b, L = base_logits.shape[:2]
    kwargs: dict[str, Any] = {"state_positions": sorted({p for _, p in cells})} if state_site else {}
    resid: Tensor | None = None
    joined = 0
    memo: dict[int, dict[str, list]] = {}
    with model.hooks(fwd_hooks=fwd_hooks):
        for k in range(cells[0][0], model.cfg.n_layers):
            m = sum(1 for layer, _ in cells if layer == k)
            if m:  # the cells of layer k join: block k's base input from ``start`` on, once per cell
                new = resid_pre[k][:, start:].repeat(m, 1, 1)
                resid = new if resid is None else torch.cat([resid, new.to(resid.dtype)])
                joined += m
            resid = model(resid, start_at_layer=k, stop_at_layer=k + 1, state=_repeat(state, joined, start, memo),
                          **kwargs)
        logits = model(resid, start_at_layer=model.cfg.n_layers, state=SSMState(offset=start))  # [c·b, L-start, V]
    c = len(cells)
    before = base_logits[:, :start].to(logits.dtype)[None].expand(c, b, start, -1)
    return torch.cat([before, logits.unflatten(0, (c, b))], dim=2)  # [c, b, L, V]


def cell_groups(layers: Sequence[int], positions: Sequence[int], copies: int, span: int
                ) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """(start, sorted cells) groups covering every distinct (layer, position) cell: up to ``span`` consecutive
    positions of the sorted distinct ones and up to ``copies`` cells a group; start = the group's first position."""
    distinct = sorted(set(layers))
    pos = sorted(set(positions))
    g = max(1, min(span, copies // len(distinct)))
    for i in range(0, len(pos), g):
        cells = sorted((layer, p) for layer in distinct for p in pos[i:i + g])
        for j in range(0, len(cells), copies):
            yield min(p for _, p in cells[j:j + copies]), cells[j:j + copies]
