"""TopK SAE decoder on the GPU: the Triton sparse-decode kernels against the dense and embedding_bag paths.

    python bench/sae_decoder_gpu.py                          # d_in 768, d_sae 12288, k 32, batch 4096, float32
    python bench/sae_decoder_gpu.py --dtype bfloat16 --batch 4096 16384
    python bench/sae_decoder_gpu.py --dist uniform            # only uniformly spread latents
    python bench/sae_decoder_gpu.py --sweep                   # also tile sizes / warps of the kernels

Decodes x̂ = Σ_j vals[m, j] · W_dec[idx[m, j]] + b_dec for one batch, all paths on the same GPU, in one
process:

* ``triton-sort``   :func:`interp.kernels.topk_decoder.sparse_decode_triton` (grad W_dec by a sorted,
                    deterministic segmented reduction; the default)
* ``triton-atomic`` the same kernels with grad W_dec by float32 atomic adds
* ``embedding_bag`` :func:`interp.kernels.topk_decoder.sparse_decode_torch` (``F.embedding_bag``)
* ``dense``         :func:`interp.kernels.topk_decoder.sparse_decode_reference` (scatter into
                    [batch, d_sae], then a matmul: what an SAE without a sparse decoder does)

"fwd" times the forward alone, "fwd+bwd" the forward plus the gradients for vals, W_dec and b_dec.
Times are CUDA event medians after one warm-up call (which compiles the kernels); "x vs" columns are
(that path's time) / (triton-sort time), so > 1 means the kernel is faster. "max rel diff" is
max |path - dense| / max |dense| over the output and the three gradients (in bfloat16 / float16 the
dense path rounds its [batch, d_sae] matrix and matmul too, so expect ~1e-2 there). "peak MiB" is the
allocator's peak above the inputs during one forward+backward. Latent ids: "uniform" draws k distinct
latents per row uniformly; "zipf" draws them with probability ∝ 1 / rank (hot latents, as in trained
TopK SAEs), which stresses the scatter-add of grad W_dec. Matmuls run in full float32 (TF32 off) unless
``--tf32``.

Without CUDA it says so and exits 0. (``--device cpu`` with ``TRITON_INTERPRET=1`` runs the same script
through the Triton interpreter, e.g. ``--batch 64 --d-sae 256 --d-in 48 --k 4``, to smoke-test it;
those times mean nothing.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_gpu.py, however this is loaded

from _gpu import cannot_run, timed as _timed  # noqa: E402

PATHS = ("triton-sort", "triton-atomic", "embedding_bag", "dense")


def timed(fn, device):
    """``_gpu.timed`` at this script's settings: >= 3 calls for >= 0.5 s, at most 20 (2 in the interpreter)."""
    return _timed(fn, device, min_total_s=0.5, max_reps=20, min_reps=3, cpu_max_reps=2)


def make_batch(batch: int, k: int, d_sae: int, d_in: int, dist: str, dtype, device, seed: int = 0):
    """idx [batch, k] (distinct per row), vals [batch, k] >= 0 (ReLU of TopK pre-activations),
    W_dec [d_sae, d_in] with unit-norm rows, b_dec [d_in], grad_out [batch, d_in]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if dist == "uniform":
        idx = torch.rand(batch, d_sae, generator=g).topk(k, dim=1).indices
    else:  # zipf: p(latent of rank r) ∝ 1 / r, latents shuffled
        p = 1.0 / torch.arange(1, d_sae + 1, dtype=torch.float64)
        perm = torch.randperm(d_sae, generator=g)
        idx = perm[torch.multinomial(p.float().expand(batch, d_sae), k, replacement=False, generator=g)]
    vals = torch.rand(batch, k, generator=g) * 2
    W = torch.randn(d_sae, d_in, generator=g)
    W = W / W.norm(dim=1, keepdim=True)
    b = torch.randn(d_in, generator=g) * 0.1
    grad_out = torch.randn(batch, d_in, generator=g)
    return (idx.to(device), vals.to(device, dtype), W.to(device, dtype), b.to(device, dtype),
            grad_out.to(device, dtype))


def path_fn(name: str):
    from interp.kernels.topk_decoder import sparse_decode_reference, sparse_decode_torch, sparse_decode_triton

    if name == "triton-sort":
        return lambda i, v, W, b: sparse_decode_triton(i, v, W, b, grad_w="sort", check_indices=False)
    if name == "triton-atomic":
        return lambda i, v, W, b: sparse_decode_triton(i, v, W, b, grad_w="atomic", check_indices=False)
    if name == "embedding_bag":
        return lambda i, v, W, b: sparse_decode_torch(i, v, W, b, check_indices=False)
    return sparse_decode_reference


def bench(batches, d_in: int, d_sae: int, k: int, dists, dtype_name: str, device_name: str, paths) -> None:
    import torch

    device = torch.device(device_name)
    dtype = getattr(torch, dtype_name)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}; "
              f"TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    print(f"d_in {d_in}, d_sae {d_sae}, k {k}, {dtype_name}")
    hdr = (f"{'batch':>6} {'latents':>8} {'path':>14} {'fwd ms':>9} {'x vs':>6} {'fwd+bwd ms':>11} {'x vs':>6} "
           f"{'peak MiB':>9} {'max rel diff':>13}")
    for batch in batches:
        for dist in dists:
            idx, vals, W, b, gout = make_batch(batch, k, d_sae, d_in, dist, dtype, device)
            counts = torch.bincount(idx.flatten(), minlength=d_sae)
            print(f"\nbatch {batch}, latents {dist}: most frequent latent in {int(counts.max())} of {batch} rows, "
                  f"{int((counts == 0).sum())} latents unused")
            print(hdr)
            rows, ref = {}, None
            order = (["dense"] if "dense" in paths else []) + [q for q in paths if q != "dense"]
            for name in order:  # the first one run (dense if asked for) is the reference of "max rel diff"
                fn = path_fn(name)

                def fwd():
                    with torch.no_grad():
                        return fn(idx, vals, W, b)

                def fwd_bwd():
                    leaves = [t.detach().requires_grad_(True) for t in (vals, W, b)]
                    out = fn(idx, *leaves)
                    grads = torch.autograd.grad(out, leaves, gout)
                    return (out.detach(), *grads)

                t_f, _, _ = timed(fwd, device)
                t_fb, peak, res = timed(fwd_bwd, device)
                if ref is None:
                    ref = res
                rel = max(float((r.float() - q.float()).abs().max() / q.float().abs().max().clamp_min(1e-30))
                          for r, q in zip(res, ref))
                rows[name] = (t_f, t_fb, peak, rel)
                del res
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            base = rows.get("triton-sort") or next(iter(rows.values()))
            for name in paths:
                if name not in rows:
                    continue
                t_f, t_fb, peak, rel = rows[name]
                print(f"{batch:6d} {dist:>8} {name:>14} {t_f * 1e3:9.3f} {t_f / base[0]:5.1f}x {t_fb * 1e3:11.3f} "
                      f"{t_fb / base[1]:5.1f}x {peak / 2**20:9.0f} {rel:13.1e}", flush=True)
            del idx, vals, W, b, gout, ref


SWEEP = [(bm, bd, nw) for bm in (16, 32) for bd in (64, 128, 256) for nw in (4, 8)]


def sweep(batch: int, d_in: int, d_sae: int, k: int, dists, dtype_name: str, device_name: str) -> None:
    """Forward and forward+backward time of the kernels over tile sizes and warps (block_p = block_m)."""
    import torch

    from interp.kernels.topk_decoder import sparse_decode_triton

    device = torch.device(device_name)
    dtype = getattr(torch, dtype_name)
    print(f"\nsweep: batch {batch}, d_in {d_in}, d_sae {d_sae}, k {k}, {dtype_name}")
    print(f"{'latents':>8} {'block_m':>7} {'block_d':>7} {'warps':>5} {'fwd ms':>9} {'sort fwd+bwd':>13} "
          f"{'atomic fwd+bwd':>15}")
    for dist in dists:
        idx, vals, W, b, gout = make_batch(batch, k, d_sae, d_in, dist, dtype, device)
        best = None
        for bm, bd, nw in SWEEP:
            kw = dict(block_m=bm, block_d=bd, block_p=bm, num_warps=nw, check_indices=False)

            def fwd():
                with torch.no_grad():
                    return sparse_decode_triton(idx, vals, W, b, **kw)

            def fwd_bwd(method):
                leaves = [t.detach().requires_grad_(True) for t in (vals, W, b)]
                return torch.autograd.grad(sparse_decode_triton(idx, *leaves, grad_w=method, **kw), leaves, gout)

            t_f = timed(fwd, device)[0]
            t_s = timed(lambda: fwd_bwd("sort"), device)[0]
            t_a = timed(lambda: fwd_bwd("atomic"), device)[0]
            print(f"{dist:>8} {bm:7d} {bd:7d} {nw:5d} {t_f * 1e3:9.3f} {t_s * 1e3:13.3f} {t_a * 1e3:15.3f}",
                  flush=True)
            if best is None or t_s < best[0]:
                best = (t_s, bm, bd, nw)
        print(f"{dist:>8} fastest sort fwd+bwd: block_m {best[1]}, block_d {best[2]}, {best[3]} warps "
              f"({best[0] * 1e3:.3f} ms)")
        del idx, vals, W, b, gout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[4096])
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=12288)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--dist", nargs="+", default=["uniform", "zipf"], choices=["uniform", "zipf"])
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (the dense path gets faster)")
    p.add_argument("--sweep", action="store_true",
                   help="also time the kernels over tile sizes / warps (first batch size) to tune the defaults")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    a = p.parse_args()

    try:
        import torch
    except ImportError:
        print("bench/sae_decoder_gpu.py needs torch")
        return 0
    from interp.kernels.topk_decoder import HAS_TRITON

    why = cannot_run("bench/sae_decoder_gpu.py", a.device, HAS_TRITON)
    if why:
        print(why)
        return 0
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    bench(a.batch, a.d_in, a.d_sae, a.k, a.dist, a.dtype, a.device, a.paths)
    if a.sweep:
        sweep(a.batch[0], a.d_in, a.d_sae, a.k, a.dist, a.dtype, a.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
