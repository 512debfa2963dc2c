"""``stream_activations``: shuffled training batches straight from the model, no disk.

Same filters and hook handling as :func:`~.writer.cache_activations`; rows are gathered into a buffer
of about ``buffer_tokens`` rows, permuted, and cut into batches (the rows that do not fill a batch
are carried into the next buffer). One pass over the token stream; for several epochs over the
same data, cache to disk and use :meth:`ActivationStore.shuffled_batches`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from interp.hooks import HookedModel

from .collect import HookCollector, PosSlice, TokenStream, collector_for

DEFAULT_BUFFER_TOKENS = 2**18


def stream_activations(
    model: HookedModel,
    batches: Iterable[Tensor],
    *,
    hook: str,
    batch_size: int,
    buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    drop_bos: bool = True,
    drop_pad: bool = True,
    bos_id: int | None = None,
    pad_id: int | None = None,
    pos_slice: PosSlice = None,
    max_tokens: int | None = None,
    max_batches: int | None = None,
    drop_last: bool = False,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Iterator[Tensor]:
    """Run ``model`` over ``batches`` (an iterable of token batches [b, L]) and yield shuffled float32 batches
    [batch_size, d] of ``hook``.

    Args:
        model, batches, dtype, drop_bos, drop_pad, bos_id, pad_id, pos_slice, max_tokens,
            max_batches: as :func:`~interp.activations.cache_activations` (``dtype`` is the buffer's
            dtype, cast inside the hook; batches are float32).
        hook: the hook name (one: the batches are rows of one width).
        batch_size: rows per batch; the last batch is smaller unless ``drop_last``.
        buffer_tokens: rows shuffled together (memory: buffer_tokens * d values of ``dtype``).
        seed: shuffling seed (numpy ``default_rng(seed)``).
        device: where batches go (default: the model's device, where the buffer lives).
        progress: tqdm bar over the rows read.

    Hook names and filter ids are checked when this is called, not at the first ``next``.
    """
    if batch_size < 1 or buffer_tokens < batch_size:
        raise ValueError(f"need 1 <= batch_size <= buffer_tokens, got batch_size={batch_size}, "
                         f"buffer_tokens={buffer_tokens}")
    if not isinstance(hook, str):
        raise TypeError(f"hook must be one hook name (stream_activations yields rows of one width), got {hook!r}; "
                        "cache several hooks with cache_activations(model, batches, hook=[...], out=...)")
    collector = collector_for(model, [hook], dtype, drop_bos, drop_pad, bos_id, pad_id, pos_slice)
    stream = TokenStream(batches, collector.row_filter, max_tokens, max_batches)
    return _batches(collector, stream, batch_size, buffer_tokens, seed, drop_last, device, progress)


def _batches(collector: HookCollector, stream: TokenStream, batch_size: int, buffer_tokens: int, seed: int,
             drop_last: bool, device: Any, progress: bool) -> Iterator[Tensor]:
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    hook = collector.hooks[0]
    parts: list[Tensor] = []
    n_buffered = 0

    def shuffled() -> Tensor:
        rows = torch.cat(parts)
        return rows[torch.from_numpy(rng.permutation(len(rows))).to(rows.device)]

    with tqdm(total=stream.max_tokens, unit="tok", unit_scale=True, disable=not progress,
              desc=f"streaming {hook}") as bar:
        for tokens, keep, lo, _ in stream:
            if stream.n_rows > lo:
                parts.append(collector(tokens, keep)[hook])
                n_buffered += stream.n_rows - lo
                bar.update(stream.n_rows - lo)
            if n_buffered >= buffer_tokens:
                rows = shuffled()
                n_full = len(rows) // batch_size * batch_size
                for i in range(0, n_full, batch_size):
                    yield rows[i:i + batch_size].to(device=device, dtype=torch.float32)
                parts, n_buffered = [rows[n_full:]], len(rows) - n_full
    stream.check_nonempty()
    if n_buffered:
        rows = shuffled()
        n_keep = len(rows) // batch_size * batch_size if drop_last else len(rows)
        for i in range(0, n_keep, batch_size):
            yield rows[i:i + batch_size].to(device=device, dtype=torch.float32)
