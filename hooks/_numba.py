"""numba plumbing shared by the CPU kernels (the model's fused scan, ``hooks/scan_cpu.py``, and those of
``interp.kernels``): the optional import (``HAS_NUMBA``), the jit decorator, flush-to-zero for the duration of a
kernel, and the pool of Python threads the kernels run on (they release the GIL)."""

from __future__ import annotations

import platform
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

try:  # optional dependency: the module stays importable without it
    import numba

    HAS_NUMBA = True
except Exception:  # pragma: no cover - depends on the environment
    numba = None
    HAS_NUMBA = False

__all__ = ["HAS_NUMBA", "Pool", "ftz_enter", "ftz_leave", "jit"]


def jit(**options):
    """numba.njit(nogil, fastmath, cache, **options); without a writable cache location, no caching."""

    def deco(fn):
        try:
            return numba.njit(nogil=True, fastmath=True, cache=True, **options)(fn)
        except RuntimeError:  # pragma: no cover - no cache locator for this file
            return numba.njit(nogil=True, fastmath=True, **options)(fn)

    return deco


# --------------------------------------------------------------------------------------------
# flush-to-zero for the duration of a kernel (x86: MXCSR FTZ | DAZ; elsewhere a no-op)
# --------------------------------------------------------------------------------------------
_X86 = platform.machine().lower() in ("x86_64", "amd64")
_FTZ_DAZ = 0x8040

if HAS_NUMBA and _X86:
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    def _mxcsr_call(builder, name, slot):
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p]), name)
        builder.call(fn, [builder.bitcast(slot, i8p)])

    @intrinsic
    def _get_mxcsr(typingctx):
        def codegen(context, builder, sig, args):
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", slot)
            return builder.load(slot)

        return types.uint32(), codegen

    @intrinsic
    def _set_mxcsr(typingctx, value):
        def codegen(context, builder, sig, args):
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(args[0], slot)
            _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
            return context.get_dummy_value()

        return types.void(types.uint32), codegen

    @jit()
    def ftz_enter():
        """Set flush-to-zero and denormals-are-zero on this thread; returns the previous MXCSR."""
        old = _get_mxcsr()
        _set_mxcsr(old | np.uint32(_FTZ_DAZ))
        return old

    @jit()
    def ftz_leave(old):
        _set_mxcsr(old)

elif HAS_NUMBA:  # pragma: no cover - not x86

    @jit()
    def ftz_enter():
        return np.uint32(0)

    @jit()
    def ftz_leave(old):
        pass


class Pool:
    """``torch.get_num_threads()`` worker threads for one call (none for one thread): runs a kernel as
    fn(*args, start, step) for start = 0 .. step - 1 (the kernels release the GIL)."""

    def __init__(self) -> None:
        self.n = max(1, torch.get_num_threads())
        self.ex = ThreadPoolExecutor(self.n, thread_name_prefix="interp-cpu-kernel") if self.n > 1 else None

    def run(self, fn, *args) -> None:
        if self.ex is None:
            fn(*args, 0, 1)
            return
        for f in [self.ex.submit(fn, *args, t, self.n) for t in range(self.n)]:
            f.result()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        if self.ex is not None:
            self.ex.shutdown()
