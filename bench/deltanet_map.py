"""Gated DeltaNet implicit attention: the chunked UT / WY construction against the direct one, on the CPU.

    python bench/deltanet_map.py                      # one Qwen3-Next-shaped layer: 16 heads, head dim 128
    python bench/deltanet_map.py --lengths 256 1024   # a quick look

``interp.attention.deltanet.delta_attention`` (A[i, j] = β_j k_jᵀ (Π_{s=j+1..i} α_s (I − β_s k_s k_sᵀ)) q̃_i for every
head, built by running the layer's chunked rule with the identity as values: O(L² · d) time, O(L²) memory per
head) against ``delta_attention_direct`` (the definition, walked position by position) at the shortest length, in
one run. Random inputs of the layer's shapes: q, k l2-normalised (q scaled by d^-1/2), log-decay g ∈ [-0.1, 0],
β ∈ [0, 1]. Each measurement runs in a fresh subprocess; its peak resident memory is reported (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def inputs(L: int, heads: int, d: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(1, L, heads, d, generator=g), dim=-1) * d ** -0.5
    k = torch.nn.functional.normalize(torch.randn(1, L, heads, d, generator=g), dim=-1)
    return q, k, -torch.rand(1, L, heads, generator=g) * 0.1, torch.rand(1, L, heads, generator=g)


def child(method: str, L: int, heads: int, d: int, threads: int) -> dict:
    from interp.attention.deltanet import delta_attention, delta_attention_direct

    torch.set_num_threads(threads)
    q, k, g, beta = inputs(L, heads, d)
    fn = delta_attention if method == "chunked" else delta_attention_direct
    t0 = time.perf_counter()
    A = fn(q, k, g, beta)
    seconds = time.perf_counter() - t0
    out = {"method": method, "L": L, "seconds": seconds, "map_gib": A.numel() * A.element_size() / 2**30,
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if method == "chunked" and L <= 256:  # the two constructions agree
        out["max_abs_diff_vs_direct"] = float((A.double() - delta_attention_direct(q, k, g, beta)).abs().max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "L"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.heads, a.head_dim, a.threads)))
        return
    runs = [("direct", min(a.lengths))] + [("chunked", L) for L in a.lengths]
    print(f"torch {torch.__version__}, {a.threads} threads; one layer: {a.heads} heads, head dim {a.head_dim}")
    print(f"{'method':8} {'L':>6} {'seconds':>9} {'map GiB':>8} {'peak RSS GiB':>13}  note")
    times = {}
    for method, L in runs:
        cmd = [sys.executable, __file__, "--child", method, str(L), "--heads", str(a.heads), "--head-dim",
               str(a.head_dim), "--threads", str(a.threads)]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        times[method, L] = r["seconds"]
        note = f"max |chunked - direct| {r['max_abs_diff_vs_direct']:.1e}" if "max_abs_diff_vs_direct" in r else ""
        print(f"{method:8} {L:6d} {r['seconds']:9.2f} {r['map_gib']:8.3f} {r['peak_rss_gib']:13.2f}  {note}")
    L0 = min(a.lengths)
    print(f"direct / chunked at L = {L0}: {times['direct', L0] / times['chunked', L0]:.1f}x")


if __name__ == "__main__":
    main()
