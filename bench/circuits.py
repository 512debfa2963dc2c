"""Circuit identification on the TokFSM patching task: the SAE-code ranking (O'Neill & Bui 2024) and per-component
activation patching, scored against the resample-ablation ground truth.

    python bench/circuits.py                                   # tokfsm-mamba2, tokfsm-transformer, tokfsm-mamba
    python bench/circuits.py --models tokfsm-transformer --seeds 5 --threshold 0.15
    python bench/circuits.py --planted                         # the same methods on the planted circuits

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

``--planted``: the task with a known answer (:func:`interp.tasks.circuits.planted_circuit`): a copy of each model in
which only the components of :data:`~interp.tasks.circuits.PLANTED_KEEP` write to the residual stream. The methods
run on the planted model as above and are scored against ``keep`` itself (k = |keep|); the row "resample ablation"
checks that :func:`~interp.patching.circuit_ground_truth` on ``--gt-pairs`` held-out pairs finds ``keep``. A
sanity check more than a contest: a zeroed component's output through the out-projection is exactly 0 on every
prompt (one code on positives and negatives alike, no unique code) and its patching effect exactly 0, so both
methods can only miss kept components, never pick zeroed ones over them.
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
from interp.tasks.circuits import planted_circuit


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


def run_planted(name: str, args: argparse.Namespace) -> list[tuple]:
    task = planted_circuit(interp.load(name), n_pairs=args.pairs, seed=args.seed)
    model, keep = task.model, task.keep
    k, n_comp = len(keep), task.mask.numel()
    label = name
    rows = [(label, "known circuit (keep)", k, n_comp, 1.0, 1.0, "", 0.0)]
    held = planted_circuit(interp.load(name), keep=keep, n_pairs=args.gt_pairs, seed=args.gt_seed)
    t0 = time.perf_counter()
    gt = circuit_ground_truth(model, held.clean, corrupted=held.corrupted, metric=held.metric,
                              threshold=args.threshold)
    p_gt, r_gt = task.score(gt.components)
    rows.append((label, f"resample ablation ({args.gt_pairs})", len(gt.components), n_comp, p_gt, r_gt, "",
                 time.perf_counter() - t0))

    prs, secs = [], []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        ranking = sae_code_circuit(model, task.clean, negatives=task.corrupted, cfg=SAECodeConfig(seed=seed))
        secs.append(time.perf_counter() - t0)
        prs.append(task.score(ranking.top(k)))
    p = [x for x, _ in prs]
    r = [y for _, y in prs]
    spread = f"[{min(p):.2f}-{max(p):.2f}]" if args.seeds > 1 else ""
    rows.append((label, f"SAE codes ({args.seeds} seeds)", k, n_comp, statistics.mean(p), statistics.mean(r), spread,
                 statistics.mean(secs)))

    t0 = time.perf_counter()
    sweep = component_sweep(model, task.clean, corrupted=task.corrupted, metric=task.metric)
    t_ap = time.perf_counter() - t0
    p_ap, r_ap = task.score(sweep.top(k))
    rows.append((label, "activation patching", k, n_comp, p_ap, r_ap, "", t_ap))
    rows.append((label, "chance", k, n_comp, k / n_comp, k / n_comp, "", 0.0))
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
    ap.add_argument("--planted", action="store_true",
                    help="score against the planted circuits (interp.tasks.circuits) instead of the full models")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"TokFSM patching task: methods on {args.pairs} pairs, ground truth on {args.gt_pairs} held-out pairs, "
          f"threshold {args.threshold}; k = |{'keep' if args.planted else 'ground truth'}|; "
          f"{args.threads} torch thread(s)")
    if args.planted:
        print("planted circuits (interp.tasks.circuits.PLANTED_KEEP): methods scored against keep")
    print(f"{'model':20s} {'method':26s} {'k/n':>6s} {'precision':>9s} {'recall':>7s} {'':11s} {'seconds':>8s}")
    for name in args.models:
        for row in (run_planted if args.planted else run)(name, args):
            model, method, k, n, p, r, spread, s = row
            print(f"{model:20s} {method:26s} {f'{k}/{n}':>6s} {p:9.2f} {r:7.2f} {spread:11s} {s:8.2f}", flush=True)


if __name__ == "__main__":
    main()
