"""Every notebook runs, and each ``notebooks/*.ipynb`` is in sync with its jupytext ``.py`` source.

The notebooks are kept as jupytext py:percent files (the source of truth) plus the generated
``.ipynb``. Execution goes through nbclient with a private kernelspec whose argv is this very
interpreter (``sys.executable``, i.e. ``.venv/bin/python`` under ``make test``), so the kernel sees
the same environment as the tests whatever other ``python3`` kernels the machine has. If no kernel
can be started at all (no ZMQ sockets in a sandbox, say), the notebook's code runs as a script in a
subprocess of the same interpreter instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
SOURCES = sorted(NB_DIR.glob("*.py"))
KERNEL = "interp-test-python"
CELL_TIMEOUT = 300
PROBE = "import sys; print(sys.prefix)"  # the venv, not the base interpreter symlinked to


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.fixture(scope="session")
def kernel(tmp_path_factory):
    """Name of a kernel running ``sys.executable``, or None when no kernel can be started."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from ipykernel.kernelspec import write_kernel_spec

    data_dir = tmp_path_factory.mktemp("jupyter")
    spec_dir = write_kernel_spec(str(data_dir / "kernels" / KERNEL), overrides={"display_name": "interp tests"})
    spec = json.loads((Path(spec_dir) / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "PLOTLY_RENDERER", "MPLBACKEND")}
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(data_dir), saved["JUPYTER_PATH"]]))
    os.environ["PLOTLY_RENDERER"] = "json"  # small outputs; the kernel inherits the environment
    os.environ["MPLBACKEND"] = "Agg"
    name: str | None = KERNEL
    try:
        from nbclient import NotebookClient

        probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PROBE)])
        NotebookClient(probe, kernel_name=KERNEL, timeout=120, startup_timeout=120).execute()
        out = probe.cells[0].outputs[0]["text"].strip()
        assert out == sys.prefix, f"the kernel runs in {out}, the tests in {sys.prefix}"
    except AssertionError:
        raise
    except Exception as e:  # no kernel can start here: fall back to running the code as a script
        print(f"cannot start a Jupyter kernel ({type(e).__name__}: {e}); running notebooks as scripts")
        name = None
    yield name
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_there_are_notebooks():
    assert SOURCES, f"no jupytext notebooks in {NB_DIR}"


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_ipynb_in_sync_with_py(source):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} missing: run `jupytext --to ipynb {source.relative_to(ROOT)}`"
    from_py = jupytext.read(source)
    from_ipynb = jupytext.read(ipynb)
    assert _cells(from_py) == _cells(from_ipynb), (
        f"{ipynb.name} is out of sync with {source.name}: run `jupytext --to ipynb {source.relative_to(ROOT)}`"
    )
    # the round trip py -> ipynb -> py is stable
    text = jupytext.writes(from_ipynb, fmt="py:percent")
    assert _cells(jupytext.reads(text, fmt="py:percent")) == _cells(from_py)
    assert from_py.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_runs(source, kernel, tmp_path):
    nb = jupytext.read(source)
    if kernel is None:
        script = tmp_path / (source.stem + "_script.py")
        script.write_text(jupytext.writes(nb, fmt="py:percent"))
        env = dict(os.environ, PLOTLY_RENDERER="json", PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, str(script)], cwd=NB_DIR, env=env, capture_output=True, text=True,
                              timeout=CELL_TIMEOUT)
        assert proc.returncode == 0, f"{source.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return
    from nbclient import NotebookClient

    nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE))
    client = NotebookClient(nb, kernel_name=kernel, timeout=CELL_TIMEOUT, startup_timeout=120,
                            resources={"metadata": {"path": str(NB_DIR)}})
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    ran = nb.cells[0].outputs[0]["text"].strip()
    assert ran == sys.prefix, f"the kernel ran in {ran}, the tests in {sys.prefix}"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
