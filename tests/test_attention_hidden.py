"""Hidden attention: exact reconstruction of hook_y, the fast algorithms equal the direct build,
and one interface over SSMs and transformers."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.attention import (
    MapTooLargeError, hidden_attention, hidden_attention_direct, hidden_attention_reduced, hidden_attention_rows,
    grad_weighted_rollout, interaction_map, mamba_attr, normalize, query_rows, reconstruct_y, rollout, ssm_parameters,
)
from interp.attention.hidden import channel_mass


def random_params(family: str, L: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b = 2
    H, G, N = (12, 1, 5) if family == "mamba1" else (6, 2, 8)
    A = -(torch.rand(H, N, generator=g) * 3 + 0.1) if family == "mamba1" else -(torch.rand(H, generator=g) * 3 + 0.1)
    return (torch.rand(b, L, H, generator=g) * 0.5, A, torch.randn(b, L, G, N, generator=g),
            torch.randn(b, L, G, N, generator=g))


@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
@pytest.mark.parametrize("L", [1, 9, 64, 150])
def test_fast_maps_equal_direct_construction(family, L):
    dt, A, B, C = random_params(family, L)
    ref = hidden_attention_direct(dt, A, B, C)
    assert torch.allclose(hidden_attention(dt, A, B, C), ref, atol=1e-5, rtol=1e-4)
    expect = {"mean": ref.mean(1), "mean_abs": ref.abs().mean(1), "max": ref.abs().amax(1)}
    for agg, e in expect.items():
        assert torch.allclose(hidden_attention_reduced(dt, A, B, C, agg), e, atol=1e-5, rtol=1e-4), agg
    rows = [0, L // 2, L - 1]
    assert torch.allclose(hidden_attention_rows(dt, A, B, C, rows), ref[:, :, rows], atol=1e-5, rtol=1e-4)
    assert torch.allclose(hidden_attention(dt, A, B, C, heads=[1, 3]), ref[:, [1, 3]], atol=1e-5, rtol=1e-4)
    assert torch.allclose(channel_mass(dt, A, B, C), ref.abs().sum((0, 2, 3)), rtol=1e-4)
    assert torch.equal(torch.triu(ref, diagonal=1), torch.zeros_like(ref))  # causal


def test_hidden_attention_reconstructs_hook_y(ssm):
    """Σ_j α[i, j] u_j + D u_i == hook_y at every layer (<= 1e-5 relative)."""
    tokens = torch.randint(0, ssm.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    for layer in range(ssm.cfg.n_layers):
        p = ssm_parameters(ssm, tokens, layer=layer)
        y = reconstruct_y(hidden_attention(p.dt, p.A, p.B, p.C), p.u, p.D)
        rel = (y - p.y).norm() / p.y.norm()
        assert rel <= 1e-5, f"layer {layer}: {rel:.2e}"


def test_interaction_map_interface_on_ssm(ssm):
    tokens = torch.randint(0, ssm.cfg.vocab_size, (1, 20), generator=torch.Generator().manual_seed(1))
    per = interaction_map(ssm, tokens, layer=1, aggregate="none")
    assert per.shape == (1, ssm.cfg.H, 20, 20)
    assert torch.allclose(interaction_map(ssm, tokens, layer=1), per.abs().mean(1), atol=1e-6)
    assert torch.allclose(interaction_map(ssm, tokens, layer=1, aggregate=3), per[:, 3], atol=1e-6)
    top = interaction_map(ssm, tokens, layer=1, aggregate="topk", k=2)
    best = per.abs().sum((0, 2, 3)).topk(2).indices
    assert torch.allclose(top, per[:, best].abs().mean(1), atol=1e-6)
    rows = query_rows(ssm, tokens, layer=1, positions=[5, -1])
    assert torch.allclose(rows, per.abs().mean(1)[:, [5, 19]], atol=1e-6)
    row_norm = interaction_map(ssm, tokens, layer=1, normalize_="row")
    assert torch.allclose(row_norm.sum(-1), torch.ones(1, 20), atol=1e-5)
    mm = interaction_map(ssm, tokens, layer=1, normalize_="minmax")
    assert mm.min() == 0 and torch.isclose(mm.max(), torch.tensor(1.0))


def test_oversize_request_names_the_cheaper_call(ssm):
    tokens = torch.randint(0, ssm.cfg.vocab_size, (1, 30))
    with pytest.raises(MapTooLargeError, match="query_rows"):
        interaction_map(ssm, tokens, layer=0, aggregate="none", max_bytes=1000)
    # the reduced map is budgeted too (map_memory_bytes): a budget it fits passes
    interaction_map(ssm, tokens, layer=0, aggregate="mean_abs", max_bytes=2**20)


def test_transformer_path_returns_tl_pattern():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = interp.load(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=61, n_positions=64)).eval())
    tokens = torch.randint(0, 61, (1, 12))
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert torch.equal(interaction_map(model, tokens, layer=1, aggregate="none"), pattern)
    assert torch.allclose(interaction_map(model, tokens, layer=1, aggregate="mean"), pattern.mean(1))
    rho = grad_weighted_rollout(model, tokens)
    assert rho.shape == (1, 12, 12) and torch.isfinite(rho).all()
    row = mamba_attr(model, tokens)
    assert row.shape == (1, 12) and torch.isfinite(row).all()


def test_rollout_and_normalize_closed_forms():
    eye = torch.zeros(1, 4, 4)
    assert torch.allclose(rollout([eye, eye]), torch.eye(4)[None])  # no mixing: identity
    A = torch.tril(torch.ones(1, 3, 3))
    r = rollout([A], add_identity=False)
    assert torch.allclose(r[0, 2], torch.full((3,), 1 / 3))
    assert torch.allclose(normalize(torch.tensor([[[-2.0, 2.0]]]), "row"), torch.tensor([[[0.5, 0.5]]]))


def test_mamba_attr_on_ssm(ssm):
    tokens = torch.randint(0, ssm.cfg.vocab_size, (1, 10))
    rho = grad_weighted_rollout(ssm, tokens)
    assert rho.shape == (1, 10, 10) and torch.isfinite(rho).all()
    assert torch.allclose(rho.sum(-1), torch.ones(1, 10), atol=1e-5)  # rows stay normalised
    row = mamba_attr(ssm, tokens)  # against the original code: tests/test_mamba_attr.py
    assert row.shape == (1, 10) and torch.allclose(row.sum(-1), torch.ones(1), atol=1e-5)


def test_batches_and_positions_follow_the_calling_convention(ssm):
    """A batch [b, L] gives the rows' results stacked (maps, query rows, Mamba-Attr); positions are bounds-checked;
    everything after ``tokens`` is keyword-only."""
    tokens = torch.randint(0, ssm.cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(3))
    both = interaction_map(ssm, tokens, layer=1)
    one = torch.cat([interaction_map(ssm, t[None], layer=1) for t in tokens])
    assert torch.allclose(both, one, atol=1e-6)
    rows = query_rows(ssm, tokens, layer=1, positions=[2, -1])
    assert torch.allclose(rows, one[:, [2, 9]], atol=1e-6)
    rho = grad_weighted_rollout(ssm, tokens, position=-2)
    assert torch.allclose(rho, torch.cat([grad_weighted_rollout(ssm, t[None], position=-2) for t in tokens]),
                          atol=1e-5)
    row = mamba_attr(ssm, tokens, position=-2)
    assert torch.allclose(row, torch.cat([mamba_attr(ssm, t[None], position=-2) for t in tokens]), atol=1e-5)
    with pytest.raises(IndexError, match="positions"):
        query_rows(ssm, tokens, layer=1, positions=[10])
    with pytest.raises(ValueError, match="needs a layer"):
        interaction_map(ssm, tokens)
    with pytest.raises(TypeError):
        interaction_map(ssm, tokens, 1)  # layer is keyword-only
    p = ssm_parameters(ssm, tokens, layer=-1)
    assert p.dt.shape[:2] == (2, 10) and p.y.shape == p.u.shape


def test_unified_and_latim_through_the_common_interface(ssm):
    from interp.attention import latim_layer, latim_scores, unified_layer

    tokens = torch.randint(0, ssm.cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    _, cache = ssm.run_with_cache(tokens)  # includes hook_state, so the sequential scan ran: compare at 1e-4
    uni = interaction_map(ssm, tokens, layer=1, method="unified", aggregate="mean_abs")
    assert torch.allclose(uni, unified_layer(ssm, cache, layer=1, aggregate="mean_abs").map, atol=1e-4)
    lat = interaction_map(ssm, tokens, layer=0, method="latim", score="alti")
    assert torch.allclose(lat, latim_scores(latim_layer(ssm, cache, layer=0), "alti"), atol=1e-4)
    assert lat.shape == (1, 12, 12)
