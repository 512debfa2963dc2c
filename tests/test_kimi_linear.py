"""Kimi-Linear (Hugging Face ``KimiLinearForCausalLM``, model_type "kimi_linear"): Kimi Delta Attention layers ("kda",
hooks/kda.py: the gated delta rule with a per-channel decay) interleaved with multi-head latent attention (hooks/mla.py,
no rotary embedding), each followed by a gated MLP or a sigmoid-routed mixture of experts with shared experts.
Parity with the installed HF forward (saved folder and in-memory, lengths on and off the chunk, padded batch, HF's own
greedy decoding through its recurrent path), our chunked and recurrent rules against HF's torch functions, the router
against HF's, every hook fires with its shape, the MLA pattern equals HF's eager attention weights, the exact implicit
attention of each KDA layer (chunked UT / WY construction == the dense definition, Σ_j A[i, j] v_j == hook_y), LRP
conservation, greedy = argmax, continuing from a state = one forward, and a ``hook_state`` patch equals a sequential
re-scan from the patched state. Two tiny random variants: q through a low-rank q_a / q_b with its norm, grouped
expert routing (2 groups, 1 kept), a shared expert, KDA first; and one q_proj, dense MLPs only, attention first,
conv width 3, attention biases, tie_word_embeddings set (which HF ignores: lm_head stays its own)."""

from __future__ import annotations

import functools
from functools import partial

import pytest
import torch

from family_checks import (assert_continuation_equals_one_forward, assert_greedy_equals_argmax,
                           assert_in_memory_model_matches_hf, assert_left_padded_generation_matches,
                           assert_logits_match_hf, assert_lrp_conserves, assert_padded_batch_matches_hf,
                           assert_pattern_equals_hf, assert_start_stop_at_layer, assert_state_patch_equals_rescan,
                           random_tokens, saved_pair)
from interp.attention import interaction_map, rollout
from interp.attention.kda import kda_attention, kda_attention_direct, kda_parameters, reconstruct_delta_y
from interp.hooks import HookedHybrid, HybridConfig
from interp.hooks.hybrid import HybridState, MoE, sigmoid_topk
from interp.hooks.kda import KimiDeltaAttentionMixer, chunk_kda_rule, l2norm, recurrent_kda_rule
from interp.hooks.mla import MultiHeadLatentAttention

CHUNK = 8  # our chunk size in these tests: 16 is a multiple of it, 13 and 21 are not
TOL = 1e-4
V = 67
KIMI_CONFIGS = {
    "lora-moe": dict(vocab_size=V, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=4, q_lora_rank=10, kv_lora_rank=12,
                     qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, num_local_experts=8,
                     num_experts_per_tok=2, n_group=2, topk_group=1, n_shared_experts=1, routed_scaling_factor=1.7,
                     norm_topk_prob=True, linear_num_heads=2, linear_head_dim=8, linear_conv_kernel_dim=4,
                     layer_types=["linear_attention", "full_attention", "linear_attention"],
                     mlp_layer_types=["dense", "sparse", "sparse"], pad_token_id=0, eos_token_id=1, bos_token_id=2),
    "dense-tied": dict(vocab_size=V, hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=3,
                       num_key_value_heads=3, q_lora_rank=None, kv_lora_rank=8, qk_nope_head_dim=6,
                       qk_rope_head_dim=2, v_head_dim=8, attention_bias=True, linear_num_heads=3, linear_head_dim=6,
                       linear_conv_kernel_dim=3, layer_types=["full_attention", "linear_attention", "linear_attention"],
                       mlp_layer_types=["dense"] * 3, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
                       bos_token_id=2),
}
_MODELS: dict[str, tuple] = {}


def make_hf_kimi_linear(kind: str, seed: int = 0, **changes):
    """A random tiny KimiLinearForCausalLM with non-trivial norms, per-channel decays, β, routing and O(1) logits."""
    from transformers import KimiLinearConfig, KimiLinearForCausalLM

    torch.manual_seed(seed)
    model = KimiLinearForCausalLM(KimiLinearConfig(**{**KIMI_CONFIGS[kind], **changes}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.normal_(1, 0.2)
            elif name.endswith("A_log"):
                p.uniform_(-2.0, 0.5)  # decay rates exp(A_log) spread over (0.1, 1.6)
            elif name.endswith("dt_bias") or name.endswith("bias"):
                p.normal_(0, 0.5)
            elif "self_attn" in name:
                p.normal_(0, 0.25)
            elif "mlp" in name:
                p.normal_(0, 0.15)
            elif "embed_tokens" in name or "lm_head" in name:
                p.normal_(0, 0.4)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.normal_(0, 0.1)
    return model.eval()


def _prepare(ours) -> None:
    ours.cfg.kda.chunk_size = CHUNK  # the mixers share this config


@pytest.fixture(params=list(KIMI_CONFIGS))
def pair(request, tmp_path_factory):
    """(HF KimiLinearForCausalLM, ours loaded from its save_pretrained folder, chunk size CHUNK)."""
    return saved_pair(_MODELS, request.param, _hf, tmp_path_factory, prepare=_prepare)


_hf = functools.cache(make_hf_kimi_linear)
_tokens = partial(random_tokens, V)


def _kda_layers(model) -> list[int]:
    return [i for i, t in enumerate(model.cfg.layer_types) if t == "kda"]


# --- loading and config -------------------------------------------------------------------------
def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.cfg, hf.config
    assert isinstance(ours, HookedHybrid) and isinstance(c, HybridConfig) and c.hf_model_type == "kimi_linear"
    assert c.layer_types == ["kda" if t == "linear_attention" else "attention" for t in h.layer_types]
    assert c.ssm is None and c.rotary_dim == 0 and c.moe_layers == [i for i, t in enumerate(h.mlp_layer_types)
                                                                     if t == "sparse"]
    k, m = c.kda, c.mla
    assert (k.n_heads, k.d_head, k.d_conv, k.gate_norm_eps) == (h.linear_num_heads, h.linear_head_dim,
                                                                 h.linear_conv_kernel_dim, h.rms_norm_eps)
    assert (m.n_heads, m.q_lora_rank, m.kv_lora_rank, m.d_nope, m.d_rope, m.d_v, m.bias) == (
        h.num_attention_heads, h.q_lora_rank, h.kv_lora_rank, h.qk_nope_head_dim, h.qk_rope_head_dim, h.v_head_dim,
        h.attention_bias)
    for i, block in enumerate(ours.blocks):
        assert isinstance(getattr(block, "ssm", None), KimiDeltaAttentionMixer) == (i in _kda_layers(ours))
        assert isinstance(getattr(block, "attn", None), MultiHeadLatentAttention) == (i in c.attention_layers)
        assert isinstance(getattr(block, "moe", None), MoE) == (i in c.moe_layers) and hasattr(block, "mlp")


def test_unsupported_fields_are_refused():
    from transformers import KimiLinearConfig

    base = KIMI_CONFIGS["dense-tied"]
    with pytest.raises(ValueError, match="hidden_act"):
        HybridConfig.from_hf(KimiLinearConfig(**{**base, "hidden_act": "gelu"}))
    with pytest.raises(ValueError, match="num_key_value_heads"):
        HybridConfig.from_hf(KimiLinearConfig(**{**base, "num_key_value_heads": 1}))


# --- parity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [16, 21])
def test_logits_match_hf(pair, L):
    hf, ours = pair
    assert_logits_match_hf(hf, ours, _tokens(L), tol=TOL, min_scale=1.0)


def test_logits_match_hf_at_hf_chunk_size(pair):
    """With the default chunk (64, HF's) too, at 64 and 70 positions."""
    hf, ours = pair
    ours.cfg.kda.chunk_size = 64
    try:
        for L in (64, 70):
            assert_logits_match_hf(hf, ours, _tokens(L, b=1), tol=TOL)
    finally:
        ours.cfg.kda.chunk_size = CHUNK


def test_in_memory_and_padded_batch(pair):
    hf, ours = pair
    assert_in_memory_model_matches_hf(hf, _tokens(13), kind=HookedHybrid, tol=TOL)
    assert_padded_batch_matches_hf(hf, ours, _tokens(13, b=3), tol=TOL)


def test_mla_pattern_equals_hf_and_start_stop(pair):
    hf, ours = pair
    tokens = _tokens(11)
    assert_pattern_equals_hf(hf, ours, tokens, layers=ours.cfg.attention_layers)
    assert_start_stop_at_layer(ours, tokens)


@pytest.mark.parametrize("L", [1, 13, 16])
def test_rules_equal_hf_torch_functions(L):
    """Our chunked and recurrent rules equal HF's ``chunk_kimi_delta_attention`` / ``recurrent_kimi_delta_attention``
    (their in-kernel l2-norm, per-channel decays, an initial state): outputs and final states."""
    from transformers.models.kimi_linear.modeling_kimi_linear import (chunk_kimi_delta_attention,
                                                                      recurrent_kimi_delta_attention)

    gen = torch.Generator().manual_seed(L)
    b, H, d = 2, 3, 6
    q, k, v = (torch.randn(b, L, H, d, generator=gen) for _ in range(3))
    g = -torch.rand(b, L, H, d, generator=gen) * 2
    beta = torch.rand(b, L, H, generator=gen)
    h0 = torch.randn(b, H, d, d, generator=gen)
    qs, kn = l2norm(q) * d ** -0.5, l2norm(k)
    for ref_fn, ours_fn in ((partial(chunk_kimi_delta_attention, chunk_size=CHUNK),
                             partial(chunk_kda_rule, chunk_size=CHUNK)),
                            (recurrent_kimi_delta_attention, recurrent_kda_rule)):
        ref_o, ref_h = ref_fn(q, k, v, g=g, beta=beta, initial_state=h0, output_final_state=True,
                              use_qk_l2norm_in_kernel=True)
        o, h = ours_fn(qs, kn, v, g, beta, h0)
        torch.testing.assert_close(o, ref_o, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h, ref_h, atol=1e-5, rtol=1e-5)


def test_sigmoid_router_equals_hf():
    """:func:`sigmoid_topk` chooses HF ``KimiLinearTopkRouter``'s experts with its weights (in any slot order)."""
    from transformers import KimiLinearConfig
    from transformers.models.kimi_linear.modeling_kimi_linear import KimiLinearTopkRouter

    cfg = KimiLinearConfig(**{**KIMI_CONFIGS["lora-moe"], "num_local_experts": 12, "n_group": 3, "topk_group": 2,
                              "num_experts_per_tok": 3})
    router = KimiLinearTopkRouter(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=gen))
        router.e_score_correction_bias.copy_(torch.randn(12, generator=gen) * 0.3)
    x = torch.randn(40, cfg.hidden_size, generator=gen)
    logits, ref_w, ref_i = router(x)
    w, i = sigmoid_topk(logits, router.e_score_correction_bias, 3, 3, 2, normalize=True,
                        scaling=cfg.routed_scaling_factor)
    dense = lambda w, i: torch.zeros(40, 12).scatter(1, i, w)  # noqa: E731
    torch.testing.assert_close(dense(w, i), dense(ref_w, ref_i))


def test_greedy_decoding_matches_hf(pair):
    """Our greedy continuation (a recurrent step per token) equals HF's ``generate`` (its cache, recurrent path)."""
    hf, ours = pair
    prompt = _tokens(9, b=1, seed=3)
    ref = hf.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
    out = ours.generate(prompt, max_new_tokens=16, stop_at_eos=False)
    assert torch.equal(out, ref)


# --- hooks ------------------------------------------------------------------------------------------
def test_every_hook_fires_with_its_shape(pair):
    _, ours = pair
    tokens = _tokens(13)
    b, L = tokens.shape
    _, cache = ours.run_with_cache(tokens)
    assert set(cache.keys()) == set(ours.hook_dict)
    assert {n: tuple(t.shape) for n, t in cache.items()} == ours.hook_shapes(b, L)
    k, m = ours.cfg.kda, ours.cfg.mla
    H, d = k.n_heads, k.d_head
    shapes = {"in": (b, L, ours.cfg.d_model), "conv": (b, L, 3 * H * d), "q": (b, L, H, d), "k": (b, L, H, d),
              "v": (b, L, H, d), "beta": (b, L, H), "decay": (b, L, H, d), "state": (b, L, H, d, d),
              "y": (b, L, H, d), "z": (b, L, H * d), "gated": (b, L, H * d), "out": (b, L, ours.cfg.d_model)}
    for i in _kda_layers(ours):
        c = lambda h: cache[f"blocks.{i}.ssm.hook_{h}"]  # noqa: E731
        assert {h: tuple(c(h).shape) for h in shapes} == shapes
        torch.testing.assert_close(c("k").norm(dim=-1), torch.ones(b, L, H), atol=1e-4, rtol=0)
        assert bool((c("decay") <= 0).all()) and bool((c("beta") >= 0).all() & (c("beta") <= 1).all())
        assert c("decay").std(-1).mean().item() > 1e-3  # the decay differs between channels
        torch.testing.assert_close(cache[f"blocks.{i}.hook_mixer_out"], c("out"))
    attn = {"q": (b, L, m.n_heads, m.d_qk), "latent": (b, L, m.kv_lora_rank), "k": (b, L, m.n_heads, m.d_qk),
            "v": (b, L, m.n_heads, m.d_v), "attn_scores": (b, m.n_heads, L, L), "pattern": (b, m.n_heads, L, L),
            "z": (b, L, m.n_heads, m.d_v)}
    for i in ours.cfg.attention_layers:
        c = lambda h: cache[f"blocks.{i}.attn.hook_{h}"]  # noqa: E731
        assert {h: tuple(c(h).shape) for h in attn} == attn
        key = c("k")  # the rope part of the key is one vector shared by every head (and not rotated)
        torch.testing.assert_close(key[..., m.d_nope:], key[:, :, :1, m.d_nope:].expand_as(key[..., m.d_nope:]))


def _sequential(mixer, q, k, v, g, beta, patch: dict[int, torch.Tensor] | None = None):
    """hook_y by a step-by-step re-scan of the cached recurrence inputs (per-channel decay, delta update, read-out),
    the state replaced at ``patch``'s positions (after that position's update, before its read-out)."""
    qh, kh = mixer.heads(q, k)
    b, L, H, dk = qh.shape
    h = torch.zeros(b, H, dk, v.shape[-1])
    ys = []
    for t in range(L):
        h = h * g[:, t].exp()[..., None]
        delta = (v[:, t] - (h * kh[:, t, :, :, None]).sum(-2)) * beta[:, t, :, None]
        h = h + kh[:, t, :, :, None] * delta[:, :, None]
        if patch and t in patch:
            h = patch[t]
        ys.append((h * qh[:, t, :, :, None]).sum(-2))
    return torch.stack(ys, 1)


def test_state_hook_and_patch_equal_a_sequential_rescan(pair):
    _, ours = pair
    assert_state_patch_equals_rescan(ours, _tokens(21), _kda_layers(ours)[0], _sequential)


# --- implicit attention -------------------------------------------------------------------------
def test_implicit_attention_is_exact(pair):
    """A from the chunked UT / WY form equals the dense definition; Σ_j A[i, j] v_j == hook_y (≤ 1e-5 relative);
    interaction_map's per-head map on a KDA layer is A, and "auto" picks it; rollout chains KDA and MLA maps."""
    from interp.attention.methods import layer_kinds
    from interp.attention.views import rollout_map

    _, ours = pair
    tokens = _tokens(21)
    for layer in _kda_layers(ours):
        p = kda_parameters(ours, tokens, layer=layer)
        A = kda_attention(p.q, p.k, p.g, p.beta, chunk_size=CHUNK)
        torch.testing.assert_close(A, kda_attention_direct(p.q, p.k, p.g, p.beta), atol=1e-5, rtol=1e-4)
        y = reconstruct_delta_y(A, p.v)
        assert ((y - p.y).norm() / p.y.norm()).item() <= 1e-5 and p.y.abs().max().item() > 0.1
        assert bool((A.triu(1) == 0).all())
        torch.testing.assert_close(interaction_map(ours, tokens, layer=layer, aggregate="none"), A)
        torch.testing.assert_close(interaction_map(ours, tokens, layer=layer), A.abs().mean(1))
    one = tokens[:1, :13]
    assert layer_kinds(ours) == ["kda" if t == "kda" else "transformer" for t in ours.cfg.layer_types]
    _, cache = ours.run_with_cache(one, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    maps = [cache[f"blocks.{i}.attn.hook_pattern"].mean(1)[0] if t == "attention" else
            kda_attention(*(lambda p: (p.q, p.k, p.g, p.beta))(kda_parameters(ours, one, layer=i))).abs().mean(1)[0]
            for i, t in enumerate(ours.cfg.layer_types)]
    torch.testing.assert_close(torch.as_tensor(rollout_map(ours, one, method="auto")), rollout(maps), atol=1e-5,
                               rtol=1e-4)


# --- LRP, generation, decoding state ------------------------------------------------------------
def test_lrp_conserves(pair):
    _, ours = pair
    assert_lrp_conserves(ours, _tokens(13, b=1))


def test_greedy_equals_argmax(pair):
    _, ours = pair
    assert_greedy_equals_argmax(ours, _tokens(7, b=1, seed=5), new=24)
    assert_left_padded_generation_matches(ours, _tokens(9, seed=6))


def test_continuing_from_a_state_equals_one_forward(pair):
    _, ours = pair
    state = assert_continuation_equals_one_forward(ours, _tokens(21), cut=11, state=HybridState(), tol=TOL)
    k = ours.cfg.kda
    n = len(_kda_layers(ours))
    assert len(state.ssm) == len(state.conv) == n and state.offset == 21
    assert state.ssm[0].shape == (2, k.n_heads, k.d_head, k.d_head)
    assert state.conv[0].shape == (2, k.conv_dim, k.d_conv - 1)
    assert len(state.keys) == len(ours.cfg.attention_layers) and state.keys[0].shape[1] == 21
