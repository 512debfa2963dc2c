"""The optional Triton import shared by the kernel modules, and what they do without it.

    from interp.kernels._triton import import_triton, require_triton, use_kernel

    triton, tl = import_triton()
    HAS_TRITON = triton is not None
    if HAS_TRITON:
        @triton.jit
        def _kernel(...): ...

    require_triton(HAS_TRITON, "the PyTorch path")          # RuntimeError naming the fallback if triton is missing
    use_kernel(x, backend, HAS_TRITON, "the PyTorch path")  # the backend="auto" | "triton" | "torch" choice

A function rather than module-level names, so each kernel module asks when it is executed: a module loaded
again with triton made unimportable (the tests' ``sys.modules["triton"] = None``) sees it missing.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["import_triton", "require_triton", "use_kernel", "BACKENDS"]

BACKENDS = ("auto", "triton", "torch")


def import_triton() -> tuple[Any, Any]:
    """``(triton, triton.language)``, or ``(None, None)`` if triton cannot be imported (not installed, or
    failing to import); the kernel modules stay importable either way."""
    try:  # optional dependency
        import triton
        import triton.language as tl
    except Exception:  # pragma: no cover - depends on the environment
        return None, None
    return triton, tl


def require_triton(has_triton: bool, fallback: str) -> None:
    """Raise RuntimeError ("triton is not installed: use ``fallback``") unless ``has_triton``."""
    if not has_triton:
        raise RuntimeError(f"triton is not installed: use {fallback}")


def use_kernel(t: Tensor, backend: str, has_triton: bool, fallback: str) -> bool:
    """Whether a dispatcher runs the Triton kernel on tensor ``t``: ``backend`` "triton" always (triton must
    be importable, see :func:`require_triton`), "auto" for CUDA tensors when triton is importable, "torch" never."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "triton":
        require_triton(has_triton, fallback)
        return True
    return backend == "auto" and has_triton and t.is_cuda
