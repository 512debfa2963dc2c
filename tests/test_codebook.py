"""Codebook bottlenecks (interp.codebook): the math, insertion into models, training and resumption, analysis,
code interventions through the steering API."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import load_tokfsm

from interp.codebook import (
    CodebookCodes, CodebookConfig, CodebookLayer, CodebookTrainConfig, attach, attached, code_intervention,
    code_label_precision, collect_codes, detach, fit_post_hoc, load_codebook_model, make_codebooks,
    mixer_output_hooks, save_codebook_model, similar_codes, train_codebooks, usage_stats,
)
from interp.codebook import functional as Fn
from interp.codebook.analysis import CodeRun
from interp.codebook.zoo import model_batches
from interp.hooks.hook_points import UnknownHookError
from interp.steering import Intervention

pytestmark = pytest.mark.usefixtures("one_thread")


def layer_with(codes: torch.Tensor, **kw) -> CodebookLayer:
    G, n, d = codes.shape
    layer = CodebookLayer(CodebookConfig(d=d, n_codes=n, n_groups=G, **kw))
    layer.codes.data.copy_(codes)
    return layer


# ------------------------------------------------------------------------------------------------------------
# the math


@pytest.mark.parametrize("layernorm", [True, False])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_forward_is_mean_of_the_k_best_codes(layernorm, similarity):
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(1, 12, 6, generator=g) * torch.rand(1, 12, 1, generator=g) * 3
    x = torch.randn(4, 5, 6, generator=g)
    layer = layer_with(codes, k=3, layernorm=layernorm, similarity=similarity)
    y = layer(x)
    xs = F.layer_norm(x, (6,)) if layernorm else x
    c = codes[0] / codes[0].norm(dim=-1, keepdim=True) if similarity == "cosine" else codes[0]
    for b in range(4):
        for p in range(5):
            scores = [float(xs[b, p] @ c[j]) for j in range(12)]
            best = sorted(range(12), key=lambda j: -scores[j])[:3]
            assert torch.allclose(y[b, p], codes[0, best].mean(0), atol=1e-6)
    assert layer.select(x).shape == (4, 5, 3)


def test_cosine_ranking_ignores_code_norms_but_output_keeps_them():
    codes = torch.tensor([[[1.0, 0.0], [0.0, 10.0]]])  # code 1 is long but points away from x
    layer = layer_with(codes, k=1, layernorm=False)
    x = torch.tensor([[[2.0, 1.0]]])
    assert torch.equal(layer(x), codes[0, 0].view(1, 1, 2))  # cosine: code 0; a dot product would pick code 1
    assert torch.equal(layer_with(codes, k=1, layernorm=False, similarity="dot")(x), codes[0, 1].view(1, 1, 2))


def test_straight_through_and_code_gradients_closed_form():
    """y = q + (x - sg(x)): ∂L/∂x = ∂L/∂y (identity) and ∂L/∂C[c] = Σ over the slots holding c of ∂L/∂y / k."""
    g = torch.Generator().manual_seed(1)
    k = 2
    layer = layer_with(torch.randn(1, 7, 5, generator=g, dtype=torch.float64).float(), k=k)
    x = torch.randn(6, 5, generator=g, requires_grad=True)
    w = torch.randn(6, 5, generator=g)
    y = layer(x)
    (w * y).sum().backward()
    assert torch.equal(x.grad, w)
    ids = layer.select(x.detach())  # [6, k]
    expected = torch.zeros(7, 5)
    for r in range(6):
        for s in range(k):
            expected[ids[r, s]] += w[r] / k
    assert torch.allclose(layer.codes.grad[0], expected, atol=1e-6)
    # without the straight-through estimator the layers below get nothing
    layer2 = layer_with(layer.codes.detach().clone(), k=k, straight_through=False)
    x2 = x.detach().clone().requires_grad_(True)
    (w * layer2(x2)).sum().backward()
    assert x2.grad is None


def test_reconstruction_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(2)
    codes = torch.randn(1, 5, 4, generator=g, dtype=torch.float64)
    x = torch.randn(8, 1, 4, generator=g, dtype=torch.float64)
    ids = Fn.select_codes(Fn.code_scores(x, codes), 2)  # selection held fixed (piecewise-smooth loss)

    def loss(C: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return Fn.reconstruction_loss(xx, Fn.quantize(C, ids))

    C = codes.clone().requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    loss(C, xg).backward()
    assert xg.grad is None  # the codebook loss only moves the codes
    eps = 1e-6
    for idx in [(0, 0, 0), (0, 2, 3), (0, 4, 1)]:
        d = torch.zeros_like(codes)
        d[idx] = eps
        fd = (loss(codes + d, x) - loss(codes - d, x)) / (2 * eps)
        assert abs(float(fd) - float(C.grad[idx])) < 1e-7
    # closed form: ∂/∂C of Σ‖x - q‖²/Σ‖x‖² with q the mean of the k selected codes
    q = Fn.quantize(codes, ids)
    expected = torch.zeros_like(codes)
    for r in range(x.shape[0]):
        for s in range(2):
            expected[0, ids[r, 0, s]] += -2 * (x[r, 0] - q[r, 0]) / 2 / x.pow(2).sum()
    assert torch.allclose(C.grad, expected)
    # commitment term: the gradient to x is 2β(x - q)/Σ‖x‖² (x's norm is held fixed), the codes' is unchanged
    C2 = codes.clone().requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    Fn.reconstruction_loss(xg, Fn.quantize(C2, ids), commitment=0.25).backward()
    assert torch.allclose(xg.grad, 2 * 0.25 * (x - q) / x.pow(2).sum())
    assert torch.allclose(C2.grad, C.grad)


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(5, 8, generator=g) * 10
    x = (centers[torch.arange(500) % 5] + 0.01 * torch.randn(500, 8, generator=g))[:, None]
    codes = Fn.kmeans(x, 5, iters=10, layernorm=False)
    d = torch.cdist(codes[0], centers)
    assert float(d.min(1).values.max()) < 0.05 and len(set(d.argmin(1).tolist())) == 5


def test_config_errors():
    with pytest.raises(ValueError, match="k=5 is more than n_codes=4"):
        CodebookConfig(d=3, n_codes=4, k=5)
    with pytest.raises(ValueError, match="similarity"):
        CodebookConfig(d=3, similarity="l2")
    with pytest.raises(ValueError, match="width 3"):
        CodebookLayer(CodebookConfig(d=3, n_codes=4))(torch.zeros(2, 4))


def test_dead_codes_are_reseeded_with_badly_reconstructed_inputs():
    layer = layer_with(torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 5.0]]]), k=1, layernorm=False, dead_after=10)
    layer.train()
    x = torch.tensor([[1.0, 0.1]] * 6 + [[-3.0, -3.0]] * 6)  # code 2 is never chosen
    for _ in range(2):
        layer(x)
    assert int(layer.steps_unused[0, 2]) == 24
    assert layer.replace_dead_codes() == 1
    assert torch.equal(layer.codes[0, 2], torch.tensor([-3.0, -3.0]))


def test_save_load_roundtrip(tmp_path):
    layer = CodebookLayer(CodebookConfig(d=4, n_codes=9, k=2, similarity="dot"))
    layer.save(tmp_path / "cb")
    back = CodebookLayer.load(tmp_path / "cb")
    assert back.cfg == layer.cfg and torch.equal(back.codes, layer.codes)


# ------------------------------------------------------------------------------------------------------------
# in models


@pytest.fixture(scope="module")
def mamba():
    return load_tokfsm("tokfsm-mamba")


@pytest.fixture(scope="module")
def transformer():
    return load_tokfsm("tokfsm-transformer")


def tokens(n=3, L=11, seed=0):
    from interp.data import tokfsm_dataset

    return tokfsm_dataset(n, seed=seed, seq_len=L)


@pytest.mark.parametrize("name", ["mamba", "transformer"])
def test_attach_detach_hook_names_and_generation(name, request):
    model = request.getfixturevalue(name)
    t = tokens()
    ref = model(t)
    sites = mixer_output_hooks(model)
    books = make_codebooks(model, hook=sites, n_codes=16)
    attach(model, books)
    try:
        assert set(attached(model)) == set(sites)
        assert f"{sites[1]}.codebook.hook_codes" in model.hook_dict
        out = model(t)
        assert not torch.allclose(out, ref)
        _, cache = model.run_with_cache(t, names_filter=lambda n: n.endswith("codebook.hook_codes"))
        assert cache[f"{sites[0]}.codebook.hook_codes"].shape == (3, 11, 1)
        gen = model.generate(t[:, :5], max_new_tokens=4, return_type="tokens", do_sample=False)
        assert gen.shape == (3, 9)
        with pytest.raises(ValueError, match="already attached"):
            attach(model, {sites[0]: CodebookLayer(books[sites[0]].cfg)})
    finally:
        detach(model)
    assert torch.equal(model(t), ref) and not attached(model)
    with pytest.raises(UnknownHookError, match="Closest valid names"):
        make_codebooks(model, hook=["blocks.0.hook_mixer_outt"])


def test_recurrent_generation_equals_full_forward_with_codebooks(mamba):
    books = make_codebooks(mamba, hook=mixer_output_hooks(mamba), n_codes=32)
    attach(mamba, books)
    try:
        t = tokens(2, 9)
        gen = mamba.generate(t, max_new_tokens=5, return_type="tokens", do_sample=False)
        full = mamba(gen)[:, 8:-1].argmax(-1)
        assert torch.equal(full, gen[:, 9:])
    finally:
        detach(mamba)


def test_per_head_codebooks_on_attention_z(transformer):
    books = make_codebooks(transformer, hook="blocks.1.attn.hook_z", n_codes=8, k=2)
    cfg = books["blocks.1.attn.hook_z"].cfg
    assert (cfg.n_groups, cfg.d) == (transformer.cfg.n_heads, transformer.cfg.d_head)
    attach(transformer, books)
    try:
        run = collect_codes(transformer, tokens())
        assert run.ids["blocks.1.attn.hook_z"].shape == (3, 11, transformer.cfg.n_heads, 2)
        iv = code_intervention(transformer, hook="blocks.1.attn.hook_z", code=5, mode="force", positions="last",
                               group=2)
        with iv.applied(transformer):
            run2 = collect_codes(transformer, tokens())
        ids = run2.ids["blocks.1.attn.hook_z"]
        assert (ids[:, -1, 2, 0] == 5).all() and torch.equal(ids[:, :-1], run.ids["blocks.1.attn.hook_z"][:, :-1])
    finally:
        detach(transformer)


def test_code_interventions_force_disable_append_and_save(mamba, tmp_path):
    site = "blocks.1.ssm.hook_out"
    books = make_codebooks(mamba, hook=site, n_codes=16, k=2)
    attach(mamba, books)
    layer = books[site]
    try:
        t = tokens()
        base = collect_codes(mamba, t).ids[site]
        forced = code_intervention(mamba, hook=site, code=7, mode="force", positions="last")
        with forced.applied(mamba):
            ids = collect_codes(mamba, t).ids[site]
        assert (ids[:, -1, 0] == 7).all() and torch.equal(ids[:, :-1], base[:, :-1])
        # the forced code takes the top slot, the best of the others stays in the second
        assert torch.equal(ids[:, -1, 1], torch.where(base[:, -1, 0] == 7, base[:, -1, 1], base[:, -1, 0]))
        used = int(base[0, 3, 0])
        with code_intervention(mamba, hook=site, code=used, mode="disable").applied(mamba):
            ids = collect_codes(mamba, t).ids[site]
        assert not (ids == used).any()
        # append: output = mean of the k codes + code / k
        _, c0 = mamba.run_with_cache(t, names_filter=f"{site}.codebook.hook_out")
        app = code_intervention(mamba, hook=site, code=3, mode="append", positions=[4])
        with app.applied(mamba):
            _, c1 = mamba.run_with_cache(t, names_filter=f"{site}.codebook.hook_out")
        diff = c1[f"{site}.codebook.hook_out"] - c0[f"{site}.codebook.hook_out"]
        assert torch.allclose(diff[:, 4], (layer.codes[0, 3] / 2).expand(3, -1), atol=1e-6)
        assert diff[:, :4].abs().max() == 0
        # interventions save and load like any other
        forced.save(tmp_path / "iv")
        back = Intervention.load(tmp_path / "iv")
        ref = mamba.run_with_hooks(t, fwd_hooks=forced.hooks(mamba))
        assert torch.equal(mamba.run_with_hooks(t, fwd_hooks=back.hooks(mamba)), ref)
        # the one builder refuses a hook without a codebook and a code the codebook does not have
        with pytest.raises(ValueError, match="no codebook there"):
            code_intervention(mamba, hook="blocks.0.ssm.hook_out", code=1)
        with pytest.raises(ValueError, match="out of range"):
            code_intervention(mamba, hook=site, code=16, mode="append")
    finally:
        detach(mamba)


def test_codebook_sources_and_their_errors():
    """Codebook sources edit code scores (force: +inf, disable: -inf)."""
    src = CodebookCodes([1, 3], n_codes=4, group=1, n_groups=2)
    x = torch.zeros(2, 5, 8)
    forced = src.edit(x, "replace", 1.0, None)
    assert torch.isinf(forced[..., [5, 7]]).all() and (forced[..., [5, 7]] > 0).all()
    assert (forced[..., [0, 1, 2, 3, 4, 6]] == 0).all()
    assert (src.edit(x, "ablate", 1.0, None)[..., [5, 7]] == -torch.inf).all()
    with pytest.raises(ValueError, match="ids in 0..3"):
        CodebookCodes([4], n_codes=4)
    with pytest.raises(ValueError, match="width 8"):
        src.edit(torch.zeros(3, 4), "replace", 1.0, None)


@pytest.mark.parametrize("recorded", [True, False])
def test_a_saved_code_intervention_loads_without_importing_the_codebook_package(tmp_path, recorded):
    """interp.steering.load imports the module that registers a saved source (recorded in the file; for files
    written before it was, the known home of the kind), so a fresh process loads a codebook intervention."""
    import json
    import subprocess
    import sys

    iv = Intervention(CodebookCodes([1, 3], n_codes=4), hook="blocks.0.ssm.hook_out.codebook.hook_scores",
                      operator="replace", positions="last", name="force")
    iv.save(tmp_path)
    doc = json.loads((tmp_path / "intervention.json").read_text())
    assert doc["source"]["module"] == "interp.codebook.steering"
    if not recorded:
        del doc["source"]["module"]
        del doc["checksums"]  # a file written before both (an edited file keeping its record is refused)
        (tmp_path / "intervention.json").write_text(json.dumps(doc))
    code = (
        "import sys, interp.steering as S\n"
        "assert 'interp.codebook' not in sys.modules and 'codebook_codes' not in S.SOURCES\n"
        f"iv = S.load({str(tmp_path)!r})\n"
        "print(type(iv.source).__module__, type(iv.source).__name__, iv.source.codes, iv.operator)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["interp.codebook.steering", "CodebookCodes", "[1,", "3]", "replace"]


# ------------------------------------------------------------------------------------------------------------
# training


SHORT = CodebookTrainConfig(steps=6, batch_size=4, checkpoint_every=2, kmeans_tokens=1024, kmeans_iters=3,
                            warmup_steps=2)


def test_in_model_training_lowers_loss_and_resumes_bit_identically(tmp_path, monkeypatch):
    import interp.codebook.train as T

    def fresh():
        m = load_tokfsm("tokfsm-mamba")
        return m, make_codebooks(m, hook=mixer_output_hooks(m)[:2], n_codes=32)

    m, books = fresh()
    long = SHORT.replace(steps=30, checkpoint_every=30)
    res = train_codebooks(m, model_batches(m, long), books=books, cfg=long, out_dir=tmp_path / "long", progress=False,
                          log_every=5)
    assert res.history[-1]["loss"] < res.history[0]["loss"]

    m, books = fresh()
    train_codebooks(m, model_batches(m, SHORT), books=books, cfg=SHORT, out_dir=tmp_path / "straight", progress=False)
    straight = {k: v.clone() for k, v in m.state_dict().items()}

    real_save, calls = T.save_checkpoint, []

    def crash_after_first(*a, **kw):
        out = real_save(*a, **kw)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after the step-4 checkpoint
        return out

    m, books = fresh()
    monkeypatch.setattr(T, "save_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_codebooks(m, model_batches(m, SHORT), books=books, cfg=SHORT, out_dir=tmp_path / "resumed",
                        progress=False)
    monkeypatch.setattr(T, "save_checkpoint", real_save)
    m, books = fresh()
    res = train_codebooks(m, model_batches(m, SHORT), books=books, cfg=SHORT, out_dir=tmp_path / "resumed",
                          progress=False)
    assert res.start_step == 4
    for k, v in m.state_dict().items():
        assert torch.equal(v, straight[k]), k


def test_post_hoc_fit_and_save_load_model(tmp_path):
    m = load_tokfsm("tokfsm-mamba")
    site = "blocks.2.ssm.hook_out"
    from interp.codebook.train import hook_activations
    from interp.codebook.zoo import training_batches
    from interp.zoo.evaluate import recipe_of

    acts = hook_activations(m, training_batches(recipe_of("tokfsm-mamba"), SHORT), hook=[site], n_tokens=2048)
    books = make_codebooks(m, hook=[site], n_codes=32)
    curves = fit_post_hoc(books, acts, steps=30, batch_size=256, progress=False)
    assert curves[site][-1] < curves[site][0] * 1.01
    attach(m, books)
    t = tokens()
    ref = m(t)
    save_codebook_model(m, tmp_path / "cbm")
    back = load_codebook_model(tmp_path / "cbm")
    assert torch.equal(back(t), ref)
    with pytest.raises(FileNotFoundError, match="not a codebook model"):
        load_codebook_model(tmp_path)
    detach(m)


# ------------------------------------------------------------------------------------------------------------
# analysis


def test_usage_and_label_precision_closed_form():
    # codes 0..3 track labels exactly at site a; site b is noise
    labels = torch.arange(40).remainder(4).view(4, 10)
    ids_a = labels[..., None].clone()
    ids_b = torch.zeros(4, 10, 1, dtype=torch.long)
    inputs = {"a": torch.randn(4, 10, 3), "b": torch.randn(4, 10, 3)}
    run = CodeRun(ids={"a": ids_a, "b": ids_b}, inputs=inputs, n_codes={"a": 8, "b": 8})
    u = usage_stats(run)
    assert u["a"]["dead_fraction"] == 0.5 and u["b"]["dead_fraction"] == 7 / 8 and u["b"]["top_share"] == 1.0
    rep = code_label_precision(run, labels, n_classes=4)
    assert torch.equal(rep.codes.precision, torch.ones(4, dtype=torch.float64))
    assert [rep.best_code(c) for c in range(4)] == [("a", 0, c) for c in range(4)]
    assert torch.equal(rep.neurons.min_recall, rep.codes.recall)  # neurons compared at the codes' recall
    assert rep.neurons.mean_precision < 1.0


def test_similar_codes():
    layer = layer_with(torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]]]))
    sims = similar_codes(layer, code=0, n=3)
    assert [c for c, _ in sims] == [1, 2, 3]


def test_selection_scored_on_held_out_tokens():
    from interp.sae.evaluate import best_feature_precision, score_selection

    # fit: feature 0 marks class 0 perfectly; held out: it also fires on half of class 1
    fit = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    chosen = best_feature_precision(fit, torch.tensor([0, 0, 1, 1]), n_classes=2)
    assert float(chosen.precision[0]) == 1.0
    held = torch.tensor([[1.0], [1.0], [1.0], [0.0], [0.0]])
    scored = score_selection(chosen, held, torch.tensor([0, 0, 1, 1, 0]))
    assert float(scored.precision[0]) == 2 / 3 and float(scored.recall[0]) == 2 / 3
    assert int(scored.feature[0]) == int(chosen.feature[0]) and scored.n_tokens == 5


def test_per_class_recall_floor():
    from interp.sae.evaluate import best_feature_precision

    # feature 1 is pure for class 0 but covers only 1/4 of it; feature 0 covers it all with one false positive
    f = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    loose = best_feature_precision(f, y, 2, min_recall=torch.tensor([0.25, 1.0], dtype=torch.float64))
    strict = best_feature_precision(f, y, 2, min_recall=0.5)
    assert int(loose.feature[0]) == 1 and float(loose.precision[0]) == 1.0
    assert int(strict.feature[0]) == 0 and float(strict.precision[0]) == 0.8
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        best_feature_precision(f, y, 2, min_recall=torch.tensor([0.5, 0.5, 0.5]))


def test_steering_modes_force_codes_where_they_say(mamba):
    from interp.tasks.tokfsm import STEERING_MODES, tokfsm_code_steering, tokfsm_state_codes, tokfsm_transition_codes

    books = make_codebooks(mamba, hook=mixer_output_hooks(mamba)[:2], n_codes=16)
    attach(mamba, books)
    try:
        codes = tokfsm_state_codes(mamba, n_seq=32)
        trans = tokfsm_transition_codes(mamba, n_seq=32)
        site = mixer_output_hooks(mamba)[0]
        assert codes[site].shape == (100,) and trans[site].shape == (100, 10)
        seen = []
        hp = mamba.hook_dict[f"{site}.codebook.hook_codes"]
        hp.add_hook(lambda ids, hook: seen.append((hook.ctx.get("positions"), ids[:, -1, 0].clone())))
        target = int((codes[site] >= 0).nonzero()[0])
        r = tokfsm_code_steering(mamba, codes, target, n_prompts=4, mode="prompt")
        assert set(r) == {"steered", "baseline", "steered_first_digit", "baseline_first_digit"}
        forced = [ids for pos, ids in seen[:1]][0]  # the steered prefill: last prompt position forced
        assert (forced == codes[site][target]).all()
        hp.remove_hooks()
        with pytest.raises(ValueError, match="mode must be one of"):
            tokfsm_code_steering(mamba, codes, target, n_prompts=2, mode="sometimes")
        assert tokfsm_code_steering(mamba, codes, target, n_prompts=4, mode="follow", transition_codes=trans)
        assert STEERING_MODES == ("prompt", "last", "follow")
    finally:
        detach(mamba)


def test_codebook_folder_checks_and_code_report(mamba, tmp_path):
    """A saved codebook model passes check_codebook_folder and is found under its root; one pointing outside
    its folder or naming a non-embedded base is refused. code_report's counts match collect_codes, and
    tokfsm_code_states counts the units digits where the code fires."""
    import json

    from interp.codebook import (
        check_codebook_folder, code_report, codebook_base_model, codebook_hooks, find_codebook_models,
        forced_continuations,
    )
    from interp.data import tokfsm_dataset, tokfsm_labels
    from interp.tasks.tokfsm import tokfsm_code_states

    torch.manual_seed(0)
    site = mixer_output_hooks(mamba)[0]
    attach(mamba, make_codebooks(mamba, hook=site, n_codes=8))
    try:
        folder = save_codebook_model(mamba, tmp_path / "runs" / "cbm", base="tokfsm-mamba")
        assert check_codebook_folder(folder)["sites"] == {site: "codebooks/0"}
        assert find_codebook_models([tmp_path / "runs"]) == [folder.resolve()]
        assert codebook_base_model(folder) == "tokfsm-mamba" and codebook_hooks(mamba)[site]["n_codes"] == 8
        corpus, prompt = tokfsm_dataset(8, seed=0), tokfsm_dataset(1, seed=1)
        r = code_report(mamba, prompt, corpus=corpus, hook=site, code=2)
        ids = collect_codes(mamba, corpus, keep_inputs=False).ids[site]
        fires = (ids == 2).any(-1)
        assert torch.equal(r.fires, fires) and r.n_fires == int(fires.sum())
        assert r.prompt_ids.shape == (1, prompt.shape[1]) and float(r.freq.sum()) == pytest.approx(1.0)
        rows, n_units = tokfsm_code_states(corpus, fires)
        lab = tokfsm_labels(corpus)
        assert n_units == int((fires & (lab["digit_pos"] == 1) & (lab["state"] >= 0)).sum())
        assert sum(row["count"] for row in rows) <= n_units and all(0 < row["precision"] <= 1 for row in rows)
        g0, g1 = forced_continuations(mamba, prompt, hook=site, code=2, max_new_tokens=3)
        assert len(g0) == len(g1) == 3
        with pytest.raises(ValueError, match="out of range"):
            code_report(mamba, prompt, corpus=corpus, hook=site, code=8)
        index = json.loads((folder / "codebooks.json").read_text())
        index.pop("checksums")  # hand-edited below: a hostile index need not carry a record
        for sites, base, message in [({site: "../../.."}, "tokfsm-mamba", "points outside its folder"),
                                     ({site: "codebooks/0"}, "no-such-model", "not an embedded model")]:
            (folder / "codebooks.json").write_text(json.dumps({**index, "sites": sites, "base": base}))
            with pytest.raises(ValueError, match=message):
                check_codebook_folder(folder)
    finally:
        detach(mamba)
