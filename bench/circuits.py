"""Circuit identification on the TokFSM patching task: the SAE-code ranking (O'Neill & Bui 2024) and per-component
activation patching, scored against the resample-ablation ground truth.

    python bench/circuits.py                                   # tokfsm-mamba2, tokfsm-transformer, tokfsm-mamba
    python bench/circuits.py --models tokfsm-transformer --seeds 5 --threshold 0.15

Task (:func:`interp.data.tokfsm_patching_pairs`): a TokFSM walk, then the tens digit of the next state; the answer is
its units digit; the corrupted prompt swaps the last whole state so that another units digit is right. Metric: the
logit difference (answer - wrong), normalised (clean 1, corrupted 0).

Ground truth (:func:`interp.patching.circuit_ground_truth`, docs/design.md): on ``--gt-pairs`` held-out pairs, every
component (head / Mamba-1 channel group) whose resample ablation (its corrupted activation patched into the clean
run at every position) moves the metric by more than ``--threshold`` of the clean-corrupted gap; all components
measured (one noising sweep).

Methods, each given the same ``--pairs`` pairs (positives = clean prompts, negatives = corrupted ones) and scored by
precision / recall of its top k components, k = the ground truth's size (so precision = recall):
  SAE codes           :func:`interp.patching.sae_code_circuit` (shared ReLU SAE, argmax codes); mean over
                      ``--seeds`` SAE seeds (min-max in brackets), seconds per seed
  activation patching one denoising :func:`interp.patching.component_sweep` (all positions), top k by |effect|
  chance              the expected precision of a random ranking, k / n_components
Times are wall seconds on this machine with ``--threads`` torch threads (both methods alike).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import interp
from interp.data import tokfsm_patching_pairs
from interp.patching import (LogitDiff, SAECodeConfig, circuit_ground_truth, component_sweep, precision_recall,
                             sae_code_circuit)


def run(name: str, args: argparse.Namespace) -> list[tuple]:
    model = interp.load(name)
    gc, gx, ga, gw = tokfsm_patching_pairs(args.gt_pairs, seed=args.gt_seed)
    t0 = time.perf_counter()
    gt = circuit_ground_truth(model, gc, corrupted=gx, metric=LogitDiff(ga, gw), threshold=args.threshold)
    t_gt = time.perf_counter() - t0
    n_comp = gt.effect.numel()
    k = len(gt.components)
    clean, corr, ans, wrong = tokfsm_patching_pairs(args.pairs, seed=args.seed)
    rows = [(name, f"ground truth ({args.gt_pairs} pairs)", k, n_comp, 1.0, 1.0, "", t_gt)]

    prs, secs = [], []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        ranking = sae_code_circuit(model, clean, negatives=corr, cfg=SAECodeConfig(seed=seed))
        secs.append(time.perf_counter() - t0)
        prs.append(precision_recall(ranking.top(k), gt.components))
    p = [x for x, _ in prs]
    r = [y for _, y in prs]
    spread = f"[{min(p):.2f}-{max(p):.2f}]" if args.seeds > 1 else ""
    rows.append((name, f"SAE codes ({args.seeds} seeds)", k, n_comp, statistics.mean(p), statistics.mean(r), spread,
                 statistics.mean(secs)))

    t0 = time.perf_counter()
    sweep = component_sweep(model, clean, corrupted=corr, metric=LogitDiff(ans, wrong))
    t_ap = time.perf_counter() - t0
    p_ap, r_ap = precision_recall(sweep.top(k), gt.components)
    rows.append((name, "activation patching", k, n_comp, p_ap, r_ap, "", t_ap))
    rows.append((name, "chance", k, n_comp, k / n_comp, k / n_comp, "", 0.0))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["tokfsm-mamba2", "tokfsm-transformer", "tokfsm-mamba"])
    ap.add_argument("--pairs", type=int, default=10, help="prompt pairs the methods see")
    ap.add_argument("--seed", type=int, default=1, help="seed of those pairs")
    ap.add_argument("--gt-pairs", type=int, default=64, help="held-out pairs of the ground truth")
    ap.add_argument("--gt-seed", type=int, default=100)
    ap.add_argument("--threshold", type=float, default=0.1, help="ground truth: |effect| above this")
    ap.add_argument("--seeds", type=int, default=3, help="SAE seeds averaged")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (both methods)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"TokFSM patching task: methods on {args.pairs} pairs, ground truth on {args.gt_pairs} held-out pairs, "
          f"threshold {args.threshold}; k = |ground truth|; {args.threads} torch thread(s)")
    print(f"{'model':20s} {'method':26s} {'k/n':>6s} {'precision':>9s} {'recall':>7s} {'':11s} {'seconds':>8s}")
    for name in args.models:
        for row in run(name, args):
            model, method, k, n, p, r, spread, s = row
            print(f"{model:20s} {method:26s} {f'{k}/{n}':>6s} {p:9.2f} {r:7.2f} {spread:11s} {s:8.2f}", flush=True)


if __name__ == "__main__":
    main()
