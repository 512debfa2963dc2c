"""`make demo`'s job runs to completion offline and writes its report."""

from __future__ import annotations

import subprocess
import sys


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
