"""TopK sparse-decoder kernels (interp.kernels.topk_decoder) against the dense PyTorch reference.

Kernel tests (``@in_interpreter``) run on CPU tensors in a ``TRITON_INTERPRET=1`` child pytest process
on this file (see ``tests/_triton_interpreter.py``), small sizes with 16-wide blocks so that row,
column and pair tiles are partial. Gradients are compared with torch.autograd through
:func:`sparse_decode_reference` (dense scatter + matmul). ``@parent_only`` tests need no interpreter:
the PyTorch path, input checks, import without triton. The CUDA test is skipped without a GPU.
"""

from __future__ import annotations

from _triton_interpreter import IS_CHILD  # first: sets TRITON_INTERPRET in the child
from _triton_interpreter import InterpreterChild, parent_only, triton_missing

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

KERNEL_FILE = Path(__file__).resolve().parents[1] / "kernels" / "topk_decoder.py"
_TRITON_ERROR = None
kt = None
if IS_CHILD:
    try:
        import triton  # noqa: F401

        import interp.kernels.topk_decoder as kt
    except Exception as exc:  # pragma: no cover - depends on the environment
        _TRITON_ERROR = f"triton not importable: {exc!r}"
else:
    _TRITON_ERROR = triton_missing()

from interp.kernels.topk_decoder import (  # noqa: E402  (after the child's triton import)
    sparse_decode,
    sparse_decode_reference,
    sparse_decode_torch,
)

in_interpreter = InterpreterChild(__file__)
BLOCKS = dict(block_m=16, block_d=16, block_p=16)


@pytest.fixture(scope="module", autouse=True)
def interpreter_probe():
    """In the child: skip everything (with the reason) if triton cannot run in interpreter mode at all."""
    if not IS_CHILD:
        yield
        return
    if _TRITON_ERROR is not None or kt is None or not kt.HAS_TRITON:
        pytest.skip(_TRITON_ERROR or "triton not importable")
    try:
        idx, vals, W, b = make_inputs(2, 2, 3, 4)
        kt.sparse_decode_triton(idx, vals, W, b, **BLOCKS)
    except Exception as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"triton cannot run in interpreter mode: {exc!r}")
    yield


def make_inputs(M: int, k: int, d_sae: int, d_in: int, seed: int = 0, lead: tuple = (), dtype=torch.float32,
                duplicates: bool = True):
    """Random latent ids (with duplicates inside some rows when k > 1), values, decoder, bias."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, d_sae, (M, k), generator=g)
    if duplicates and k > 1 and M > 0:
        idx[::3, 1] = idx[::3, 0]  # every third row repeats a latent
    vals = torch.rand(M, k, generator=g) * 3 - 0.5
    W = torch.randn(d_sae, d_in, generator=g).to(dtype)
    b = torch.randn(d_in, generator=g).to(dtype)
    if lead:
        idx, vals = idx.reshape(*lead, k), vals.reshape(*lead, k)
    return idx, vals, W, b


def assert_close(out, ref, rtol: float = 1e-5):
    """Elementwise rtol with an absolute floor of rtol·max|ref| (for entries that cancel to ~0)."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert torch.isfinite(out).all()
    atol = rtol * float(ref.abs().max()) if ref.numel() else 0.0
    torch.testing.assert_close(out.double(), ref.double(), rtol=rtol, atol=atol)


def fwd_and_grads(fn, idx, vals, W, b, grad_out=None, **kw):
    """Output and the gradients (vals, W_dec, b_dec) of <out, grad_out> through ``fn``."""
    vals = vals.detach().clone().requires_grad_(True)
    W = W.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True) if b is not None else None
    out = fn(idx, vals, W, b, **kw)
    if grad_out is None:
        g = torch.Generator().manual_seed(123)
        grad_out = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
    leaves = [vals, W] + ([b] if b is not None else [])
    grads = torch.autograd.grad(out, leaves, grad_out)
    return out.detach(), grads, grad_out


# (M, k, d_sae, d_in, lead): sizes not multiples of 16, k = 1, d_sae < k (many duplicates), leading dims
SHAPES = [
    pytest.param(37, 5, 50, 45, (), id="M37-k5-S50-D45"),
    pytest.param(32, 16, 64, 32, (), id="M32-k16-S64-D32"),
    pytest.param(9, 1, 20, 17, (), id="k1"),
    pytest.param(1, 1, 3, 5, (), id="M1-k1"),
    pytest.param(23, 7, 4, 33, (), id="d_sae<k"),
    pytest.param(24, 3, 30, 20, (4, 6), id="lead-4x6"),
]


# ---------------------------------------------------------------------------------------------
# kernels under the interpreter
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("M,k,d_sae,d_in,lead", SHAPES)
@in_interpreter
def test_kernel_forward_and_grads(M, k, d_sae, d_in, lead):
    idx, vals, W, b = make_inputs(M, k, d_sae, d_in, seed=M + k + d_sae, lead=lead)
    ref, ref_g, g = fwd_and_grads(sparse_decode_reference, idx, vals, W, b)
    assert ref.shape == (*(lead or (M,)), d_in)
    for method in kt.GRAD_W_METHODS:
        out, grads, _ = fwd_and_grads(kt.sparse_decode_triton, idx, vals, W, b, g, grad_w=method, **BLOCKS)
        assert out.dtype == torch.float32
        assert_close(out, ref)
        for name, got, want in zip(("vals", "W_dec", "b_dec"), grads, ref_g):
            assert got.dtype == want.dtype, name
            assert_close(got, want)
    # without bias, int32 ids
    ref, ref_g, g = fwd_and_grads(sparse_decode_reference, idx, vals, W, None)
    out, grads, _ = fwd_and_grads(kt.sparse_decode_triton, idx.int(), vals, W, None, g, **BLOCKS)
    assert_close(out, ref)
    for got, want in zip(grads, ref_g):
        assert_close(got, want)


@in_interpreter
def test_kernel_hot_latent_and_determinism():
    """One latent in every row (a segment of 70 pairs, > several block_p chunks), duplicates in a row;
    the sorted grad_W is bit-reproducible, the atomic one agrees to float32 rounding."""
    idx, vals, W, b = make_inputs(70, 4, 24, 20, seed=5)
    idx = idx // 2 * 2  # odd latents unused: their grad_W rows must be written as zeros
    idx[:, 0] = 4
    idx[::2, 2] = 4  # twice in every other row
    ref, ref_g, g = fwd_and_grads(sparse_decode_reference, idx, vals, W, b)
    runs = [fwd_and_grads(kt.sparse_decode_triton, idx, vals, W, b, g, grad_w="sort", **BLOCKS) for _ in range(2)]
    assert torch.equal(runs[0][1][1], runs[1][1][1])
    assert_close(runs[0][0], ref)
    for got, want in zip(runs[0][1], ref_g):
        assert_close(got, want)
    assert (runs[0][1][1][1::2] == 0).all()
    _, grads_atomic, _ = fwd_and_grads(kt.sparse_decode_triton, idx, vals, W, b, g, grad_w="atomic", **BLOCKS)
    assert_close(grads_atomic[1], ref_g[1])


@in_interpreter
def test_kernel_strided_w_and_partial_grads():
    """W_dec as a transposed view (strides (1, d_sae)); gradients requested for a subset of inputs."""
    idx, vals, W, b = make_inputs(19, 3, 40, 21, seed=7)
    Wt = W.t().contiguous().t()  # same values, column-major
    assert Wt.stride() == (1, 40)
    ref, ref_g, g = fwd_and_grads(sparse_decode_reference, idx, vals, W, b)
    out, grads, _ = fwd_and_grads(kt.sparse_decode_triton, idx, vals, Wt, b, g, **BLOCKS)
    assert_close(out, ref)
    for got, want in zip(grads, ref_g):
        assert_close(got, want)
    # only vals needs a gradient (frozen decoder), and only W_dec (fixed codes)
    v = vals.clone().requires_grad_(True)
    (gv,) = torch.autograd.grad(kt.sparse_decode_triton(idx, v, W, b, **BLOCKS), [v], g)
    assert_close(gv, ref_g[0])
    Wr = W.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(kt.sparse_decode_triton(idx, vals, Wr, None, **BLOCKS), [Wr], g)
    assert_close(gw, ref_g[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@in_interpreter
def test_kernel_low_precision(dtype):
    """Half-precision W_dec: float32 vals give a float32 result (exact up to float32 rounding); half
    vals and bias give a half result, accumulated in float32 (one rounding at the store)."""
    idx, vals, W, b = make_inputs(21, 6, 40, 37, seed=11, dtype=dtype)
    ref64 = sparse_decode_reference(idx, vals.double(), W.double(), b.double())
    out = kt.sparse_decode_triton(idx, vals, W, b.float(), **BLOCKS)
    assert out.dtype == torch.float32
    assert_close(out, ref64)
    vh = vals.to(dtype)
    out = kt.sparse_decode_triton(idx, vh, W, b, **BLOCKS)
    assert out.dtype == dtype
    ref64 = sparse_decode_reference(idx, vh.double(), W.double(), b.double())
    eps = torch.finfo(dtype).eps
    assert_close(out, ref64, rtol=2 * eps)
    # backward runs and lands in the input dtypes (loose check: one half rounding per gradient entry)
    ref, ref_g, g = fwd_and_grads(sparse_decode_reference, idx, vh.double(), W.double(), b.double())
    out, grads, _ = fwd_and_grads(kt.sparse_decode_triton, idx, vh, W, b, g.to(dtype), **BLOCKS)
    for got, want in zip(grads, ref_g):
        assert got.dtype == dtype
        assert_close(got, want, rtol=8 * eps)


@in_interpreter
def test_kernel_edge_sizes():
    """Empty batch, k = 0 (result = b_dec), one latent."""
    _, _, W, b = make_inputs(1, 1, 10, 18)
    for M, k in ((0, 3), (5, 0)):
        idx = torch.zeros(M, k, dtype=torch.long)
        vals = torch.zeros(M, k)
        ref, ref_g, g = fwd_and_grads(sparse_decode_reference, idx, vals, W, b)
        out, grads, _ = fwd_and_grads(kt.sparse_decode_triton, idx, vals, W, b, g, **BLOCKS)
        assert_close(out, ref)
        for got, want in zip(grads, ref_g):
            assert_close(got, want)
    idx, vals, W1, b = make_inputs(6, 2, 1, 18)
    assert_close(kt.sparse_decode_triton(idx, vals, W1, b, **BLOCKS), sparse_decode_reference(idx, vals, W1, b))


@in_interpreter
def test_kernel_dispatch():
    idx, vals, W, b = make_inputs(13, 4, 30, 19, seed=3)
    # CPU tensors: the PyTorch path, bit for bit
    assert torch.equal(kt.sparse_decode(idx, vals, W, b), kt.sparse_decode_torch(idx, vals, W, b))
    out = kt.sparse_decode(idx, vals, W, b, backend="triton", **BLOCKS)  # forced kernel (interpreted)
    assert_close(out, sparse_decode_reference(idx, vals, W, b))


@in_interpreter
def test_kernel_argument_errors():
    idx, vals, W, b = make_inputs(4, 2, 10, 8)
    with pytest.raises(ValueError, match="grad_w"):
        kt.sparse_decode_triton(idx, vals, W, b, grad_w="segmented")
    with pytest.raises(ValueError, match="block_d"):
        kt.sparse_decode_triton(idx, vals, W, b, block_d=24)
    with pytest.raises(ValueError, match="block_m"):
        kt.sparse_decode_triton(idx, vals, W, b, block_m=8)
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        kt.sparse_decode_triton(idx + 9, vals, W, b)
    with pytest.raises(ValueError, match="backend"):
        kt.sparse_decode(idx, vals, W, b, backend="cuda")


# ---------------------------------------------------------------------------------------------
# PyTorch paths, checks, import (parent process, no interpreter)
# ---------------------------------------------------------------------------------------------
@parent_only
def test_reference_matches_loop():
    """The reference is the definition: x̂[m] = Σ_j vals[m, j] W[idx[m, j]] + b."""
    idx, vals, W, b = make_inputs(7, 3, 5, 4, seed=1)
    want = torch.stack([sum(vals[m, j] * W[idx[m, j]] for j in range(3)) + b for m in range(7)])
    assert_close(sparse_decode_reference(idx, vals, W, b), want)


@pytest.mark.parametrize("M,k,d_sae,d_in,lead", SHAPES)
@parent_only
def test_torch_path_matches_reference(M, k, d_sae, d_in, lead):
    idx, vals, W, b = make_inputs(M, k, d_sae, d_in, seed=M + k, lead=lead)
    for bias in (b, None):
        ref, ref_g, g = fwd_and_grads(sparse_decode_reference, idx, vals, W, bias)
        for fn in (sparse_decode_torch, sparse_decode):  # sparse_decode: CPU tensors -> the torch path
            out, grads, _ = fwd_and_grads(fn, idx, vals, W, bias, g)
            assert_close(out, ref)
            for got, want in zip(grads, ref_g):
                assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=["fp16", "bf16", "fp64"])
@parent_only
def test_torch_path_dtypes(dtype):
    idx, vals, W, b = make_inputs(21, 6, 40, 37, seed=2, dtype=dtype)
    out = sparse_decode_torch(idx, vals.to(dtype), W, b)
    assert out.dtype == dtype
    ref64 = sparse_decode_reference(idx, vals.to(dtype).double(), W.double(), b.double())
    assert_close(out, ref64, rtol=8 * torch.finfo(dtype).eps if dtype != torch.float64 else 1e-12)
    mixed = sparse_decode_torch(idx, vals, W, b.float())  # float32 vals and bias: float32 result
    assert mixed.dtype == torch.promote_types(dtype, torch.float32)


@parent_only
def test_torch_path_edge_sizes():
    _, _, W, b = make_inputs(1, 1, 10, 6)
    for M, k in ((0, 3), (4, 0)):
        idx, vals = torch.zeros(M, k, dtype=torch.long), torch.zeros(M, k)
        assert torch.equal(sparse_decode_torch(idx, vals, W, b), sparse_decode_reference(idx, vals, W, b))
        assert sparse_decode_torch(idx, vals, W).shape == (M, 6)


@parent_only
def test_input_errors():
    idx, vals, W, b = make_inputs(4, 3, 10, 8)
    for fn in (sparse_decode, sparse_decode_torch, sparse_decode_reference):
        with pytest.raises(TypeError, match="idx must be int32 or int64"):
            fn(idx.float(), vals, W, b)
        with pytest.raises(TypeError, match="vals must be floating"):
            fn(idx, idx, W, b)
        with pytest.raises(ValueError, match="same shape"):
            fn(idx, vals[:, :2], W, b)
        with pytest.raises(ValueError, match=r"W_dec must be \[d_sae, d_in\]"):
            fn(idx, vals, W[0], b)
        with pytest.raises(ValueError, match=r"b_dec must be \[d_in\]"):
            fn(idx, vals, W, b[:5])
        with pytest.raises(IndexError, match=r"idx must lie in \[0, d_sae\) = \[0, 10\), got values in \[-1,"):
            fn(idx - 1, vals, W, b)
        with pytest.raises(IndexError, match=r"got values in \[\d+, 10\]"):
            fn(idx.clamp_min(1) * 0 + 10, vals, W, b)
        with pytest.raises(ValueError, match="one device"):
            fn(idx, vals, torch.empty(10, 8, device="meta"), b)
    with pytest.raises(ValueError, match="backend"):
        sparse_decode(idx, vals, W, b, backend="numpy")


@parent_only
def test_triton_backend_needs_gpu_tensors():
    if _TRITON_ERROR is not None:
        pytest.skip(_TRITON_ERROR)
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 in the parent: CPU tensors are allowed")
    idx, vals, W, b = make_inputs(4, 3, 10, 8)
    with pytest.raises(ValueError, match="need GPU tensors"):
        sparse_decode(idx, vals, W, b, backend="triton")


@parent_only
def test_importable_without_triton(monkeypatch):
    """With triton unavailable the module imports, and the dispatcher falls back to PyTorch."""
    for name in [m for m in sys.modules if m == "triton" or m.startswith("triton.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    spec = importlib.util.spec_from_file_location("_interp_kernels_topk_no_triton", KERNEL_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert not mod.HAS_TRITON
    idx, vals, W, b = make_inputs(5, 2, 9, 4)
    assert torch.equal(mod.sparse_decode(idx, vals, W, b), sparse_decode_torch(idx, vals, W, b))
    with pytest.raises(RuntimeError, match="triton is not installed"):
        mod.sparse_decode_triton(idx, vals, W, b)
    with pytest.raises(RuntimeError, match="triton is not installed"):
        mod.sparse_decode(idx, vals, W, b, backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@parent_only
def test_cuda_kernel_matches_and_beats_dense():
    """On a GPU (compiled kernels), SAE-sized: kernel vs embedding_bag (forward and gradients), and
    forward+backward faster than the dense reference (which does d_sae / k ≈ 400x the work)."""
    import interp.kernels.topk_decoder as kg

    if not kg.HAS_TRITON:
        pytest.skip("triton not importable")
    M, k, d_sae, d_in = 4096, 32, 12288, 768
    idx, vals, W, b = (x.cuda() for x in make_inputs(M, k, d_sae, d_in, seed=0))
    ref, ref_g, g = fwd_and_grads(sparse_decode_torch, idx, vals, W, b)
    for method in kg.GRAD_W_METHODS:
        out, grads, _ = fwd_and_grads(kg.sparse_decode, idx, vals, W, b, g, grad_w=method)
        assert out.is_cuda
        assert_close(out, ref, rtol=1e-4)
        for got, want in zip(grads, ref_g):
            assert_close(got, want, rtol=1e-4)
    Wh = W.half()
    assert_close(kg.sparse_decode(idx, vals.half(), Wh, b.half()).float(),
                 sparse_decode_torch(idx, vals.half().float(), Wh.float(), b.half().float()), rtol=2e-3)

    def step(fn):
        fwd_and_grads(fn, idx, vals, W, b, g)

    def timed(fn, reps=5):
        step(fn)  # warm-up (compiles)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            step(fn)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps

    t_kernel = timed(kg.sparse_decode_triton)
    t_dense = timed(sparse_decode_reference)
    assert t_kernel < t_dense, f"kernel {t_kernel:.2f} ms vs dense {t_dense:.2f} ms (forward + backward)"
