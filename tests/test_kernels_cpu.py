"""The fused numba CPU kernel for the channel-reduced hidden-attention map against the references.

References: the direct construction (:func:`hidden_attention_direct`, small sizes) and the anchored-block
PyTorch path (``backend="torch"``). Also: the dispatch in :func:`hidden_attention_reduced` /
:func:`channel_mass` (kernel when numba is importable, PyTorch path otherwise). Small shapes: the first
test pays the numba compile (a few seconds; cached for later runs).
"""

from __future__ import annotations

import pytest
import torch

import interp.kernels.hidden_attention_cpu as kc
from interp.attention.hidden import (
    channel_mass,
    hidden_attention_direct,
    hidden_attention_reduced,
)

needs_numba = pytest.mark.skipif(not kc.HAS_NUMBA, reason="numba not installed (pip install 'interp[cpu-kernels]')")

REDUCE = {
    "mean": lambda a: a.mean(1),
    "mean_abs": lambda a: a.abs().mean(1),
    "max": lambda a: a.abs().amax(1),
}


def make_inputs(b: int, L: int, H: int, N: int, seed: int = 0, dt_range=(1e-3, 1e-1), a_max: float = 16.0):
    """Mamba-1 layout: dt [b, L, H] log-uniform, A [H, N] in -(0.5 .. a_max), B, C [b, L, 1, N] normal."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.log(torch.tensor(dt_range[0])), torch.log(torch.tensor(dt_range[1]))
    dt = (torch.rand(b, L, H, generator=g) * (hi - lo) + lo).exp()
    A = -(torch.rand(H, N, generator=g) * (a_max - 0.5) + 0.5)
    B = torch.randn(b, L, 1, N, generator=g)
    C = torch.randn(b, L, 1, N, generator=g)
    return dt, A, B, C


def assert_close(out: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4) -> None:
    """Equal up to float32 rounding: elementwise rtol plus an atol relative to the largest entry."""
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    scale = ref.abs().max().clamp_min(1e-30)
    torch.testing.assert_close(out, ref.float(), rtol=rtol, atol=1e-6 * float(scale))


# (b, L, H, N, block): L not a multiple of the block, a single position, one block, batch > 1
SHAPES = [
    (1, 1, 3, 4, 64),
    (2, 37, 5, 4, 8),
    (1, 64, 6, 16, 16),
    (3, 70, 4, 16, 16),
    (1, 130, 9, 16, 64),
]


@needs_numba
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}-L{}-H{}-N{}-T{}".format(*s))
def test_kernel_matches_direct(shape):
    b, L, H, N, block = shape
    dt, A, B, C = make_inputs(b, L, H, N, seed=L)
    alpha = hidden_attention_direct(dt, A, B, C)
    for aggregate, reduce in REDUCE.items():
        out = kc.hidden_attention_reduced_numba(dt, A, B, C, aggregate, block=block)
        assert_close(out, reduce(alpha))
    mass = kc.channel_mass_numba(dt, A, B, C, block=block)
    assert_close(mass, alpha.abs().sum((0, 2, 3)))


@needs_numba
@pytest.mark.parametrize("aggregate", ["mean", "mean_abs", "max"])
def test_kernel_matches_torch_path_many_channels(aggregate):
    """D large (several channel chunks of the kernel: small budget) against the anchored PyTorch path."""
    dt, A, B, C = make_inputs(2, 150, 200, 16, seed=1)
    ref = hidden_attention_reduced(dt, A, B, C, aggregate, backend="torch")
    out = kc.hidden_attention_reduced_numba(dt, A, B, C, aggregate, budget=16 * 150 * 2 * 37)  # chunks of 37
    assert_close(out, ref)
    assert_close(hidden_attention_reduced(dt, A, B, C, aggregate), ref)  # the dispatched path


@needs_numba
def test_kernel_heads_and_mass_against_torch_path():
    dt, A, B, C = make_inputs(2, 45, 12, 8, seed=2)
    heads = [11, 0, 5, 5]
    for aggregate in REDUCE:
        ref = hidden_attention_reduced(dt, A, B, C, aggregate, heads=heads, block=16, backend="torch")
        assert_close(kc.hidden_attention_reduced_numba(dt, A, B, C, aggregate, heads=heads, block=16), ref)
    assert_close(channel_mass(dt, A, B, C), channel_mass(dt, A, B, C, backend="torch"))


@needs_numba
def test_kernel_underflow_and_no_grad():
    """Decays far below float32's range: no inf/nan, exact zeros where every decay underflows (the
    kernel flushes denormals to zero), and the kernel detaches its inputs."""
    dt, A, B, C = make_inputs(1, 96, 4, 16, seed=3, dt_range=(0.5, 3.0), a_max=60.0)
    alpha = hidden_attention_direct(dt, A, B, C)
    for aggregate, reduce in REDUCE.items():
        out = kc.hidden_attention_reduced_numba(dt.requires_grad_(), A, B, C, aggregate, block=16)
        assert not out.requires_grad
        assert_close(out, reduce(alpha.detach()))
    dt, A = torch.ones_like(dt), torch.full_like(A, -100.0)  # e^{-100} per step: denormal after one step
    out = kc.hidden_attention_reduced_numba(dt, A, B, C, "mean_abs", block=16)
    assert (out.tril(-1) == 0).all()
    torch.testing.assert_close(out.diagonal(dim1=1, dim2=2), (B * C).sum(-1)[..., 0].abs())


@needs_numba
def test_kernel_is_deterministic_across_thread_counts():
    """Each output row is made by one thread in a fixed order: bitwise the same for any thread count."""
    dt, A, B, C = make_inputs(1, 200, 16, 16, seed=4)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kc.hidden_attention_reduced_numba(dt, A, B, C, "mean_abs", block=16)
        torch.set_num_threads(3)
        three = kc.hidden_attention_reduced_numba(dt, A, B, C, "mean_abs", block=16)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, three)


def test_kernel_rejects_bad_inputs():
    dt, A, B, C = make_inputs(1, 8, 2, 4)
    if not kc.HAS_NUMBA:
        with pytest.raises(RuntimeError, match="numba"):
            kc.hidden_attention_reduced_numba(dt, A, B, C)
        return
    with pytest.raises(ValueError, match="Mamba-1"):
        kc.hidden_attention_reduced_numba(dt, A[:, 0], B, C)
    with pytest.raises(ValueError, match="groups"):
        kc.hidden_attention_reduced_numba(dt, A, B.expand(1, 8, 2, 4), C.expand(1, 8, 2, 4))
    with pytest.raises(ValueError, match="aggregate"):
        kc.hidden_attention_reduced_numba(dt, A, B, C, "none")


# --------------------------------------------------------------------------------------------
# dispatch in interp.attention.hidden
# --------------------------------------------------------------------------------------------
@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the kernel entry points while still running them."""
    calls = []
    for name in ("hidden_attention_reduced_numba", "channel_mass_numba"):
        fn = getattr(kc, name)

        def wrapped(*args, _fn=fn, _name=name, **kwargs):
            calls.append(_name)
            return _fn(*args, **kwargs)

        monkeypatch.setattr(kc, name, wrapped)
    return calls


@needs_numba
def test_dispatch_uses_kernel_on_cpu(spy):
    dt, A, B, C = make_inputs(1, 20, 3, 4)
    out = hidden_attention_reduced(dt, A, B, C, "mean_abs")
    mass = channel_mass(dt, A, B, C)
    assert spy == ["hidden_attention_reduced_numba", "channel_mass_numba"]
    assert_close(out, hidden_attention_reduced(dt, A, B, C, "mean_abs", backend="torch"))
    assert_close(mass, channel_mass(dt, A, B, C, backend="torch"))
    assert len(spy) == 2


def test_dispatch_falls_back_without_numba(monkeypatch, spy):
    monkeypatch.setattr(kc, "HAS_NUMBA", False)
    dt, A, B, C = make_inputs(2, 20, 3, 4)
    alpha = hidden_attention_direct(dt, A, B, C)
    for aggregate, reduce in REDUCE.items():
        assert_close(hidden_attention_reduced(dt, A, B, C, aggregate), reduce(alpha))
    assert_close(channel_mass(dt, A, B, C), alpha.abs().sum((0, 2, 3)))
    assert spy == []
    with pytest.raises(RuntimeError, match="numba"):
        hidden_attention_reduced(dt, A, B, C, backend="numba")


def test_dispatch_keeps_torch_path_for_autograd_and_other_layouts(spy):
    dt, A, B, C = make_inputs(1, 12, 3, 4)
    dt.requires_grad_()
    out = hidden_attention_reduced(dt, A, B, C, "mean")  # differentiable: the PyTorch path
    out.sum().backward()
    assert dt.grad is not None and torch.isfinite(dt.grad).all()
    with torch.no_grad():
        hidden_attention_reduced(dt, A, B, C, "mean")  # no grad needed: the kernel (when installed)
    hidden_attention_reduced(dt.detach(), A[:, 0], B, C, "mean")  # Mamba-2 layout: never the kernel
    assert spy == (["hidden_attention_reduced_numba"] if kc.HAS_NUMBA else [])
    with pytest.raises(ValueError, match="backend"):
        hidden_attention_reduced(dt, A, B, C, backend="cuda")
