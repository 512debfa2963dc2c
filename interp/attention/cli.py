"""The ``interp attention`` command: the copying benchmark and perturbation curves of interaction maps.

    python -m interp.attention.cli copying [--models copy-mamba copy-mamba2] [--methods ...] [--n 50]
        [--markdown FILE] [--json FILE]
    python -m interp.attention.cli perturbation [--model copy-mamba | tokfsm-mamba ...] [--methods ...] [--n 20]
        [--data auto|copy|tokfsm] [--baseline ID] [--steps K]

Models are embedded names, checkpoint folders or ``LABEL=FOLDER``; methods are the specs of
:mod:`interp.attention.methods`. The benchmarks themselves are :mod:`interp.attention.benchmarks`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from interp import zoo

from .benchmarks import CANDIDATES, DEFAULT_COPY_METHODS, BenchmarkTable, copying_benchmark, perturbation_benchmark

__all__ = ["main"]


def _model_arg(spec: str) -> tuple[str, str]:
    """``NAME``, ``PATH`` or ``LABEL=PATH`` -> (label, what interp.load gets)."""
    if "=" in spec:
        label, _, path = spec.partition("=")
        return label, path
    return (Path(spec).name or spec) if Path(spec).expanduser().is_dir() else spec, spec


def _available(specs: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    found, missing = {}, []
    for s in specs:
        label, target = _model_arg(s)
        if Path(target).expanduser().is_dir() or zoo.embedded_path(target) is not None:
            found[label] = target
        else:
            missing.append(target)
    return found, missing


def main(argv: list[str] | None = None) -> BenchmarkTable | None:
    p = argparse.ArgumentParser(prog="interp attention",
                                description="Evaluate token-interaction methods (copying benchmark, perturbation).")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("copying", "ROC-AUC / AP / recall@1 of the true copy source"),
                        ("perturbation", "MoRF / LeRF perturbation curves (ΔA)")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--models", "--model", nargs="+", default=["copy-mamba", "copy-mamba2"],
                       help="embedded model names, checkpoint folders, or LABEL=FOLDER (default copy-mamba copy-mamba2)")
        s.add_argument("--methods", nargs="+", default=None,
                       help=f"method specs (default: {' '.join(DEFAULT_COPY_METHODS)}); layer-wise ones take "
                            "@rollout|@sum|@last|@K")
        s.add_argument("--n", type=int, default=50 if name == "copying" else 20, help="number of sequences")
        s.add_argument("--n-range", type=int, nargs=2, default=(16, 32), metavar=("LO", "HI"), help="copy lengths")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--markdown", default=None, metavar="FILE", help="also write the table as markdown")
        s.add_argument("--json", default=None, metavar="FILE", help="also write the raw rows as JSON")
        s.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
        s.add_argument("--progress", action="store_true")
        if name == "copying":
            s.add_argument("--candidates", choices=CANDIDATES, default="before",
                           help="scored source positions: j < t (default), j <= t, or the first half")
        else:
            s.add_argument("--baseline", type=int, default=None,
                           help="replacement token id (default: PAD for copy data, BOS for TokFSM)")
            s.add_argument("--data", choices=("auto", "copy", "tokfsm"), default="auto",
                           help="sequences: copying or TokFSM (auto: by the model's vocabulary)")
            s.add_argument("--seq-len", type=int, default=64, help="TokFSM sequence length (default 64)")
            s.add_argument("--steps", type=int, default=None, help="number of k steps (default: every k)")
    args = p.parse_args(argv)
    models, missing = _available(args.models)
    for m in missing:
        print(f"skipping {m}: not installed (train it with `python -m interp.zoo.train {m} --install`) "
              "and not a checkpoint folder", file=sys.stderr)
    if not models:
        print("no model to evaluate", file=sys.stderr)
        raise SystemExit(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        if args.cmd == "copying":
            table = copying_benchmark(models, methods=args.methods, n_sequences=args.n, n_range=tuple(args.n_range),
                                      seed=args.seed, candidates=args.candidates, progress=args.progress)
        else:
            table = perturbation_benchmark(models, methods=args.methods, n_sequences=args.n, n_range=tuple(args.n_range),
                                           seed=args.seed, baseline_id=args.baseline, steps=args.steps,
                                           data=args.data, seq_len=args.seq_len, progress=args.progress)
    finally:
        torch.set_num_threads(threads)
    print(table.to_text())
    print(f"({time.perf_counter() - t0:.1f} s)")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table.to_markdown())
    if args.json:
        with open(args.json, "w") as f:
            f.write(table.to_json())
    return table


if __name__ == "__main__":  # pragma: no cover
    from interp.cli import run

    sys.exit(run("interp attention", main, sys.argv[1:]))
