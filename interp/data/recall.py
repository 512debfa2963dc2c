"""Associative recall for attribution checks.

One sequence with ``n_pairs`` key-value pairs (keys distinct within a sequence, values may repeat)::

    position  0    1   2   3   4   ...  2n-1  2n   2n+1  2n+2
    token     BOS  k1  v1  k2  v2  ...  kn    vn   SEP   kq

The model reads the query key ``kq`` (one of ``k1..kn``) at the last position and must output its value.
Keys are ids ``0..n_keys-1``, values ``n_keys..n_keys+n_values-1`` (disjoint ranges), then SEP and BOS.
The ground-truth sources of the answer are the matching key (``key_positions``) and the value right after it
(``value_positions = key_positions + 1``). With ``add_bos=False`` the BOS column is absent and every
position shifts down by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "RECALL_N_KEYS",
    "RECALL_N_VALUES",
    "RECALL_SEP",
    "RECALL_BOS",
    "RECALL_VOCAB_SIZE",
    "RecallBatch",
    "sample_recall_batch",
    "recall_batches",
    "recall_accuracy",
]

RECALL_N_KEYS = 32
RECALL_N_VALUES = 32
RECALL_SEP = RECALL_N_KEYS + RECALL_N_VALUES  # 64
RECALL_BOS = RECALL_SEP + 1  # 65
RECALL_VOCAB_SIZE = RECALL_BOS + 1  # 66


@dataclass(frozen=True)
class RecallBatch:
    """A batch of associative-recall sequences (all the same length).

    Attributes:
        tokens: LongTensor [batch, pos]; ``pos = 2*n_pairs + 3`` (one less without BOS).
        targets: LongTensor [batch]; the value id paired with the query key (the answer at the last position).
        key_positions: LongTensor [batch]; position of the key matching the query.
        value_positions: LongTensor [batch]; position of its value (``key_positions + 1``).
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    key_positions: torch.Tensor
    value_positions: torch.Tensor

    @property
    def query_position(self) -> int:
        """The position whose next-token prediction is the answer (the query key, last position)."""
        return int(self.tokens.shape[1]) - 1

    def to(self, device: str | torch.device) -> RecallBatch:
        return RecallBatch(
            *(t.to(device) for t in (self.tokens, self.targets, self.key_positions, self.value_positions))
        )


def sample_recall_batch(
    batch_size: int,
    rng: np.random.Generator,
    n_pairs: int = 8,
    n_keys: int = RECALL_N_KEYS,
    n_values: int = RECALL_N_VALUES,
    add_bos: bool = True,
) -> RecallBatch:
    """Draw one batch: keys without replacement per sequence, values with replacement, query uniform."""
    if not 1 <= n_pairs <= n_keys:
        raise ValueError(f"need 1 <= n_pairs <= n_keys, got n_pairs={n_pairs}, n_keys={n_keys}")
    sep, bos = n_keys + n_values, n_keys + n_values + 1
    keys = np.argsort(rng.random((batch_size, n_keys)), axis=1)[:, :n_pairs]
    values = n_keys + rng.integers(0, n_values, size=(batch_size, n_pairs))
    q = rng.integers(0, n_pairs, size=batch_size)
    rows = np.arange(batch_size)
    pairs = np.stack([keys, values], axis=-1).reshape(batch_size, 2 * n_pairs)
    parts = [pairs, np.full((batch_size, 1), sep), keys[rows, q][:, None]]
    if add_bos:
        parts.insert(0, np.full((batch_size, 1), bos))
    tokens = np.concatenate(parts, axis=1).astype(np.int64)
    key_pos = int(add_bos) + 2 * q
    return RecallBatch(
        tokens=torch.from_numpy(tokens),
        targets=torch.from_numpy(values[rows, q].astype(np.int64)),
        key_positions=torch.from_numpy(key_pos.astype(np.int64)),
        value_positions=torch.from_numpy((key_pos + 1).astype(np.int64)),
    )


def recall_batches(
    batch_size: int,
    n_pairs: int = 8,
    seed: int = 0,
    n_keys: int = RECALL_N_KEYS,
    n_values: int = RECALL_N_VALUES,
    add_bos: bool = True,
) -> Iterator[RecallBatch]:
    """Endless, seeded stream of ``RecallBatch`` (see ``sample_recall_batch``)."""
    rng = np.random.default_rng(seed)
    while True:
        yield sample_recall_batch(batch_size, rng, n_pairs, n_keys, n_values, add_bos)


def recall_accuracy(pred_tokens: torch.Tensor, batch: RecallBatch) -> float:
    """Fraction of sequences whose prediction at the last position equals the target value.

    ``pred_tokens``: logits [batch, pos, vocab] or [batch, vocab] (argmax taken), or ids [batch, pos] / [batch].
    """
    pred = pred_tokens
    if pred.is_floating_point():
        pred = pred.argmax(dim=-1)
    if pred.ndim == 2:
        pred = pred[:, -1]
    return float((pred == batch.targets.to(pred.device)).float().mean())
