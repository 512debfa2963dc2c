"""Circuit identification: the SAE-code ranking (O'Neill & Bui 2024) against a transcription of the original
``unique_to_positives_and_negatives`` and a hand count, its contract, and the resample-ablation ground truth on a
planted circuit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from interp.data import tokfsm_patching_pairs
from interp.patching import (LogitDiff, SAECodeConfig, circuit_ground_truth, component_labels, precision_recall,
                             sae_code_circuit)
from interp.patching.sae_codes import component_outputs, discretise, unique_code_counts
from interp.tasks.circuits import zero_components


def _original_unique_counts(codes, n_layers, n_heads):
    """Transcription of sae-circuits ``src/node.py: unique_to_positives_and_negatives`` (normalise=False): codes
    [n_examples, n_heads_total], the first half positive; head i is (i // n_heads, i % n_heads)."""
    halfway = codes.shape[0] // 2
    positive_codes = codes[:halfway, :]
    negative_codes = codes[halfway:, :]
    up = np.zeros((n_layers, n_heads))
    un = np.zeros((n_layers, n_heads))
    for i in range(n_layers * n_heads):
        layer, head = i // n_heads, i % n_heads
        positive = set(positive_codes[:, i].tolist())
        negative = set(negative_codes[:, i].tolist())
        up[layer, head] = len(list(positive - negative))
        un[layer, head] = len(list(negative - positive))
    return up, un


def test_unique_code_counts_by_hand():
    # 3 positive and 2 negative prompts, 2 components
    pos = torch.tensor([[1, 5], [2, 5], [1, 6]])
    neg = torch.tensor([[2, 7], [3, 5]])
    up, un = unique_code_counts(pos, neg)
    # component 0: positives {1, 2}, negatives {2, 3} -> {1} unique to positives, {3} to negatives
    # component 1: positives {5, 6}, negatives {7, 5} -> {6}, {7}
    assert up.tolist() == [1.0, 1.0] and un.tolist() == [1.0, 1.0]
    pos = torch.tensor([[4, 0], [5, 0], [6, 0]])
    up, un = unique_code_counts(pos, torch.tensor([[9, 0], [9, 0]]))
    assert up.tolist() == [3.0, 0.0] and un.tolist() == [1.0, 0.0]
    # top-k codes are sets: (1, 2) on a positive and (1, 2) on a negative cancel; (1, 3) stays
    pos = torch.tensor([[[1, 2]], [[1, 3]]])
    neg = torch.tensor([[[1, 2]], [[2, 3]]])
    up, un = unique_code_counts(pos, neg, sets=True)
    assert up.tolist() == [1.0] and un.tolist() == [1.0]
    up, un = unique_code_counts(pos, neg)  # without sets the last axis is a second component axis
    assert up.tolist() == [[0.0, 0.0]] and un.tolist() == [[1.0, 0.0]]


def test_unique_code_counts_equal_the_original_code():
    rng = np.random.default_rng(0)
    n_layers, n_heads = 3, 4
    codes = rng.integers(0, 6, size=(10, n_layers * n_heads))
    up_ref, un_ref = _original_unique_counts(codes, n_layers, n_heads)
    t = torch.as_tensor(codes).view(10, n_layers, n_heads)
    up, un = unique_code_counts(t[:5], t[5:])
    assert np.array_equal(up.numpy(), up_ref) and np.array_equal(un.numpy(), un_ref)


def test_discretise():
    lat = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]])
    assert discretise(lat).tolist() == [1, 0]
    top = discretise(lat, code="topk", k=2)
    assert top.shape == (2, 2) and top[0].tolist() == [1, 3] and top[1, 0].item() == 0
    with pytest.raises(ValueError, match="argmax"):
        discretise(lat, code="median")


@pytest.fixture(scope="module")
def pairs():
    return tokfsm_patching_pairs(6, seed=2)


@pytest.mark.parametrize("name", ["tokfsm-mamba", "tokfsm-transformer"])
def test_ranking_contract_and_determinism(name, pairs):
    model = interp.load(name)
    clean, corrupted, _, _ = pairs
    cfg = SAECodeConfig(d_sae=32, steps=40, seed=3)
    a = sae_code_circuit(model, clean, negatives=corrupted, cfg=cfg)
    b = sae_code_circuit(model, clean, negatives=corrupted, cfg=cfg)
    labels = component_labels(model)
    n_layers, n_comp = len(labels), len(labels[0])
    assert a.labels == labels and a.scores.shape == a.unique_negative.shape == (n_layers, n_comp)
    assert sorted(a.order) == sorted(lab for row in labels for lab in row)
    assert a.codes_positive.shape == (6, n_layers, n_comp) and a.codes_positive.max() < 32
    # the scores are the unique-code counts of the codes the ranking reports, and the order follows them
    up, un = unique_code_counts(a.codes_positive, a.codes_negative)
    assert torch.equal(up, a.scores) and torch.equal(un, a.unique_negative)
    flat = {lab: float(a.scores[i, k]) for i, row in enumerate(labels) for k, lab in enumerate(row)}
    assert [flat[lab] for lab in a.order] == sorted(flat.values(), reverse=True)
    assert a.top(3) == a.order[:3] and a.seconds > 0
    # same seed, same prompts: the same codes and ranking
    assert torch.equal(a.codes_positive, b.codes_positive) and a.order == b.order
    top = sae_code_circuit(model, clean, negatives=corrupted, cfg=SAECodeConfig(d_sae=32, steps=40, code="topk", k=2))
    assert top.codes_positive.shape == (6, n_layers, n_comp, 2)
    assert torch.equal(unique_code_counts(top.codes_positive, top.codes_negative, sets=True)[0], top.scores)
    out = component_outputs(model, clean)
    assert out.shape == (6, n_layers, n_comp, model.cfg.d_model)
    # the component outputs sum to the blocks' mixer / attention outputs at the last position
    _, cache = model.run_with_cache(clean)
    mixer = "hook_mixer_out" if name != "tokfsm-transformer" else "hook_attn_out"
    for layer in range(n_layers):
        ref = cache[f"blocks.{layer}.{mixer}"][:, -1]
        bias = model.blocks[layer].ssm.out_proj.bias if name != "tokfsm-transformer" else model.blocks[layer].attn.b_O
        bias = torch.zeros_like(ref[0]) if bias is None else bias.detach()
        assert (out[:, layer].sum(1) + bias - ref).abs().max().item() <= 1e-4


def test_ground_truth_on_a_planted_circuit():
    """Only the planted heads write to the residual stream (the other heads' out-projection columns are zero):
    the ground truth is exactly the planted set, every other head's effect exactly 0."""
    planted = ("L1H2", "L3H0")
    model = zero_components(interp.load("tokfsm-mamba2"), keep=planted)
    clean, corrupted, answer, wrong = tokfsm_patching_pairs(8, seed=5)
    gt = circuit_ground_truth(model, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong), threshold=0.05)
    assert gt.components == planted
    mask = torch.ones_like(gt.effect, dtype=torch.bool)
    mask[1, 2] = mask[3, 0] = False
    assert gt.effect[mask].abs().max().item() <= 1e-6
    assert gt.effect[1, 2] > 0.05 and gt.effect[3, 0] > 0.05
    assert torch.equal(gt.effect, 1 - gt.sweep.values) and gt.sweep.direction == "noise"
    # the threshold is strict: one above the largest effect leaves nothing
    none = circuit_ground_truth(model, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong),
                                threshold=float(gt.effect.abs().max()))
    assert none.components == ()


def test_precision_recall():
    assert precision_recall(["a", "b", "c"], ["a", "d"]) == (1 / 3, 0.5)
    assert precision_recall([], []) == (1.0, 1.0)
    assert precision_recall(["a"], []) == (0.0, 1.0)
