"""Activation-patching sweep speed: interp.patching.patch_sweep against the hand-written TransformerLens-style loop
(one run_with_hooks per cell), in one run, on the same prompts and model. ``ours`` is the default sweep (on an SSM:
each cell from the corrupted run's decoding state, only the blocks and positions it can change, the cells of a
position stacked); ``ours, stacked`` is ``reuse_prefix=False`` (whole forwards of stacked cells, as on a
transformer).

    python bench/patching.py                                  # tokfsm-mamba, resid_pre, 27 pairs, 4 x 18 cells
    python bench/patching.py --model tokfsm-mamba2 --repeats 3
    python bench/patching.py --attribution                    # attribution vs activation patching, 3 models

The task (:func:`interp.data.tokfsm_patching_pairs`): a TokFSM walk of 8 states, then the tens digit of a 9th state; the model must
give its units digit. The clean walk's 8th state has exactly one out-edge with that tens digit, so the answer is
determined; the corrupted prompt swaps the 8th state for another out-edge of the 7th whose only out-edge with that
tens digit has a different units digit (the wrong answer). Metric: logit difference, normalised (clean 1,
corrupted 0). Both sides run under ``torch.no_grad``; times are medians of ``--repeats`` interleaved rounds.
Prints both times, the speed-up of the medians and of the fastest rounds (target >= 3x) and the largest difference
between the two grids. ``patch_sweep`` runs no forward for a cell whose clean and corrupted activations are equal
(on these prompts, every position before 15, where they first differ); ``--differ-from 1`` makes the prompts differ
from position 1 on, so that (almost) every cell runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import interp
from interp.data import tokfsm_patching_pairs
from interp.patching import LogitDiff, attribution_sweep, patch_sweep


@torch.no_grad()
def hand_loop(model, clean, corrupted, metric, hook="blocks.{layer}.hook_resid_pre"):
    """The hand-written TransformerLens-style sweep: cache the clean run, then one run_with_hooks per cell."""
    clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith(hook.split(".")[-1]))
    score = metric.normalised(clean_logits, model(corrupted))
    L = clean.shape[1]
    out = torch.zeros(model.cfg.n_layers, L)
    for layer in range(model.cfg.n_layers):
        name = hook.format(layer=layer)
        for p in range(L):
            def patch(act, hook, p=p, name=name):
                act = act.clone()
                act[:, p] = cache[name][:, p]
                return act
            out[layer, p] = score(model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])).item()
    return out


def attribution_table(pairs: int, ig_steps: int = 8) -> None:
    """Attribution patching (one gradient, and integrated gradients over ``ig_steps``) against activation patching
    on every embedded TokFSM model and two sites: correlation of the normalised grids, largest cell difference,
    wall time of each."""
    clean, corrupted, answer, wrong = tokfsm_patching_pairs(pairs)
    kw = dict(corrupted=corrupted, metric=LogitDiff(answer, wrong))
    print(f"{'model':20s} {'site':12s} {'corr':>6s} {'max|diff|':>9s} {'IG corr':>7s} {'IG max':>7s} "
          f"{'act s':>6s} {'attr s':>6s} {'IG s':>6s}")
    for name in ("tokfsm-mamba", "tokfsm-mamba2", "tokfsm-transformer"):
        model = interp.load(name)
        for hook in ("resid_pre", "mixer_out" if "mamba" in name else "attn_out"):
            t0 = time.perf_counter()
            act = patch_sweep(model, clean, hook=hook, **kw).values.flatten()
            t1 = time.perf_counter()
            att = attribution_sweep(model, clean, hook=hook, **kw).values.flatten()
            t2 = time.perf_counter()
            ig = attribution_sweep(model, clean, hook=hook, steps=ig_steps, **kw).values.flatten()
            t3 = time.perf_counter()
            r, r_ig = (float(torch.corrcoef(torch.stack([act, x]))[0, 1]) for x in (att, ig))
            print(f"{name:20s} {hook:12s} {r:6.3f} {float((act - att).abs().max()):9.3f} {r_ig:7.3f} "
                  f"{float((act - ig).abs().max()):7.3f} {t1 - t0:6.2f} {t2 - t1:6.2f} {t3 - t2:6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tokfsm-mamba")
    ap.add_argument("--pairs", type=int, default=27)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--differ-from", type=int, default=None, metavar="P",
                    help="also change each corrupted prompt's token at position P (default: the task's prompts, "
                         "which first differ at 15): cells before P patch nothing and are not run")
    ap.add_argument("--attribution", action="store_true",
                    help="instead: attribution vs activation patching on the three TokFSM models")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.attribution:
        return attribution_table(args.pairs)
    model = interp.load(args.model)
    clean, corrupted, answer, wrong = tokfsm_patching_pairs(args.pairs)
    if args.differ_from is not None:
        corrupted = corrupted.clone()
        corrupted[:, args.differ_from] = (clean[:, args.differ_from] + 1) % model.cfg.d_vocab
    metric = LogitDiff(answer, wrong)
    results: dict[str, torch.Tensor] = {}
    fns = {
        "ours": lambda: results.__setitem__("ours", patch_sweep(model, clean, corrupted=corrupted,
                                                                metric=metric).values),
        "ours, stacked": lambda: results.__setitem__("stacked", patch_sweep(
            model, clean, corrupted=corrupted, metric=metric, reuse_prefix=False).values),
        "hand loop": lambda: results.__setitem__("loop", hand_loop(model, clean, corrupted, metric)),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = max((results[k] - results["loop"]).abs().max().item() for k in ("ours", "stacked"))
    n_cells = results["ours"].numel()
    print(f"{args.model}: resid_pre sweep, {args.pairs} prompt pairs x {clean.shape[1]} positions x "
          f"{model.cfg.n_layers} layers = {n_cells} cells, torch threads {torch.get_num_threads()}")
    for k, v in med.items():
        print(f"  {k:15s} {v:8.3f} s   (rounds: {', '.join(f'{t:.3f}' for t in times[k])})")
    best = {k: min(v) for k, v in times.items()}
    for k in ("ours", "ours, stacked"):
        print(f"  {k}: speed-up {med['hand loop'] / med[k]:.2f}x (medians), {best['hand loop'] / best[k]:.2f}x "
              "(fastest rounds)")
    print(f"  max |difference| from the loop's grid {diff:.2e}")


if __name__ == "__main__":
    main()
