"""The fast scans equal the sequential reference, for both families, with and without h0; states read at chosen
positions and edits of them equal the reference recurrence."""

from __future__ import annotations

import pytest
import torch

from interp.hooks.scan import (
    apply_state_edits, chunked_scan, read_state, scan_with_states, segsum, sequential_scan, update_state,
)


def problem(family: str, L: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b = 2
    H, P, G, N = (12, 1, 1, 5) if family == "mamba1" else (6, 4, 2, 8)
    A = -(torch.rand(H, N, generator=g) * 3 + 0.1) if family == "mamba1" else -(torch.rand(H, generator=g) * 3 + 0.1)
    return dict(
        u=torch.randn(b, L, H, P, generator=g), dt=torch.rand(b, L, H, generator=g) * 0.5, A=A,
        B=torch.randn(b, L, G, N, generator=g), C=torch.randn(b, L, G, N, generator=g), D=torch.randn(H, generator=g),
    ), torch.randn(b, H, P, N, generator=g)


@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
@pytest.mark.parametrize("L", [1, 7, 16, 33, 130])
@pytest.mark.parametrize("with_h0", [False, True])
def test_chunked_equals_sequential(family, L, with_h0):
    p, h0 = problem(family, L)
    h0 = h0 if with_h0 else None
    y_ref, states = sequential_scan(**p, initial_state=h0)
    y, h = chunked_scan(**p, initial_state=h0, chunk_size=16)
    assert torch.allclose(y, y_ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(h, states[:, -1], atol=1e-5, rtol=1e-4)


def test_large_decays_stay_finite():
    """Decays far below float range underflow to 0 instead of producing inf/nan (no division)."""
    p, _ = problem("mamba1", 200)
    p["dt"] = p["dt"] * 200  # Σ ΔA reaches about -1e5
    y, h = chunked_scan(**p)
    y_ref, _ = sequential_scan(**p)
    assert torch.isfinite(y).all() and torch.allclose(y, y_ref, atol=1e-4, rtol=1e-4)


def test_segsum_is_masked_segment_sum():
    a = torch.tensor([1.0, 2.0, 3.0])
    s = segsum(a)
    assert s[2, 0] == 5.0 and s[2, 2] == 0.0 and s[1, 0] == 2.0 and torch.isinf(s[0, 1])


@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
@pytest.mark.parametrize("positions", [[3], [0, 5, 39], list(range(40))])  # sparse (segments) and dense
def test_scan_with_states_reads_the_reference_states(family, positions):
    p, h0 = problem(family, 40)
    y_ref, states = sequential_scan(**p, initial_state=h0)
    y, h, got = scan_with_states(**p, h0=h0, positions=positions, chunk_size=16)
    assert torch.allclose(y, y_ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(h, states[:, -1], atol=1e-5, rtol=1e-4)
    assert torch.allclose(got, states[:, positions], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
def test_state_edits_equal_the_recurrence_run_with_the_edits(family):
    """Adding delta[:, j] to h at positions[j], carried forward by apply_state_edits, equals stepping the
    recurrence and adding it there."""
    p, _ = problem(family, 30)
    positions = [4, 19]
    y, h, states = scan_with_states(**p, h0=None, positions=positions, chunk_size=16)
    delta = torch.randn(states.shape, generator=torch.Generator().manual_seed(1))
    y_edit, h_edit = apply_state_edits(y, h, delta, positions, p["dt"], p["A"], p["C"])
    u, dt, A, B, C, D = p["u"], p["dt"], p["A"], p["B"], p["C"], p["D"]
    h_ref, ys = torch.zeros_like(states[:, 0]), []
    for t in range(u.shape[1]):
        h_ref = update_state(h_ref, u[:, t], dt[:, t], A, B[:, t])
        if t in positions:
            h_ref = h_ref + delta[:, positions.index(t)]
        ys.append(read_state(h_ref, C[:, t]) + D[:, None] * u[:, t])
    assert torch.allclose(y_edit, torch.stack(ys, 1), atol=1e-4, rtol=1e-4)
    assert torch.allclose(h_edit, h_ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(y_edit[:, :4], y[:, :4])  # nothing before the first edit changes
