"""Unified implicit attention and LaTIM: exact reconstructions, reductions, scores, memory refusals."""

from __future__ import annotations

import pytest
import torch

import interp
import interp.zoo
from interp.attention.hidden import hidden_attention
from interp.attention.latim import (
    SCORES, latim_contributions, latim_layer, latim_reconstruction, latim_scores, reconstruction_errors,
)
from interp.attention.unified import (
    conv_toeplitz, gate_factor, mixer_params, unified_attention, unified_layer,
)
from interp.hooks import HookedSSM, SSMConfig

from conftest import make_hf_ssm

KINDS = ["mamba1", "mamba2-g1", "mamba2-g2"]
IDENTITY_KINDS = [("mamba1", 1), ("mamba2", 1), ("mamba2", 2)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def tokens_for(vocab: int, L: int = 13, b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (b, L), generator=torch.Generator().manual_seed(seed))


def identity_model(family: str, n_groups: int = 1, seed: int = 0) -> HookedSSM:
    """Random tiny model without the post-conv SiLU, biases on, non-trivial A, Δ, D, conv bias, norms."""
    torch.manual_seed(seed)
    kw = dict(family=family, d_model=16, n_layers=2, vocab_size=31, d_state=4, d_conv=4, expand=2,
              activation="identity", proj_bias=True)
    if family == "mamba2":
        kw.update(head_dim=8, n_groups=n_groups, chunk_size=8)
    model = HookedSSM(SSMConfig(**kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.uniform_(-1, 1)
            elif name.endswith(("dt_proj.bias", "dt_bias")):
                p.normal_(-1, 0.5)
            elif name.endswith(("ssm.D", "conv1d.bias", "out_proj.bias")):
                p.normal_(0, 0.5)
            elif name.endswith(("norm.weight", "ln1.weight")):
                p.normal_(1, 0.2)
    return model.eval()


@pytest.fixture(scope="module", params=KINDS)
def silu_run(request):
    model = interp.load(make_hf_ssm(request.param))
    _, cache = model.run_with_cache(tokens_for(model.cfg.vocab_size))
    return model, cache


@pytest.fixture(scope="module", params=IDENTITY_KINDS, ids=lambda k: f"{k[0]}-g{k[1]}")
def identity_run(request):
    model = identity_model(*request.param)
    _, cache = model.run_with_cache(tokens_for(model.cfg.vocab_size, L=11))
    return model, cache


# --------------------------------------------------------------------------------------------
# unified implicit attention
# --------------------------------------------------------------------------------------------
def test_unified_reconstructs_gated_output(silu_run):
    model, cache = silu_run
    for layer in range(model.cfg.n_layers):
        ua = unified_attention(cache, model, layer)
        gated = cache[f"blocks.{layer}.ssm.hook_gated"]
        assert ua.map.shape == (2, model.cfg.d_inner, 13, 13)
        assert rel(ua.reconstruct(), gated) < 1e-5, layer
        assert torch.all(ua.map.triu(1) == 0)
        assert ua.bias.abs().max() > 0 and ua.skip.abs().max() > 0  # both terms matter
        folded = unified_attention(cache, model, layer, skip_in_map=True, chunk=5)
        assert rel(folded.reconstruct(), gated) < 1e-5
        assert torch.all(folded.skip == 0)


def test_unified_reconstructs_identity_activation_models(identity_run):
    model, cache = identity_run
    for layer in range(model.cfg.n_layers):
        ua = unified_layer(model, cache, layer=layer)
        assert rel(ua.reconstruct(), cache[f"blocks.{layer}.ssm.hook_gated"]) < 1e-5


def test_unified_map_equals_the_written_formula(silu_run):
    """α̂[c] = diag(g) α[h(c)] diag(σ(conv)) M_conv[c], built literally for a few channels."""
    model, cache = silu_run
    layer, chans = 1, [0, 17, 63]
    p = mixer_params(model, layer)
    c = lambda n: cache[f"blocks.{layer}.ssm.{n}"]  # noqa: E731
    alpha = hidden_attention(c("hook_dt"), p.A, c("hook_B"), c("hook_C"))  # [b, H, L, L]
    g = gate_factor(p, c("hook_y"), c("hook_z"))
    sig = torch.sigmoid(c("hook_conv")[..., : p.d_inner])
    M = conv_toeplitz(p.conv_weight, 13)
    ua = unified_attention(cache, model, layer, channels=chans)
    for k, ch in enumerate(chans):
        a = alpha[:, ch // p.P]
        ref = g[:, :, ch, None] * a * sig[:, None, :, ch] @ M[ch]
        assert torch.allclose(ua.map[:, k], ref, atol=1e-6, rtol=1e-5)
    assert torch.allclose(ua.reconstruct(), c("hook_gated")[..., chans], atol=1e-5, rtol=1e-5)


def test_unified_channel_selection_and_reductions(silu_run):
    model, cache = silu_run
    full = unified_attention(cache, model, 0)
    chans = [3, 40, 41, 7]
    sel = unified_attention(cache, model, 0, channels=chans, chunk=3)
    assert torch.allclose(sel.map, full.map[:, chans], atol=1e-7)
    assert torch.allclose(sel.bias, full.bias[..., chans], atol=1e-7)
    refs = {"mean": full.map.mean(1), "mean_abs": full.map.abs().mean(1), "max": full.map.abs().amax(1)}
    for agg, ref in refs.items():
        red = unified_attention(cache, model, 0, aggregate=agg, chunk=7)
        assert red.map.shape == (2, 13, 13)
        assert torch.allclose(red.map, ref, atol=1e-6, rtol=1e-5), agg
    red = unified_attention(cache, model, 0, channels=chans, aggregate="mean_abs")
    assert torch.allclose(red.map, full.map[:, chans].abs().mean(1), atol=1e-6)


def test_unified_refuses_oversize_per_channel_maps(silu_run):
    model, cache = silu_run
    with pytest.raises(ValueError, match=r"channels=.*aggregate="):
        unified_attention(cache, model, 0, max_bytes=10_000)
    # the cheaper calls it names fit
    assert unified_attention(cache, model, 0, channels=[1], max_bytes=10_000).map.shape == (2, 1, 13, 13)
    assert unified_attention(cache, model, 0, aggregate="mean_abs", max_bytes=10_000).map.shape == (2, 13, 13)
    with pytest.raises(ValueError, match="aggregate must be"):
        unified_attention(cache, model, 0, aggregate="sum")
    with pytest.raises(KeyError, match="hook_x"):
        unified_attention({}, model, 0)


# --------------------------------------------------------------------------------------------
# LaTIM
# --------------------------------------------------------------------------------------------
def test_latim_identity_is_exact_without_post_conv_silu(identity_run):
    model, cache = identity_run
    assert model.blocks[0].ssm.out_proj.bias is not None  # the out_proj bias goes to `bias`
    for layer in range(model.cfg.n_layers):
        out = cache[f"blocks.{layer}.ssm.hook_out"]
        con = latim_layer(model, cache, layer=layer, f="identity", chunk=7)
        assert con.T.shape == (2, 11, 11, model.cfg.d_model)
        assert rel(con.reconstruct(), out) < 1e-5
        assert float(con.reconstruction_error.max()) < 1e-5
        assert rel(latim_reconstruction(cache, model, layer, f="identity"), out) < 1e-5
        for i in range(11):  # causal: no contribution from j > i
            assert torch.all(con.T[:, i, i + 1:] == 0)
    errs = reconstruction_errors(model, cache, f="identity")
    assert len(errs) == model.cfg.n_layers and max(errs) < 1e-5


def test_latim_matches_the_written_formula(silu_run):
    """T_i(x_j) = W_out(g_i ⊙ [Σ_l α_il f(w_{l-j} x̃_j) + D f(w_{i-j} x̃_j)]), literally for a few (i, j)."""
    model, cache = silu_run
    layer = 1
    p = mixer_params(model, layer)
    c = lambda n: cache[f"blocks.{layer}.ssm.{n}"]  # noqa: E731
    alpha = hidden_attention(c("hook_dt"), p.A, c("hook_B"), c("hook_C"))[:, torch.arange(p.d_inner) // p.P]
    g = gate_factor(p, c("hook_y"), c("hook_z"))
    x, w, K = c("hook_x"), p.conv_weight, p.d_conv
    Dc = p.D[torch.arange(p.d_inner) // p.P]
    con = latim_contributions(cache, model, layer)
    for i, j in [(0, 0), (5, 3), (12, 4), (12, 12), (9, 2)]:
        ups = torch.zeros_like(x[:, 0])
        for l in range(j, min(j + K, 13)):
            u_lj = torch.nn.functional.silu(w[:, K - 1 - (l - j)] * x[:, j])
            ups += alpha[:, :, i, l] * u_lj
            if l == i:
                ups += Dc * u_lj
        ref = (g[:, i] * ups) @ p.W_out.T
        assert torch.allclose(con.T[:, i, j], ref, atol=1e-6, rtol=1e-5), (i, j)


def test_latim_silu_reconstruction_error_is_reported(silu_run):
    model, cache = silu_run
    errs = reconstruction_errors(model, cache)  # f = SiLU on a SiLU model: the paper's approximation
    assert len(errs) == model.cfg.n_layers
    assert all(0 < e < float("inf") for e in errs), errs
    for layer in range(model.cfg.n_layers):
        con = latim_layer(model, cache, layer=layer)
        full_err = float((con.reconstruct() - con.y).norm() / con.y.norm())
        assert abs(full_err - errs[layer]) < 1e-5 * max(1.0, errs[layer])
        assert torch.isfinite(con.reconstruction_error).all() and (con.reconstruction_error > 0).all()
        # the fast path is Σ_j T + bias without building T
        assert torch.allclose(latim_reconstruction(cache, model, layer), con.reconstruct(), atol=1e-5)


def test_latim_rows_and_scores(silu_run):
    model, cache = silu_run
    con = latim_contributions(cache, model, 0)
    rows = [2, 12, -1]
    part = latim_contributions(cache, model, 0, rows=rows)
    assert torch.allclose(part.T, con.T[:, [2, 12, 12]], atol=1e-6)
    assert torch.allclose(part.bias, con.bias[:, [2, 12, 12]], atol=1e-6)
    for s in SCORES:
        sc = latim_scores(con, s)
        assert sc.shape == (2, 13, 13)
        assert torch.all(sc.triu(1) == 0), s  # causal
        assert torch.all(sc >= 0)
        assert torch.allclose(latim_scores(part, s), sc[:, [2, 12, 12]], atol=1e-5)
    assert torch.allclose(latim_scores(con, "l2"), con.T.norm(dim=-1).tril(), atol=1e-6)
    alti = latim_scores(con, "alti")
    sums = alti.sum(-1)
    nz = sums > 0
    assert nz.any() and torch.allclose(sums[nz], torch.ones_like(sums[nz]), atol=1e-5)
    with pytest.raises(ValueError, match="score must be"):
        latim_scores(con, "l3")


def test_latim_refuses_oversize_requests(silu_run):
    model, cache = silu_run
    with pytest.raises(ValueError, match="rows="):
        latim_contributions(cache, model, 0, max_bytes=10_000)
    assert latim_contributions(cache, model, 0, rows=[5], max_bytes=10_000).T.shape == (2, 1, 13, 32)
    with pytest.raises(ValueError, match="f must be"):
        latim_contributions(cache, model, 0, f="gelu")


# --------------------------------------------------------------------------------------------
# embedded models (when installed)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["copy-mamba", "copy-mamba2"])
def test_embedded_models(name):
    if interp.zoo.embedded_path(name) is None:
        pytest.skip(f"embedded model {name} is not installed")
    model = interp.load(name)
    _, cache = model.run_with_cache(tokens_for(model.cfg.vocab_size, L=24, b=1))
    for layer in range(model.cfg.n_layers):
        ua = unified_attention(cache, model, layer)
        assert rel(ua.reconstruct(), cache[f"blocks.{layer}.ssm.hook_gated"]) < 1e-5, layer
    errs = reconstruction_errors(model, cache)
    assert all(0 <= e < float("inf") for e in errs)
