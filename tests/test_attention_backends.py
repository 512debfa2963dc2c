"""The one backend decision for hidden attention (interp.attention.backends), and that every entry point asks it.

No GPU needed: the decision is a pure function of (device type, layout, gradient, kernels available, request),
and the entry points are checked to ask it with their tensors' device.
"""

from __future__ import annotations

import pytest
import torch

from interp.attention import backends, hidden, interaction_map, query_rows
from interp.attention.backends import choose_backend, layout_of


@pytest.mark.parametrize("device,layout,grad,triton,numba,expected", [
    # auto: CUDA tensors -> the Triton kernel when it is importable, whatever the layout
    ("cuda", "mamba1", False, True, True, "triton"),
    ("cuda", "mamba2", False, True, False, "triton"),
    ("cuda", "mamba1_grouped", False, True, False, "triton"),
    ("cuda", "mamba1", False, False, True, "torch"),  # no triton: PyTorch (numba is a CPU kernel)
    # auto: CPU tensors -> numba for the Mamba-1 layout, else PyTorch; triton never (interpreted, slow)
    ("cpu", "mamba1", False, True, True, "numba"),
    ("cpu", "mamba1", False, True, False, "torch"),
    ("cpu", "mamba2", False, True, True, "torch"),
    ("cpu", "mamba1_grouped", False, False, True, "torch"),
    ("mps", "mamba1", False, True, True, "torch"),
    # a differentiable call stays on PyTorch (the kernels have no backward)
    ("cuda", "mamba2", True, True, True, "torch"),
    ("cpu", "mamba1", True, True, True, "torch"),
])
def test_auto_decision_table(device, layout, grad, triton, numba, expected):
    assert choose_backend(device, layout, grad, triton, numba) == expected
    assert choose_backend(device, layout, grad, triton, numba, "auto") == expected


def test_forced_backends():
    for device in ("cpu", "cuda"):
        assert choose_backend(device, "mamba2", True, True, True, "torch") == "torch"
        assert choose_backend(device, "mamba2", True, True, True, "triton") == "triton"  # CPU: interpreter mode
        assert choose_backend(device, "mamba1", True, True, True, "numba") == "numba"
    with pytest.raises(RuntimeError, match="triton"):
        choose_backend("cuda", "mamba1", False, False, True, "triton")
    with pytest.raises(RuntimeError, match="numba"):
        choose_backend("cpu", "mamba1", False, True, False, "numba")
    with pytest.raises(ValueError, match="Mamba-1 layout"):
        choose_backend("cpu", "mamba2", False, True, True, "numba")
    with pytest.raises(ValueError, match="backend"):
        choose_backend("cpu", "mamba1", False, True, True, "cuda")
    with pytest.raises(ValueError, match="layout"):
        choose_backend("cpu", "mamba3", False, True, True)


def test_layout_and_grad():
    b, L, H, N = 1, 4, 3, 2
    B1, B2 = torch.zeros(b, L, 1, N), torch.zeros(b, L, 2, N)
    assert layout_of(torch.zeros(H, N), B1) == "mamba1"
    assert layout_of(torch.zeros(H, N), B2) == "mamba1_grouped"
    assert layout_of(torch.zeros(H), B2) == "mamba2"
    x = torch.zeros(2, requires_grad=True)
    assert backends.needs_grad(x) and not backends.needs_grad(x.detach())
    with torch.no_grad():
        assert not backends.needs_grad(x)


@pytest.fixture
def asked(monkeypatch):
    """Records every (device_type, layout, needs_grad, has_triton, has_numba, backend) the dispatch asks about."""
    calls = []
    real = backends.choose_backend

    def spy(*args, **kwargs):
        calls.append(args + tuple(kwargs.values()))
        return real(*args, **kwargs)

    monkeypatch.setattr(backends, "choose_backend", spy)
    return calls


def test_interaction_map_asks_the_dispatch_with_the_tensors_device(ssm, asked):
    tokens = torch.randint(0, ssm.cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    expected_layout = "mamba2" if ssm.cfg.family == "mamba2" else "mamba1"
    for aggregate in ("mean_abs", "mean", "max", 2):
        interaction_map(ssm, tokens, layer=0, aggregate=aggregate)
    assert len(asked) == 4
    assert all(c[0] == "cpu" and c[1] == expected_layout and c[-1] == "auto" for c in asked), asked
    asked.clear()
    interaction_map(ssm, tokens, layer=0, aggregate="topk", k=2)  # channel mass, then the reduced map
    assert [c[0] for c in asked] == ["cpu", "cpu"]
    asked.clear()
    query_rows(ssm, tokens, layer=0, positions=[3, -1])
    assert len(asked) == 1 and asked[0][0] == "cpu" and asked[0][4] is False  # query rows: no numba kernel


def test_device_reaches_the_decision(monkeypatch, asked):
    """The device type of the inputs is what the dispatch is asked with (a CUDA tensor would be asked "cuda")."""
    g = torch.Generator().manual_seed(0)
    dt, A = torch.rand(1, 6, 3, generator=g), -torch.rand(3, generator=g)
    B, C = torch.randn(1, 6, 1, 4, generator=g), torch.randn(1, 6, 1, 4, generator=g)
    monkeypatch.setattr(backends, "kernels_available", lambda: (True, True))
    seen = []
    monkeypatch.setattr(backends, "layout_of", lambda A_, B_: seen.append(A_.device.type) or "mamba2")
    hidden.hidden_attention_reduced(dt, A, B, C, "mean")
    hidden.hidden_attention_rows_reduced(dt, A, B, C, [2], "mean")
    assert [c[0] for c in asked] == ["cpu", "cpu"] and seen == ["cpu", "cpu"]
    assert [c[3] for c in asked] == [True, True]  # both operations have a Triton kernel
    assert [c[4] for c in asked] == [True, False]  # query rows have no numba kernel
