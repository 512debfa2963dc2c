"""interp.metrics: closed-form checks of the shared metrics (docs/design.md §3.9, §5.3, §5.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interp import metrics as M


# --------------------------------------------------------------------------------------------
# masked mean
# --------------------------------------------------------------------------------------------
def test_masked_mean():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), float("inf")]])
    m = torch.tensor([[True, False, True], [True, False, False]])
    assert float(M.masked_mean(v, m)) == pytest.approx((1 + 3 + 4) / 3)  # NaN / inf outside the mask never leak
    assert float(M.masked_mean(v, m.long())) == pytest.approx(8 / 3)  # 0/1 masks too
    assert float(M.masked_mean(v[:1])) == pytest.approx(2.0)
    assert float(M.masked_mean(v, torch.zeros_like(m))) == 0.0  # nothing selected: 0, not NaN
    with pytest.raises(ValueError, match="shape"):
        M.masked_mean(v, m[:, :2])


# --------------------------------------------------------------------------------------------
# next-token cross-entropy
# --------------------------------------------------------------------------------------------
def test_cross_entropy_of_uniform_logits_is_log_vocab():
    V = 11
    tokens = torch.randint(0, V, (3, 7))
    logits = torch.zeros(3, 7, V, dtype=torch.float64)
    nll = M.next_token_nll(logits, tokens)
    assert nll.shape == (3, 6)
    assert torch.allclose(nll, torch.full((3, 6), math.log(V), dtype=torch.float64))
    assert float(M.next_token_cross_entropy(logits, tokens)) == pytest.approx(math.log(V), abs=1e-12)


def test_cross_entropy_hand_computed_and_masked():
    # one sequence, vocab 2: position 0 predicts token 1 with p = e / (1 + e); position 1 predicts token 0 with
    # p = 1/2; position 2 predicts nothing
    logits = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [5.0, -5.0]]], dtype=torch.float64)
    tokens = torch.tensor([[0, 1, 0]])
    nll0, nll1 = -math.log(math.e / (1 + math.e)), math.log(2)
    assert M.next_token_nll(logits, tokens)[0].tolist() == pytest.approx([nll0, nll1])
    assert float(M.next_token_cross_entropy(logits, tokens)) == pytest.approx((nll0 + nll1) / 2)
    # the mask is over predictions [b, L-1]: keep only the first one
    mask = torch.tensor([[True, False]])
    assert float(M.next_token_cross_entropy(logits, tokens, mask)) == pytest.approx(nll0)
    # equals torch's cross-entropy
    ref = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:])
    assert float(M.next_token_cross_entropy(logits, tokens)) == pytest.approx(float(ref), abs=1e-12)


def test_cross_entropy_is_differentiable_and_checks_shapes():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    loss = M.next_token_cross_entropy(logits, torch.randint(0, 7, (2, 5)))
    loss.backward()
    assert logits.grad is not None and logits.grad[:, -1].abs().sum() == 0  # the last position predicts nothing
    with pytest.raises(ValueError, match=r"logits \[b, L, V\]"):
        M.next_token_nll(torch.zeros(5, 7), torch.zeros(5, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# KL divergence
# --------------------------------------------------------------------------------------------
def test_kl_of_identical_distributions_is_zero():
    logits = torch.randn(4, 6, 13, dtype=torch.float64)
    kl = M.kl_divergence(logits, logits)
    assert kl.shape == (4, 6)
    assert float(kl.abs().max()) < 1e-12
    assert float(M.kl_divergence(logits, logits + 3.0).abs().max()) < 1e-12  # logits are shift invariant


def test_kl_hand_computed():
    p, q = torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.25, 0.75], dtype=torch.float64)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(M.kl_divergence(p.log(), q.log())) == pytest.approx(expected, abs=1e-15)
    # a zero-probability token of p adds 0 (0 · log 0 = 0), not NaN
    p0, q0 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert float(M.kl_divergence(p0.log(), q0.log())) == pytest.approx(math.log(2), abs=1e-15)
    # a token p emits but q never does: infinite
    assert math.isinf(float(M.kl_divergence(q0.log(), p0.log())))
    # against torch's kl_div, and reduced over a mask
    a, b = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    ref = torch.nn.functional.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(M.kl_divergence(a, b), ref, atol=1e-12)
    mask = torch.tensor([True, False, True])
    assert float(M.masked_mean(M.kl_divergence(a, b), mask)) == pytest.approx(float(ref[mask].mean()), abs=1e-12)


# --------------------------------------------------------------------------------------------
# ROC-AUC and average precision
# --------------------------------------------------------------------------------------------
def test_roc_auc_closed_forms():
    y = [0, 0, 1, 1]
    assert M.roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0  # perfect ranking
    assert M.roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0  # inverted
    assert M.roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied
    assert M.roc_auc(y, [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)  # one tied pair of 4 counts 1/2
    assert M.roc_auc(torch.tensor([True, False]), torch.tensor([2.0, 1.0])) == 1.0  # tensors, bool labels
    with pytest.raises(ValueError, match="both positive and negative"):
        M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="differ in shape"):
        M.roc_auc([0, 1], [0.1, 0.2, 0.3])


def test_average_precision_closed_forms():
    assert M.average_precision([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    # ranking: neg, pos, neg, pos -> precision 1/2 at recall 1/2, 2/4 at recall 1
    assert M.average_precision([0, 1, 0, 1], [0.9, 0.8, 0.7, 0.6]) == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)
    # all tied: one threshold, AP = the positive rate
    assert M.average_precision([0, 1, 0, 0], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="positive"):
        M.average_precision([0, 0], [0.1, 0.2])


def test_roc_auc_and_average_precision_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(25):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        s = np.round(rng.normal(size=n), 1)  # rounding makes ties
        assert M.roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
        assert M.average_precision(y, s) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)


# --------------------------------------------------------------------------------------------
# explained variance
# --------------------------------------------------------------------------------------------
def test_explained_variance_closed_forms():
    x = torch.randn(50, 8)
    assert M.explained_variance(x, x) == 1.0
    assert M.explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-12)
    assert M.explained_variance(x, torch.zeros_like(x) + x.mean(0) - (x - x.mean(0))) == pytest.approx(-3.0)
    assert math.isnan(M.explained_variance(torch.ones(4, 3), torch.zeros(4, 3)))  # no variance: undefined
    # hand-computed: x = [0, 2] (mean 1, Σ‖x - x̄‖² = 2), x̂ = [0, 1] (Σ‖x - x̂‖² = 1) -> 1 - 1/2
    assert M.explained_variance(torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0], [1.0]])) == 0.5


def test_explained_variance_mask_stream_and_sums_agree():
    x, y = torch.randn(4, 6, 5), torch.randn(4, 6, 5)
    mask = torch.rand(4, 6) > 0.3
    batch = M.explained_variance(x, y, mask)
    assert batch == pytest.approx(M.explained_variance(x[mask], y[mask]), rel=1e-12)
    stream = M.ExplainedVariance()
    for i in range(4):
        stream.update(x[i], y[i], mask[i])
    assert stream.compute() == pytest.approx(batch, rel=1e-9)
    a, b = x[mask].double(), y[mask].double()
    from_sums = M.explained_variance_from_sums(float((a - b).pow(2).sum()), float(a.pow(2).sum()), a.sum(0), len(a))
    assert from_sums == pytest.approx(batch, rel=1e-9)
    assert math.isnan(M.ExplainedVariance().compute()) and math.isnan(M.explained_variance_from_sums(0, 0, [0.0], 0))


def test_metrics_is_a_base_module():
    """interp.metrics imports only torch, numpy and the standard library (docs/design.md layering)."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(M.__file__).read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert roots <= {"__future__", "math", "typing", "numpy", "torch"}, roots
