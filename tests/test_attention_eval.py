"""Method registry rows (interp.attention.methods), benchmarks (interp.attention.benchmarks), perturbation curves
(interp.attention.perturbation), the CLI (interp.attention.cli) and figure builders (interp.attention.figures).

Metrics against scikit-learn, closed forms, perturbation curves (batched = one by one, k = 0 is the
clean logit, ΔA sign on a model whose relevances are known), the copying benchmark end to end on
tiny random models (an oracle method scores 1), the CLI, and the plotly builders."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import interp
from conftest import make_hf_ssm
from interp.attention import benchmarks as bm
from interp.attention import cli
from interp.attention import figures as fg
from interp.attention import methods as mt
from interp.attention import perturbation as pt
from interp.attention import interaction_map, rollout
from interp.metrics import average_precision, roc_auc

_MODELS: dict[str, object] = {}


def _model(kind: str):
    if kind not in _MODELS:
        if kind == "gpt2":
            from transformers import GPT2Config, GPT2LMHeadModel

            torch.manual_seed(0)
            hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=61, n_positions=80))
            _MODELS[kind] = interp.load(hf.eval())
        else:
            _MODELS[kind] = interp.load(make_hf_ssm(kind))
    return _MODELS[kind]


def _tokens(L: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 19, (1, L), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def _random_cases(n_cases: int = 60):
    rng = np.random.default_rng(0)
    for k in range(n_cases):
        n = int(rng.integers(2, 40))
        y = rng.random(n) < rng.uniform(0.05, 0.6)
        y[rng.integers(n)] = True
        if y.all():
            y[0] = False
        # continuous scores, heavily tied integer scores, and one-hot-like rows
        s = rng.normal(size=n) if k % 3 == 0 else (rng.integers(0, 4, size=n).astype(float) if k % 3 == 1
                                                   else np.where(rng.random(n) < 0.3, 1.0, 0.0))
        yield y, s


def test_roc_auc_and_ap_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    for y, s in _random_cases():
        assert roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
        assert average_precision(y, s) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)
    # torch inputs work the same
    y, s = next(_random_cases())
    assert roc_auc(torch.tensor(y), torch.tensor(s)) == pytest.approx(metrics.roc_auc_score(y, s))


def test_metrics_need_both_classes():
    with pytest.raises(ValueError):
        roc_auc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        average_precision([0, 0], [0.1, 0.2])


def test_one_hot_closed_forms():
    """One positive ranked r-th (no ties) among n: AUC = (n - r) / (n - 1), AP = 1 / r, R@1 = [r == 1]."""
    n = 9
    for r in range(1, n + 1):
        scores = np.arange(n, 0, -1, dtype=float)  # index 0 ranked first
        m = bm.score_row(scores, true_index=r - 1)
        assert m.auc == pytest.approx((n - r) / (n - 1))
        assert m.ap == pytest.approx(1 / r)
        assert m.recall_at_1 == (1.0 if r == 1 else 0.0)
    # ties at the top: expected hit under random tie-breaking
    assert bm.recall_at_1([1, 0, 0, 0], [2.0, 2.0, 2.0, 1.0]) == pytest.approx(1 / 3)
    assert bm.recall_at_1([0, 1, 0], [5.0, 1.0, 0.0]) == 0.0
    constant = bm.score_row(np.zeros(5), 2)
    assert constant == bm.RowScore(auc=0.5, ap=pytest.approx(0.2), recall_at_1=pytest.approx(0.2))
    # candidates restrict the row; NaN counts as the lowest score
    assert bm.score_row([9.0, 0.0, 1.0, float("nan")], 2, candidates=[1, 2, 3]).recall_at_1 == 1.0
    with pytest.raises(ValueError):
        bm.score_row([1.0, 2.0], 1, candidates=[0])


# ---------------------------------------------------------------------------------------------
# perturbation curves
# ---------------------------------------------------------------------------------------------
class CountingModel(torch.nn.Module):
    """logit[b, p, 0] = Σ_{j <= p} w_j [token_j != baseline]; the other logits are 0 (vocab 3)."""

    def __init__(self, w: torch.Tensor, baseline: int):
        super().__init__()
        self.w, self.baseline = w, baseline

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keep = (tokens != self.baseline).float() * self.w[: tokens.shape[1]]
        out = torch.zeros(*tokens.shape, 3)
        out[..., 0] = keep.cumsum(-1) + 1.0  # + 1 keeps token 0 the argmax
        return out


def test_perturbation_curve_on_known_relevances():
    L, p, base = 8, 5, 2
    w = torch.tensor([3.0, 0.5, 2.0, 0.1, 1.0, 0.2, 7.0, 7.0])
    model, tokens = CountingModel(w, base), torch.zeros(1, L, dtype=torch.long)
    morf = pt.perturbation_curve(model, tokens, position=p, scores=w, baseline_id=base, order="morf")
    lerf = pt.perturbation_curve(model, tokens, position=p, scores=w, baseline_id=base, order="lerf")
    clean = float(model(tokens)[0, p, 0])
    assert morf.shape == (p + 2,) and morf[0] == clean and lerf[0] == clean
    assert morf[-1] == lerf[-1] == 1.0  # every token j <= p replaced; j > p never touched
    ws = torch.sort(w[: p + 1], descending=True).values
    assert torch.allclose(morf, clean - torch.cat([torch.zeros(1), ws.cumsum(0)]))
    assert torch.allclose(lerf, clean - torch.cat([torch.zeros(1), ws.flip(0).cumsum(0)]))
    good = pt.delta_auc(morf, lerf)
    assert good > 0
    bad = pt.perturbation_test(model, tokens, position=p, scores=-w, baseline_id=base)
    assert bad.delta == pytest.approx(-good) and bad.delta < 0
    assert pt.perturbation_test(model, tokens, position=p, scores=w, baseline_id=base).delta == pytest.approx(good)
    # steps: a subset of k, endpoints kept
    coarse = pt.perturbation_curve(model, tokens, position=p, scores=w, baseline_id=base, order="morf", steps=3)
    ks = pt.perturbation_ks(p + 1, 3)
    assert ks[0] == 0 and ks[-1] == p + 1 and torch.allclose(coarse, morf[ks])


def test_area():
    assert pt.area([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert pt.area([0.0, 1.0]) == pytest.approx(0.5)
    assert pt.area([2.0, 0.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        pt.area([1.0])


@pytest.mark.parametrize("kind", ["mamba1", "mamba2-g1"])
@torch.no_grad()
def test_perturbation_curve_on_a_model(kind):
    model, tokens, p, base = _model(kind), _tokens(16), 11, 18
    scores = torch.rand(16, generator=torch.Generator().manual_seed(1))
    curve = pt.perturbation_curve(model, tokens, position=p, scores=scores, baseline_id=base, order="morf",
                                  batch_size=5)  # several chunks
    clean = model(tokens)[0, p]
    target = int(clean.argmax())
    assert curve[0] == pytest.approx(float(clean[target]), abs=1e-5)  # k = 0 is the clean logit
    order = torch.argsort(scores[: p + 1], descending=True, stable=True)
    for k in (1, 4, p + 1):  # the batched curve equals one forward per k
        t = tokens.clone()
        t[0, order[:k]] = base
        assert curve[k] == pytest.approx(float(model(t)[0, p, target]), abs=1e-4)
    lerf = pt.perturbation_curve(model, tokens, position=p, scores=scores, baseline_id=base, order="lerf")
    assert lerf[-1] == pytest.approx(float(curve[-1]), abs=1e-5)


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------
def test_method_registry_and_specs():
    for name in ("hidden", "hidden_last", "attention", "attention_last", "latim_l1", "latim_l2", "latim_alti",
                 "lrp", "grad_x_input", "random", "unified"):
        assert callable(mt.resolve_method(name)), name
    for spec in ("hidden@sum", "latim_l2@rollout", "latim_l2@last", "hidden@0", "hidden@-1"):
        assert callable(mt.resolve_method(spec))
    with pytest.raises(KeyError, match="known"):
        mt.resolve_method("nope")
    with pytest.raises(ValueError):
        mt.resolve_method("hidden@bogus")
    with pytest.raises(ValueError):
        mt.register_method("a@b", lambda m, t, *, positions: None)
    with pytest.raises(ValueError):
        mt.register_method("hidden", lambda m, t, *, positions: None)  # map methods cannot be replaced


def test_one_registry_for_maps_and_benchmarks():
    """Every map method of the app's menu is a registry entry; benchmark-only rows stay out of the maps."""
    assert set(mt.METHODS) <= set(mt.MAP_METHODS) and set(mt.LABELS) == set(mt.METHODS)
    assert {"latim_l2", "random", "lrp_abs"}.isdisjoint(mt.METHODS)
    assert {"latim_l2", "random", "hidden_last"} <= set(mt.benchmark_methods())
    model, tokens = _model("mamba1"), _tokens(12)
    with pytest.raises(ValueError, match="method must be one of"):
        interaction_map(model, tokens, layer=0, method="random")

    def const(model, tokens, *, positions):
        return torch.ones(len(positions), tokens.shape[1])

    try:
        entry = mt.register_method("test_const", const, kinds=("transformer",))
        assert entry.benchmark_only and "test_const" in mt.benchmark_methods() and "test_const" not in mt.METHODS
        with pytest.raises(mt.MethodNotApplicable):
            mt.method_rows(model, tokens, positions=[3], method="test_const")
    finally:
        mt.MAP_METHODS.pop("test_const", None)


def test_rows_take_one_sequence_and_check_positions():
    model, tokens = _model("mamba1"), _tokens(12)
    with pytest.raises(ValueError, match=r"tokens.*\(2, 12\)"):
        mt.method_rows(model, tokens.repeat(2, 1), positions=[3], method="hidden")
    with pytest.raises(ValueError, match=r"tokens.*\(2, 12\)"):
        pt.perturbation_curve(model, tokens.repeat(2, 1), position=3, scores=torch.ones(12), baseline_id=0)
    with pytest.raises(IndexError, match="positions"):
        mt.method_rows(model, tokens, positions=[12], method="hidden")
    with pytest.raises(IndexError, match="positions"):
        mt.layer_maps(model, tokens, method="hidden", positions=[-13])
    assert torch.allclose(mt.method_rows(model, tokens, positions=[-1], method="hidden_last"),
                          mt.method_rows(model, tokens, positions=[11], method="hidden_last"))


def test_method_rows_on_ssm():
    model, tokens = _model("mamba1"), _tokens(18)
    pos = [4, 10, 17]
    maps = [interaction_map(model, tokens, layer=l)[0] for l in range(model.cfg.n_layers)]
    assert torch.allclose(mt.method_rows(model, tokens, positions=pos, method="hidden"), rollout(maps)[pos], atol=1e-6)
    assert torch.allclose(mt.method_rows(model, tokens, positions=pos, method="hidden_last"), maps[-1][pos],
                          atol=1e-6)
    assert torch.allclose(mt.method_rows(model, tokens, positions=pos, method="hidden@0"), maps[0][pos], atol=1e-6)
    row_sum = torch.stack([m / m.sum(-1, keepdim=True) for m in maps]).mean(0)
    assert torch.allclose(mt.method_rows(model, tokens, positions=pos, method="hidden@sum"), row_sum[pos],
                          atol=1e-5)
    from interp.lrp import interaction_rows

    assert torch.allclose(mt.method_rows(model, tokens, positions=pos, method="lrp"),
                          interaction_rows(model, tokens, positions=pos), atol=1e-6)
    for m in ("latim_l2", "latim_alti", "grad_x_input", "random"):
        r = mt.method_rows(model, tokens, positions=pos, method=m)
        assert r.shape == (3, 18) and torch.isfinite(r).all(), m
    with pytest.raises(mt.MethodNotApplicable):
        mt.method_rows(model, tokens, positions=pos, method="attention")


def test_method_rows_on_transformer():
    model, tokens = _model("gpt2"), _tokens(18)
    pos = [3, 17]
    maps = [interaction_map(model, tokens, layer=l, method="attention", aggregate="mean")[0]
            for l in range(model.cfg.n_layers)]
    assert torch.allclose(mt.method_rows(model, tokens, positions=pos, method="attention"), rollout(maps)[pos],
                          atol=1e-6)
    assert torch.allclose(mt.method_rows(model, tokens, positions=pos, method="attention_last"), maps[-1][pos],
                          atol=1e-6)
    assert mt.method_rows(model, tokens, positions=pos, method="lrp").shape == (2, 18)
    for m in ("hidden", "latim_l2"):
        with pytest.raises(mt.MethodNotApplicable):
            mt.method_rows(model, tokens, positions=pos, method=m)


# ---------------------------------------------------------------------------------------------
# copying benchmark
# ---------------------------------------------------------------------------------------------
def _oracle(model, tokens, *, positions):
    """Scores 1 at the true copy source t - n (L = 2n + 2), 0 elsewhere."""
    n = (tokens.shape[1] - 2) // 2
    rows = torch.zeros(len(positions), tokens.shape[1])
    for r, t in enumerate(positions):
        rows[r, t - n] = 1.0
    return rows


def test_oracle_method_scores_one():
    def anti(model, tokens, *, positions):
        return -_oracle(model, tokens, positions=positions)

    table = bm.copying_benchmark({"m": _model("mamba1")}, methods={"oracle": _oracle, "anti": anti},
                                 n_sequences=2, n_range=(4, 6), seed=3)
    o, a = table.cell("m", "oracle"), table.cell("m", "anti")
    assert (o["auc"], o["ap"], o["recall_at_1"]) == (1.0, 1.0, 1.0)
    assert a["auc"] == 0.0 and a["recall_at_1"] == 0.0


def test_copying_benchmark_end_to_end(tmp_path):
    models = {"m1": _model("mamba1"), "m2": _model("mamba2-g1"), "tf": _model("gpt2")}
    methods = ["hidden", "hidden_last", "attention", "latim_l2", "latim_alti", "lrp", "grad_x_input", "random"]
    table = bm.copying_benchmark(models, methods=methods, n_sequences=2, n_range=(6, 9), seed=0)
    assert table.columns == ("model", "method", "auc", "ap", "recall_at_1", "n_positions", "copy_accuracy",
                             "seconds", "note")
    assert len(table.rows) == len(models) * len(methods)
    assert table.models() == list(models) and table.methods() == methods
    from interp.data import sample_copy_batch

    n_pos = int(sample_copy_batch(2, np.random.default_rng(0), n_range=(6, 9)).lengths.sum())
    for r in table.rows:
        assert set(table.columns) <= set(r)
        applies = (r["model"] == "tf") == (r["method"] == "attention") or r["method"] in ("lrp", "grad_x_input",
                                                                                          "random")
        if applies:
            assert r["note"] is None and r["n_positions"] == n_pos, r
            assert all(0.0 <= r[k] <= 1.0 for k in ("auc", "ap", "recall_at_1")), r
        else:
            assert r["note"] and r["auc"] is None and r["n_positions"] == 0, r
    text, md = table.to_text(), table.to_markdown()
    for m in methods:
        assert m in text and f"| {m} |" in md
    assert "n/a" in md and "published" in md
    assert '"rows"' in table.to_json()


def test_cli(tmp_path, capsys):
    folder = tmp_path / "tiny-copy"
    make_hf_ssm("mamba1").save_pretrained(folder)
    md = tmp_path / "table.md"
    table = cli.main(["copying", "--models", f"tiny={folder}", "does-not-exist", "--methods", "hidden_last", "random",
                     "--n", "2", "--n-range", "4", "6", "--markdown", str(md), "--threads", "1"])
    out = capsys.readouterr()
    assert "skipping does-not-exist" in out.err
    assert "hidden_last" in out.out and "tiny" in out.out
    assert md.read_text().startswith("**Copying benchmark") and table.models() == ["tiny"]
    pt = cli.main(["perturbation", "--model", str(folder), "--methods", "hidden_last", "--n", "2",
                  "--n-range", "4", "6", "--steps", "4", "--threads", "1"])
    r = pt.rows[0]
    assert r["model"] == "tiny-copy" and r["delta"] == pytest.approx(r["a_lerf"] - r["a_morf"])
    with pytest.raises(SystemExit):
        cli.main(["copying", "--models", "does-not-exist"])


def test_perturbation_benchmark_on_tokfsm_data():
    table = bm.perturbation_benchmark({"m": _model("mamba2-g1")}, methods=["hidden_last", "random"], n_sequences=2,
                                      data="tokfsm", seq_len=24, steps=6)
    assert [r["method"] for r in table.rows] == ["hidden_last", "random"]
    assert all(r["n_positions"] == 2 and math.isfinite(r["delta"]) for r in table.rows)
    assert "TokFSM" in table.to_markdown() and "replaced by id 10" in table.to_text()


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def test_heatmap_labels_causal_blank_and_signed_scale():
    toks = ["a", "b", "a", " the", "the", "\n"]
    m = torch.rand(6, 6).tril()
    fig = fg.interaction_heatmap(m, toks, title="t")
    hm = fig.data[0]
    assert len(set(hm.x)) == 6 and hm.x[0] == "0·a" and hm.x[2] == "2·a" and hm.x[3] == "3·␣the"
    z = np.asarray(hm.z, dtype=float)
    assert np.isnan(z[np.triu_indices(6, 1)]).all() and np.isfinite(z[np.tril_indices(6)]).all()
    s = fg.interaction_heatmap(m - 0.7, toks, signed=True).data[0]
    assert s.zmid == 0 and s.zmin == -s.zmax and s.zmax == pytest.approx(float((m - 0.7).tril().abs().max()))
    rows = fg.interaction_heatmap(m[[1, 4]], toks, rows=[1, 4]).data[0]
    assert list(rows.y) == ["1·b", "4·the"] and np.isnan(np.asarray(rows.z, dtype=float)[0, 2:]).all()
    with pytest.raises(ValueError):
        fg.interaction_heatmap(m[:2], toks)


def test_thumbnails_highlight_and_perturbation_figure():
    g = fg.thumbnail_grid(torch.rand(5, 7, 7), [f"c{i}" for i in range(5)], cols=3)
    assert len(g.data) == 5 and [a.text for a in g.layout.annotations] == [f"c{i}" for i in range(5)]
    html = fg.token_highlight_html(["<b>", "x", "y"], torch.tensor([0.5, -1.0, 0.0]), query=1)
    assert "&lt;b&gt;" in html and "<b>" not in html and html.count("<span") == 3
    assert "rgba(33,102,172,1.000)" in html  # the most negative weight, full blue
    curves = {"lrp": {"morf": torch.linspace(3, 0, 6), "lerf": torch.linspace(3, 2, 6)}, "plain": [1.0, 0.5, 0.0]}
    f = fg.perturbation_figure(curves)
    names = [t.name for t in f.data]
    assert any("ΔA = 1" in n for n in names) and "plain" in names


def test_exported_html_is_self_contained(tmp_path):
    fig = fg.interaction_heatmap(torch.rand(4, 4), ["w", "x", "y", "z"])
    html = fg.save_html(fig, tmp_path / "f.html").read_text()
    assert "<script" in html and not re.search(r"<script[^>]+src=", html)  # plotly.js inlined, no CDN
    assert len(html) > 1_000_000


# ---------------------------------------------------------------------------------------------
# the calling convention (model, tokens, *, ...) of every function here that runs the model on tokens
# ---------------------------------------------------------------------------------------------
