"""Tests for the built-in data sets (interp.data): TokFSM, copying, associative recall, DigitTokenizer."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from interp.data import (
    COPY_BOS,
    COPY_PAD,
    COPY_SEP,
    COPY_VOCAB_SIZE,
    RECALL_BOS,
    RECALL_N_KEYS,
    RECALL_N_VALUES,
    RECALL_SEP,
    TOKFSM_BOS,
    TOKFSM_N_STATES,
    TOKFSM_SEQ_LEN,
    TOKFSM_VOCAB_SIZE,
    CopyBatch,
    DigitTokenizer,
    TokFSM,
    copy_accuracy,
    copy_batches,
    copy_tokenizer,
    recall_accuracy,
    recall_batches,
    tokfsm_batches,
    tokfsm_dataset,
    tokfsm_labels,
)


@pytest.fixture(scope="module")
def fsm() -> TokFSM:
    return TokFSM()


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return tokfsm_dataset(2000, seed=0)


# ---------------------------------------------------------------------------------------------------------- TokFSM


def test_constants():
    assert (TOKFSM_VOCAB_SIZE, TOKFSM_BOS, TOKFSM_N_STATES, TOKFSM_SEQ_LEN) == (11, 10, 100, 128)


def test_edge_table_matches_fresh_recomputation(fsm):
    rng = np.random.default_rng(42)
    expected = np.stack([rng.choice(100, size=10, replace=False) for _ in range(100)])
    assert fsm.edges.shape == (100, 10)
    np.testing.assert_array_equal(fsm.edges[:5], expected[:5])
    np.testing.assert_array_equal(fsm.edges, expected)
    assert TokFSM.from_seed(42).edges.tolist() == fsm.edges.tolist()
    assert not fsm.edges.flags.writeable
    for s in (0, 17, 99):
        assert fsm.valid_next_states(s).tolist() == expected[s].tolist()
        assert all(fsm.is_valid_transition(s, int(b)) for b in expected[s])
        others = sorted(set(range(100)) - set(expected[s].tolist()))
        assert not any(fsm.is_valid_transition(s, b) for b in others)
    assert fsm.is_valid_transition(-1, 3) is False


def test_encode_state_8_and_round_trip(fsm):
    assert fsm.encode(np.array([8]), add_bos=False).tolist() == [0, 8]
    assert fsm.encode(np.array([8])).tolist() == [TOKFSM_BOS, 0, 8]
    states = np.random.default_rng(0).integers(0, 100, size=(4, 7))
    tokens = fsm.encode(states)
    assert tokens.shape == (4, 15)
    np.testing.assert_array_equal(fsm.decode(tokens), states)
    np.testing.assert_array_equal(fsm.decode(tokens[:, 1:]), states)  # without BOS
    np.testing.assert_array_equal(fsm.decode(tokens[:, :-1]), states[:, :-1])  # odd trailing digit ignored
    t = fsm.encode(torch.from_numpy(states))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.long
    assert torch.equal(fsm.decode(t), torch.from_numpy(states))


def test_sequences_length_bos_and_vocab(data):
    assert data.shape == (2000, 128) and data.dtype == torch.long
    assert (data[:, 0] == TOKFSM_BOS).all()
    assert (data[:, 1:] < 10).all() and (data >= 0).all()


def test_generated_data_is_all_valid_and_corruption_is_detected(fsm, data):
    assert fsm.transition_accuracy(data) == 1.0
    states = fsm.decode(data)
    assert states.shape == (2000, 63)  # 127 digit tokens = 63 whole states + a half state
    corrupt = data[:10].clone()
    s1 = int(fsm.decode(corrupt[0])[1])
    bad = next(b for b in range(100) if not fsm.is_valid_transition(s1, b))
    corrupt[0, 5:7] = torch.tensor([bad // 10, bad % 10])  # the third state of sequence 0
    acc = fsm.transition_accuracy(corrupt)
    assert acc < 1.0
    n_pairs = 10 * 62
    assert acc >= (n_pairs - 2) / n_pairs  # at most the two pairs touching the changed state break
    # lists of ragged sequences; a sequence without a pair contributes nothing; BOS inside a state is invalid
    assert fsm.transition_accuracy([data[0], data[1, :40], torch.tensor([TOKFSM_BOS, 1, 2])]) == 1.0
    assert fsm.transition_accuracy([torch.tensor([TOKFSM_BOS, 1, 2, TOKFSM_BOS, 3, 4])]) == 0.0
    assert np.isnan(fsm.transition_accuracy([torch.tensor([TOKFSM_BOS, 1])]))


def test_out_edges_and_starts_are_uniform(fsm):
    rng = np.random.default_rng(123)
    states = fsm.sample_states(4000, 30, rng)
    a, b = states[:, :-1].ravel(), states[:, 1:].ravel()
    assert fsm.is_valid_transition(a, b).all()
    # index of the taken edge in the table row; edges within a row are distinct
    j = np.argmax(fsm.edges[a] == b[:, None], axis=1)
    counts = np.zeros((100, 10))
    np.add.at(counts, (a, j), 1)
    per_state = counts.sum(axis=1, keepdims=True)  # visits differ: the stationary law is not uniform
    assert per_state.min() > 100
    z = (counts - 0.1 * per_state) / np.sqrt(0.09 * per_state)  # binomial z-score of each edge count
    assert np.abs(z).max() < 5.0
    assert np.abs(counts / per_state - 0.1).max() < 0.1
    pooled = np.bincount(j, minlength=10) / j.size
    assert np.abs(pooled - 0.1).max() < 0.005
    starts = np.bincount(fsm.sample_states(20000, 1, rng)[:, 0], minlength=100) / 20000
    assert np.abs(starts - 0.01).max() < 0.006


def test_labels_align_with_decode(fsm, data):
    tokens = data[:50]
    lab = tokfsm_labels(tokens, fsm)
    assert set(lab) == {"state", "digit_pos", "prev_state", "valid_next"}
    assert lab["state"].shape == tokens.shape and lab["valid_next"].shape == (*tokens.shape, 100)
    assert lab["valid_next"].dtype == torch.bool
    states = fsm.decode(tokens)  # [50, 63]
    assert (lab["state"][:, 0] == -1).all() and (lab["digit_pos"][:, 0] == -1).all()
    assert (lab["prev_state"][:, 0] == -1).all() and not lab["valid_next"][:, 0].any()
    assert torch.equal(lab["state"][:, 1:127:2], states)  # tens digits
    assert torch.equal(lab["state"][:, 2:128:2], states)  # units digits
    assert (lab["digit_pos"][:, 1::2] == 0).all() and (lab["digit_pos"][:, 2::2] == 1).all()
    assert (lab["state"][:, 127] == -1).all()  # trailing half state cannot be read
    assert (lab["prev_state"][:, 1:3] == -1).all()
    assert torch.equal(lab["prev_state"][:, 3:127:2], states[:, :-1])
    assert torch.equal(lab["prev_state"][:, 4:128:2], states[:, :-1])
    vn = lab["valid_next"][0, 5]
    assert sorted(torch.nonzero(vn).ravel().tolist()) == sorted(fsm.valid_next_states(int(states[0, 2])).tolist())
    # numpy in -> numpy out; 1-D input; no BOS
    lab_np = tokfsm_labels(tokens[0, 1:].numpy(), fsm)
    assert isinstance(lab_np["state"], np.ndarray)
    np.testing.assert_array_equal(lab_np["state"][:126], lab["state"][0, 1:127].numpy())
    assert lab_np["digit_pos"][0] == 0


def test_generators_reproducible_and_seeded(fsm):
    a, b = tokfsm_batches(8, seed=3), tokfsm_batches(8, seed=3)
    a1, a2 = next(a), next(a)
    assert torch.equal(a1, next(b)) and torch.equal(a2, next(b))
    assert not torch.equal(a1, a2)
    assert not torch.equal(a1, next(tokfsm_batches(8, seed=4)))
    assert torch.equal(a1, tokfsm_dataset(8, seed=3))
    assert torch.equal(tokfsm_dataset(8, seed=3), tokfsm_dataset(8, seed=3))
    short = next(tokfsm_batches(4, seq_len=10, seed=0))
    assert short.shape == (4, 10) and fsm.transition_accuracy(short) == 1.0


def test_sampling_is_fast():
    t0 = time.perf_counter()
    d = tokfsm_dataset(10_000, seed=1)
    assert d.shape == (10_000, 128)
    assert time.perf_counter() - t0 < 2.0  # ~0.1 s; loose bound for a shared machine


# ------------------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_hf_interface(tmp_path):
    tok = DigitTokenizer()
    assert (tok.vocab_size, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (11, 10, 10, 10)
    assert tok.encode("<bos>08 12") == [10, 0, 8, 1, 2]
    assert tok.decode([10, 0, 8, 1, 2]) == "<bos>0812"
    assert tok.decode(torch.tensor([10, 0, 8])) == "<bos>08"
    assert tok.encode(tok.decode([10, 3, 4, 5])) == [10, 3, 4, 5]
    assert tok.convert_ids_to_tokens(torch.tensor([10, 7])) == ["<bos>", "7"]
    ids = tok("<bos>0812", return_tensors="pt")["input_ids"]
    assert ids.dtype == torch.long and ids.tolist() == [[10, 0, 8, 1, 2]]
    enc = tok(["<bos>08", "<bos>0812"], return_tensors="pt", padding=True)
    assert enc.input_ids.tolist() == [[10, 0, 8, 10, 10], [10, 0, 8, 1, 2]]
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    with pytest.raises(ValueError):
        tok(["08", "0812"], return_tensors="pt")
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "digit_tokenizer.json").exists()
    again = DigitTokenizer.from_pretrained(tmp_path)
    assert again.get_vocab() == tok.get_vocab() and again.encode("<bos>99") == [10, 9, 9]


def test_tokenizer_error_names_bad_character():
    tok = DigitTokenizer()
    with pytest.raises(ValueError) as err:
        tok.encode("<bos>0x1")
    msg = str(err.value)
    assert "'x'" in msg and "'0'..'9'" in msg and "<bos>" in msg
    with pytest.raises(ValueError):
        tok.encode("<eos>12")


def test_copy_tokenizer_vocab():
    tok = copy_tokenizer()
    assert tok.vocab_size == COPY_VOCAB_SIZE
    assert (tok.bos_token_id, tok.pad_token_id, tok.convert_tokens_to_ids("<sep>")) == (COPY_BOS, COPY_PAD, COPY_SEP)
    assert tok.encode("<bos>0af<sep>0af") == [COPY_BOS, 0, 10, 15, COPY_SEP, 0, 10, 15]


# --------------------------------------------------------------------------------------------------------- copying


def test_copy_batch_structure():
    batch = next(copy_batches(64, n_range=(16, 32), seed=0))
    assert isinstance(batch, CopyBatch)
    n = batch.lengths
    assert n.min() >= 16 and n.max() <= 32
    assert batch.tokens.shape == (64, int(2 * n.max() + 2))
    for b in range(64):
        k = int(n[b])
        row = batch.tokens[b]
        assert row[0] == COPY_BOS and row[k + 1] == COPY_SEP
        assert torch.equal(row[1 : k + 1], row[k + 2 : 2 * k + 2])  # second half equals first half
        assert (row[1 : k + 1] < 16).all()
        assert (row[2 * k + 2 :] == COPY_PAD).all()
    assert int(batch.loss_mask.sum()) == int(n.sum())
    p = torch.nonzero(batch.loss_mask)
    src = batch.source_positions[p[:, 0], p[:, 1]]
    assert (src >= 1).all() and (src <= n[p[:, 0]]).all()
    assert torch.equal(batch.tokens[p[:, 0], src], batch.tokens[p[:, 0], p[:, 1] + 1])
    assert (batch.source_positions[~batch.loss_mask] == -1).all()
    assert torch.equal(batch.attention_mask.sum(1), 2 * n + 2)


def test_copy_fixed_length_accuracy_and_seeds():
    batch = next(copy_batches(4, n_range=5, seed=1))
    assert (batch.lengths == 5).all() and batch.tokens.shape == (4, 12)
    perfect = torch.roll(batch.tokens, -1, dims=1)  # prediction at p = token p+1
    assert copy_accuracy(perfect, batch) == 1.0
    logits = torch.nn.functional.one_hot(perfect, COPY_VOCAB_SIZE).float()
    assert copy_accuracy(logits, batch) == 1.0
    assert copy_accuracy(torch.full_like(batch.tokens, COPY_PAD), batch) == 0.0
    a, b = copy_batches(8, seed=2), copy_batches(8, seed=2)
    assert torch.equal(next(a).tokens, next(b).tokens)
    assert not torch.equal(next(copy_batches(8, seed=2)).tokens, next(copy_batches(8, seed=3)).tokens)


# ---------------------------------------------------------------------------------------------------------- recall


def test_recall_batch_structure_and_seeds():
    batch = next(recall_batches(32, n_pairs=6, seed=0))
    t = batch.tokens
    assert t.shape == (32, 2 * 6 + 3)
    assert (t[:, 0] == RECALL_BOS).all() and (t[:, -2] == RECALL_SEP).all()
    keys, values = t[:, 1:13:2], t[:, 2:13:2]
    assert (keys < RECALL_N_KEYS).all()
    assert ((values >= RECALL_N_KEYS) & (values < RECALL_N_KEYS + RECALL_N_VALUES)).all()
    assert all(len(set(row.tolist())) == 6 for row in keys)  # distinct keys per sequence
    rows = torch.arange(32)
    assert torch.equal(t[rows, batch.key_positions], t[:, -1])  # matching key equals the query
    assert torch.equal(batch.value_positions, batch.key_positions + 1)
    assert torch.equal(t[rows, batch.value_positions], batch.targets)  # target = value after the queried key
    assert recall_accuracy(batch.targets, batch) == 1.0
    a, b = recall_batches(8, seed=5), recall_batches(8, seed=5)
    assert torch.equal(next(a).tokens, next(b).tokens)
    assert not torch.equal(next(recall_batches(8, seed=5)).tokens, next(recall_batches(8, seed=6)).tokens)


def test_prompt_texts_tokenize_as_their_task():
    from interp.data.copying import COPY_SEP, copy_prompt, copy_tokenizer
    from interp.data.tokfsm import TokFSM
    from interp.tasks.tokfsm import tokfsm_prompt_text

    text = tokfsm_prompt_text(5, seed=2)
    states = [int(text[5 + 2 * i: 7 + 2 * i]) for i in range(5)]
    fsm = TokFSM()
    assert text.startswith("<bos>") and len(text) == 5 + 10
    assert all(bool(fsm.is_valid_transition(a, b)) for a, b in zip(states, states[1:]))
    ids = copy_tokenizer().encode(copy_prompt(6, seed=1))
    assert len(ids) == 2 * 6 + 2 and ids[7] == COPY_SEP and ids[1:7] == ids[8:]
