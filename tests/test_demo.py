"""`make demo`'s job runs to completion offline and writes its report, which carries the printed checks
(the same values, rendered from one typed result) and readable figures."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch
from conftest import load_tokfsm

import interp
from interp import demo


def test_demo_runs_and_writes_report(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "interp.demo", "--out", str(out)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "max error" in res.stdout
    assert "model tokfsm-mamba:" in res.stdout  # the embedded model, not the random fallback
    accuracy = float(res.stdout.split("TokFSM transition accuracy")[1].split(":")[1].split()[0])
    assert accuracy >= 0.95
    assert "hidden-attention map of layer" in res.stdout
    html = (out / "report.html").read_text()
    assert "Plotly.newPlot" in html and "<script src=\"http" not in html  # plotly.js inlined, nothing fetched
    assert "Logit lens" in html and "Hidden attention, layer" in html
    cb_accuracy = float(res.stdout.split("tokfsm-mamba-codebooks: transition accuracy")[1].split(":")[1].split()[0])
    assert cb_accuracy >= 0.93 and "code chosen at each position" in html


# ------------------------------------------------------------------------------------------------
# the report carries what the terminal prints, and readable figures
# ------------------------------------------------------------------------------------------------
class _TableRows(HTMLParser):
    """The text of the cells of each row of the table with ``id="checks"`` (entities unescaped)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self._in_table = self._in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == "checks":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag == "td":
            self._in_cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag == "td":
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.rows[-1][-1] += data


def checks_rows(html: str) -> list[tuple[str, str]]:
    """(check, result) of each body row of the report's checks table."""
    parser = _TableRows()
    parser.feed(html)
    return [tuple(r) for r in parser.rows if r]


def report_figures(html: str) -> list[go.Figure]:
    """Every figure drawn in a report, rebuilt from the data and layout of its ``Plotly.newPlot`` call."""
    divs = set(re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', html))
    dec, figs = json.JSONDecoder(), []
    for m in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', html):
        if m.group(1) not in divs:
            continue
        data, end = dec.raw_decode(html, m.end())
        layout, _ = dec.raw_decode(html, end + re.match(r"\s*,\s*", html[end:]).end())
        figs.append(pio.from_json(json.dumps({"data": data, "layout": layout})))
    return figs


def as_array(v) -> np.ndarray:
    """A plotly data array (plain list or a ``{"dtype", "bdata", "shape"}`` typed array) as numpy."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        return a.reshape([int(s) for s in str(shape).split(",")]) if shape is not None else a
    return np.asarray(v)


def figure_titled(figs: list[go.Figure], part: str) -> go.Figure:
    found = [f for f in figs if part in (f.layout.title.text or "")]
    assert len(found) == 1, [f.layout.title.text for f in figs]
    return found[0]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo run once in-process: its return value, its stdout lines, its report and the report's figures."""
    out = tmp_path_factory.mktemp("demo")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = demo.main(["--out", str(out)])
    html = (out / "report.html").read_text(encoding="utf-8")
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    return SimpleNamespace(result=result, lines=lines, html=html, figures=report_figures(html), out=out)


def test_report_table_carries_every_printed_check(demo_run):
    *checks, where = demo_run.lines
    assert where.startswith("report: ") and str((demo_run.out / "report.html").resolve()) in where
    assert any("max error" in ln for ln in checks) and any("transition accuracy" in ln for ln in checks)
    rows = checks_rows(demo_run.html)
    # the same lines, numbers formatted identically, in the same order
    assert [f"{name}: {value}" for name, value in rows] == checks
    # the table is at the top: before the first figure and before the inlined plotly.js
    table = demo_run.html.index("<table id='checks'")
    assert table < demo_run.html.index("<script") and table < demo_run.html.index("plotly-graph-div")


def test_terminal_and_report_render_from_one_typed_result(demo_run):
    result = demo_run.result
    assert isinstance(result, demo.DemoResult), "main() returns the DemoResult it printed and drew"
    assert demo.summary_text(result).splitlines() == demo_run.lines[:-1]
    assert checks_rows(demo_run.html) == [(c.name, c.value) for c in result.checks()]
    assert len(demo_run.figures) == len(result.figures)
    assert result.scan_max_error < 1e-4 and result.first_changed == result.patch_position
    assert f"max error {result.scan_max_error:.2e}" in demo_run.html
    assert f"{result.transition_accuracy:.4f}" in demo_run.html and f"{result.codebook_accuracy:.4f}" in demo_run.html


def test_report_rendering_escapes_and_matches_summary():
    result = demo.DemoResult(
        model="m<1>", family="mamba1", n_layers=1, d_model=8, n_hooks=3, load_s=0.5, prompt="<bos>12", n_tokens=3,
        n_cached=2, scan_max_error=1.5e-7, patch_position=1, first_changed=1, max_logit_change=0.25,
        greedy="<eos>&", steered="00", hidden_layer=0, hidden_shape=(3, 3), hidden_argmax=2,
        transition_accuracy=0.975, note="a note")
    html = demo.report_html(result)
    assert "<bos>" not in html and "&lt;bos&gt;" in html
    lines = demo.summary_text(result).splitlines()
    assert lines[0] == "note: a note"
    assert "TokFSM transition accuracy (100 samples of 128 tokens from BOS, T=1): 0.9750" in lines
    assert [f"{n}: {v}" for n, v in checks_rows(html)] == lines


def test_fallback_model_note_reaches_the_report(tmp_path, monkeypatch, capsys):
    def not_installed(name, *args, **kwargs):
        raise FileNotFoundError(name)

    monkeypatch.setattr(interp, "load", not_installed)  # the embedded model is missing: the tiny random one runs
    demo.main(["--out", str(tmp_path)])
    *lines, _ = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert "tiny random Mamba" in lines[0] and "model tiny-random-mamba:" in lines[1]
    rows = checks_rows((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert [f"{name}: {value}" for name, value in rows] == lines


def test_every_report_figure_has_axis_and_colour_bar_titles(demo_run):
    assert len(demo_run.figures) == 4  # Δ, logit lens, hidden attention, codebook codes
    for fig in demo_run.figures:
        name = fig.layout.title.text
        layout = fig.layout.to_plotly_json()
        axes = [k for k in layout if re.fullmatch(r"[xy]axis\d*", k)]
        assert {"xaxis", "yaxis"} <= set(axes), (name, axes)
        for k in axes:
            assert (fig.layout[k].title.text or "").strip(), f"{name}: {k} has no title"
        for trace in fig.data:
            if trace.type == "heatmap":
                assert trace.showscale is not False, f"{name}: heat map without a colour bar"
                assert (trace.colorbar.title.text or "").strip(), f"{name}: colour bar has no title"


def test_dt_map_shows_every_channel(demo_run):
    model = load_tokfsm("tokfsm-mamba")
    _, cache = model.run_with_cache(model.to_tokens("<bos>0841", prepend_bos=False),
                                    names_filter="blocks.0.ssm.hook_dt")
    n = cache["blocks.0.ssm.hook_dt"].shape[-1]
    fig = figure_titled(demo_run.figures, "Δ")
    assert f"all {n} channels" in fig.layout.title.text
    heat = fig.data[0]
    assert as_array(heat.z).shape == (n, len(heat.x))
    assert [int(c) for c in heat.y] == list(range(n))


def test_dt_map_names_the_channels_it_shows_when_there_are_too_many():
    torch.manual_seed(0)
    dt = torch.rand(5, 300)
    fig = demo.dt_figure(dt, list("abcde"), max_rows=16)
    top = sorted(dt.mean(0).topk(16).indices.tolist())
    title = fig.layout.title.text
    assert "16 of 300 with the largest mean Δ" in title and "channel order" in title
    assert [int(c) for c in fig.data[0].y] == top  # exactly which channels, by index
    np.testing.assert_allclose(np.asarray(fig.data[0].z), dt[:, top].T.numpy())
    assert "all 8 heads" in demo.dt_figure(torch.rand(5, 8), list("abcde"), unit="head").layout.title.text


def test_codebook_codes_use_a_categorical_colour_mapping(demo_run):
    fig = figure_titled(demo_run.figures, "code chosen at each position")
    heat = fig.data[0]
    scale = [(float(s), c) for s, c in heat.colorscale]
    n = len(scale) // 2
    # stepped: pairs of equal colours whose bands tile [0, 1], one band per category, no two alike
    assert len(scale) == 2 * n and n > 1
    for i in range(n):
        (lo, c0), (hi, c1) = scale[2 * i], scale[2 * i + 1]
        assert c0 == c1 and lo == pytest.approx(i / n) and hi == pytest.approx((i + 1) / n)
    assert len({c for _, c in scale}) == n
    assert (heat.zmin, heat.zmax) == (-0.5, n - 0.5)  # integer category i sits in the middle of band i
    z = as_array(heat.z).astype(int)
    codes = as_array(heat.text).astype(int)
    assert z.shape == codes.shape and z.min() >= 0 and z.max() < n
    # one category per (codebook, code): the same code in a row always has the same colour, different codes differ
    for r in range(z.shape[0]):
        assert len(set(zip(z[r], codes[r]))) == len(set(z[r])) == len(set(codes[r]))
    # the colour bar and the hover name the code
    ticks = dict(zip(heat.colorbar.tickvals, heat.colorbar.ticktext))
    for r, c in zip(z.ravel(), codes.ravel()):
        assert ticks[r].endswith(f" {c}")
    assert "code %{customdata}" in heat.hovertemplate
