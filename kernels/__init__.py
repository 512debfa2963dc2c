"""Optional fused kernels: Triton on the GPU, numba on the CPU. Importable without triton, numba or a GPU: see
``HAS_TRITON`` / ``HAS_NUMBA`` and the dispatchers (``*_auto``, and ``backend="auto"`` of
:func:`interp.attention.hidden.hidden_attention_reduced`), which fall back to the PyTorch implementations in
:mod:`interp.attention`."""

from interp.kernels.hidden_attention import (
    HAS_TRITON,
    hidden_attention_reduced_auto,
    hidden_attention_reduced_triton,
    hidden_attention_rows_reduced_auto,
    hidden_attention_rows_reduced_triton,
)

__all__ = [
    "HAS_NUMBA",
    "channel_mass_numba",
    "hidden_attention_reduced_numba",
    "HAS_TRITON",
    "hidden_attention_reduced_auto",
    "hidden_attention_reduced_triton",
    "hidden_attention_rows_reduced_auto",
    "hidden_attention_rows_reduced_triton",
]

_CPU = ("HAS_NUMBA", "channel_mass_numba", "hidden_attention_reduced_numba")


def __getattr__(name: str):
    """The numba CPU kernel loads on first use (importing numba takes ~0.5 s)."""
    if name in _CPU:
        from interp.kernels import hidden_attention_cpu

        return getattr(hidden_attention_cpu, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
