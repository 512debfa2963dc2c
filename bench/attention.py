"""Channel-mean |α| hidden-attention map of one mamba-130m-shaped layer: ours against the direct
construction that materialises the per-(channel, state) decay tensor, in one run, on the CPU.

    python bench/attention.py                       # L = 256 (both) and L = 1024 (ours; direct estimated)
    python bench/attention.py --lengths 128 256 --direct-max 256

Each measurement runs in a fresh subprocess so its peak resident memory (VmHWM minus the RSS
before the call) belongs to that call alone. Layer: D = 1536 channels, N = 16 states, A from the
S4D-real init (-1..-16), Δ log-uniform in [1e-3, 1e-1] as at Mamba's init, B and C standard normal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

D, N = 1536, 16


def _rss_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def measure(method: str, L: int, threads: int) -> dict:
    """Runs in the child process: build inputs, time one call, report seconds and peak memory."""
    import torch

    from interp.attention.hidden import hidden_attention_direct, hidden_attention_reduced

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    log_dt = torch.rand(1, L, D, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3))) \
        + torch.log(torch.tensor(1e-3))
    dt = log_dt.exp()
    A = -torch.arange(1, N + 1, dtype=torch.float32).expand(D, N).contiguous()
    B = torch.randn(1, L, 1, N, generator=g)
    C = torch.randn(1, L, 1, N, generator=g)
    before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    if method == "direct":
        out = hidden_attention_direct(dt, A, B, C).abs().mean(1)
    else:
        out = hidden_attention_reduced(dt, A, B, C, aggregate="mean_abs")
    seconds = time.perf_counter() - t0
    peak = _rss_kib("VmHWM") - before
    checksum = float(out.double().sum())
    return dict(method=method, L=L, seconds=seconds, peak_mib=peak / 1024, checksum=checksum)


def run_child(method: str, L: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(L), "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--direct-max", type=int, default=256, help="longest L to run the direct construction at")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(a.child[0], int(a.child[1]), a.threads)))
        return
    print(f"one layer D={D}, N={N}, channel-mean |α|, CPU {a.threads} threads")
    print(f"{'L':>6} {'direct s':>9} {'direct MiB':>11} {'ours s':>8} {'ours MiB':>9} {'speed x':>8} {'memory x':>9} {'rel diff':>9}")
    for L in a.lengths:
        ours = run_child("ours", L, a.threads)
        if L <= a.direct_max:
            direct = run_child("direct", L, a.threads)
            rel = abs(direct["checksum"] - ours["checksum"]) / abs(direct["checksum"])
            print(f"{L:6d} {direct['seconds']:9.2f} {direct['peak_mib']:11.0f} {ours['seconds']:8.2f} "
                  f"{ours['peak_mib']:9.0f} {direct['seconds'] / ours['seconds']:7.1f}x "
                  f"{direct['peak_mib'] / max(ours['peak_mib'], 1):8.1f}x {rel:9.1e}")
        else:
            need = D * N * L * L * 4 / 2**30
            print(f"{L:6d} {'-':>9} {f'~{need:.0f} GiB':>11} {ours['seconds']:8.2f} {ours['peak_mib']:9.0f}"
                  f"   (direct not run: its decay tensor alone is {need:.0f} GiB)")


if __name__ == "__main__":
    main()
