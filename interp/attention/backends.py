"""Which implementation computes a channel-reduced hidden-attention map: the one backend decision.

    choose_backend("cuda", "mamba2", needs_grad=False, has_triton=True, has_numba=True)   # -> "triton"
    backend_for(dt, A, B, C, "auto", op="reduced")                                       # asks it for these tensors

One vocabulary, ``backend = "auto" | "torch" | "numba" | "triton"``, for every function of
:mod:`interp.attention.hidden` that has kernels (:func:`~interp.attention.hidden.hidden_attention_reduced`,
:func:`~interp.attention.hidden.hidden_attention_rows_reduced`, :func:`~interp.attention.hidden.channel_mass`)
and so for :func:`interp.attention.interaction_map` / :func:`~interp.attention.query_rows`. The kernels
(:mod:`interp.kernels`) are optional; the PyTorch code of :mod:`interp.attention.hidden` is the reference.

``"auto"`` (the decision table):

=============================  ==========  ===========================================  =========
device of the tensors          needs grad  kernel available (see below)                 backend
=============================  ==========  ===========================================  =========
any                            yes         -                                            torch
cuda                           no          triton importable                            triton
cpu                            no          numba importable, Mamba-1 layout             numba
anything else                  no          -                                            torch
=============================  ==========  ===========================================  =========

``"torch"`` always runs PyTorch; ``"numba"`` / ``"triton"`` force a kernel (RuntimeError when it is not available:
not installed, or no such kernel for the operation; ValueError for a layout the numba kernel does not take). The
kernels have no backward, so a differentiable call (grad enabled and an input requiring grad) stays on PyTorch under
"auto". Layouts: ``"mamba1"`` (A [H, N], one B/C group: the numba kernel's only layout), ``"mamba1_grouped"``
(A [H, N], several groups) and ``"mamba2"`` (A [H]); the Triton kernels take all three. Kernels per operation:
the reduced map has both, query rows only Triton, the channel mass only numba.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BACKENDS", "LAYOUTS", "OPS", "choose_backend", "layout_of", "needs_grad", "kernels_available",
           "backend_for"]

BACKENDS = ("auto", "torch", "numba", "triton")
LAYOUTS = ("mamba1", "mamba1_grouped", "mamba2")
# which kernels exist for each operation of interp.attention.hidden
OPS: dict[str, tuple[str, ...]] = {"reduced": ("numba", "triton"), "rows": ("triton",), "mass": ("numba",)}


def choose_backend(device_type: str, layout: str, needs_grad: bool, has_triton: bool, has_numba: bool,
                   backend: str = "auto") -> str:
    """The backend that computes a hidden-attention quantity: "torch", "numba" or "triton" (module docstring).

    Args:
        device_type: the tensors' device type ("cpu", "cuda", ...).
        layout: "mamba1", "mamba1_grouped" or "mamba2" (:func:`layout_of`).
        needs_grad: whether the result must be differentiable (:func:`needs_grad`).
        has_triton, has_numba: whether that kernel can run for this operation (installed and implemented).
        backend: the caller's request, of :data:`BACKENDS`.

    Raises:
        ValueError: an unknown backend or layout, or ``"numba"`` for a layout other than "mamba1".
        RuntimeError: ``"numba"`` / ``"triton"`` requested but not available.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if backend == "numba":
        if not has_numba:
            raise RuntimeError("backend='numba' is not available: numba is not installed (pip install "
                               "'interp[cpu-kernels]') or this operation has no numba kernel; use backend='torch'")
        if layout != "mamba1":
            raise ValueError(f"the numba kernel takes the Mamba-1 layout (A [H, N], one B/C group), not {layout!r}")
        return "numba"
    if backend == "triton":
        if not has_triton:
            raise RuntimeError("backend='triton' is not available: triton is not installed or this operation has "
                               "no Triton kernel; use backend='torch'")
        return "triton"
    if backend == "torch" or needs_grad:
        return "torch"
    if device_type == "cuda" and has_triton:
        return "triton"
    if device_type == "cpu" and has_numba and layout == "mamba1":
        return "numba"
    return "torch"


def layout_of(A: Tensor, B: Tensor) -> str:
    """"mamba2" for A [H]; "mamba1" for A [H, N] with one B/C group (B [b, L, 1, N]), else "mamba1_grouped"."""
    if A.dim() == 1:
        return "mamba2"
    return "mamba1" if B.dim() == 4 and B.shape[2] == 1 else "mamba1_grouped"


def needs_grad(*tensors: Tensor) -> bool:
    """Whether a result computed from ``tensors`` must carry a gradient (grad enabled, some input requires it)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def kernels_available() -> tuple[bool, bool]:
    """(triton importable, numba importable). Imports :mod:`interp.kernels` on first call."""
    from interp import kernels

    return bool(kernels.HAS_TRITON), bool(kernels.HAS_NUMBA)


def backend_for(dt: Tensor, A: Tensor, B: Tensor, C: Tensor, backend: str, op: str) -> str:
    """:func:`choose_backend` for the inputs of one operation of :data:`OPS` ("reduced", "rows", "mass")."""
    if backend not in BACKENDS:  # fail before importing the kernels
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    has_triton, has_numba = kernels_available() if backend != "torch" else (False, False)
    return choose_backend(dt.device.type, layout_of(A, B), needs_grad(dt, A, B, C),
                          has_triton and "triton" in OPS[op], has_numba and "numba" in OPS[op], backend)
