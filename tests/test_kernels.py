"""Triton hidden-attention kernels against the PyTorch reference, under the Triton interpreter.

The kernel tests run on CPU tensors in a child pytest process on this same file with
``TRITON_INTERPRET=1`` set before triton is imported; the parent replays each test's outcome (see
``tests/_triton_interpreter.py``). Small sizes: the interpreter is slow.
"""

from __future__ import annotations

from _triton_interpreter import IS_CHILD as _CHILD  # first: sets TRITON_INTERPRET in the child
from _triton_interpreter import InterpreterChild, triton_missing

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from interp.attention import backends
from interp.attention.hidden import (
    hidden_attention_direct,
    hidden_attention_reduced,
    hidden_attention_rows,
    hidden_attention_rows_reduced,
)

KERNEL_FILE = Path(__file__).resolve().parents[1] / "kernels" / "hidden_attention.py"
_TRITON_ERROR = None
ka = None
if _CHILD:
    try:
        import triton  # noqa: F401

        import interp.kernels.hidden_attention as ka
    except Exception as exc:  # pragma: no cover - depends on the environment
        _TRITON_ERROR = f"triton not importable: {exc!r}"
else:
    _TRITON_ERROR = triton_missing()

in_interpreter = InterpreterChild(__file__)


def _load_private(name: str):
    """A private copy of the kernel module (decorated under the current environment)."""
    spec = importlib.util.spec_from_file_location(name, KERNEL_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module", autouse=True)
def interpreter_probe():
    """In the child: skip everything (with the reason) if triton cannot run in interpreter mode at all."""
    if not _CHILD:
        yield
        return
    if _TRITON_ERROR is not None or ka is None or not ka.HAS_TRITON:
        pytest.skip(_TRITON_ERROR or "triton not importable")
    try:
        dt, A, B, C = make_inputs(1, 3, 2, 1, 2, mamba2=False)
        ka.hidden_attention_reduced_triton(dt, A, B, C, block_i=16, block_j=16)
    except Exception as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"triton cannot run in interpreter mode: {exc!r}")
    yield


def make_inputs(b: int, L: int, H: int, G: int, N: int, mamba2: bool, seed: int = 0, dt_shift: float = -1.0):
    """Realistic-looking SSM parameters: Δ = softplus(·) > 0, A < 0, B, C standard normal."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.nn.functional.softplus(torch.randn(b, L, H, generator=g) + dt_shift)
    A_shape = (H,) if mamba2 else (H, N)
    A = -torch.exp(0.5 * torch.randn(*A_shape, generator=g))
    B = torch.randn(b, L, G, N, generator=g)
    C = torch.randn(b, L, G, N, generator=g)
    return dt, A, B, C


def assert_matches(out, ref, rtol: float = 1e-5):
    """Elementwise rtol, with an absolute floor of rtol·max|ref| for entries that cancel to ~0."""
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    atol = rtol * float(ref.abs().max()) if ref.numel() else 0.0
    torch.testing.assert_close(out, ref.float(), rtol=rtol, atol=atol)


def reduce_channels(alpha, aggregate: str):
    """Channel reduction of a per-channel reference map [b, H, ...] (dim 1)."""
    if aggregate == "mean":
        return alpha.mean(1)
    if aggregate == "mean_abs":
        return alpha.abs().mean(1)
    return alpha.abs().amax(1)


AGGS = ("mean", "mean_abs", "max")

# (L, H, G, N, mamba2): lengths 1, 7, 33, 50 are not multiples of the 16 block
SHAPES = [
    pytest.param(1, 4, 1, 5, False, id="m1-L1"),
    pytest.param(7, 4, 1, 5, False, id="m1-L7"),
    pytest.param(33, 3, 1, 5, False, id="m1-L33"),
    pytest.param(50, 2, 1, 16, False, id="m1-L50-N16"),
    pytest.param(1, 4, 2, 8, True, id="m2-G2-L1"),
    pytest.param(7, 4, 1, 8, True, id="m2-G1-L7"),
    pytest.param(33, 4, 2, 8, True, id="m2-G2-L33"),
    pytest.param(50, 4, 1, 8, True, id="m2-G1-L50"),
    pytest.param(50, 6, 2, 20, True, id="m2-G2-L50-N20"),
    pytest.param(33, 2, 2, 40, True, id="m2-G2-L33-N40"),  # states in two chunks of 32
]


@pytest.mark.parametrize("L,H,G,N,mamba2", SHAPES)
@in_interpreter
def test_reduced_matches_reference(L, H, G, N, mamba2):
    dt, A, B, C = make_inputs(2, L, H, G, N, mamba2, seed=L + 100 * G + 7 * N)
    for aggregate in AGGS:
        out = ka.hidden_attention_reduced_triton(dt, A, B, C, aggregate=aggregate, block_i=16, block_j=16)
        ref = hidden_attention_reduced(dt, A, B, C, aggregate=aggregate)
        assert_matches(out, ref)
    # the causal structure: exactly zero above the diagonal
    assert (out.triu(1) == 0).all()


@pytest.mark.parametrize("block_i,block_j", [(16, 32), (32, 16)])
@pytest.mark.parametrize("mamba2", [False, True], ids=["m1", "m2-G2"])
@in_interpreter
def test_rectangular_tiles(block_i, block_j, mamba2):
    G = 2 if mamba2 else 1
    dt, A, B, C = make_inputs(1, 41, 4, G, 6, mamba2, seed=3)
    out = ka.hidden_attention_reduced_triton(dt, A, B, C, aggregate="mean", block_i=block_i, block_j=block_j)
    assert_matches(out, hidden_attention_reduced(dt, A, B, C, aggregate="mean"))


@pytest.mark.parametrize("mamba2", [False, True], ids=["m1", "m2-G2"])
@in_interpreter
def test_strong_decay_underflow(mamba2):
    """Large Δ: most decays underflow to 0; no NaN/inf from the masked exponent or the anchors."""
    G = 2 if mamba2 else 1
    dt, A, B, C = make_inputs(1, 40, 4, G, 4, mamba2, seed=5, dt_shift=2.5)
    dt[:, 20:] *= 30.0  # exponents far below the float32 range further down the sequence
    for aggregate in ("mean_abs", "max"):
        out = ka.hidden_attention_reduced_triton(dt, A, B, C, aggregate=aggregate, block_i=16, block_j=16)
        assert_matches(out, hidden_attention_reduced(dt, A, B, C, aggregate=aggregate))


@in_interpreter
def test_mamba1_with_groups_matches_direct():
    """A [H, N] with several B/C groups (not a Mamba-1 layout the reduced reference accepts):
    compare with the channel reduction of the direct reference construction."""
    dt, A, B, C = make_inputs(1, 20, 4, 2, 3, False, seed=11)
    alpha = hidden_attention_direct(dt, A, B, C)
    for aggregate in AGGS:
        out = ka.hidden_attention_reduced_triton(dt, A, B, C, aggregate=aggregate, block_i=16, block_j=16)
        assert_matches(out, reduce_channels(alpha, aggregate))


@pytest.mark.parametrize("mamba2,heads", [(False, [3, 0]), (True, [3, 1, 2])], ids=["m1", "m2-G2"])
@in_interpreter
def test_heads_subset(mamba2, heads):
    G = 2 if mamba2 else 1
    dt, A, B, C = make_inputs(1, 23, 4, G, 5, mamba2, seed=13)
    for aggregate in ("mean", "max"):
        out = ka.hidden_attention_reduced_triton(dt, A, B, C, aggregate=aggregate, heads=heads,
                                                 block_i=16, block_j=16)
        assert_matches(out, hidden_attention_reduced(dt, A, B, C, aggregate=aggregate, heads=heads))


@pytest.mark.parametrize("L,H,G,N,mamba2", [
    pytest.param(37, 4, 1, 5, False, id="m1-L37"),
    pytest.param(37, 4, 2, 6, True, id="m2-G2-L37"),
    pytest.param(1, 2, 1, 3, False, id="m1-L1"),
])
@in_interpreter
def test_query_rows(L, H, G, N, mamba2):
    dt, A, B, C = make_inputs(2, L, H, G, N, mamba2, seed=17)
    rows = sorted({0, L // 2, L - 1, -1, min(16, L - 1)})
    alpha_rows = hidden_attention_rows(dt, A, B, C, rows)  # [b, H, R, L]
    for aggregate in AGGS:
        out = ka.hidden_attention_rows_reduced_triton(dt, A, B, C, rows, aggregate=aggregate, block_j=16)
        assert out.shape == (2, len(rows), L)
        assert_matches(out, reduce_channels(alpha_rows, aggregate))
    # rows of the kernel's full map (same aggregate as the last loop iteration)
    full = ka.hidden_attention_reduced_triton(dt, A, B, C, aggregate="max", block_i=16, block_j=16)
    assert_matches(out, full[:, [r % L for r in rows]])


@in_interpreter
def test_auto_dispatch():
    """The one dispatch (interp.attention.hidden, backend=...) reaches the Triton kernels."""
    dt, A, B, C = make_inputs(1, 18, 4, 2, 4, True, seed=19)
    ref = hidden_attention_reduced(dt, A, B, C, aggregate="mean_abs", backend="torch")
    # CPU tensors: the PyTorch path, bit for bit
    assert torch.equal(hidden_attention_reduced(dt, A, B, C, aggregate="mean_abs"), ref)
    # forced kernel (here interpreted) agrees
    out = hidden_attention_reduced(dt, A, B, C, aggregate="mean_abs", backend="triton", block_i=16, block_j=16)
    assert_matches(out, ref)
    rows = [3, 17]
    r_torch = hidden_attention_rows_reduced(dt, A, B, C, rows, aggregate="mean")
    r_kern = hidden_attention_rows_reduced(dt, A, B, C, rows, aggregate="mean", backend="triton", block_j=16)
    assert_matches(r_kern, r_torch)


@in_interpreter
def test_argument_errors():
    dt, A, B, C = make_inputs(1, 5, 2, 1, 3, False)
    with pytest.raises(ValueError, match="aggregate"):
        ka.hidden_attention_reduced_triton(dt, A, B, C, aggregate="none")
    with pytest.raises(ValueError, match="block_i"):
        ka.hidden_attention_reduced_triton(dt, A, B, C, block_i=24)
    with pytest.raises(ValueError, match="A must be"):
        ka.hidden_attention_reduced_triton(dt, A[:, :2], B, C)
    with pytest.raises(IndexError):
        ka.hidden_attention_rows_reduced_triton(dt, A, B, C, [5])


@in_interpreter
def test_importable_without_triton(monkeypatch):
    """With triton unavailable the module imports, and the dispatcher falls back to PyTorch (or numba)."""
    import interp.kernels

    for name in [m for m in sys.modules if m == "triton" or m.startswith("triton.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    mod = _load_private("_interp_kernels_hidden_attention_no_triton")
    assert not mod.HAS_TRITON
    monkeypatch.setattr(interp.kernels, "HAS_TRITON", mod.HAS_TRITON)  # what the dispatcher now sees
    has_triton, has_numba = backends.kernels_available()
    assert not has_triton
    assert backends.choose_backend("cuda", "mamba1", False, has_triton, has_numba) == "torch"
    dt, A, B, C = make_inputs(1, 9, 2, 1, 3, False)
    fallback = backends.choose_backend("cpu", "mamba1", False, has_triton, has_numba)  # numba or torch
    assert torch.equal(hidden_attention_reduced(dt, A, B, C, aggregate="max"),
                       hidden_attention_reduced(dt, A, B, C, aggregate="max", backend=fallback))
    with pytest.raises(RuntimeError, match="triton"):
        hidden_attention_reduced(dt, A, B, C, backend="triton")
    with pytest.raises(RuntimeError, match="triton is not installed"):
        mod.hidden_attention_reduced_triton(dt, A, B, C)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_kernel_matches_torch():
    """On a GPU (parent process, compiled kernels): kernel vs the PyTorch path on the same device.
    Looser tolerance than the interpreter: the GPU exp is not numpy's."""
    if _CHILD:
        pytest.skip("the compiled-kernel test runs in the parent process")
    import interp.kernels.hidden_attention as kg

    if not kg.HAS_TRITON:
        pytest.skip("triton not importable")
    for mamba2, G, N, L in ((False, 1, 16, 300), (True, 1, 64, 257), (True, 2, 40, 130)):
        dt, A, B, C = (x.cuda() for x in make_inputs(2, L, 8, G, N, mamba2, seed=L))
        for aggregate in AGGS:
            ref = hidden_attention_reduced(dt, A, B, C, aggregate=aggregate, backend="torch").cpu()
            out = hidden_attention_reduced(dt, A, B, C, aggregate=aggregate)  # backend="auto": the kernel
            assert out.is_cuda
            assert_matches(out.cpu(), ref, rtol=1e-4)
            rows = [0, L // 3, L - 1]
            r = hidden_attention_rows_reduced(dt, A, B, C, rows, aggregate=aggregate)
            assert_matches(r.cpu(), ref[:, rows], rtol=1e-4)
