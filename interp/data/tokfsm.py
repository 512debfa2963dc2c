"""TokFSM: the finite-state-machine data set of the codebook-features paper.

Specification (docs/design.md §4.1):

* 100 states. The edge table comes from ``rng = np.random.default_rng(42)``; for each state
  ``s = 0..99`` in order, ``rng.choice(100, size=10, replace=False)`` gives its 10 out-edges (that order is
  kept: ``edges[s, j]`` is the j-th out-edge of ``s``). Each out-edge is taken with probability 0.1; the start
  state is uniform.
* A state is written as two base-10 digits (state 8 -> "08"), one token per digit, token id = digit value.
  Id 10 is BOS/EOS/pad, so the vocabulary has 11 ids.
* A sequence is 128 tokens with BOS first: 1 BOS + 64 states * 2 digits = 129 tokens, the last one cut, so the
  final token is the first digit of the 64th state (a "trailing half state").

Token layout of one sequence (``s_i`` the i-th state, ``hi``/``lo`` its tens/units digit)::

    position  0    1       2       3       4      ...  125       126       127
    token     BOS  hi(s0)  lo(s0)  hi(s1)  lo(s1) ...  lo(s61)   hi..lo(s62) hi(s63)

Sampling is numpy (vectorised over sequences); tensors are torch ``LongTensor`` at the API boundary.
Functions that take tokens accept numpy arrays, lists or torch tensors and return the same kind
(torch in -> torch out, anything else -> numpy).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from interp.hooks.tokenizer import BatchEncoding, DigitTokenizer

__all__ = [
    "TOKFSM_VOCAB_SIZE",
    "TOKFSM_BOS",
    "TOKFSM_N_STATES",
    "TOKFSM_N_EDGES",
    "TOKFSM_SEQ_LEN",
    "TOKFSM_EDGE_SEED",
    "TokFSM",
    "tokfsm_labels",
    "tokfsm_batches",
    "tokfsm_dataset",
    "tokfsm_patching_pairs",
    "DigitTokenizer",
    "BatchEncoding",
]

TOKFSM_VOCAB_SIZE = 11
TOKFSM_BOS = 10
TOKFSM_N_STATES = 100
TOKFSM_N_EDGES = 10
TOKFSM_SEQ_LEN = 128
TOKFSM_EDGE_SEED = 42

_N_DIGITS = 10  # content token ids 0..9 are the digits


# ----------------------------------------------------------------------------------------------------------------
# array helpers


def _to_numpy(x: Any) -> np.ndarray:
    """Any array-like (torch tensor on any device, list, numpy) -> numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _like(x: np.ndarray, ref: Any) -> Any:
    """Return ``x`` as a torch tensor if ``ref`` is one (same device), else as numpy."""
    if isinstance(ref, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(x)).to(ref.device)
    return x


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


# ----------------------------------------------------------------------------------------------------------------
# the machine


def _edge_table(seed: int, n_states: int, n_edges: int) -> np.ndarray:
    """[n_states, n_edges] int64; row s = ``rng.choice(n_states, n_edges, replace=False)`` drawn in state order."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n_states, size=n_edges, replace=False) for _ in range(n_states)]).astype(np.int64)


@dataclass(frozen=True, eq=False)
class TokFSM:
    """The TokFSM transition structure.

    Attributes:
        edges: int64 [n_states, n_edges], read-only; ``edges[s, j]`` is the j-th out-edge of state ``s``
            (each taken with probability ``1 / n_edges``). Self-loops are possible.
        adjacency: bool [n_states, n_states], read-only; ``adjacency[a, b]`` is True iff ``a -> b`` is an edge.

    Build the paper's machine with ``TokFSM()`` (same as ``TokFSM.from_seed(42)``).
    """

    edges: np.ndarray = field(default_factory=lambda: _edge_table(TOKFSM_EDGE_SEED, TOKFSM_N_STATES, TOKFSM_N_EDGES))
    adjacency: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        edges = np.asarray(self.edges, dtype=np.int64)
        if edges.ndim != 2:
            raise ValueError(f"edges must be 2-D [n_states, n_edges], got shape {edges.shape}")
        n = edges.shape[0]
        if not 1 <= n <= 100:
            raise ValueError(f"TokFSM writes states as two digits, so n_states must be in 1..100, got {n}")
        if edges.min() < 0 or edges.max() >= n:
            raise ValueError(f"edge targets must lie in 0..{n - 1}")
        adjacency = np.zeros((n, n), dtype=bool)
        adjacency[np.arange(n)[:, None], edges] = True
        object.__setattr__(self, "edges", _frozen(edges))
        object.__setattr__(self, "adjacency", _frozen(adjacency))

    @classmethod
    def from_seed(
        cls, seed: int = TOKFSM_EDGE_SEED, n_states: int = TOKFSM_N_STATES, n_edges: int = TOKFSM_N_EDGES
    ) -> TokFSM:
        """Edge table drawn as in the paper, with another seed or size (``from_seed()`` is the paper's machine)."""
        return cls(_edge_table(seed, n_states, n_edges))

    def __repr__(self) -> str:
        return f"TokFSM(n_states={self.n_states}, n_edges={self.n_edges})"

    @property
    def n_states(self) -> int:
        return int(self.edges.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edges.shape[1])

    # -- sampling --------------------------------------------------------------------------------------------

    def sample_states(self, n_seq: int, n_states: int, rng: np.random.Generator) -> np.ndarray:
        """Sample state paths.

        Args:
            n_seq: number of sequences.
            n_states: number of states per sequence (path length, >= 1).
            rng: numpy generator (consumed: one draw of starts, one of edge choices).

        Returns:
            int64 [n_seq, n_states]; column 0 uniform over states, each next state a uniform out-edge.
        """
        if n_states < 1:
            raise ValueError(f"n_states must be >= 1, got {n_states}")
        states = np.empty((n_seq, n_states), dtype=np.int64)
        states[:, 0] = rng.integers(0, self.n_states, size=n_seq)
        choice = rng.integers(0, self.n_edges, size=(n_seq, n_states - 1))
        for t in range(n_states - 1):
            states[:, t + 1] = self.edges[states[:, t], choice[:, t]]
        return states

    # -- tokens <-> states -----------------------------------------------------------------------------------

    def encode(self, states: Any, add_bos: bool = True) -> Any:
        """States [..., n] -> tokens [..., 2n (+1 with BOS)]: BOS, then tens digit, units digit per state.

        State 8 -> [0, 8]. Returns int64, torch if ``states`` is a tensor, else numpy.
        """
        s = _to_numpy(states).astype(np.int64)
        if s.size and (s.min() < 0 or s.max() >= self.n_states):
            raise ValueError(f"states must lie in 0..{self.n_states - 1}")
        digits = np.stack([s // 10, s % 10], axis=-1).reshape(*s.shape[:-1], 2 * s.shape[-1])
        if add_bos:
            bos = np.full((*s.shape[:-1], 1), TOKFSM_BOS, dtype=np.int64)
            digits = np.concatenate([bos, digits], axis=-1)
        return _like(digits, states)

    def decode(self, tokens: Any) -> Any:
        """Tokens [..., pos] -> states [..., n_pairs].

        A leading BOS is stripped (it must then lead every row), an odd trailing digit (the cut half state)
        is ignored. A pair holding a non-digit token (e.g. BOS generated mid-sequence) decodes to -1.
        """
        t = _to_numpy(tokens).astype(np.int64)
        t = _strip_bos(t)
        n_pairs = t.shape[-1] // 2
        pairs = t[..., : 2 * n_pairs].reshape(*t.shape[:-1], n_pairs, 2)
        ok = ((pairs >= 0) & (pairs < _N_DIGITS)).all(axis=-1)
        states = np.where(ok, pairs[..., 0] * 10 + pairs[..., 1], -1)
        states = np.where(states < self.n_states, states, -1)
        return _like(states, tokens)

    # -- edges -----------------------------------------------------------------------------------------------

    def is_valid_transition(self, a: Any, b: Any) -> Any:
        """True where ``a -> b`` is an edge. Scalars give a bool; arrays broadcast to a bool array.

        States outside ``0..n_states-1`` (e.g. -1 for "undecodable") are never valid.
        """
        a_, b_ = np.asarray(_to_numpy(a)), np.asarray(_to_numpy(b))
        n = self.n_states
        inside = (a_ >= 0) & (a_ < n) & (b_ >= 0) & (b_ < n)
        valid = inside & self.adjacency[np.clip(a_, 0, n - 1), np.clip(b_, 0, n - 1)]
        if valid.ndim == 0:
            return bool(valid)
        return _like(valid, a if isinstance(a, torch.Tensor) else b)

    def valid_next_states(self, s: Any) -> np.ndarray:
        """Out-edges of state ``s`` in edge-table order: int64 [n_edges] (or [..., n_edges] for an array)."""
        s_ = np.asarray(_to_numpy(s))
        if s_.size and (s_.min() < 0 or s_.max() >= self.n_states):
            raise ValueError(f"states must lie in 0..{self.n_states - 1}")
        return self.edges[s_].copy()

    def transition_accuracy(self, token_sequences: Any) -> float:
        """Fraction of consecutive state pairs that are valid edges, pooled over all sequences.

        Args:
            token_sequences: tokens [batch, pos] (tensor/array) or a list of 1-D sequences of any lengths,
                each optionally starting with BOS. A trailing half state is ignored; a sequence with fewer than
                two whole states contributes nothing; a pair involving an undecodable state (a non-digit token
                inside a state) counts as invalid.

        Returns:
            n_valid_pairs / n_pairs, or ``nan`` when there is no pair at all.
        """
        if isinstance(token_sequences, (torch.Tensor, np.ndarray)) and np.ndim(token_sequences) >= 1:
            seqs = [_to_numpy(token_sequences)]
            if seqs[0].ndim == 1:
                seqs = [seqs[0][None]]
        else:
            seqs = [_to_numpy(s).reshape(1, -1) for s in token_sequences]
        n_valid, n_total = 0, 0
        for seq in seqs:
            states = self.decode(seq)
            if states.shape[-1] < 2:
                continue
            valid = self.is_valid_transition(states[..., :-1], states[..., 1:])
            n_valid += int(np.count_nonzero(valid))
            n_total += int(valid.size)
        return n_valid / n_total if n_total else float("nan")


def _strip_bos(t: np.ndarray) -> np.ndarray:
    """Drop a leading BOS column from tokens [..., pos]; raise if only some rows start with BOS."""
    if t.shape[-1] == 0:
        return t
    first = t[..., 0] == TOKFSM_BOS
    if np.all(first):
        return t[..., 1:]
    if np.any(first):
        raise ValueError("some rows start with BOS and some do not; decode them separately")
    return t


# ----------------------------------------------------------------------------------------------------------------
# per-token labels


def tokfsm_labels(tokens: Any, fsm: TokFSM | None = None) -> dict[str, Any]:
    """Per-token labels for probes and codebooks, aligned with ``tokens`` [batch, pos] (or [pos]).

    Convention (per row; a row may or may not start with BOS, decided row by row):

    * ``state`` int64 [batch, pos]: the FSM state the current token is a digit of, so both digit tokens of
      a state carry the same label (= ``fsm.decode``). -1 on BOS, and -1 where the state cannot be read from
      the tokens: the trailing half state of a cut sequence (its units digit is missing) or a pair holding a
      non-digit token.
    * ``digit_pos`` int64 [batch, pos]: 0 on the tens digit, 1 on the units digit, -1 on BOS.
    * ``prev_state`` int64 [batch, pos]: the state before the current one (-1 on BOS, on the first state,
      or when that state is undecodable).
    * ``valid_next`` bool [batch, pos, n_states]: ``valid_next[b, p, s]`` is True iff ``s`` is an out-edge of
      ``state[b, p]``; all False where ``state`` is -1 (BOS included).

    Note that the label is the state the token *belongs to*: at the tens-digit position the model has not seen
    the units digit yet, so the state there is only partly determined by the prefix.

    Returns a dict of torch tensors if ``tokens`` is a tensor, else of numpy arrays.
    """
    fsm = fsm if fsm is not None else TokFSM()
    t = _to_numpy(tokens).astype(np.int64)
    squeeze = t.ndim == 1
    if squeeze:
        t = t[None]
    if t.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos] or [pos], got shape {t.shape}")
    n_pos = t.shape[1]
    offset = (t[:, :1] == TOKFSM_BOS).astype(np.int64) if n_pos else np.zeros((t.shape[0], 1), np.int64)
    k = np.arange(n_pos)[None, :] - offset  # index among digit tokens; -1 on BOS
    is_bos = k < 0
    digit_pos = np.where(is_bos, -1, k % 2)
    first = offset + 2 * (np.maximum(k, 0) // 2)  # position of the tens digit of the current state
    second = first + 1
    has_both = ~is_bos & (second < n_pos)
    hi = np.take_along_axis(t, np.clip(first, 0, max(n_pos - 1, 0)), axis=1)
    lo = np.take_along_axis(t, np.clip(second, 0, max(n_pos - 1, 0)), axis=1)
    digits_ok = (hi >= 0) & (hi < _N_DIGITS) & (lo >= 0) & (lo < _N_DIGITS)
    state = np.where(has_both & digits_ok, hi * 10 + lo, -1)
    state = np.where(state < fsm.n_states, state, -1)
    # the previous state's units digit sits just before the current tens digit
    has_prev = ~is_bos & (k >= 2)
    prev = np.take_along_axis(state, np.clip(first - 1, 0, max(n_pos - 1, 0)), axis=1)
    prev_state = np.where(has_prev, prev, -1)
    valid_next = fsm.adjacency[np.maximum(state, 0)] & (state >= 0)[..., None]
    out = {"state": state, "digit_pos": digit_pos, "prev_state": prev_state, "valid_next": valid_next}
    if squeeze:
        out = {name: a[0] for name, a in out.items()}
    return {name: _like(a, tokens) for name, a in out.items()}


# ----------------------------------------------------------------------------------------------------------------
# data generators


def _sample_tokens(fsm: TokFSM, n_seq: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [n_seq, seq_len]: BOS + digits of ceil((seq_len-1)/2) states, cut to ``seq_len``."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    n_states = max(1, -(-(seq_len - 1) // 2))
    return fsm.encode(fsm.sample_states(n_seq, n_states, rng))[:, :seq_len]


def tokfsm_batches(
    batch_size: int, seq_len: int = TOKFSM_SEQ_LEN, seed: int = 0, fsm: TokFSM | None = None
) -> Iterator[torch.Tensor]:
    """Endless stream of TokFSM token batches: LongTensor [batch_size, seq_len], BOS first.

    ``seed`` seeds the path sampling only (the edge table is fixed by ``fsm``, the paper's machine by
    default), so the stream is reproducible. The first batch equals ``tokfsm_dataset(batch_size, seed)``.
    """
    fsm = fsm if fsm is not None else TokFSM()
    rng = np.random.default_rng(seed)
    while True:
        yield torch.from_numpy(_sample_tokens(fsm, batch_size, seq_len, rng))


def tokfsm_dataset(
    n_seq: int, seed: int = 0, seq_len: int = TOKFSM_SEQ_LEN, fsm: TokFSM | None = None
) -> torch.Tensor:
    """A fixed TokFSM data set: LongTensor [n_seq, seq_len] (the first batch of ``tokfsm_batches``)."""
    fsm = fsm if fsm is not None else TokFSM()
    return torch.from_numpy(_sample_tokens(fsm, n_seq, seq_len, np.random.default_rng(seed)))


def tokfsm_patching_pairs(n: int, n_states: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]:
    """A patching task with a known answer: a TokFSM walk of ``n_states`` states, then the tens digit of the next
    state; the clean walk's last state has exactly one out-edge with that tens digit (the answer is determined), the
    corrupted walk swaps the last state for another out-edge of the one before, whose only out-edge with that tens
    digit has another units digit (the wrong answer).

    Returns ``n`` (clean, corrupted, answer, wrong): prompts LongTensor [n, 2 + 2 n_states] (BOS, n_states whole states,
    the tens digit of the next one), answers [n] (the clean units digit) and wrong answers [n] (the corrupted one).
    The prompts differ only in the last whole state (two tokens)."""
    fsm = TokFSM()
    rng = np.random.default_rng(seed)
    edges = fsm.edges

    def only_edge(s: int, tens: int) -> int | None:
        hits = [int(t) for t in edges[s] if t // 10 == tens]
        return hits[0] if len(set(hits)) == 1 else None

    clean, corr, ans, wrong = [], [], [], []
    while len(clean) < n:
        walk = fsm.sample_states(1, n_states + 1, rng)[0]
        prev, last, nxt = int(walk[-3]), int(walk[-2]), int(walk[-1])
        tens = nxt // 10
        if only_edge(last, tens) != nxt:
            continue
        alts = [int(s) for s in rng.permutation(edges[prev]) if int(s) != last]
        alts = [s for s in alts if (o := only_edge(s, tens)) is not None and o % 10 != nxt % 10]
        if not alts:
            continue
        bad = walk.copy()
        bad[-2] = alts[0]
        for w, out in ((walk, clean), (bad, corr)):
            out.append(np.append(fsm.encode(w[:-1]), tens))
        ans.append(nxt % 10)
        wrong.append(only_edge(alts[0], tens) % 10)
    as_long = lambda x: torch.as_tensor(np.stack(x) if isinstance(x[0], np.ndarray) else np.array(x), dtype=torch.long)
    return as_long(clean), as_long(corr), as_long(ans), as_long(wrong)
