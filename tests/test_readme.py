"""The README's Python blocks run as pasted, offline, in order, in one namespace (as a reader would paste them).

The blocks run in a fresh interpreter whose working directory is a temporary folder (what they write, e.g.
``runs/codebook/x``, lands there) with the hub offline; a failing block is reported by its number and first line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

RUNNER = r"""
import json, linecache, sys, traceback
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for i, (line, code) in enumerate(blocks, 1):
    name = f"README.md:{line}"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)  # readable back, as a notebook cell (nnsight)
    try:
        exec(compile(code, name, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"README python block {i} (line {line}) failed", file=sys.stderr)
        sys.exit(1)
print(f"{len(blocks)} blocks ran")
"""


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Every ```python fenced block of ``text``: (line number of its first code line, code)."""
    blocks = []
    for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append((text.count("\n", 0, m.start(1)) + 1, m.group(1)))
    return blocks


def test_readme_has_python_blocks():
    assert len(python_blocks(README.read_text())) >= 4


@pytest.mark.slow
def test_readme_python_blocks_run_in_order(tmp_path):
    blocks = python_blocks(README.read_text())
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(tmp_path / "blocks.json")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"{len(blocks)} blocks ran" in proc.stdout
