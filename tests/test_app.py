"""The Streamlit app (apps/): every page under ``streamlit.testing.v1.AppTest``.

Each page renders without an exception; widgets change what is computed; the plotly figures hold exactly
the library's result for the same inputs; bad inputs (empty / too long / unusual Unicode prompt, missing or
forbidden model path, a map over the memory budget) each show a message and the app keeps serving.
TokFSM tools appear for TokFSM models only (by the model card); the probe figure's panels stay apart; the logit
lens shows each cell's token, p(true next token), one layer order and a window; thumbnails share a colour scale
and define their numbers; ignored link values are named; error text is plain text.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
from interp.apps import inputs as C  # noqa: E402

import interp  # noqa: E402
import interp.zoo  # noqa: E402
from interp.attention import interaction_map, normalize, rollout  # noqa: E402
from interp.attention.figures import figure_exports, kaleido_available, npz_bytes  # noqa: E402
from interp.attention.methods import LABELS, methods_for  # noqa: E402
from interp.codebook import embedded_codebook_models  # noqa: E402
from interp.attention.views import METRIC_DEFINITIONS, aggregates_for, causal_masked, map_metric, pool_map  # noqa: E402
from interp.lens import WINDOW, vocabulary  # noqa: E402
from interp.tasks.tokfsm import is_tokfsm_model, tokfsm_prompt_text, tokfsm_probe_sweep  # noqa: E402
from interp.zoo import model_task  # noqa: E402

MODEL = "tokfsm-mamba2"
PROMPT = "<bos>" + "08411793056012345678"  # 21 tokens
PAGES = ["model", "interactions", "lens", "probes", "features", "steering", "export", "patching"]
TIMEOUT = 300

pytestmark = pytest.mark.skipif(MODEL not in interp.zoo.list_models(), reason=f"embedded {MODEL} not installed")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return interp.load(MODEL)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """A run folder holding one SAE on blocks.1.hook_resid_post of the model."""
    from interp.sae import SAEConfig, SparseAutoencoder

    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=64, d_sae=32, hook_name="blocks.1.hook_resid_post"))
    sae.save(root / "sae_a")
    (root / "not_a_model").mkdir()
    from interp.demo import tiny_model

    tiny_model().save_pretrained(str(root / "mamba1"))  # a random 2-layer Mamba-1 over the TokFSM digits
    from transformer_lens import HookedTransformerConfig

    from interp.data import DigitTokenizer
    from interp.hooks.transformer import HookedTransformerModel

    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=128, d_vocab=11,
                                  act_fn="gelu", normalization_type="LN", device="cpu", seed=0)
    HookedTransformerModel(cfg, DigitTokenizer()).save_pretrained(root / "transformer")
    return root


@pytest.fixture(scope="module")
def cb_folder(roots):
    """A small codebook model in the run folder: 32-code codebooks fitted post hoc at the mixer outputs of
    layers 0 and 1 of tokfsm-mamba (another model than the page's, with the same vocabulary)."""
    import interp.codebook as cb
    from interp.data import tokfsm_dataset

    m = interp.load("tokfsm-mamba")
    sites = cb.mixer_output_hooks(m)[:2]
    books = cb.make_codebooks(m, hook=sites, n_codes=32)
    acts = cb.hook_activations(m, lambda i: {"tokens": tokfsm_dataset(16, seed=i)}, hook=sites, n_tokens=2048)
    cb.fit_post_hoc(books, acts, steps=20, batch_size=256, progress=False)
    cb.attach(m, books)
    return cb.save_codebook_model(m, roots / "codebooks" / "cbm", base="tokfsm-mamba").resolve()


@pytest.fixture
def env(monkeypatch, roots):
    monkeypatch.setenv("INTERP_APP_MODEL", MODEL)
    monkeypatch.setenv("INTERP_APP_ROOTS", str(roots))
    monkeypatch.delenv("INTERP_APP_MAX_TOKENS", raising=False)
    monkeypatch.delenv("INTERP_APP_MAP_BUDGET_MB", raising=False)
    return monkeypatch


def app(page: str = "model", **params) -> AppTest:
    at = AppTest.from_file(str(ROOT / "apps" / "app.py"), default_timeout=TIMEOUT)
    params.setdefault("prompt", PROMPT)
    for k, v in params.items():
        at.query_params[k] = str(v)
    at.run()
    if page != "model":
        at.switch_page(f"views/{page}.py").run()
    return at


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def texts(elements) -> str:
    return " | ".join(str(e.value) for e in elements)


def figure(at: AppTest, key: str) -> dict:
    els = [e for e in at.get("plotly_chart") if getattr(e, "key", None) == key]
    assert els, f"no plotly chart {key!r}; charts: {[getattr(e, 'key', None) for e in at.get('plotly_chart')]}"
    return json.loads(els[0].proto.spec)


def arr(x) -> np.ndarray:
    """A plotly JSON array (list, or typed array {dtype, bdata, shape}) -> float numpy (None -> nan)."""
    if isinstance(x, dict) and "bdata" in x:
        a = np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"]))
        if "shape" in x:
            shape = x["shape"] if isinstance(x["shape"], list) else [int(s) for s in str(x["shape"]).split(",")]
            a = a.reshape(shape)
        return a.astype(np.float64)
    if isinstance(x, list) and x and isinstance(x[0], (list, dict)):
        return np.stack([arr(r) for r in x])
    return np.array([np.nan if v is None else v for v in x], dtype=np.float64)


def masked(m: torch.Tensor) -> np.ndarray:
    return causal_masked(m[0].float().numpy())


def tokens_of(model, prompt: str = PROMPT) -> torch.Tensor:
    return C.tokenize(model, prompt, 4096)


def html_of(at: AppTest) -> str:
    return " ".join(h.proto.body for h in at.get("html"))


def rendered(markdown: str) -> str:
    """The text a Markdown body shows once rendered (CommonMark with GFM tables and strikethrough, as Streamlit
    renders alerts and captions): markup gone, escapes resolved, hard line breaks as newlines."""
    import html
    import re

    from markdown_it import MarkdownIt

    out = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)
    return html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"<br\s*/?>\n?", "\n", out))).strip()


def button_labels(at: AppTest) -> list[str]:
    return [b.proto.label for b in at.get("button")]


# ------------------------------------------------------------------------------------------------
# every page
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(env, page):
    at = app(page)
    ok(at)
    assert at.title[0].value


def test_default_model_falls_back_with_a_note(monkeypatch, roots):
    monkeypatch.delenv("INTERP_APP_MODEL", raising=False)
    monkeypatch.setenv("INTERP_APP_ROOTS", str(roots))
    spec, note = C.default_model(None)
    installed = interp.zoo.list_models()
    assert spec == (C.DEFAULT_MODEL if C.DEFAULT_MODEL in installed else installed[0])
    at = app("model")
    ok(at)
    assert at.query_params["model"] == spec
    if note:
        assert "not installed yet" in texts(at.info)


# ------------------------------------------------------------------------------------------------
# token interactions
# ------------------------------------------------------------------------------------------------
def test_interaction_heatmap_is_the_library_map(env, model):
    at = app("interactions")
    ok(at)
    toks = tokens_of(model)
    fig = figure(at, "detail")
    z = arr(fig["data"][0]["z"])
    ref = masked(interaction_map(model, toks, layer=0, method="hidden", aggregate="mean_abs"))
    np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-7, equal_nan=True)
    labels = fig["data"][0]["x"]
    assert len(labels) == toks.shape[1] and labels[0].startswith("0·")


def test_widgets_change_the_map(env, model):
    toks = tokens_of(model)
    at = app("interactions")
    z0 = arr(figure(at, "detail")["data"][0]["z"])
    at.selectbox(key="w_layer").set_value(2).run()
    ok(at)
    z2 = arr(figure(at, "detail")["data"][0]["z"])
    assert not np.allclose(np.nan_to_num(z0), np.nan_to_num(z2))
    np.testing.assert_allclose(z2, masked(interaction_map(model, toks, layer=2)), rtol=1e-5, atol=1e-7, equal_nan=True)
    assert at.query_params["layer"] == "2"

    for source, kw in [("unified", {}), ("latim", {})]:
        at.selectbox(key="w_source").set_value(source).run()
        ok(at)
        assert at.selectbox(key="w_agg").options == aggregates_for(source) or at.selectbox(key="w_agg").disabled
        ref = masked(interaction_map(model, toks, layer=2, method=source, **kw))
        np.testing.assert_allclose(arr(figure(at, "detail")["data"][0]["z"]), ref, rtol=1e-4, atol=1e-6,
                                   equal_nan=True)

    at.selectbox(key="w_source").set_value("hidden").run()
    at.selectbox(key="w_agg").set_value("channel").run()
    at.number_input(key="w_ch").set_value(3).run()
    at.selectbox(key="w_norm").set_value("row").run()
    ok(at)
    ref = masked(interaction_map(model, toks, layer=2, aggregate=3, normalize_="row"))
    np.testing.assert_allclose(arr(figure(at, "detail")["data"][0]["z"]), ref, rtol=1e-5, atol=1e-7, equal_nan=True)

    at.selectbox(key="w_agg").set_value("mean_abs").run()
    at.selectbox(key="w_norm").set_value("raw").run()
    at.checkbox(key="w_rollout").check().run()
    ok(at)
    maps = [interaction_map(model, toks, layer=layer).abs() for layer in range(model.cfg.n_layers)]
    np.testing.assert_allclose(arr(figure(at, "detail")["data"][0]["z"]), masked(rollout(maps)), rtol=1e-4,
                               atol=1e-6, equal_nan=True)


def test_attribution_sources(env, model):
    toks = tokens_of(model)
    at = app("interactions", source="grad_x_input")
    ok(at)
    from interp.lrp import interaction_rows

    ref = interaction_rows(model, toks, method="grad_x_input")
    np.testing.assert_allclose(arr(figure(at, "detail")["data"][0]["z"]), causal_masked(ref.numpy()),
                               rtol=1e-4, atol=1e-5, equal_nan=True)
    assert "no per-layer thumbnails" in texts(at.caption)


def test_query_row_highlights_the_prompt(env, model):
    at = app("interactions", q=5)
    ok(at)
    html = html_of(at)
    assert "query 5" in html and "outline: 2px solid" in html
    at.slider(key="w_q").set_value(9).run()
    assert "query 9" in html_of(at)
    assert at.query_params["q"] == "9"


def test_thumbnails_sorted_by_metric(env, model):
    toks = tokens_of(model)
    at = app("interactions")
    fig = figure(at, "thumbs")
    n = model.cfg.n_layers * model.cfg.n_heads
    assert len(fig["data"]) == n
    per = torch.cat([interaction_map(model, toks, layer=layer, aggregate="none")[0]
                     for layer in range(model.cfg.n_layers)])
    score = map_metric(per.numpy(), "mass")
    best = int(np.argmax(score))
    np.testing.assert_allclose(arr(fig["data"][0]["z"]), causal_masked(per[best].numpy()), rtol=1e-5, atol=1e-7,
                               equal_nan=True)
    at.selectbox(key="w_sort").set_value("distance").run()
    ok(at)
    best_d = int(np.argmax(map_metric(per.numpy(), "distance")))
    np.testing.assert_allclose(arr(figure(at, "thumbs")["data"][0]["z"]), causal_masked(per[best_d].numpy()),
                               rtol=1e-5, atol=1e-7, equal_nan=True)
    layer, head = divmod(best_d, model.cfg.n_heads)
    at.selectbox(key="open_thumb").set_value(f"L{layer} ch{head}").run()  # opens it in the detail view
    ok(at)
    assert at.selectbox(key="w_layer").value == layer and at.number_input(key="w_ch").value == head
    np.testing.assert_allclose(arr(figure(at, "detail")["data"][0]["z"]), causal_masked(per[best_d].numpy()),
                               rtol=1e-5, atol=1e-7, equal_nan=True)


def test_long_prompt_gets_a_pooled_overview(env, model):
    prompt = tokfsm_prompt_text(200, seed=3)  # 401 tokens > pool_above (256)
    toks = tokens_of(model, prompt)
    at = app("interactions", prompt=prompt, win=64)
    ok(at)
    ref = interaction_map(model, toks, layer=0)[0].numpy()
    pooled, f = pool_map(causal_masked(ref))
    np.testing.assert_allclose(arr(figure(at, "overview")["data"][0]["z"]), pooled, rtol=1e-5, atol=1e-7,
                               equal_nan=True)
    detail = figure(at, "detail")["data"][0]
    np.testing.assert_allclose(arr(detail["z"]), causal_masked(ref[64:320, 64:320]), rtol=1e-5, atol=1e-7,
                               equal_nan=True)
    assert detail["x"][0].startswith("64·")
    assert "first 128 of 401 tokens" in texts(at.caption)


def test_model_folder_mamba1_thumbnails(env, roots):
    """A Mamba-1 folder inside the roots: thumbnails hold the top-mass channels of each layer."""
    from interp.attention import ssm_parameters
    from interp.attention.hidden import channel_mass

    folder = str((roots / "mamba1").resolve())
    at = app("interactions", model=folder)
    ok(at)
    m1 = interp.load(folder)
    toks = tokens_of(m1)
    np.testing.assert_allclose(arr(figure(at, "detail")["data"][0]["z"]), masked(interaction_map(m1, toks, layer=0)),
                               rtol=1e-5, atol=1e-7, equal_nan=True)
    fig = figure(at, "thumbs")
    assert len(fig["data"]) == 2 * 8
    p = ssm_parameters(m1, toks, layer=1)
    top = channel_mass(p.dt, p.A, p.B, p.C).topk(8).indices.tolist()
    shown = {a["text"].split()[1] for a in fig["layout"]["annotations"] if a["text"].startswith("L1 ")}
    assert shown == {f"ch{c}" for c in top}


def test_transformer_folder_attention(env, roots):
    folder = str((roots / "transformer").resolve())
    at = app("interactions", model=folder)
    ok(at)
    assert at.selectbox(key="w_source").options == [LABELS[s] for s in methods_for("transformer")]
    tf = interp.load(folder)
    toks = tokens_of(tf)
    np.testing.assert_allclose(arr(figure(at, "detail")["data"][0]["z"]),
                               masked(interaction_map(tf, toks, layer=0, method="attention")), rtol=1e-5, atol=1e-7,
                               equal_nan=True)
    assert len(figure(at, "thumbs")["data"]) == 2 * 4
    for page in ("lens", "steering", "export"):
        at.switch_page(f"views/{page}.py").run()
        ok(at)


def test_link_reproduces_the_view(env, model):
    at = app("interactions", source="latim", layer=3, norm="minmax")
    ok(at)
    assert at.selectbox(key="w_source").value == "latim" and at.selectbox(key="w_layer").value == 3
    ref = masked(interaction_map(model, tokens_of(model), layer=3, method="latim", normalize_="minmax"))
    np.testing.assert_allclose(arr(figure(at, "detail")["data"][0]["z"]), ref, rtol=1e-4, atol=1e-6, equal_nan=True)
    qp = dict(at.query_params)
    assert qp["source"] == "latim" and qp["layer"] == "3" and qp["norm"] == "minmax" and qp["prompt"] == PROMPT


# ------------------------------------------------------------------------------------------------
# logit lens, probes, features, steering, export
# ------------------------------------------------------------------------------------------------
def test_logit_lens_is_the_library_figure(env, model):
    toks = tokens_of(model)
    at = app("lens")
    ok(at)
    _, cache = model.run_with_cache(toks)
    ref = torch.stack([model.unembed(model.ln_final(cache[f"blocks.{i}.hook_resid_post"]))[0].softmax(-1).amax(-1)
                       for i in range(model.cfg.n_layers)])  # top-1 probability of each layer's read-out
    np.testing.assert_allclose(arr(figure(at, "lens")["data"][0]["z"]), ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    at2 = app("lens", prompt="<bos>1234")
    assert arr(figure(at2, "lens")["data"][0]["z"]).shape == (model.cfg.n_layers, 5)


def test_probes_sweep(env, model):
    at = app("probes")
    ok(at)
    assert not at.get("plotly_chart")  # nothing runs before the toggle
    at.toggle(key="probe_run").set_value(True).run()
    ok(at)
    fig = figure(at, "probes")
    df = at.dataframe[0].value
    res = tokfsm_probe_sweep(model, 64)
    fig_ref, rows = res.figure(), res.rows
    assert list(df["accuracy"]) == pytest.approx([r["accuracy"] for r in rows])
    np.testing.assert_allclose(arr(fig["data"][0]["z"]), np.asarray(fig_ref.data[0].z, dtype=float), equal_nan=True)
    n64 = int(df["n_train"].iloc[0])
    at.select_slider(key="w_probe_n").set_value(32).run()
    ok(at)
    assert int(at.dataframe[0].value["n_train"].iloc[0]) < n64


def test_features_page(env, model, roots):
    from interp.sae import activation_density, load_sae, logit_effects

    at = app("features")
    ok(at)
    assert "Choose a codebook model" in texts(at.info)
    assert "Choose an SAE folder" in texts(at.info)
    folder = str((roots / "sae_a").resolve())
    at.selectbox(key="sae_found").set_value(folder).run()
    ok(at)
    sae = load_sae(folder)
    toks = tokens_of(model)
    dens = activation_density(model, toks, sae=sae).numpy()
    np.testing.assert_allclose(arr(figure(at, "density")["data"][0]["x"]), np.log10(np.maximum(dens, 1e-7)), rtol=1e-6)
    k = min(10, model.cfg.vocab_size // 2)
    eff = logit_effects(model, sae=sae, latents=[0], k=k)
    bars = arr(figure(at, "effects")["data"][0]["x"])
    np.testing.assert_allclose(bars, np.concatenate([eff.bottom_values[0], eff.top_values[0].flip(0)]), rtol=1e-5)
    at.number_input(key="w_latent").set_value(5).run()
    ok(at)
    eff5 = logit_effects(model, sae=sae, latents=[5], k=k)
    np.testing.assert_allclose(arr(figure(at, "effects")["data"][0]["x"])[-k:], eff5.top_values[0].flip(0).numpy(),
                               rtol=1e-5)
    at.text_input(key="w_test").input("<bos>0841").run()
    ok(at)
    assert "latent 5, max" in html_of(at)
    at.selectbox(key="w_corpus").set_value("tokfsm").run()
    ok(at)
    assert at.query_params["corpus"] == "tokfsm"


def test_codebook_tab(env, model, cb_folder):
    from interp.codebook import (
        collect_codes, forced_continuations, load_codebook_model, similar_codes, usage_stats,
    )
    from interp.data import tokfsm_dataset

    at = app("features")
    ok(at)
    assert "python -m interp.codebook.zoo" in texts(at.caption) or not set(C.codebook_recipes()) - set(
        embedded_codebook_models())
    assert str(cb_folder) in at.selectbox(key="cb_found").options
    at.selectbox(key="cb_found").set_value(str(cb_folder)).run()
    ok(at)
    cbm = load_codebook_model(cb_folder)
    site = "blocks.0.ssm.hook_out"
    assert at.selectbox(key="w_cb_site").options == ["blocks.0.ssm.hook_out", "blocks.1.ssm.hook_out"]
    assert at.selectbox(key="w_cb_site").value == site
    toks = tokens_of(model)  # the page model (tokfsm-mamba2) reads the same digits: its prompt tokens are used
    ref = collect_codes(cbm, toks, keep_inputs=False).ids[site][0, :, 0].numpy()
    heat = figure(at, "cb_codes")["data"][0]
    assert [int(t) for t in np.asarray(heat["text"]).reshape(-1)] == ref.tolist()
    np.testing.assert_array_equal(arr(heat["z"]).reshape(-1), (ref == 0).astype(float))
    assert heat["x"][0].startswith("0·") and len(heat["x"]) == toks.shape[1]

    corpus = tokfsm_dataset(64, seed=0)
    run = collect_codes(cbm, corpus, keep_inputs=False)
    u = usage_stats(run)[site]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["codes used"] == f"{u['used']:.0f} / 32"
    assert metrics["dead fraction"] == f"{u['dead_fraction']:.3f}"
    assert metrics["usage entropy (nats)"] == f"{u['entropy']:.3f}"
    counts = torch.bincount(run.ids[site].reshape(-1), minlength=32).double()
    np.testing.assert_allclose(arr(figure(at, "cb_freq")["data"][0]["y"]), (counts / counts.sum()).numpy())
    usage = at.dataframe[0].value
    assert list(usage["site"]) == list(run.ids)
    sim = at.dataframe[1].value
    assert list(sim["code"]) == [c for c, _ in similar_codes(cbm, hook=site, code=0)]
    if (run.ids[site] == 0).any():
        assert "seq " in html_of(at) and "pos " in html_of(at)
    states = at.dataframe[2].value
    assert len(states) >= 1 and "Most associated state" in texts(at.caption)

    # forcing: pick a code whose forced continuation differs from the greedy baseline
    forced = {c: forced_continuations(cbm, toks, hook=site, code=c, max_new_tokens=8) for c in range(8)}
    code = next(c for c, (g0, g1) in forced.items() if g0 != g1)
    at.number_input(key="w_cb_code").set_value(code).run()
    ok(at)
    base, steered = (c.value for c in at.code[-2:])
    assert base == " ".join(C.str_tokens(cbm, forced[code][0])) and steered == " ".join(C.str_tokens(cbm, forced[code][1]))
    assert base != steered and "differs from the baseline" in texts(at.caption)
    np.testing.assert_array_equal(arr(figure(at, "cb_codes")["data"][0]["z"]).reshape(-1), (ref == code).astype(float))
    at.selectbox(key="w_cb_site").set_value("blocks.1.ssm.hook_out").run()
    ok(at)
    ref1 = collect_codes(cbm, toks, keep_inputs=False).ids["blocks.1.ssm.hook_out"][0, :, 0].numpy()
    assert [int(t) for t in np.asarray(figure(at, "cb_codes")["data"][0]["text"]).reshape(-1)] == ref1.tolist()


def test_code_view_is_the_code_report_with_strings(model, cb_folder):
    """interp.tasks.codes.code_view (the codebook tab's numbers): code_report on 64 TokFSM sequences (TokFSM) or
    the prompt, token strings of the prompt and examples, the prompt positions where the code is selected, and
    the TokFSM states where it fires."""
    from interp.codebook import code_report, load_codebook_model
    from interp.data import tokfsm_dataset
    from interp.tasks.codes import TOKFSM_SEQS, code_view
    from interp.tasks.tokfsm import tokfsm_code_states

    cbm = load_codebook_model(cb_folder)
    site, toks = "blocks.0.ssm.hook_out", tokens_of(model)
    code = int(code_report(cbm, toks, corpus=toks, hook=site, code=0).prompt_ids[0, -1])  # selected at the end
    corpus = tokfsm_dataset(TOKFSM_SEQS, seed=0)
    ref = code_report(cbm, toks, corpus=corpus, hook=site, code=code)
    cv = code_view(cbm, toks, hook=site, code=code, tokfsm=True)
    assert cv.corpus_name == "64 TokFSM sequences" and torch.equal(cv.corpus, corpus)
    assert torch.equal(cv.report.prompt_ids, ref.prompt_ids) and torch.equal(cv.report.fires, ref.fires)
    assert cv.prompt_str_tokens == C.str_tokens(cbm, toks)
    assert cv.example_str_tokens == [C.str_tokens(cbm, ex["context"]) for ex in ref.examples]
    assert cv.positions == [i for i in range(toks.shape[1]) if (ref.prompt_ids[:, i] == code).any()]
    assert toks.shape[1] - 1 in cv.positions
    assert (cv.states, cv.n_units) == tokfsm_code_states(corpus, ref.fires)
    plain = code_view(cbm, toks, hook=site, code=code)
    assert plain.corpus_name == "the prompt" and torch.equal(plain.corpus, toks)
    assert plain.states is None and plain.n_units == 0 and plain.state_note() == ""
    assert [r["code"] for r in cv.similar_table()] == [c for c, _ in ref.similar]
    assert [r["site"] for r in cv.usage_table()] == list(ref.usage)
    assert cv.usage_summary()["dead fraction"] == f"{ref.usage[site]['dead_fraction']:.3f}"
    assert cv.state_note().startswith(("Most associated state", f"Code {code} never fires"))
    with pytest.raises(ValueError, match="out of range"):
        code_view(cbm, toks, hook=site, code=10_000)


def test_default_prompt_follows_the_model_card(model):
    """interp.tasks.prompts.default_prompt: a TokFSM prompt for a TokFSM model, a copying prompt for a copying
    model (by the card), the digit symbols for another digit-tokenizer model, else an English sentence."""
    from interp.data.copying import copy_prompt
    from interp.tasks.prompts import ENGLISH, default_prompt

    assert default_prompt(MODEL, model) == tokfsm_prompt_text(16)
    copying = [n for n in interp.zoo.list_models() if model_task(n) == "copy"]
    if copying:
        assert default_prompt(copying[0]) == copy_prompt(12)
    tok = model.tokenizer
    assert default_prompt("/some/folder", model) == tok.bos_token + ("".join(tok.symbols) * 2)[:20]
    assert default_prompt("/some/folder") == ENGLISH


def test_codebook_tab_bad_inputs(env, roots, cb_folder, tmp_path):
    import shutil

    at = app("features")
    outside = tmp_path / "cbm_copy"
    shutil.copytree(cb_folder, outside)
    at.text_input(key="w_cb").input(str(outside)).run()
    assert "outside the folders this app may read" in texts(at.error)
    assert not at.exception
    at.text_input(key="w_cb").input(str(roots / "not_a_model")).run()
    assert "holds no codebooks.json" in texts(at.error)
    at.text_input(key="w_cb").input(str(roots / "missing")).run()
    assert "does not exist" in texts(at.error)
    for name in set(C.codebook_recipes()) - set(embedded_codebook_models()):
        at.text_input(key="w_cb").input(name).run()
        assert f"python -m interp.codebook.zoo {name} --install" in texts(at.error)
    at.text_input(key="w_cb").input(str(cb_folder)).run()
    ok(at)
    at.number_input(key="w_cb_code").set_value(31).run()
    ok(at)
    assert not at.exception

    # a codebooks.json inside the roots that points outside its folder, or names a non-embedded base
    evil = roots / "codebooks" / "evil"
    shutil.copytree(cb_folder, evil)
    index = json.loads((evil / "codebooks.json").read_text())
    index["sites"]["blocks.0.ssm.hook_out"] = "../../../.."
    (evil / "codebooks.json").write_text(json.dumps(index))
    with pytest.raises(C.InputError, match="codebooks.json"):  # edited under its checksum record: refused as damaged
        C.load_codebook(evil, [roots])
    index.pop("checksums")  # a hostile index need not carry a record: the path check still refuses it
    (evil / "codebooks.json").write_text(json.dumps(index))
    with pytest.raises(C.InputError, match="codebooks.json is outside the folders this app may read"):
        C.load_codebook(evil, [roots])
    index = json.loads((cb_folder / "codebooks.json").read_text())
    index.pop("checksums")
    index["base"] = str(tmp_path)
    (evil / "codebooks.json").write_text(json.dumps(index))
    with pytest.raises(C.InputError, match="not an embedded model"):
        C.load_codebook(evil, [roots])
    shutil.rmtree(evil)


def test_features_rejects_folders_outside_the_roots(env, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    at = app("features", sae=str(outside))
    assert "outside the folders this app may read" in texts(at.error)
    assert not at.exception


def test_steering_changes_the_next_token_distribution(env, model):
    from interp.metrics import kl_divergence
    from interp.steering import Direction, Intervention, next_token_probs, token_direction

    toks = tokens_of(model)
    at = app("steering")
    ok(at)
    hook = at.selectbox(key="w_steer_hook").value
    fig = figure(at, "dist")
    p_base, p_steer = arr(fig["data"][0]["y"]), arr(fig["data"][1]["y"])
    iv = Intervention(Direction(token_direction(model, 0)), hook, "add", 4.0, positions="all")
    ref0 = next_token_probs(model, toks).numpy()
    ref1 = next_token_probs(model, toks, fwd_hooks=iv.hooks(model)).numpy()
    top = np.argsort(-(ref0 + ref1), kind="stable")[:12]
    np.testing.assert_allclose(p_base, ref0[top], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p_steer, ref1[top], rtol=1e-5, atol=1e-7)
    assert not np.allclose(p_base, p_steer)
    kl_shown = float(at.metric[0].value.split()[0])
    kl_ref = float(kl_divergence(torch.from_numpy(ref0).double().log(), torch.from_numpy(ref1).double().log()))
    assert kl_shown == pytest.approx(kl_ref, abs=1e-4) and kl_shown > 0
    at.slider(key="w_scale").set_value(0.0).run()
    ok(at)
    fig0 = figure(at, "dist")
    np.testing.assert_allclose(arr(fig0["data"][0]["y"]), arr(fig0["data"][1]["y"]))
    assert float(at.metric[0].value.split()[0]) == 0.0
    assert len(at.code) == 2


def test_steering_with_an_sae_latent(env, roots):
    folder = str((roots / "sae_a").resolve())
    at = app("steering", steer_src="sae", sae=folder, latent=3, scale=8.0)
    ok(at)
    assert float(at.metric[0].value.split()[0]) > 0
    at2 = app("steering", steer_src="sae")
    assert "Choose an SAE on the Features page first" in texts(at2.error)


def test_export_page(env, model):
    at = app("export")
    ok(at)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels[:2] == ["HTML (self-contained)", "JSON (plotly)"] and "Arrays (.npz)" in labels
    if not kaleido_available():
        assert "needs the `kaleido` package" in texts(at.info)
    fig = figure(at, "export_fig")
    ref = masked(interaction_map(model, tokens_of(model), layer=0))
    np.testing.assert_allclose(arr(fig["data"][0]["z"]), ref, rtol=1e-5, atol=1e-7, equal_nan=True)
    at.radio(key="w_exp").set_value("logit lens").run()
    ok(at)
    assert figure(at, "export_fig")["data"][0]["y"][0] == "layer 0"


def test_export_bytes(model):
    import plotly.graph_objects as go

    files = figure_exports(go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])))
    html = files["html"].decode()
    assert 'src="http' not in html and len(html) > 1_000_000  # plotly.js inlined, nothing from a CDN
    assert json.loads(files["json"])["data"][0]["type"] == "heatmap"
    assert ("png" in files) == kaleido_available() or not kaleido_available()
    import io

    back = np.load(io.BytesIO(npz_bytes({"m": np.eye(3), "t": torch.arange(4), "s": np.array(["a", "b"])})))
    assert back["m"].shape == (3, 3) and back["t"].tolist() == [0, 1, 2, 3] and back["s"].tolist() == ["a", "b"]


# ------------------------------------------------------------------------------------------------
# bad inputs: a message each, and the app keeps serving
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", ["model", "interactions"])
def test_empty_prompt(env, page):
    at = app(page, prompt="   ")
    assert "The prompt is empty" in texts(at.error)
    assert not at.exception


def test_prompt_over_the_cap(env):
    env.setenv("INTERP_APP_MAX_TOKENS", "40")
    at = app("interactions", prompt=tokfsm_prompt_text(30))
    assert "over the cap of 40 tokens" in texts(at.error)
    assert not at.exception
    at.switch_page("views/model.py").run()
    at.text_area(key="w_prompt").input("<bos>0841").run()
    ok(at)
    assert "5 tokens" in texts(at.success)


@pytest.mark.parametrize("prompt, message, kind", [
    ("héllo ☃ 😀", "tokenizer cannot encode the prompt", "error"),
    ("0841\x07", "control character U+0007", "error"),
    ("08\u200b41", "invisible formatting character U+200B", "warning"),
    ("08\u202e41", "RIGHT-TO-LEFT OVERRIDE", "warning"),
])
def test_unusual_unicode(env, prompt, message, kind):
    at = app("interactions", prompt=prompt)
    assert not at.exception
    assert message in texts(getattr(at, kind))


@pytest.mark.parametrize("spec, message", [
    ("/no/such/model/folder", "outside the folders this app may read"),  # as for an existing one: nothing leaks
    ("./missing-model", "outside the folders this app may read"),
    ("/", "outside the folders this app may read"),
])
def test_bad_model_path(env, spec, message):
    at = app("model", model=spec)
    assert message in texts(at.error)
    assert not at.exception
    at.text_input(key="w_model").input(MODEL).run()
    ok(at)


def test_symlinked_files_outside_the_roots_refused(env, roots, tmp_path):
    """A model folder whose weights link out of the roots, an SAE folder of links out: refused, the target unnamed."""
    import shutil

    model_dir, sae_dir = roots / "linked_model", roots / "linked_sae"
    shutil.copytree(roots / "mamba1", model_dir)
    shutil.copy(model_dir / "model.safetensors", tmp_path / "w.safetensors")
    (model_dir / "model.safetensors").unlink()
    (model_dir / "model.safetensors").symlink_to(tmp_path / "w.safetensors")
    shutil.copytree(roots / "sae_a", tmp_path / "sae")
    sae_dir.mkdir()
    for f in (tmp_path / "sae").iterdir():
        (sae_dir / f.name).symlink_to(f)
    try:
        at = app("model", model=str(model_dir))
        assert "model.safetensors is outside the folders this app may read" in texts(at.error)
        at = app("features", sae=str(sae_dir))
        assert "outside the folders this app may read" in texts(at.error)
        assert str(tmp_path) not in texts(at.error) and not at.exception
    finally:
        shutil.rmtree(model_dir)
        shutil.rmtree(sae_dir)


def test_model_folder_without_weights(env, roots):
    at = app("model", model=str(roots / "not_a_model"))
    assert "is not a model folder" in texts(at.error)


def test_map_over_the_memory_budget(env):
    env.setenv("INTERP_APP_MAP_BUDGET_MB", "0.001")
    at = app("interactions")
    assert not at.exception
    assert "exceed the memory budget" in texts(at.warning)
    at.selectbox(key="w_source").set_value("grad_x_input").run()  # not budgeted: still serves
    assert not at.exception and figure(at, "detail")


# ------------------------------------------------------------------------------------------------
# pure helpers and the launcher
# ------------------------------------------------------------------------------------------------
def test_inside_resolves_and_checks(tmp_path):
    root = tmp_path / "runs"
    (root / "a").mkdir(parents=True)
    assert C.inside(root / "a", [root]) == (root / "a").resolve()
    with pytest.raises(C.InputError):
        C.inside(root / ".." / "x", [root])
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(C.InputError):
        C.inside(root / "link", [root])


def test_resolve_model_spec(tmp_path):
    roots = [tmp_path]
    assert C.resolve_model_spec(MODEL, roots) == MODEL
    assert C.resolve_model_spec("state-spaces/mamba-130m-hf", roots) == "state-spaces/mamba-130m-hf"
    for bad in ["", "../x/y", "/etc", "a\x00b"]:
        with pytest.raises(C.InputError):
            C.resolve_model_spec(bad, roots)


def test_pool_and_metrics():
    m = np.arange(16, dtype=float).reshape(4, 4)
    p, f = pool_map(m, out=2)
    assert f == 2 and p.tolist() == [[2.5, 4.5], [10.5, 12.5]]
    eye = np.eye(5)[None]
    assert map_metric(eye, "diagonal")[0] == pytest.approx(1.0)
    assert map_metric(eye, "distance")[0] == pytest.approx(0.0)
    assert map_metric(eye, "mass")[0] == pytest.approx(5.0)


def test_parse_config():
    cfg = C.parse_config(["--model", "x", "--max-tokens", "10", "--roots", "/tmp"], env={})
    assert cfg.model == "x" and cfg.max_tokens == 10 and cfg.roots == [Path("/tmp").resolve()]
    assert C.parse_config([], env={"INTERP_APP_MAP_BUDGET_MB": "1"}).map_budget_bytes == 2**20


def test_launcher_command(capsys):
    from interp.cli import COMMANDS, main

    assert COMMANDS["app"][0] == "interp.app_cli"
    main(["app", "--dry-run", "--model", MODEL, "--port", "8765"])
    out = capsys.readouterr().out
    assert "streamlit run" in out and str(ROOT / "apps" / "app.py") in out
    assert "--server.headless true" in out and "--server.address 127.0.0.1" in out
    assert "--browser.gatherUsageStats false" in out and f"-- --model {MODEL}" in out


def test_bad_query_parameters_fall_back(env):
    at = app("interactions", layer=99, q=5000, source="nope", agg="channel", ch=-5, rollout="maybe")
    ok(at)
    assert at.selectbox(key="w_layer").value == 0 and at.selectbox(key="w_source").value == "hidden"
    assert at.slider(key="w_q").value == at.slider(key="w_q").max and at.number_input(key="w_ch").value == 0
    at = app("steering", scale="abc", steer_hook="blocks.99.hook_resid_post", new=10**6)
    ok(at)
    assert at.slider(key="w_scale").value == 4.0 and at.slider(key="w_new").value == 64


# ------------------------------------------------------------------------------------------------
# TokFSM tools only for TokFSM models (decided by the model card, not the tokenizer)
# ------------------------------------------------------------------------------------------------
def test_tokfsm_tools_follow_the_model_card(env, roots, tmp_path):
    """copy-mamba reads the same digit tokenizer as the TokFSM models but was trained on copying: no TokFSM
    prompt sampler, no state-probe sweep, no TokFSM corpus. A model folder has no card: no TokFSM tools either."""
    from interp.sae import SAEConfig, SparseAutoencoder

    folder = str((roots / "mamba1").resolve())  # a random Mamba over the TokFSM digits, saved as a folder
    at = app("model")  # a TokFSM model: the sampler is offered
    ok(at)
    assert "Sample a TokFSM prompt" in button_labels(at)
    for spec in ("copy-mamba", folder):
        at = app("model", model=spec, prompt="")  # "" = the model's default prompt
        ok(at)
        assert "Sample a TokFSM prompt" not in button_labels(at), spec
        assert not [n for n in at.number_input if n.key == "n_states"], spec
        at.switch_page("views/probes.py").run()
        ok(at)
        assert "is not a TokFSM model" in rendered(texts(at.info)), spec
        assert not at.toggle and not at.get("plotly_chart"), spec
    at = app("model", model="copy-mamba", prompt="")
    assert "<sep>" in at.text_area(key="w_prompt").value  # a copying prompt, not a TokFSM one

    SparseAutoencoder(SAEConfig(d_in=128, d_sae=16, hook_name="blocks.1.hook_resid_post")).save(tmp_path / "sae_copy")
    env.setenv("INTERP_APP_ROOTS", os.pathsep.join([str(roots), str(tmp_path)]))
    at = app("features", model="copy-mamba", prompt="", sae=str((tmp_path / "sae_copy").resolve()))
    ok(at)
    assert at.selectbox(key="w_corpus").options == ["the prompt"]  # no "64 TokFSM sequences"
    assert model_task("copy-mamba") == "copy" and model_task(MODEL) == "tokfsm" and model_task(folder) is None
    assert is_tokfsm_model(MODEL) and not is_tokfsm_model("copy-mamba") and not is_tokfsm_model(folder)


# ------------------------------------------------------------------------------------------------
# the probe heat map: two panels side by side, nothing drawn over the other panel
# ------------------------------------------------------------------------------------------------
def assert_panels_apart(fig: dict) -> None:
    """Panels of a 1 × n heat-map figure (plotly JSON) do not overlap, each colour bar (with its tick labels)
    lies outside every panel, between its own panel and the next (the last in the right margin), and only the
    first panel draws the hook names (the others would draw them over the panel on their left)."""
    import re

    lay = fig["layout"]
    axes = sorted((k for k in lay if re.fullmatch(r"xaxis\d*", k)), key=lambda k: int(k[5:] or 1))
    doms = [lay[k]["domain"] for k in axes]
    assert len(doms) >= 2
    assert all(a[1] < b[0] for a, b in zip(doms, doms[1:])), doms
    margin = {"l": 80, "r": 80, **lay.get("margin", {})}  # plotly's default margins, unless set
    plot_w = lay["width"] - margin["l"] - margin["r"]
    bars = [t["colorbar"] for t in fig["data"] if t["type"] == "heatmap"]
    assert len(bars) == len(doms)
    for k, cb in enumerate(bars):
        assert cb.get("xanchor", "left") == "left", cb  # x is the bar's left edge
        x = cb["x"]
        assert x > doms[k][1] and not any(d[0] <= x <= d[1] for d in doms), (k, x, doms)
        right = x + (cb.get("xpad", 10) + cb.get("thickness", 30) + 45) / plot_w  # bar + tick labels + title
        limit = doms[k + 1][0] if k + 1 < len(doms) else 1 + margin["r"] / plot_w
        assert right <= limit, (k, right, limit)
    for k in axes[1:]:
        assert lay["y" + k[1:]].get("showticklabels") is False, k


def test_probe_figure_layout():
    """The figure of interp.probes.SweepResult (notebook 01 and the Probes page draw it), for 1, 2 and 8
    position groups."""
    from interp.probes import SweepResult

    hooks = ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(4)]
    for positions in (["all"], ["tens digit", "units digit"], [str(i) for i in range(8)]):
        rows = [{"hook": h, "layer": i, "position": p, "accuracy": 0.5 + 0.1 * i, "selectivity": 0.2 * i - 0.3}
                for i, h in enumerate(hooks) for p in positions]
        fig = SweepResult(rows=rows, hooks=hooks, positions=positions).figure()
        assert_panels_apart(json.loads(fig.to_json()))


def test_probe_page_figure_layout(env):
    at = app("probes", probe_n=32)
    at.toggle(key="probe_run").set_value(True).run()
    ok(at)
    assert_panels_apart(figure(at, "probes"))


# ------------------------------------------------------------------------------------------------
# logit lens: predicted token in each cell, p(true next token), one layer order, a position window
# ------------------------------------------------------------------------------------------------
def test_logit_lens_cells_show_the_predicted_token(env, model):
    from interp.lens import logit_lens

    at = app("lens")
    ok(at)
    trace = figure(at, "lens")["data"][0]
    lens = logit_lens(model, tokens_of(model))
    vocab = vocabulary(model)
    assert trace.get("texttemplate") == "%{text}"
    assert [list(r) for r in trace["text"]] == [[vocab[int(t)] for t in row] for row in lens.top_id]
    np.testing.assert_allclose(arr(trace["z"]), lens.top_prob, rtol=1e-5, atol=1e-6)


def test_logit_lens_true_next_token_probability(env, model):
    toks = tokens_of(model)
    at = app("lens")
    at.radio(key="w_lens_value").set_value("true").run()
    ok(at)
    assert at.query_params["lens_value"] == "true"
    z = arr(figure(at, "lens")["data"][0]["z"])
    _, cache = model.run_with_cache(toks)
    ref = np.stack([model.unembed(model.ln_final(cache[f"blocks.{k}.hook_resid_post"]))[0].softmax(-1)[
        torch.arange(toks.shape[1] - 1), toks[0, 1:]].detach().numpy() for k in range(model.cfg.n_layers)])
    np.testing.assert_allclose(z[:, :-1], ref, rtol=1e-4, atol=1e-6)
    assert np.isnan(z[:, -1]).all()  # nothing follows the last token
    assert "true next" in figure(at, "lens")["data"][0]["colorbar"]["title"]["text"]
    L = toks.shape[1]
    at.select_slider(key="w_lens_pos").set_value(L - 2).run()  # the table at one position: final layer first
    ok(at)
    table = at.dataframe[0].value
    assert list(table["p(true next)"]) == pytest.approx(ref[::-1, -1].tolist(), rel=1e-4)
    assert set(table["true next token"]) == {model.to_str_tokens(toks[0])[-1]}


def bottom_to_top(fig: dict) -> list[str]:
    """The y labels of a heat map (plotly JSON) in the order they are drawn, bottom first."""
    y = list(fig["data"][0]["y"])
    return y[::-1] if (fig["layout"].get("yaxis") or {}).get("autorange") == "reversed" else y


def test_logit_lens_layer_order_is_one_order_everywhere(env, model):
    """Every logit-lens figure (the Logit lens page, the Export page, the demo report) draws layer 0 at the
    bottom and the final layer at the top; the page's table lists them in that visual order (final first)."""
    from interp.demo import logit_lens_figure
    from interp.lens import LAYER_ORDER

    layers = [f"layer {k}" for k in range(model.cfg.n_layers)]
    assert LAYER_ORDER == "bottom-to-top"
    toks = tokens_of(model)
    demo = json.loads(logit_lens_figure(model, toks, model.to_str_tokens(toks[0])).to_json())
    at = app("lens")
    ok(at)
    assert bottom_to_top(figure(at, "lens")) == layers == bottom_to_top(demo)
    assert list(at.dataframe[0].value["layer"]) == layers[::-1]  # top row of the table = top row of the figure
    at.switch_page("views/export.py").run()
    at.radio(key="w_exp").set_value("logit lens").run()
    ok(at)
    assert bottom_to_top(figure(at, "export_fig")) == layers


def test_logit_lens_window_for_long_prompts(env, model):
    from interp.lens import logit_lens

    prompt = tokfsm_prompt_text(50, seed=1)  # 101 tokens, over the window (64)
    toks = tokens_of(model, prompt)
    full = logit_lens(model, toks)
    at = app("lens", prompt=prompt, lens_start=40, lens_len=16)
    ok(at)
    trace = figure(at, "lens")["data"][0]
    np.testing.assert_allclose(arr(trace["z"]), full.top_prob[:, 40:56], rtol=1e-5, atol=1e-6)
    assert trace["x"][0].startswith("40·") and trace["x"][-1].startswith("55·") and len(trace["x"]) == 16
    at.number_input(key="w_lens_start").set_value(90).run()  # the window stops at the prompt's end
    ok(at)
    np.testing.assert_allclose(arr(figure(at, "lens")["data"][0]["z"]), full.top_prob[:, 90:], rtol=1e-5, atol=1e-6)
    assert at.query_params["lens_start"] == "90"
    at = app("lens", prompt=prompt)  # by default, the first positions
    ok(at)
    np.testing.assert_allclose(arr(figure(at, "lens")["data"][0]["z"]), full.top_prob[:, :WINDOW], rtol=1e-5,
                               atol=1e-6)


# ------------------------------------------------------------------------------------------------
# token-interaction thumbnails, link values, error text
# ------------------------------------------------------------------------------------------------
def test_thumbnails_share_one_colour_scale_and_say_what_mass_is(env):
    at = app("interactions")
    ok(at)
    fig = figure(at, "thumbs")
    assert len({(t["zmin"], t["zmax"]) for t in fig["data"]}) == 1  # one colour scale ...
    assert [t.get("showscale") for t in fig["data"]].count(True) == 1  # ... shown by one colour bar
    assert "mass: " + METRIC_DEFINITIONS["mass"] in rendered(texts(at.caption))
    assert all("mass = " in t["hovertemplate"] for t in fig["data"])
    assert "Σᵢⱼ |mᵢⱼ|" in METRIC_DEFINITIONS["mass"]
    at.selectbox(key="w_sort").set_value("distance").run()
    ok(at)
    assert "distance: " + METRIC_DEFINITIONS["distance"] in rendered(texts(at.caption))


def test_ignored_link_values_are_named(env):
    at = app("interactions", layer=99, source="nope", q=5000, rollout="maybe", method="nonsense")
    assert not at.exception and not at.error
    shown = rendered(texts(at.warning))
    for part in ("Ignored in the link", "layer=99: not one of 0..3; using 0", "source='nope'", "q=5000",
                 "rollout='maybe': not true or false", "method='nonsense'"):
        assert part in shown, (part, shown)
    at.button(key="dismiss_link_notes").click().run()
    assert "Ignored in the link" not in rendered(texts(at.warning))
    at = app("interactions", layer=2, source="latim")
    ok(at)
    assert "Ignored in the link" not in rendered(texts(at.warning))


def test_error_text_is_plain_and_keeps_its_hint(env, roots):
    """A model folder whose name holds Markdown characters and whose load fails with a long message: the error
    shows the path as is (underscores, asterisks) and the loader's last sentence (how to fix it)."""
    import shutil

    folder = roots / "bad_models" / ("__best__*run*_" + "long_folder_name_" * 12)
    folder.mkdir(parents=True)
    shutil.copy(roots / "mamba1" / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"\0")  # pickle only: refused with a conversion hint
    at = app("model", model=str(folder))
    assert not at.exception
    shown = rendered(texts(at.error))
    assert f"Could not load model '{folder.resolve()}'" in shown and f"missing {folder.resolve()}/" in shown
    assert shown.endswith("save_pretrained(folder, safe_serialization=True)`.")
    assert "Hub ids need the network" not in shown  # a folder is not a hub id
    assert rendered(C.plain_markdown("a_b_ *c* `d`\n# e\n1. f <bos>")) == "a_b_ *c* `d`\n# e\n1. f <bos>"


# ------------------------------------------------------------------------------------------------
# patching
# ------------------------------------------------------------------------------------------------
def test_patching_page_is_the_library_sweep(env):
    """The built-in TokFSM task on tokfsm-mamba: the heat map and its caption hold patch_sweep's numbers; switching
    to attribution patching shows attribution_sweep's; the per-component view is component_sweep's."""
    from interp.data import tokfsm_patching_pairs
    from interp.patching import (LogitDiff, attribution_sweep, component_sweep, patch_figure, patch_sites,
                                 patch_sweep)

    m = interp.load("tokfsm-mamba")
    at = app("patching", model="tokfsm-mamba", patch_n=4)
    ok(at)
    assert at.selectbox(key="w_patch_site").options == patch_sites(m)
    clean, corrupted, answer, wrong = tokfsm_patching_pairs(4, seed=0)
    kw = dict(corrupted=corrupted, metric=LogitDiff(answer, wrong))
    ref = patch_sweep(m, clean, **kw)
    heat = figure(at, "patch")["data"][0]
    np.testing.assert_allclose(arr(heat["z"]), ref.values.numpy(), rtol=1e-5, atol=1e-6)
    assert heat["x"] == list(patch_figure(ref, str_tokens=C.str_tokens(m, clean[0])).data[0].x)  # token ticks
    assert f"clean run {ref.clean:.4g}, corrupted run {ref.corrupted:.4g}" in texts(at.caption)
    at.selectbox(key="w_patch_method").set_value("attribution").run()
    ok(at)
    approx = attribution_sweep(m, clean, **kw)
    np.testing.assert_allclose(arr(figure(at, "patch")["data"][0]["z"]), approx.values.numpy(), rtol=1e-5,
                               atol=1e-6)
    assert "attribution patching" in texts(at.caption) and at.query_params["patch_method"] == "attribution"
    assert not np.allclose(approx.values.numpy(), ref.values.numpy())  # the page did switch
    at.checkbox(key="w_patch_comp").check().run()
    ok(at)
    comp = component_sweep(m, clean, **kw)
    np.testing.assert_allclose(arr(figure(at, "patch_components")["data"][0]["z"]), comp.values.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_patching_page_errors_are_messages(env, roots):
    """Typed prompts of different token lengths, an answer that is not one token, a site the model lacks (from a
    link) and a site the method does not support: each a message, never a traceback."""
    at = app("patching", model="tokfsm-mamba", patch_task="typed", patch_clean="<bos>0841",
             patch_corr="<bos>08471", patch_ans="7", patch_wrong="3")
    assert not at.exception and not at.get("plotly_chart")
    assert "same token length" in rendered(texts(at.error))
    at.text_input(key="w_patch_corr").input("<bos>0847").run()
    ok(at)
    assert arr(figure(at, "patch")["data"][0]["z"]).shape == (interp.load("tokfsm-mamba").cfg.n_layers, 5)
    at.text_input(key="w_patch_ans").input("77").run()
    assert not at.exception
    assert "The answer '77' is not a single token" in rendered(texts(at.error))
    at = app("patching", model=str(roots / "transformer"), patch_site="state", patch_task="tokfsm",
             patch_clean="<bos>0841", patch_corr="<bos>0847", patch_ans="7", patch_wrong="3")
    ok(at)  # no recurrent state, no built-in task: both fall back, named in the link note
    shown = rendered(texts(at.warning))
    assert "patch_site='state': not one of resid_pre" in shown and "patch_task='tokfsm'" in shown
    at = app("patching", model="tokfsm-mamba", patch_n=2, patch_site="state", patch_method="attribution")
    assert not at.exception
    assert "attribution patching of the SSM recurrent state is not available" in rendered(texts(at.error))
