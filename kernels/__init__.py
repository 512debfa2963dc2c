"""Optional fused kernels: Triton on the GPU, numba on the CPU (``interp.kernels``).

Kernels only: importable without triton, numba or a GPU (see ``HAS_TRITON`` / ``HAS_NUMBA``). Which one runs is
decided by the analyses that use them: ``backend="auto"`` of :func:`interp.attention.hidden.hidden_attention_reduced`
(:func:`interp.attention.backends.choose_backend`), which falls back to the PyTorch reference implementations in
:mod:`interp.attention`; ``backend=`` of :func:`interp.kernels.topk_decoder.sparse_decode` for the SAE decoder.

This folder is the package ``interp.kernels`` (setuptools ``package-dir`` mapping). Whenever the repository root is
on ``sys.path`` (``python -m``/``python -c`` or ``python -m pytest`` started from the root, a notebook kernel whose
working directory is the root) Python can also find it under the top-level name ``kernels``, which belongs to the
Hugging Face ``kernels`` package that ``transformers`` imports. Imported under that name, this file hands the import
over to the installed package, or, with none installed, gives what a folder without ``__init__.py`` would give (an
empty namespace package). Standard library only: it may run while ``transformers`` is half imported. ``tests/test_setup.py`` checks it from the root.
"""

if __name__ != "interp.kernels":  # found as top-level ``kernels`` through a checkout's root on sys.path
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _path = [p for p in _sys.path if not (isinstance(p, str) and _os.path.abspath(p or _os.curdir) == _root)]
    _spec = _machinery.PathFinder.find_spec(__name__, _path)
    if _spec is None:  # nothing installed under that name: what a folder without __init__.py would give, an
        # empty PEP 420 namespace package (no __file__), which transformers' availability checks read as "absent"
        _spec = _machinery.ModuleSpec(__name__, None, is_package=True)
        _spec.submodule_search_locations = []
    _module = _util.module_from_spec(_spec)
    _sys.modules[__name__] = _module  # the import statement returns what sys.modules holds after this file ran
    if _spec.loader is not None:
        _spec.loader.exec_module(_module)
else:
    from interp.kernels.hidden_attention import (
        HAS_TRITON,
        hidden_attention_reduced_triton,
        hidden_attention_rows_reduced_triton,
    )

    __all__ = [
        "HAS_NUMBA",
        "channel_mass_numba",
        "hidden_attention_reduced_numba",
        "HAS_TRITON",
        "hidden_attention_reduced_triton",
        "hidden_attention_rows_reduced_triton",
    ]

    _CPU = ("HAS_NUMBA", "channel_mass_numba", "hidden_attention_reduced_numba")

    def __getattr__(name: str):
        """The numba CPU kernel loads on first use (importing numba takes ~0.5 s)."""
        if name in _CPU:
            from interp.kernels import hidden_attention_cpu

            return getattr(hidden_attention_cpu, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
