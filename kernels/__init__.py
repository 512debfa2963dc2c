"""Optional fused GPU kernels (Triton). Importable without triton or a GPU: see ``HAS_TRITON`` and the
``*_auto`` dispatchers, which fall back to the PyTorch implementations in :mod:`interp.attention`."""

from interp.kernels.hidden_attention import (
    HAS_TRITON,
    hidden_attention_reduced_auto,
    hidden_attention_reduced_triton,
    hidden_attention_rows_reduced_auto,
    hidden_attention_rows_reduced_triton,
)

__all__ = [
    "HAS_TRITON",
    "hidden_attention_reduced_auto",
    "hidden_attention_reduced_triton",
    "hidden_attention_rows_reduced_auto",
    "hidden_attention_rows_reduced_triton",
]
