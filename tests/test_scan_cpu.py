"""The fused numba selective scans (``interp.hooks.scan_cpu``: Mamba-1's and Mamba-2's) against their reference
(:func:`interp.hooks.scan.sequential_scan`), and the forwards that use them: logits equal to the PyTorch path and to
Hugging Face, hooks (``hook_state`` edits included) unchanged, gradients those of the PyTorch path."""

from __future__ import annotations

import pytest
import torch

import interp.hooks.scan_cpu as ks
from interp.hooks import scan
from interp.hooks.scan import chunked_scan, sequential_scan

needs_numba = pytest.mark.skipif(not ks.HAS_NUMBA, reason="numba not installed (pip install 'interp[cpu-kernels]')")


def mamba1_inputs(b: int, L: int, d: int, N: int, seed: int = 0, dt_max: float = 0.5, a_max: float = 8.0):
    """The chunked_scan layout of Mamba-1: u [b, L, d, 1], dt [b, L, d], A [d, N] < 0, B, C [b, L, 1, N], D [d],
    h0 [b, d, 1, N]."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, L, d, 1, generator=g)
    dt = torch.rand(b, L, d, generator=g) * dt_max
    A = -torch.rand(d, N, generator=g) * a_max
    B, C = torch.randn(b, L, 1, N, generator=g), torch.randn(b, L, 1, N, generator=g)
    return u, dt, A, B, C, torch.randn(d, generator=g), torch.randn(b, d, 1, N, generator=g)


@needs_numba
@pytest.mark.parametrize("b, L, d, N", [(2, 37, 24, 16), (1, 5, 7, 3), (3, 64, 40, 16), (1, 1, 17, 5)])
def test_kernel_equals_sequential_scan(b, L, d, N):
    u, dt, A, B, C, D, h0 = mamba1_inputs(b, L, d, N)
    y, h = ks.selective_scan_numba(u[..., 0], dt, A, B[:, :, 0], C[:, :, 0], h0[:, :, 0])
    y_ref, states = sequential_scan(u, dt, A, B, C, torch.zeros(d), h0)
    scale = y_ref.abs().max()
    assert (y - y_ref[..., 0]).abs().max() <= 1e-5 * scale
    assert (h - states[:, -1, :, 0]).abs().max() <= 1e-5 * states[:, -1].abs().max()


@needs_numba
def test_kernel_decays_match_exp_over_the_whole_range():
    """One step from h0 with u = 0: y = C · (exp(Δ A) ⊙ h0), so each decay exp(Δ A) is read back; Δ A spans
    [-87, 0] (relative error ≤ 2e-7) and beyond -87 (underflow: ≤ 1.7e-38 absolute)."""
    N = 1
    v = -torch.cat([torch.linspace(0, 87, 4001), torch.tensor([88.0, 100.0, 1e4])])  # Δ A
    d = v.numel()
    u = torch.zeros(1, 1, d)
    dt = torch.ones(1, 1, d)
    A = v[:, None]
    B, C = torch.zeros(1, 1, N), torch.ones(1, 1, N)
    h0 = torch.ones(1, d, N)
    y, h = ks.selective_scan_numba(u, dt, A, B, C, h0)
    expected = torch.exp(v.double())
    normal = v >= -87
    rel = ((y[0, 0].double() - expected) / expected)[normal].abs().max()
    assert rel <= 2e-7, rel
    assert (y[0, 0].double() - expected)[~normal].abs().max() <= 1.7e-38
    assert torch.equal(h[0, :, 0], y[0, 0])


def mamba2_inputs(b: int, L: int, H: int, P: int, G: int, N: int, seed: int = 0):
    """The chunked_scan layout of Mamba-2: u [b, L, H, P], dt [b, L, H], A [H] < 0, B, C [b, L, G, N], D [H],
    h0 [b, H, P, N]."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, L, H, P, generator=g), torch.rand(b, L, H, generator=g) * 0.5,
            -torch.rand(H, generator=g) * 4, torch.randn(b, L, G, N, generator=g), torch.randn(b, L, G, N, generator=g),
            torch.randn(H, generator=g), torch.randn(b, H, P, N, generator=g))


@needs_numba
@pytest.mark.parametrize("b, L, H, P, G, N", [(2, 37, 4, 8, 2, 16), (1, 1, 3, 5, 1, 7), (3, 70, 6, 4, 3, 8)])
def test_mamba2_kernel_equals_sequential_scan(b, L, H, P, G, N):
    u, dt, A, B, C, D, h0 = mamba2_inputs(b, L, H, P, G, N)
    y, h = ks.ssd_scan_numba(u, dt, A, B, C, h0)
    y_ref, states = sequential_scan(u, dt, A, B, C, torch.zeros(H), h0)
    assert (y - y_ref).abs().max() <= 1e-5 * y_ref.abs().max()
    assert (h - states[:, -1]).abs().max() <= 1e-5 * states[:, -1].abs().max()


@needs_numba
def test_chunked_scan_takes_the_kernels_only_where_they_apply(monkeypatch):
    calls = []
    m1, m2 = ks.selective_scan_numba, ks.ssd_scan_numba
    monkeypatch.setattr(scan, "_FUSED", [(lambda *a: calls.append(1) or m1(*a), lambda *a: calls.append(2) or m2(*a))])
    u, dt, A, B, C, D, h0 = mamba1_inputs(2, 30, 16, 8)
    y, h = chunked_scan(u, dt, A, B, C, D, h0)
    y_ref, states = sequential_scan(u, dt, A, B, C, D, h0)
    assert torch.allclose(y, y_ref, atol=1e-5) and torch.allclose(h, states[:, -1], atol=1e-5)
    u2, dt2, A2, B2, C2, D2, h02 = mamba2_inputs(2, 30, 4, 8, 2, 16)
    y, h = chunked_scan(u2, dt2, A2, B2, C2, D2, h02, chunk_size=8)
    y_ref, states = sequential_scan(u2, dt2, A2, B2, C2, D2, h02)
    assert torch.allclose(y, y_ref, atol=1e-4) and torch.allclose(h, states[:, -1], atol=1e-4)
    assert calls == [1, 2]
    # several channels per head with Mamba-1's A [H, N], or the switch off: the PyTorch paths
    chunked_scan(u.expand(-1, -1, -1, 2), dt, A, B, C, D, h0.expand(-1, -1, 2, -1))
    monkeypatch.setattr(scan, "FUSED_CPU_SCAN", False)
    chunked_scan(u, dt, A, B, C, D, h0)
    assert calls == [1, 2]


@needs_numba
@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
def test_gradients_through_the_kernel_equal_the_pytorch_paths(family, monkeypatch):
    """Under autograd the forward is the kernel's, the backward the PyTorch path's (recomputed): the values equal
    the kernel's without autograd, the gradients of every input equal those of the PyTorch path."""
    inputs = mamba1_inputs(2, 30, 16, 8) if family == "mamba1" else mamba2_inputs(2, 30, 4, 8, 2, 16)
    g = torch.Generator().manual_seed(5)

    def run():
        leaves = [t.clone().requires_grad_() for t in inputs]
        y, h = chunked_scan(*leaves, chunk_size=8)
        loss = (y * torch.randn(y.shape, generator=g.manual_seed(5))).sum() + h.square().sum()
        loss.backward()
        return y.detach(), [t.grad for t in leaves]

    with torch.no_grad():
        y_plain, _ = chunked_scan(*inputs, chunk_size=8)
    y_fused, grads_fused = run()
    monkeypatch.setattr(scan, "FUSED_CPU_SCAN", False)
    y_torch, grads_torch = run()
    assert torch.equal(y_fused, y_plain)
    assert (y_fused - y_torch).abs().max() <= 1e-4
    for a, b in zip(grads_fused, grads_torch):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def mamba1_pair():
    """A Mamba-1 HF model whose decays reach the clamp (Δ A < -87 at some positions) and ours."""
    from transformers import MambaConfig, MambaForCausalLM

    import interp

    torch.manual_seed(0)
    hf = MambaForCausalLM(MambaConfig(vocab_size=61, hidden_size=32, state_size=16, num_hidden_layers=2, expand=2,
                                      conv_kernel=4, time_step_max=8.0, time_step_min=1.0)).eval()
    return hf, interp.load(hf)


@needs_numba
def test_mamba1_forward_with_the_kernel_equals_pytorch_path_and_hf(mamba1_pair, monkeypatch):
    _assert_kernel_forward_matches(*mamba1_pair, monkeypatch)


@needs_numba
@pytest.mark.parametrize("kind", ["mamba2-g1", "mamba2-g2"])
def test_mamba2_forward_with_the_kernel_equals_pytorch_path_and_hf(kind, monkeypatch):
    import interp
    from conftest import make_hf_ssm

    hf = make_hf_ssm(kind)
    _assert_kernel_forward_matches(hf, interp.load(hf), monkeypatch)


def _assert_kernel_forward_matches(hf, model, monkeypatch) -> None:
    """Logits with the fused kernel = the PyTorch path's (≤ 1e-5) and Hugging Face's (≤ 1e-4)."""
    tokens = torch.randint(0, 61, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused, ref = model(tokens), hf(tokens).logits
        monkeypatch.setattr(scan, "FUSED_CPU_SCAN", False)
        plain = model(tokens)
    assert (fused - plain).abs().max() <= 1e-5
    assert (fused - ref).abs().max() <= 1e-4


@needs_numba
def test_state_hooks_and_edits_unchanged_by_the_kernel(mamba1_pair, monkeypatch):
    """``hook_state`` at chosen positions (the scan split into segments, each fused) and an edit of it give the same
    states and logits on both paths."""
    _, model = mamba1_pair
    tokens = torch.randint(0, 61, (1, 40), generator=torch.Generator().manual_seed(2))

    def run():
        seen = {}

        def edit(h, hook):
            seen["h"] = h.clone()
            return h * 0.5

        with torch.no_grad():
            logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.ssm.hook_state", edit)],
                                          state_positions=[7, 23])
        return logits, seen["h"]

    fused = run()
    monkeypatch.setattr(scan, "FUSED_CPU_SCAN", False)
    plain = run()
    assert (fused[1] - plain[1]).abs().max() <= 1e-5
    assert (fused[0] - plain[0]).abs().max() <= 1e-5


def test_gradients_flow_through_the_model(mamba1_pair):
    """A backward through the whole model (the scan's gradient by the PyTorch path's recompute)."""
    _, model = mamba1_pair
    tokens = torch.randint(0, 61, (1, 12), generator=torch.Generator().manual_seed(3))
    embed = model.embed(tokens).detach().requires_grad_()
    logits = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda x, hook: embed)])
    logits[0, -1].max().backward()
    assert embed.grad is not None and embed.grad.abs().sum() > 0
