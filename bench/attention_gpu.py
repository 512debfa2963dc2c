"""Channel-reduced hidden-attention map on the GPU: the fused Triton kernel against the PyTorch path.

    python bench/attention_gpu.py                         # L = 1024, 2048, 4096, mean |α|, Mamba-1 layer
    python bench/attention_gpu.py --aggregates mean mean_abs max --precision tf32x3
    python bench/attention_gpu.py --mamba2                # also a mamba2-130m-shaped layer (24 heads, N = 128)

Both run on the same GPU, in one process: ``interp.kernels.hidden_attention_reduced_triton`` and
``interp.attention.hidden.hidden_attention_reduced`` (the PyTorch path: anchored rank-N blocks).
Layer (mamba-130m): D = 1536 channels, N = 16 states, A from the S4D-real init (A[d, n] = -(n+1)),
Δ log-uniform in [1e-3, 1e-1] as at Mamba's init, B and C standard normal, batch 1. Times are CUDA
event medians after one warm-up call (which compiles the kernel); "max rel diff" is
max |kernel - torch| / max |torch|; "peak MiB" is the allocator's peak above the inputs during one call.

Without CUDA it says so and exits 0. (``--device cpu`` with ``TRITON_INTERPRET=1`` runs the same
script through the Triton interpreter, e.g. ``--lengths 40 --block 16 --heads 4``, to smoke-test
it; those times mean nothing.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_gpu.py, however this is loaded

from _gpu import cannot_run, timed  # noqa: E402

D, N = 1536, 16
M2_HEADS, M2_N = 24, 128  # mamba2-130m: d_inner 1536 = 24 heads x 64, N = 128, one group


def make_layer(L: int, device, mamba2: bool = False, seed: int = 0, heads: int | None = None):
    import torch

    g = torch.Generator().manual_seed(seed)
    H, n = (M2_HEADS, M2_N) if mamba2 else (D, N)
    H = heads or H
    lo, hi = torch.log(torch.tensor(1e-3)), torch.log(torch.tensor(1e-1))
    dt = (torch.rand(1, L, H, generator=g) * (hi - lo) + lo).exp()
    if mamba2:
        A = -torch.empty(H).uniform_(1, 16, generator=g)  # Mamba-2 init: A in [-16, -1], one per head
    else:
        A = -torch.arange(1, n + 1, dtype=torch.float32).expand(H, n).contiguous()
    B = torch.randn(1, L, 1, n, generator=g)
    C = torch.randn(1, L, 1, n, generator=g)
    return tuple(x.to(device) for x in (dt, A, B, C))


def bench_gpu(lengths, aggregates, precision: str, block: int, num_warps: int, mamba2_too: bool,
              device_name: str, heads: int | None = None) -> None:
    import torch

    from interp.attention.hidden import hidden_attention_reduced
    from interp.kernels.hidden_attention import hidden_attention_reduced_triton

    device = torch.device(device_name)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    layers = [False, True] if mamba2_too else [False]
    for mamba2 in layers:
        shape = f"Mamba-2 layer H={heads or M2_HEADS} heads, N={M2_N}" if mamba2 \
            else f"Mamba-1 layer D={heads or D}, N={N}"
        print(f"\n{shape}, batch 1, kernel tiles {block}x{block}, {num_warps} warps, dot precision {precision}")
        print(f"{'L':>6} {'aggregate':>9} {'torch ms':>10} {'triton ms':>10} {'speed-up':>9} "
              f"{'torch MiB':>10} {'triton MiB':>11} {'max rel diff':>13}")
        for L in lengths:
            dt, A, B, C = make_layer(L, device, mamba2, heads=heads)
            for agg in aggregates:
                t_ref, m_ref, ref = timed(lambda: hidden_attention_reduced(dt, A, B, C, aggregate=agg), device)
                t_k, m_k, out = timed(lambda: hidden_attention_reduced_triton(
                    dt, A, B, C, aggregate=agg, block_i=block, block_j=block, precision=precision,
                    num_warps=num_warps), device)
                rel = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                print(f"{L:6d} {agg:>9} {t_ref * 1e3:10.1f} {t_k * 1e3:10.2f} {t_ref / t_k:8.1f}x "
                      f"{m_ref / 2**20:10.0f} {m_k / 2**20:11.0f} {rel:13.1e}", flush=True)
                del ref, out
            del dt, A, B, C
            if device.type == "cuda":
                torch.cuda.empty_cache()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--aggregates", nargs="+", default=["mean_abs"], choices=["mean", "mean_abs", "max"])
    p.add_argument("--precision", default="ieee", choices=["ieee", "tf32x3", "tf32"],
                   help="tl.dot input precision of the kernel's rank-N products (default: full float32)")
    p.add_argument("--block", type=int, default=64, help="output tile size (power of two >= 16)")
    p.add_argument("--num-warps", type=int, default=8)
    p.add_argument("--mamba2", action="store_true", help="also time a mamba2-130m-shaped layer")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--heads", type=int, default=None, help=argparse.SUPPRESS)  # smoke tests: fewer channels
    a = p.parse_args()

    try:
        import torch  # noqa: F401
    except ImportError:
        print("bench/attention_gpu.py needs torch")
        return 0
    from interp.kernels.hidden_attention import HAS_TRITON

    why = cannot_run("bench/attention_gpu.py", a.device, HAS_TRITON,
                     no_cuda_hint=" The CPU benchmark is bench/attention.py.")
    if why:
        print(why)
        return 0
    bench_gpu(a.lengths, a.aggregates, a.precision, a.block, a.num_warps, a.mamba2, a.device, a.heads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
