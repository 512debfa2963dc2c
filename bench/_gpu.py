"""Shared by the GPU benchmarks (``bench/*_gpu.py``): CUDA-event timing and the can-we-run check.

Imported as ``from _gpu import ...`` by scripts run as ``python bench/X.py`` (the scripts put their own
folder on ``sys.path``, so this also works when they are loaded some other way).
"""

from __future__ import annotations

import os
import statistics
import time


def timed(fn, device, min_total_s: float = 1.0, max_reps: int = 10, min_reps: int = 1,
          cpu_max_reps: int | None = None):
    """(median seconds, peak extra bytes, result) over up to ``max_reps`` calls after one warm-up.

    Calls ``fn`` until ``max_reps`` calls, or until at least ``min_reps`` calls took ``min_total_s`` in
    all. On CUDA each call is timed with CUDA events and the peak is the allocator's peak above what was
    allocated before the timed calls; elsewhere (Triton interpreter smoke tests) ``time.perf_counter``
    times it, the peak is 0, and ``cpu_max_reps`` (if given) caps the number of calls.
    """
    import torch

    cuda = device.type == "cuda"
    out = fn()  # warm-up: compiles the kernel(s), fills caches
    del out
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    out = None
    while len(times) < max_reps and (sum(times) < min_total_s or len(times) < min_reps):
        out = None
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        if not cuda and cpu_max_reps is not None and len(times) >= cpu_max_reps:
            break
    peak = (torch.cuda.max_memory_allocated() - base) if cuda else 0
    return statistics.median(times), peak, out


def cannot_run(script: str, device: str, has_triton: bool, no_cuda_hint: str = "") -> str | None:
    """Why ``script`` has nothing to time on ``device`` (a line to print before exiting 0), or None.

    ``device`` "cpu" is the Triton-interpreter smoke test (needs ``TRITON_INTERPRET=1``); any other
    device needs CUDA. ``no_cuda_hint`` is appended to the no-CUDA line."""
    import torch

    if device == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "--device cpu is a smoke test of this script: set TRITON_INTERPRET=1"
    elif not torch.cuda.is_available():
        return f"{script} needs a CUDA GPU (none available here): nothing to time.{no_cuda_hint}"
    if not has_triton:
        return f"{script} needs triton (pip install 'interp[kernels]'): nothing to time."
    return None
