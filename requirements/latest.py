"""Helpers of ``make test-latest`` (the drift check); standard library only.

    python requirements/latest.py --caps on|off   print the project's requirements (every extra) for pip: the
                                                  pyproject.toml ranges, or with ``off`` the same without upper
                                                  bounds; torch stays at requirements/torch.txt (the CPU build)
    python requirements/latest.py --diff          print the installed versions that differ from requirements/lock.txt
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYPROJECT = HERE.parent / "pyproject.toml"
LOCK = HERE / "lock.txt"


def requirements(caps: bool) -> list[str]:
    """Every requirement of the project and its extras (the ``all`` extra's self-reference left out)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = list(project["dependencies"])
    for name, extra in project["optional-dependencies"].items():
        reqs += [r for r in extra if not r.startswith(project["name"] + "[")]
    out = []
    for r in dict.fromkeys(reqs):
        if re.match(r"torch\b", r):
            continue
        if not caps:
            name, spec = re.match(r"([A-Za-z0-9_.\-\[\]]+)(.*)", r).groups()
            r = name + ",".join(s for s in spec.split(",") if s and not s.strip().startswith("<"))
        out.append(r)
    return [f"-c {HERE / 'torch.txt'}", *out]


def pins(lock: Path = LOCK) -> dict[str, str]:
    """``name -> version`` of the lock file (names normalised)."""
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", lock.read_text(), flags=re.M)
    return {_norm(n): v for n, v in found}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def drift(lock: Path = LOCK) -> list[tuple[str, str, str]]:
    """(name, locked, installed) for every locked package installed at another version."""
    locked = pins(lock)
    out = []
    for dist in metadata.distributions():
        name = _norm(dist.metadata["Name"])
        if name in locked and dist.version != locked[name]:
            out.append((name, locked[name], dist.version))
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="requirements/latest.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--caps", choices=("on", "off"))
    p.add_argument("--diff", action="store_true")
    a = p.parse_args(argv)
    if a.caps:
        print("\n".join(requirements(a.caps == "on")))
    if a.diff:
        changed = drift()
        print(f"{len(changed)} installed versions differ from requirements/lock.txt"
              + "".join(f"\n  {n}: {old} -> {new}" for n, old, new in changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
