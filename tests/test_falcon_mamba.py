"""FalconMamba (Hugging Face ``FalconMambaForCausalLM``): a Mamba-1 mixer with weightless RMS norms on the low-rank
Δ, B and C (``SSMConfig.bcdt_rms``). Parity with the installed Hugging Face forward, hooks that show the normed
values the scan uses (checked against HF's own norm modules), exact hidden attention and LRP conservation on them,
generation, state patching, and save -> transformers round trips. Two tiny random variants (conftest
FALCON_MAMBA_CONFIGS): the defaults, and untied embeddings + projection biases + mixer eps 1e-2 + residuals in
the model dtype (residual_in_fp32=False)."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
import torch.nn.functional as F

import interp
from conftest import FALCON_MAMBA_CONFIGS, make_hf_ssm
from family_checks import (assert_continuation_equals_one_forward, assert_greedy_equals_argmax,
                           assert_hidden_attention_exact, assert_logits_match_hf, assert_lrp_conserves,
                           assert_padded_batch_matches_hf, assert_rescan_exact, random_tokens, saved_pair)
from interp.attention import hidden_attention, reconstruct_y
from interp.hooks import CheckpointError, HookedSSM, SSMConfig
from interp.hooks.loading import estimate_parameters
from interp.hooks.scan import step

KINDS = list(FALCON_MAMBA_CONFIGS)
CHUNK = 8  # our scan's chunk size in these tests: lengths 8 and 24 are multiples, 13 and 21 are not
TOL = 1e-4
V = 61
_MODELS: dict[str, tuple] = {}


@pytest.fixture(params=KINDS)
def pair(request, tmp_path_factory):
    """(HF FalconMambaForCausalLM, ours loaded from its save_pretrained folder, scan chunk size CHUNK)."""
    return saved_pair(_MODELS, request.param, make_hf_ssm, tmp_path_factory, prepare=_set_chunk_size)


def _set_chunk_size(ours) -> None:
    ours.cfg.chunk_size = CHUNK


_tokens = partial(random_tokens, V)


# --- loading and config -------------------------------------------------------------------------
def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.cfg, hf.config
    assert isinstance(ours, HookedSSM) and c.family == "mamba1" and c.bcdt_rms and c.hf_model_type == "falcon_mamba"
    assert (c.mixer_rms_eps, c.dt_rank, c.d_inner, c.tie_embeddings, c.residual_in_fp32, c.proj_bias) == (
        h.mixer_rms_eps, h.time_step_rank, h.intermediate_size, h.tie_word_embeddings, h.residual_in_fp32, h.use_bias)


def test_bcdt_rms_is_mamba1_only():
    with pytest.raises(ValueError, match="bcdt_rms"):
        SSMConfig(family="mamba2", d_model=32, head_dim=16, bcdt_rms=True)


def test_quantized_checkpoint_refused(tmp_path):
    hf = make_hf_ssm("falcon_mamba")
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="quantized falcon_mamba checkpoint.*bitsandbytes"):
        interp.load(str(tmp_path))


def test_hub_id_offline_gives_the_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="hub download failed.*save_pretrained"):
        interp.load("tiiuae/falcon-mamba-7b")


def test_size_estimate_covers_the_model(pair, tmp_path):
    _, ours = pair
    ours.save_pretrained(str(tmp_path))
    n = sum(p.numel() for p in ours.parameters())
    est = estimate_parameters(json.loads((tmp_path / "config.json").read_text()))
    assert n <= est <= 2 * n + 2 * V * ours.cfg.d_model


# --- parity with Hugging Face -------------------------------------------------------------------
@pytest.mark.parametrize("L", [8, 13, 24])
def test_logits_match_huggingface(pair, L):
    hf, ours = pair
    assert_logits_match_hf(hf, ours, _tokens(L, seed=L), tol=TOL)


def test_norms_matter():
    """The test above can fail: the same weights without the norms are far from HF's logits."""
    hf = make_hf_ssm("falcon_mamba")
    ours = interp.load(hf)
    tokens = _tokens(13)
    with torch.no_grad():
        ref = hf(tokens).logits
        ours.cfg.bcdt_rms = False
        assert (ours(tokens) - ref).abs().max().item() > 1e-2


def test_padded_batch_matches_huggingface(pair):
    hf, ours = pair
    assert_padded_batch_matches_hf(hf, ours, _tokens(13, b=3, seed=1), tol=TOL)


def test_in_memory_model_equals_folder(pair):
    hf, ours = pair
    mem = interp.load(hf)
    assert mem.cfg.bcdt_rms and mem.cfg.mixer_rms_eps == hf.config.mixer_rms_eps
    assert_logits_match_hf(hf, mem, _tokens(21), tol=TOL)


def test_hooks_show_huggingface_normed_values(pair):
    """hook_dt / hook_B / hook_C equal what HF's mixer feeds its scan: its b_layernorm / c_layernorm outputs and
    softplus(dt_proj(dt_layernorm(.)))."""
    hf, ours = pair
    tokens = _tokens(13, seed=4)
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(hf.backbone.layers):
        for norm in ("dt", "b", "c"):
            handles.append(getattr(layer.mixer, f"{norm}_layernorm").register_forward_hook(
                lambda m, a, out, key=f"{i}.{norm}": seen.__setitem__(key, out)))
    try:
        with torch.no_grad():
            hf(tokens)
            _, cache = ours.run_with_cache(tokens, names_filter=lambda n: n.split(".")[-1] in
                                           ("hook_dt", "hook_B", "hook_C"))
    finally:
        for h in handles:
            h.remove()
    for i, layer in enumerate(hf.backbone.layers):
        dt_ref = F.softplus(layer.mixer.dt_proj(seen[f"{i}.dt"]))
        torch.testing.assert_close(cache[f"blocks.{i}.ssm.hook_dt"], dt_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache[f"blocks.{i}.ssm.hook_B"][:, :, 0], seen[f"{i}.b"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache[f"blocks.{i}.ssm.hook_C"][:, :, 0], seen[f"{i}.c"], atol=1e-5, rtol=1e-5)


# --- exactness of the hooks and of the maps ------------------------------------------------------
@pytest.mark.parametrize("L", [16, 21])
def test_y_reconstructs_by_sequential_rescan(pair, L):
    """hook_y == sequential scan of the cached u, Δ, B, C on every layer, also on a padded batch."""
    _, ours = pair
    assert_rescan_exact(ours, _tokens(L, b=2, seed=5), layers=range(ours.cfg.n_layers))


@pytest.mark.parametrize("L", [16, 21])
def test_hidden_attention_reconstructs_hook_y(pair, L):
    """Σ_j α[i, j] u_j + D u_i == hook_y on every layer, α built from the normed Δ, B, C; with the un-normed B, C
    (x_proj of u alone) it does not."""
    _, ours = pair
    tokens = _tokens(L, b=2, seed=6)
    params = assert_hidden_attention_exact(ours, tokens, layers=range(ours.cfg.n_layers))
    for layer, p in enumerate(params):
        mixer, N = ours.blocks[layer].ssm, ours.cfg.d_state
        with torch.no_grad():
            _, B_raw, C_raw = mixer.x_proj(p.u.flatten(-2)).split([ours.cfg.dt_rank, N, N], dim=-1)
        y_raw = reconstruct_y(hidden_attention(p.dt, p.A, B_raw[:, :, None], C_raw[:, :, None]), p.u, p.D)
        assert (y_raw - p.y).abs().max().item() > 1e-3


def test_lrp_conserves_with_biases_zeroed(pair):
    assert_lrp_conserves(pair[1], _tokens(16, b=1, seed=7))


# --- decoding, state patching -------------------------------------------------------------------
def test_greedy_generation_equals_full_forward_argmax(pair):
    assert_greedy_equals_argmax(pair[1], _tokens(7, b=1, seed=8))


@pytest.mark.parametrize("cut", [5, 9])
def test_continuing_from_a_state_equals_one_forward(pair, cut):
    """Prefix with state=, then one recurrent step per token (the norms in ``_step`` too) == the full forward."""
    from interp.hooks.mamba import SSMState

    assert_continuation_equals_one_forward(pair[1], _tokens(14, b=2, seed=9), cut=cut, state=SSMState())


def test_state_patch_equals_sequential_rescan(pair):
    """Setting h_t at a FalconMamba layer equals a sequential re-scan with that state; earlier logits unchanged."""
    _, ours = pair
    tokens, t, layer = _tokens(17, b=1, seed=10), 9, 1
    with torch.no_grad():
        _, clean = ours.run_with_cache(tokens, names_filter=lambda n: n.startswith(f"blocks.{layer}.ssm."))
        new = torch.randn_like(clean[f"blocks.{layer}.ssm.hook_state"][:, t])

        def patch(states, hook):
            states = states.clone()
            states[:, 0] = new
            return states

        captured = {}
        logits = ours.run_with_hooks(tokens, state_positions=[t], fwd_hooks=[
            (f"blocks.{layer}.ssm.hook_state", patch),
            (f"blocks.{layer}.ssm.hook_y", lambda y, hook: captured.__setitem__("y", y))])
        mixer = ours.blocks[layer].ssm
        c = lambda h: clean[f"blocks.{layer}.ssm.{h}"]  # noqa: E731
        h = torch.zeros_like(new)
        ys = []
        for s in range(tokens.shape[1]):
            y, h = step(h, c("hook_u")[:, s], c("hook_dt")[:, s], mixer.A, c("hook_B")[:, s], c("hook_C")[:, s],
                        mixer.D)
            if s == t:
                h = new
                y = torch.einsum("bhpn,bhn->bhp", h, c("hook_C")[:, s].expand(-1, ours.cfg.H, -1)) \
                    + mixer.D[:, None] * c("hook_u")[:, s]
            ys.append(y)
        assert (captured["y"] - torch.stack(ys, 1)).abs().max().item() <= 1e-5
        assert (logits - ours(tokens))[:, :t].abs().max().item() == 0.0


# --- saving --------------------------------------------------------------------------------------
def test_save_pretrained_round_trip(pair, tmp_path):
    """Our save_pretrained writes a folder transformers loads as FalconMamba, and we load back, same logits."""
    from transformers import AutoModelForCausalLM, FalconMambaForCausalLM

    hf, ours = pair
    ours.save_pretrained(str(tmp_path))
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "falcon_mamba" and raw["architectures"] == ["FalconMambaForCausalLM"]
    hf_again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(hf_again, FalconMambaForCausalLM)
    assert hf_again.config.mixer_rms_eps == hf.config.mixer_rms_eps
    assert hf_again.config.tie_word_embeddings == hf.config.tie_word_embeddings
    again = interp.load(str(tmp_path))
    assert again.cfg.bcdt_rms and again.cfg.mixer_rms_eps == ours.cfg.mixer_rms_eps
    tokens = _tokens(13, seed=11)
    with torch.no_grad():
        ref = hf(tokens).logits
        assert (hf_again(tokens).logits - ref).abs().max().item() <= TOL
        assert (again(tokens) - ref).abs().max().item() <= TOL
