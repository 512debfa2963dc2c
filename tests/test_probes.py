"""interp.probes: metrics against scikit-learn, the estimators, feature ranking, control tasks, sweeps, and
the acceptance numbers on the embedded TokFSM models (a model whose weights are not installed fails with
the command that installs them)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from interp.data import tokfsm_dataset, tokfsm_labels
from interp.probes import (
    LinearRegressionProbe, LogisticProbe, ProbeRows, SparseProbe, balanced_accuracy, collect_rows, control_labels,
    f1_macro, ngram_types, probe_sweep, rank_features, roc_auc, selectivity, sequence_split,
)
from interp.probes import functional as Fn

from conftest import load_tokfsm

sklearn = pytest.importorskip("sklearn")

TOKFSM_MODELS = ["tokfsm-mamba", "tokfsm-mamba2", "tokfsm-transformer"]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def gaussian_classes(n=2000, d=16, K=5, seed=0, sep=1.5, offset=3.0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(K, d, generator=g) * sep
    y = torch.randint(0, K, (n,), generator=g)
    return means[y] + 2 * torch.randn(n, d, generator=g) + offset, y


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def test_metrics_match_sklearn():
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 500)
    proba = rng.dirichlet(np.ones(6), 500)
    proba[np.arange(500), y] += 0.3
    proba /= proba.sum(1, keepdims=True)
    pred = proba.argmax(1)
    assert roc_auc(y, proba) == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"), abs=1e-12)
    assert f1_macro(y, pred) == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    yb, s = rng.integers(0, 2, 300), rng.normal(size=300)
    s = np.round(s + yb, 1)  # ties
    assert roc_auc(yb, s) == pytest.approx(roc_auc_score(yb, s), abs=1e-12)
    assert roc_auc(torch.as_tensor(yb), torch.as_tensor(np.stack([-s, s], 1))) == pytest.approx(roc_auc_score(yb, s))
    assert selectivity(0.9, 0.3) == pytest.approx(0.6)


# --------------------------------------------------------------------------------------------
# estimators
# --------------------------------------------------------------------------------------------
def test_logistic_probe_matches_sklearn_objective():
    from sklearn.linear_model import LogisticRegression

    X, y = gaussian_classes()
    C, n = 0.5, len(y)
    ours = LogisticProbe(C=C, class_weight=None, standardize=False, max_iter=500, tol=1e-7).fit(X, y)
    ref = LogisticRegression(C=C, max_iter=3000, tol=1e-10).fit(X.numpy(), y.numpy())

    def objective(W, b):  # sklearn's (1/2)||W||^2 + C sum CE, divided by C n
        W, b = torch.as_tensor(W, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        ce = torch.nn.functional.cross_entropy(X.double() @ W.T + b, y)
        return float(ce + W.pow(2).sum() / (2 * C * n))

    assert objective(ours.coef_, ours.intercept_) <= objective(ref.coef_, ref.intercept_) + 1e-6
    assert np.abs(ours.predict_proba(X) - ref.predict_proba(X.numpy())).max() < 3e-2
    assert (ours.predict(X) == ref.predict(X.numpy())).mean() > 0.99


def test_logistic_probe_is_a_sklearn_estimator_with_directions():
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    X, y = gaussian_classes()
    probe = LogisticProbe().fit(X, y, groups=torch.arange(len(y)) // 10)
    assert probe.C_ in probe.Cs and len(probe.cv_scores_) == len(probe.Cs)
    assert probe.score(X, y.numpy()) > 0.9
    m = probe.metrics(X, y)
    assert set(m) == {"accuracy", "balanced_accuracy", "f1", "roc_auc"} and m["roc_auc"] > 0.98
    # de-standardised weights: the logits are x W^T + b on raw activations
    assert np.allclose(probe.decision_function(X), X.numpy() @ probe.coef_.T + probe.intercept_, atol=1e-4)
    v = probe.direction(3)
    assert v.shape == (16,) and torch.allclose(v, torch.as_tensor(probe.coef_[3] - probe.coef_.mean(0)), atol=1e-6)
    assert torch.isclose(probe.direction(3, normalize=True).norm(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="cls="):
        probe.direction()
    with pytest.raises(KeyError, match="not in the training labels"):
        probe.direction(99)
    assert clone(probe).get_params() == probe.get_params()
    scores = cross_val_score(LogisticProbe(C=1.0), X.numpy(), y.numpy(), cv=3)
    assert scores.min() > 0.85
    # labels of any kind; binary probes follow scikit-learn's coef_ [1, d] convention
    names = np.array(["a", "b"])[(y.numpy() < 2).astype(int)]
    binary = LogisticProbe(C=1.0).fit(X.numpy(), names)
    assert binary.coef_.shape == (1, 16) and set(binary.predict(X)) <= {"a", "b"}
    assert torch.allclose(binary.direction(), -binary.direction("a"))
    assert torch.allclose(binary.direction("b"), torch.as_tensor(binary.coef_[0]))


def test_linear_regression_probe_recovers_a_linear_map():
    X, _ = gaussian_classes()
    W = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    Y = X @ W.T + 0.5
    probe = LinearRegressionProbe().fit(X, Y)
    assert probe.score(X.numpy(), Y.numpy()) > 0.999 and probe.alpha_ in probe.alphas
    assert np.abs(probe.coef_ - W.numpy()).max() < 1e-2
    one = LinearRegressionProbe(alpha=1e-3).fit(X, Y[:, 1] + 0.01 * torch.randn(len(X)))
    assert one.coef_.shape == (16,) and one.predict(X).shape == (len(X),)
    assert torch.allclose(one.direction(), W[1], atol=1e-2)
    assert one.metrics(X, Y[:, 1])["r2"] > 0.999


@pytest.mark.parametrize("method", ["mean_diff", "f_stat", "mutual_info", "l1"])
def test_sparse_probe_finds_the_planted_features(method):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3000, 32, generator=g)
    y = ((X[:, 3] + X[:, 7] - X[:, 11]) > 0).long()
    probe = SparseProbe(k=3, method=method).fit(X, y)
    assert sorted(probe.features_.tolist()) == [3, 7, 11]
    assert probe.score(X, y.numpy()) > 0.97
    assert probe.coef_.shape == (1, 32) and np.count_nonzero(probe.coef_) == 3
    # multi-class ranking works too
    yk = (X[:, 5] > 0).long() + 2 * (X[:, 9] > 0).long()
    order, scores = rank_features(X, yk, 4, method)
    assert set(order[:2].tolist()) == {5, 9} and scores.shape == (32,)


def test_control_labels_are_one_random_label_per_type():
    types = torch.randint(0, 7, (1000,), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 50, (1000,), generator=torch.Generator().manual_seed(1))
    c = control_labels(y, types, seed=0)
    for t in range(7):
        assert len(torch.unique(c[types == t])) == 1
    assert set(c.tolist()) <= set(y.tolist())
    assert torch.equal(c, control_labels(y, types, seed=0))
    with pytest.raises(ValueError):
        control_labels(y, types[:10])


def test_ngram_types_and_tuple_types():
    tokens = torch.tensor([[10, 1, 2, 3], [10, 4, 2, 3]])
    t3 = ngram_types(tokens, 3)
    assert t3.shape == (2, 4, 3) and t3.dtype == torch.int64
    assert t3[0, 0].tolist() == [-1, -1, 10] and t3[0, 1].tolist() == [-1, 10, 1] and t3[1, 3].tolist() == [4, 2, 3]
    assert torch.equal(ngram_types(tokens, 1)[..., 0], tokens)
    # tuple types: equal tuples share a label, and a tuple type is the type of its (encoded) integer
    rows = ngram_types(tokens, 2).reshape(-1, 2)  # (2, 3) occurs twice
    y = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(0))
    c = control_labels(y, rows, seed=3)
    assert c[3] == c[7]
    assert torch.equal(c, control_labels(y, (rows[:, 0] + 1) * 11 + rows[:, 1], seed=3))
    with pytest.raises(ValueError):
        ngram_types(tokens, 0)


def _token_rows(features, n_seq=240, L=16, vocab=10, seed=0):
    """Synthetic probe rows: random token sequences, activations ``features(tokens) -> [n_seq, L, d]``."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n_seq, L), generator=g)
    X = features(tokens, g)
    seq, pos = torch.meshgrid(torch.arange(n_seq), torch.arange(L), indexing="ij")
    return tokens, ProbeRows({"h": X.reshape(n_seq * L, -1)}, seq.reshape(-1), pos.reshape(-1), tokens.reshape(-1))


def test_selectivity_closed_forms():
    """A label that is a function of the token, read from a representation of the type: selectivity ~ 0,
    whatever the type (the token, or the trigram ending at it); a representation independent of the type:
    control accuracy at chance; a representation of the token alone against a bigram type: control accuracy
    at the ceiling of predicting the control label from the token."""
    probe = LogisticProbe(C=10.0, class_weight=None)
    emb = torch.randn(10, 32, generator=torch.Generator().manual_seed(1))

    def token_embedding(tokens, g):
        return emb[tokens] + 0.05 * torch.randn(*tokens.shape, 32, generator=g)

    tokens, rows = _token_rows(token_embedding)
    y = tokens % 4  # a deterministic function of the token
    r = probe_sweep(None, tokens, labels=y, collected=rows, probe=probe).rows[0]
    assert r["accuracy"] > 0.99 and abs(r["selectivity"]) < 0.02, r

    # trigram types over a 4-token vocabulary (64 types + those cut by the start), each its own random vector
    tri_emb = torch.randn(5, 5, 5, 80, generator=torch.Generator().manual_seed(2))

    def trigram_embedding(tokens, g):
        t3 = ngram_types(tokens, 3) + 1  # the padding -1 before the start is a value of its own
        return tri_emb[t3[..., 0], t3[..., 1], t3[..., 2]] + 0.05 * torch.randn(*tokens.shape, 80, generator=g)

    tokens, rows = _token_rows(trigram_embedding, vocab=4)
    r = probe_sweep(None, tokens, labels=tokens % 2, collected=rows, probe=probe, control_context=2).rows[0]
    assert r["accuracy"] > 0.99 and abs(r["selectivity"]) < 0.02, r

    # activations independent of the type: the control task is at chance (its majority-label rate)
    def noise(tokens, g):
        return torch.randn(*tokens.shape, 16, generator=g)

    tokens, rows = _token_rows(noise)
    y = torch.randint(0, 3, tokens.shape, generator=torch.Generator().manual_seed(4))
    for context in (0, 1):
        r = probe_sweep(None, tokens, labels=y, collected=rows, probe=probe, control_context=context).rows[0]
        ctrl = control_labels(y.reshape(-1), ngram_types(tokens, context + 1).reshape(-1, context + 1), seed=0)
        chance = float(torch.bincount(ctrl).max()) / len(ctrl)
        assert r["control_accuracy"] < chance + 0.03 and r["accuracy"] < 0.4 + 0.03, (context, r, chance)

    # the token alone against (previous token, token) types: the control is capped by what the token predicts
    tokens, rows = _token_rows(token_embedding)
    y = tokens % 4
    r = probe_sweep(None, tokens, labels=y, collected=rows, probe=probe, control_context=1).rows[0]
    _, test = sequence_split(rows.seq, 0.25, 0)  # probe_sweep's held-out rows
    ctrl = control_labels(y.reshape(-1), ngram_types(tokens, 2).reshape(-1, 2), seed=0)[test]
    tok = rows.tokens[test]
    ceiling = sum(int(torch.bincount(ctrl[tok == t]).max()) for t in range(10)) / len(ctrl)
    assert r["accuracy"] > 0.99 and r["control_accuracy"] <= ceiling + 1e-9 and r["control_accuracy"] > ceiling - 0.03
    assert ceiling < 0.5 and r["selectivity"] > 0.5


def test_kfold_keeps_groups_together():
    groups = torch.arange(100) // 5
    for tr, va in Fn.kfold_indices(100, 4, seed=0, groups=groups):
        assert not set(groups[tr].tolist()) & set(groups[va].tolist())


# --------------------------------------------------------------------------------------------
# rows and sweeps on a real model
# --------------------------------------------------------------------------------------------
def test_rows_from_model_and_from_activation_store_agree(tmp_path):
    from interp.activations import ActivationStore, cache_activations

    model = load_tokfsm("tokfsm-mamba2")
    tokens = tokfsm_dataset(8, seed=3, seq_len=32)
    hooks = ["blocks.1.hook_resid_post", "blocks.1.ssm.hook_u"]
    rows = collect_rows(model, tokens, hook=hooks, batch_size=3)
    assert len(rows) == 8 * 31 and rows.acts[hooks[1]].shape[1] == model.cfg.d_inner
    _, cache = model.run_with_cache(tokens, names_filter=hooks[0])
    assert torch.allclose(rows.acts[hooks[0]], cache[hooks[0]][rows.seq, rows.pos], atol=1e-5)
    cache_activations(model, [tokens[:4], tokens[4:]], hook=hooks, out=tmp_path / "c", progress=False)
    stored = ProbeRows.from_store(ActivationStore(tmp_path / "c"))
    assert torch.equal(stored.seq, rows.seq) and torch.equal(stored.pos, rows.pos)
    assert torch.allclose(stored.acts[hooks[0]], rows.acts[hooks[0]], atol=1e-5)
    labels = tokfsm_labels(tokens)["state"]
    assert torch.equal(stored.gather(labels), rows.gather(labels))


def test_sweep_on_mamba2_with_figure():
    model = load_tokfsm("tokfsm-mamba2")
    tokens = tokfsm_dataset(48, seed=2)
    lab = tokfsm_labels(tokens)
    res = probe_sweep(model, tokens, labels=lab["state"], hook=["hook_embed", "blocks.1.hook_resid_post"],
                      positions={"tens": lab["digit_pos"] == 0, "units": lab["digit_pos"] == 1})
    assert res.hooks == ["hook_embed", "blocks.1.hook_resid_post"] and res.positions == ["tens", "units"]
    best = res.best()
    assert (best["hook"], best["position"]) == ("blocks.1.hook_resid_post", "units") and best["accuracy"] > 0.95
    assert res.get("hook_embed", "units")["accuracy"] < 0.3  # the embedding holds the token only
    assert {"control_accuracy", "selectivity", "roc_auc", "n_test"} <= set(best)
    assert res.matrix("accuracy").shape == (2, 2)
    fig = res.figure()
    assert len(fig.data) == 2
    assert res.probes[("blocks.1.hook_resid_post", "units")].coef_.shape[1] == model.cfg.d_model
    # a regression probe and explicit positions
    reg = probe_sweep(model, tokens, labels=(lab["state"] % 10).float().masked_fill(lab["state"] < 0, float("nan")),
                      hook="blocks.0.hook_resid_post", positions=[5, 6], probe=LinearRegressionProbe(alpha=1.0))
    assert reg.positions == ["5", "6"] and "r2" in reg.rows[0] and "selectivity" not in reg.rows[0]


def test_probe_through_nnsight_matches_hook_api():
    nnsight = pytest.importorskip("nnsight")
    model = load_tokfsm("tokfsm-mamba2")
    tokens = tokfsm_dataset(64, seed=4, seq_len=33)
    lab = tokfsm_labels(tokens)
    hook = "blocks.2.hook_resid_post"
    rows = collect_rows(model, tokens, hook=hook, keep=lab["digit_pos"] == 1)
    probe = LogisticProbe(C=1.0).fit(rows.acts[hook], rows.gather(lab["state"]))
    test = tokfsm_dataset(4, seed=5, seq_len=33)
    wrapped = nnsight.NNsight(model)
    with wrapped.trace(test):
        resid = wrapped.blocks[2].hook_resid_post.output.save()
    units = tokfsm_labels(test)["digit_pos"] == 1
    pred = probe.predict(resid[units])
    assert np.array_equal(pred, probe.predict(collect_rows(model, test, hook=hook, keep=units).acts[hook]))
    assert (pred == tokfsm_labels(test)["state"][units].numpy()).mean() > 0.95


# --------------------------------------------------------------------------------------------
# acceptance on the embedded TokFSM models
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TOKFSM_MODELS)
def test_current_state_probe_reaches_099_at_the_best_layer(name):
    """A 100-class probe of the current FSM state, on the units-digit positions (where the state is fully
    determined by the prefix), held out by sequence; selectivity against the control task whose type is the
    trigram ending at the token (``control_context=2``: with the token alone, 10 types, or the bigram, which
    on a units digit is the state itself, the control task is solved wherever the task is and selectivity
    says nothing; docs/benchmarks.md)."""
    model = load_tokfsm(name)
    tokens = tokfsm_dataset(160, seed=11)
    lab = tokfsm_labels(tokens)
    res = probe_sweep(model, tokens, labels=lab["state"], positions={"units digit": lab["digit_pos"] == 1},
                      control_context=2)
    print(f"\n{name}: current-state probe, units-digit positions (held-out sequences)")
    for r in res.rows:
        print(f"  {r['hook']:28s} acc {r['accuracy']:.4f}  bal {r['balanced_accuracy']:.4f}  "
              f"control {r['control_accuracy']:.4f}  selectivity {r['selectivity']:+.4f}")
    best = res.best()
    assert best["accuracy"] >= 0.99, f"{name}: best layer {best['hook']} reaches only {best['accuracy']:.4f}"
    assert np.isfinite(best["selectivity"])


def test_sweep_over_all_layers_of_tokfsm_mamba_under_a_minute():
    model = load_tokfsm("tokfsm-mamba")
    tokens = tokfsm_dataset(128, seed=12)
    lab = tokfsm_labels(tokens)
    t0 = time.perf_counter()
    res = probe_sweep(model, tokens, labels=lab["state"],
                      positions={"tens digit": lab["digit_pos"] == 0, "units digit": lab["digit_pos"] == 1})
    seconds = time.perf_counter() - t0
    print(f"\ntokfsm-mamba sweep: {len(res.rows)} cells (+ control) in {seconds:.1f} s")
    assert len(res.hooks) == model.cfg.n_layers + 1 and len(res.rows) == 2 * len(res.hooks)
    assert seconds < 60
