"""Activation rows for probes: one row per kept (sequence, position), from a model or an activation store.

    rows = collect_rows(model, tokens, hook="blocks.1.hook_resid_post", keep=labels >= 0)
    X, y = rows.acts["blocks.1.hook_resid_post"], rows.gather(labels)      # [n, d], [n]
    rows = ProbeRows.from_store(ActivationStore("runs/cache/x"))             # same, from disk

Rows are in row-major (sequence, position) order, as the activation store writes them; the model is run
through the store's :class:`~interp.activations.collect.HookCollector` (one forward per batch for all
hooks, stopped after the deepest requested block, activations flattened after the position axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from interp.activations.collect import HookCollector, RowFilter, row_meta
from interp.hooks import HookedModel
from interp.hooks.hook_points import residual_hooks
from interp.hooks.tokens import as_tokens

__all__ = ["ProbeRows", "collect_rows", "default_hooks", "sequence_split"]


@dataclass
class ProbeRows:
    """Activations of several hooks on the same rows.

    Attributes:
        acts: hook name -> float [n, d_hook].
        seq: int64 [n] sequence index of each row (into the token batch / stream).
        pos: int64 [n] position of each row.
        tokens: int64 [n] token id of each row.
    """

    acts: dict[str, Tensor]
    seq: Tensor
    pos: Tensor
    tokens: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.seq)

    def gather(self, per_token: Tensor) -> Tensor:
        """Per-token values [n_seq, pos, ...] (e.g. ``tokfsm_labels(tokens)["state"]``) -> this row order [n, ...]."""
        per_token = torch.as_tensor(per_token)
        return per_token[self.seq.to(per_token.device), self.pos.to(per_token.device)]

    def subset(self, mask: Tensor) -> "ProbeRows":
        """Rows where ``mask`` [n] is True."""
        return ProbeRows({k: v[mask] for k, v in self.acts.items()}, self.seq[mask], self.pos[mask],
                         self.tokens[mask], dict(self.meta))

    @classmethod
    def from_store(cls, store: Any, *, hook: str | Sequence[str] | None = None) -> "ProbeRows":
        """Rows of an :class:`~interp.activations.ActivationStore` (every row, the hook(s) given or all)."""
        meta = store.row_meta()
        hooks = list(store.hooks) if hook is None else [hook] if isinstance(hook, str) else list(hook)
        return cls({h: store.all(h) for h in hooks}, meta["seq_idx"], meta["pos"], meta["tokens"],
                   {"store": str(store.folder)})


def default_hooks(model: HookedModel) -> list[str]:
    """``hook_embed`` and every block's ``hook_resid_post``: the residual stream at each depth."""
    return residual_hooks(model, ("post",))


@torch.no_grad()
def collect_rows(
    model: HookedModel,
    tokens: Any,
    *,
    hook: str | Sequence[str] | None = None,
    keep: Tensor | None = None,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    drop_bos: bool = True,
) -> ProbeRows:
    """Run ``model`` on ``tokens`` [n_seq, pos] (any form :func:`interp.hooks.tokens.as_tokens` reads) and keep
    the rows where ``keep`` [n_seq, pos] is True.

    Args:
        hook: a hook name or several (default :func:`default_hooks`); any per-token hook works (dims after the
            position axis are flattened).
        keep: bool [n_seq, pos] (default: every row); BOS rows are dropped too unless ``drop_bos=False``.
        batch_size: sequences per forward.
    """
    hooks = default_hooks(model) if hook is None else ([hook] if isinstance(hook, str) else list(hook))
    tokens = as_tokens(model, tokens).cpu()
    keep_all = torch.ones_like(tokens, dtype=torch.bool) if keep is None else torch.as_tensor(keep).bool().cpu()
    if keep_all.shape != tokens.shape:
        raise ValueError(f"keep {tuple(keep_all.shape)} must have the tokens' shape {tuple(tokens.shape)}")
    row_filter = RowFilter.for_model(model, drop_bos=drop_bos, drop_pad=False)
    collector = HookCollector(model, hook=hooks, dtype=dtype, row_filter=row_filter)
    parts: dict[str, list[Tensor]] = {h: [] for h in hooks}
    metas: list[dict[str, Tensor]] = []
    for start in range(0, tokens.shape[0], batch_size):
        tb = tokens[start:start + batch_size]
        kb = keep_all[start:start + batch_size] & row_filter.keep(tb)
        if not bool(kb.any()):
            continue
        for h, v in collector(tb, kb).items():
            parts[h].append(v.cpu())
        metas.append(row_meta(tb, kb, start))
    if not metas:
        raise ValueError("no rows kept: `keep` selects nothing outside BOS")
    acts = {h: torch.cat(v) for h, v in parts.items()}
    return ProbeRows(acts, torch.cat([m["seq_idx"] for m in metas]), torch.cat([m["pos"] for m in metas]),
                     torch.cat([m["tokens"] for m in metas]))


def sequence_split(seq: Tensor, test_size: float = 0.25, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Held-out split by sequence: (train mask [n], test mask [n]); rows of one sequence stay together."""
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    uniq = torch.unique(seq)
    if len(uniq) < 2:
        raise ValueError("a held-out split needs rows from at least two sequences")
    g = torch.Generator().manual_seed(seed)
    n_test = min(len(uniq) - 1, max(1, round(test_size * len(uniq))))
    test_seqs = uniq[torch.randperm(len(uniq), generator=g)[:n_test]]
    test = torch.isin(seq, test_seqs)
    return ~test, test
