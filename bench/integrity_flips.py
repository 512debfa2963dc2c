"""Bit-flip sweep over every file type the library writes (issue #16 acceptance: zero silent loads in 300 random
single-bit flips per file type). Each flip is loaded through the library's own loader; a load must raise an error
naming the flipped file.

    .venv/bin/python bench/integrity_flips.py [--flips 300]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flips", type=int, default=300, help="random single-bit flips per file type")
    a = p.parse_args()
    spec = importlib.util.spec_from_file_location("faults", ROOT / "tests" / "test_faults_integrity.py")
    faults = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(faults)
    total = {"refused": 0, "silent": 0, "unnamed": 0}
    print("| file type | flips | refused naming the file | silent loads | refused, file unnamed | s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for k, (kind, (path, load)) in enumerate(faults.build_written(Path(tmp)).items()):
            t0 = time.perf_counter()
            res = faults.flip_sweep(path, load, a.flips, seed=1000 + k)
            for key in total:
                total[key] += res[key]
            print(f"| {kind} ({path.name}) | {a.flips} | {res['refused']} | {res['silent']} | {res['unnamed']} "
                  f"| {time.perf_counter() - t0:.1f} |")
            for ex in res["examples"]:
                print(f"|  example: {ex} | | | | | |")
    print(f"| **all** | {sum(total.values())} | {total['refused']} | {total['silent']} | {total['unnamed']} | |")


if __name__ == "__main__":
    main()
