"""Copying task for attribution checks (LaTIM evaluation, docs/design.md §3.9 and §4.2).

One sequence with copy length ``n`` (content symbols ``a_i`` uniform over ``0..n_symbols-1``)::

    position  0    1    ...  n    n+1  n+2  ...  2n+1 | 2n+2 ...
    token     BOS  a_1  ...  a_n  SEP  a_1  ...  a_n  | PAD  ...

Batches are padded on the right with PAD to a common length. The model predicts the copy at positions
``p = n+1 .. 2n`` (the token at ``p+1`` is the copy of ``a_{p-n}``, which sits at position ``p-n``):

* ``loss_mask[b, p]`` is True exactly there (n positions per sequence);
* ``source_positions[b, p] = p - n`` there (the true source token in the first half), -1 elsewhere, so
  ``tokens[b, source_positions[b, p]] == tokens[b, p + 1]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from interp.data.tokfsm import DigitTokenizer

__all__ = [
    "COPY_N_SYMBOLS",
    "COPY_SEP",
    "COPY_BOS",
    "COPY_PAD",
    "COPY_VOCAB_SIZE",
    "CopyBatch",
    "sample_copy_batch",
    "copy_batches",
    "copy_accuracy",
    "copy_tokenizer",
    "copy_prompt",
]

COPY_N_SYMBOLS = 16
COPY_SEP = 16
COPY_BOS = 17
COPY_PAD = 18
COPY_VOCAB_SIZE = 19


@dataclass(frozen=True)
class CopyBatch:
    """A padded batch of copying sequences.

    Attributes:
        tokens: LongTensor [batch, pos]; BOS a_1..a_n SEP a_1..a_n, then PAD.
        loss_mask: BoolTensor [batch, pos]; True at p where ``tokens[p+1]`` is a copied token.
        source_positions: LongTensor [batch, pos]; where ``loss_mask``, the position of the source of
            ``tokens[p+1]`` in the first half, else -1.
        lengths: LongTensor [batch]; the copy length n of each sequence (the unpadded length is 2n+2).
    """

    tokens: torch.Tensor
    loss_mask: torch.Tensor
    source_positions: torch.Tensor
    lengths: torch.Tensor

    @property
    def seq_lengths(self) -> torch.Tensor:
        """LongTensor [batch]: unpadded sequence lengths, 2n + 2."""
        return 2 * self.lengths + 2

    @property
    def attention_mask(self) -> torch.Tensor:
        """LongTensor [batch, pos]: 1 on real tokens, 0 on padding."""
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return (pos[None, :] < self.seq_lengths[:, None]).long()

    def to(self, device: str | torch.device) -> CopyBatch:
        return CopyBatch(*(t.to(device) for t in (self.tokens, self.loss_mask, self.source_positions, self.lengths)))


def _n_bounds(n_range: int | tuple[int, int]) -> tuple[int, int]:
    lo, hi = (n_range, n_range) if isinstance(n_range, int) else (int(n_range[0]), int(n_range[1]))
    if not 1 <= lo <= hi:
        raise ValueError(f"n_range must be a positive int or (lo, hi) with 1 <= lo <= hi, got {n_range}")
    return lo, hi


def sample_copy_batch(
    batch_size: int,
    rng: np.random.Generator,
    n_range: int | tuple[int, int] = (16, 32),
    n_symbols: int = COPY_N_SYMBOLS,
    pad_to: int | None = None,
) -> CopyBatch:
    """Draw one batch.

    Args:
        batch_size: number of sequences.
        rng: numpy generator (consumed).
        n_range: copy length, fixed (int) or drawn uniformly per sequence from ``lo..hi`` inclusive.
        n_symbols: content vocabulary size; SEP/BOS/PAD are ``n_symbols``, ``+1``, ``+2``.
        pad_to: pad every batch to this length (>= 2*hi+2) instead of the batch's longest sequence.
    """
    lo, hi = _n_bounds(n_range)
    sep, bos, pad = n_symbols, n_symbols + 1, n_symbols + 2
    n = rng.integers(lo, hi + 1, size=batch_size)
    content = rng.integers(0, n_symbols, size=(batch_size, hi))
    width = int(2 * n.max() + 2) if batch_size else 0
    if pad_to is not None:
        if pad_to < 2 * hi + 2:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence 2*{hi}+2")
        width = pad_to
    p = np.arange(width)[None, :]
    nn = n[:, None]
    first = (p >= 1) & (p <= nn)
    second = (p >= nn + 2) & (p <= 2 * nn + 1)
    idx = np.where(first, p - 1, np.where(second, p - nn - 2, 0))
    idx = np.clip(idx, 0, hi - 1)
    a = np.take_along_axis(content, idx, axis=1)
    tokens = np.full((batch_size, width), pad, dtype=np.int64)
    tokens = np.where(first | second, a, tokens)
    tokens = np.where(p == 0, bos, tokens)
    tokens = np.where(p == nn + 1, sep, tokens)
    loss_mask = (p >= nn + 1) & (p <= 2 * nn)
    source = np.where(loss_mask, p - nn, -1)
    return CopyBatch(
        tokens=torch.from_numpy(tokens),
        loss_mask=torch.from_numpy(loss_mask),
        source_positions=torch.from_numpy(source.astype(np.int64)),
        lengths=torch.from_numpy(n.astype(np.int64)),
    )


def copy_batches(
    batch_size: int,
    n_range: int | tuple[int, int] = (16, 32),
    seed: int = 0,
    n_symbols: int = COPY_N_SYMBOLS,
    pad_to: int | None = None,
) -> Iterator[CopyBatch]:
    """Endless, seeded stream of ``CopyBatch`` (see ``sample_copy_batch`` for the arguments)."""
    rng = np.random.default_rng(seed)
    while True:
        yield sample_copy_batch(batch_size, rng, n_range=n_range, n_symbols=n_symbols, pad_to=pad_to)


def copy_accuracy(pred_tokens: torch.Tensor, batch: CopyBatch) -> float:
    """Fraction of ``loss_mask`` positions whose prediction equals the next token.

    Args:
        pred_tokens: logits [batch, pos, vocab] (argmax taken) or predicted ids [batch, pos]; the entry at
            position p is the prediction for token p+1.
        batch: the batch the predictions were made on.
    """
    pred = pred_tokens.argmax(dim=-1) if pred_tokens.ndim == 3 else pred_tokens
    tokens, mask = batch.tokens.to(pred.device), batch.loss_mask.to(pred.device)
    if pred.shape != tokens.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} do not match tokens {tuple(tokens.shape)}")
    hit = pred[:, :-1] == tokens[:, 1:]
    m = mask[:, :-1]
    total = int(m.sum())
    return float((hit & m).sum()) / total if total else float("nan")


def copy_tokenizer(n_symbols: int = COPY_N_SYMBOLS) -> DigitTokenizer:
    """Tokenizer for the copying vocabulary: symbols "0-9a-f" (ids 0..15), "<sep>", "<bos>", "<pad>"."""
    return DigitTokenizer(
        symbols=n_symbols, special_tokens=("<sep>", "<bos>", "<pad>"), bos_token="<bos>", pad_token="<pad>"
    )


def copy_prompt(n: int = 12, seed: int = 0) -> str:
    """A copying-task prompt as text: "<bos>", ``n`` sampled symbols, "<sep>" and their copy (2n + 2 tokens)."""
    b = sample_copy_batch(1, np.random.default_rng(seed), n_range=int(n))
    syms = copy_tokenizer(COPY_N_SYMBOLS).symbols
    content = "".join(syms[int(t)] for t in b.tokens[0, 1:int(n) + 1])
    return f"<bos>{content}<sep>{content}"
