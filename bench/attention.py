"""Channel-mean |α| hidden-attention map of one mamba-130m-shaped layer: ours against the direct
construction that materialises the per-(channel, state) decay tensor, in one run, on the CPU.

    python bench/attention.py                       # L = 256 (both) and L = 1024 (ours; direct estimated)
    python bench/attention.py --lengths 128 256 --direct-max 256
    python bench/attention.py --torch-path          # also time the PyTorch anchored-block path

"Ours" is ``hidden_attention_reduced(dt, A, B, C, aggregate="mean_abs")`` as a user calls it: on CPU
tensors it runs the fused numba kernel (``interp.kernels.hidden_attention_cpu``) when numba is
installed, else the PyTorch anchored-block path; the table says which ran. The kernel's JIT compile
is reported separately: each "ours" child first calls ``warmup()`` on a tiny input (timed), then times
the real call in steady state (the median of ``--repeats`` calls). The first child compiles from
scratch into a fresh ``NUMBA_CACHE_DIR`` (the cold compile a clean machine pays once); later children
load the compiled code from that cache.

Each measurement runs in a fresh subprocess so its peak resident memory (VmHWM minus the RSS
before the call; VmHWM is reset after the warm-up through /proc/self/clear_refs) belongs to that
call alone. Layer: D = 1536 channels, N = 16 states, A from the S4D-real init (-1..-16), Δ
log-uniform in [1e-3, 1e-1] as at Mamba's init, B and C standard normal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

D, N = 1536, 16


def _rss_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a warm-up's peak does not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(method: str, L: int, threads: int, repeats: int = 1) -> dict:
    """Runs in the child process: build inputs, time the call (``repeats`` times for "ours": the
    median is reported), report seconds and peak memory."""
    import torch

    from interp.attention import backends
    from interp.attention.hidden import hidden_attention_direct, hidden_attention_reduced

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    log_dt = torch.rand(1, L, D, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3))) \
        + torch.log(torch.tensor(1e-3))
    dt = log_dt.exp()
    A = -torch.arange(1, N + 1, dtype=torch.float32).expand(D, N).contiguous()
    B = torch.randn(1, L, 1, N, generator=g)
    C = torch.randn(1, L, 1, N, generator=g)
    res = dict(method=method, L=L)
    backend = "torch" if method == "torch" else "auto"
    if method != "direct":
        res["path"] = backends.backend_for(dt, A, B, C, backend, "reduced")  # what hidden_attention_reduced runs
        if res["path"] == "numba":
            from interp.kernels import hidden_attention_cpu as kernel

            t0 = time.perf_counter()
            kernel.warmup()
            res["compile_s"] = time.perf_counter() - t0
    res["peak_reset"] = _reset_peak()
    before = _rss_kib("VmRSS")
    times = []
    for _ in range(repeats if method == "ours" else 1):
        t0 = time.perf_counter()
        if method == "direct":
            out = hidden_attention_direct(dt, A, B, C).abs().mean(1)
        else:
            out = hidden_attention_reduced(dt, A, B, C, aggregate="mean_abs", backend=backend)
        times.append(time.perf_counter() - t0)
    res["times"] = times
    res["seconds"] = sorted(times)[len(times) // 2]  # the median
    res["peak_mib"] = (_rss_kib("VmHWM") - before) / 1024
    res["checksum"] = float(out.double().sum())
    return res


def run_child(method: str, L: int, threads: int, env: dict, repeats: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(L), "--threads", str(threads), "--repeats", str(repeats)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--direct-max", type=int, default=256, help="longest L to run the direct construction at")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed calls of ours per length (median reported)")
    p.add_argument("--torch-path", action="store_true", help="also time the PyTorch anchored-block path")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(a.child[0], int(a.child[1]), a.threads, a.repeats)))
        return
    print(f"one layer D={D}, N={N}, channel-mean |α|, CPU {a.threads} threads; load average {_load()} (1/5/15 min)")
    print(f"ours = hidden_attention_reduced(..., 'mean_abs'), median of {a.repeats} steady-state calls; the numba JIT "
          "compile (warm-up on a tiny input; cold for the first length, from the cache after) is reported separately")
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)  # first child: cold compile; later: cached
        hdr = f"{'L':>6} {'direct s':>9} {'direct MiB':>11} {'ours s':>8} {'ours MiB':>9} {'speed x':>8} " \
              f"{'memory x':>9} {'rel diff':>9}  path (JIT warm-up s)"
        if a.torch_path:
            hdr += "  | torch path s, MiB"
        print(hdr)
        for L in a.lengths:
            ours = run_child("ours", L, a.threads, env, a.repeats)
            path = ours["path"] + (f" ({ours['compile_s']:.2f})" if "compile_s" in ours else "")
            if L <= a.direct_max:
                direct = run_child("direct", L, a.threads, env)
                rel = abs(direct["checksum"] - ours["checksum"]) / abs(direct["checksum"])
                line = (f"{L:6d} {direct['seconds']:9.2f} {direct['peak_mib']:11.0f} {ours['seconds']:8.2f} "
                        f"{ours['peak_mib']:9.0f} {direct['seconds'] / ours['seconds']:7.1f}x "
                        f"{direct['peak_mib'] / max(ours['peak_mib'], 1):8.1f}x {rel:9.1e}  {path}")
            else:
                need = D * N * L * L * 4 / 2**30
                line = (f"{L:6d} {'-':>9} {f'~{need:.0f} GiB':>11} {ours['seconds']:8.2f} {ours['peak_mib']:9.0f}"
                        f" {'-':>8} {'-':>9} {'-':>9}  {path}  (direct not run: its decay tensor alone is "
                        f"{need:.0f} GiB)")
            if a.torch_path:
                tp = run_child("torch", L, a.threads, env)
                rel_t = abs(tp["checksum"] - ours["checksum"]) / abs(tp["checksum"])
                line += f"  | {tp['seconds']:.2f} s, {tp['peak_mib']:.0f} MiB (rel diff {rel_t:.1e})"
            print(line, flush=True)
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
