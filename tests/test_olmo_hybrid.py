"""OLMo-Hybrid (Hugging Face ``OlmoHybridForCausalLM``, model_type "olmo_hybrid"): Gated DeltaNet layers
("gated_deltanet", hooks/deltanet.py, pre-norm) interleaved with post-norm softmax-attention layers (OLMo-2's layout:
``post_norm_layers``, q/k RMSNorm over the whole projections: ``qk_norm`` "projection"), each followed by a gated
MLP. Parity with the installed HF forward (saved folder and in-memory, lengths that are and are not multiples of the
chunk, padded batch, HF's own greedy decoding through its recurrent path), our chunked and recurrent rules against
HF's torch functions, every hook fires with its shape, the exact implicit attention of each GDN layer (chunked
UT / WY construction == direct definition, Σ_j A[i, j] v_j == hook_y), its registry entry and rollout across mixed
layers, LRP conservation, greedy = argmax, continuing from a state = one forward, and a ``hook_state`` patch equals
a sequential re-scan from the patched state. Two tiny random variants: GQA-like GDN heads (2 key heads shared by 4
value heads, d_v != d_k), rotary attention with GQA, β · 2 (negative eigenvalues); and NoPE attention (no
rope_theta), β in [0, 1], conv width 3, tied embeddings, attention biases, attention first."""

from __future__ import annotations

import functools
from functools import partial

import pytest
import torch

from family_checks import (assert_continuation_equals_one_forward, assert_greedy_equals_argmax,
                           assert_in_memory_model_matches_hf, assert_left_padded_generation_matches,
                           assert_logits_match_hf, assert_lrp_conserves,
                           assert_padded_batch_matches_hf, assert_pattern_equals_hf, assert_start_stop_at_layer,
                           assert_state_patch_equals_rescan, random_tokens, saved_pair)
from interp.attention import interaction_map, rollout
from interp.attention.deltanet import (delta_attention, delta_attention_direct, deltanet_parameters,
                                       reconstruct_delta_y)
from interp.hooks import HookedHybrid, HybridConfig
from interp.hooks.deltanet import (DeltaNetConfig, GatedDeltaNetMixer, chunk_delta_rule, l2norm,
                                  recurrent_delta_rule)
from interp.hooks.hybrid import HybridState

CHUNK = 8  # our chunk size in these tests: lengths 8 and 16 are multiples of it, 13 and 21 are not
TOL = 1e-4
V = 67
OLMO_HYBRID_CONFIGS = {
    "gqa-rope": dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, layer_types=["linear_attention", "full_attention", "linear_attention",
                                                         "linear_attention"],
                     linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                     linear_value_head_dim=12, linear_conv_kernel_dim=4, linear_allow_neg_eigval=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 500.0}, pad_token_id=0, eos_token_id=1,
                     bos_token_id=2),
    "nope-tied": dict(vocab_size=V, hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=3,
                      num_key_value_heads=3, layer_types=["full_attention", "linear_attention", "linear_attention"],
                      linear_num_key_heads=3, linear_num_value_heads=3, linear_key_head_dim=8,
                      linear_value_head_dim=8, linear_conv_kernel_dim=3, linear_allow_neg_eigval=False,
                      attention_bias=True, tie_word_embeddings=True, rope_parameters=None, pad_token_id=0,
                      eos_token_id=1, bos_token_id=2),
}
_MODELS: dict[str, tuple] = {}


def make_hf_olmo_hybrid(kind: str, seed: int = 0, **changes):
    """A random tiny OlmoHybridForCausalLM with non-trivial norms, decays, β, attention and O(1) logits."""
    from transformers import OlmoHybridConfig, OlmoHybridForCausalLM

    torch.manual_seed(seed)
    model = OlmoHybridForCausalLM(OlmoHybridConfig(**{**OLMO_HYBRID_CONFIGS[kind], **changes}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.normal_(1, 0.2)
            elif name.endswith("A_log"):
                p.uniform_(-2.0, 0.5)  # decays exp(g) spread over (0, 1)
            elif name.endswith("dt_bias") or name.endswith("bias"):
                p.normal_(0, 0.5)
            elif "self_attn" in name:  # peaked patterns, so that positions matter
                p.normal_(0, 0.25)
            elif "linear_attn" in name:
                p.normal_(0, 0.2)
            elif "mlp" in name:
                p.normal_(0, 0.1)
            elif "embed_tokens" in name or "lm_head" in name:
                p.normal_(0, 0.4)
    return model.eval()


def _prepare(ours) -> None:
    ours.cfg.delta.chunk_size = CHUNK  # the mixers share this config


@pytest.fixture(params=list(OLMO_HYBRID_CONFIGS))
def pair(request, tmp_path_factory):
    """(HF OlmoHybridForCausalLM, ours loaded from its save_pretrained folder, chunk size CHUNK)."""
    return saved_pair(_MODELS, request.param, _hf, tmp_path_factory, prepare=_prepare)


_hf = functools.cache(make_hf_olmo_hybrid)
_tokens = partial(random_tokens, V)


def _delta_layers(model) -> list[int]:
    return [i for i, t in enumerate(model.cfg.layer_types) if t == "gated_deltanet"]


# --- loading and config -------------------------------------------------------------------------
def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.cfg, hf.config
    assert isinstance(ours, HookedHybrid) and isinstance(c, HybridConfig) and c.hf_model_type == "olmo_hybrid"
    kinds = {"linear_attention": "gated_deltanet", "full_attention": "attention"}
    assert c.layer_types == [kinds[t] for t in h.layer_types] and c.ssm is None
    assert c.post_norm_layers == [i for i, t in enumerate(h.layer_types) if t == "full_attention"]
    assert c.qk_norm == "projection" and c.rotary_dim == (0 if h.rope_parameters is None else c.d_head)
    d = c.delta
    assert (d.n_k_heads, d.n_v_heads, d.d_k, d.d_v, d.d_conv, d.beta_scale, d.gate_norm_eps) == (
        h.linear_num_key_heads, h.linear_num_value_heads, h.linear_key_head_dim, h.linear_value_head_dim,
        h.linear_conv_kernel_dim, 2.0 if h.linear_allow_neg_eigval else 1.0, 1e-5)
    for i, block in enumerate(ours.blocks):
        assert isinstance(getattr(block, "ssm", None), GatedDeltaNetMixer) == (i in _delta_layers(ours))
        assert block.post_norm == (i in c.post_norm_layers) and hasattr(block, "mlp")


def test_unsupported_fields_are_refused():
    from transformers import OlmoHybridConfig

    base = OLMO_HYBRID_CONFIGS["gqa-rope"]
    with pytest.raises(ValueError, match="hidden_act"):
        HybridConfig.from_hf(OlmoHybridConfig(**{**base, "hidden_act": "gelu"}))
    with pytest.raises(ValueError, match="rope_type"):
        HybridConfig.from_hf(OlmoHybridConfig(**{**base, "rope_parameters": {
            "rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}}))


# --- parity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [8, 13, 16, 21])
def test_logits_match_hf(pair, L):
    hf, ours = pair
    assert_logits_match_hf(hf, ours, _tokens(L), tol=TOL, min_scale=1.0)


def test_logits_match_hf_at_hf_chunk_size(pair):
    """With the default chunk (64, HF's) too, at 64 and 70 positions."""
    hf, ours = pair
    ours.cfg.delta.chunk_size = 64
    try:
        for L in (64, 70):
            assert_logits_match_hf(hf, ours, _tokens(L, b=1), tol=TOL)
    finally:
        ours.cfg.delta.chunk_size = CHUNK


def test_in_memory_and_padded_batch(pair):
    hf, ours = pair
    assert_in_memory_model_matches_hf(hf, _tokens(13), kind=HookedHybrid, tol=TOL)
    assert_padded_batch_matches_hf(hf, ours, _tokens(13, b=3), tol=TOL)


def test_attention_pattern_and_start_stop(pair):
    hf, ours = pair
    tokens = _tokens(11)
    assert_pattern_equals_hf(hf, ours, tokens, layers=ours.cfg.attention_layers)
    assert_start_stop_at_layer(ours, tokens)


@pytest.mark.parametrize("L", [1, 8, 13, 21])
def test_rules_equal_hf_torch_functions(L):
    """Our chunked and recurrent rules equal HF's ``torch_chunk_gated_delta_rule`` /
    ``torch_recurrent_gated_delta_rule`` (with their in-kernel l2-norm, GQA heads and an initial state), outputs and final states."""
    from transformers.models.olmo_hybrid.modeling_olmo_hybrid import (torch_chunk_gated_delta_rule,
                                                                      torch_recurrent_gated_delta_rule)

    g = torch.Generator().manual_seed(L)
    b, Hk, Hv, dk, dv = 2, 2, 4, 8, 6
    q, k = torch.randn(b, L, Hk, dk, generator=g), torch.randn(b, L, Hk, dk, generator=g)
    v = torch.randn(b, L, Hv, dv, generator=g)
    decay = -torch.rand(b, L, Hv, generator=g) * 2
    beta = torch.rand(b, L, Hv, generator=g) * 2
    h0 = torch.randn(b, Hv, dk, dv, generator=g)
    mixer = GatedDeltaNetMixer(DeltaNetConfig(d_model=4, n_k_heads=Hk, n_v_heads=Hv, d_k=dk, d_v=dv))
    qh, kh = mixer.heads(l2norm(q), l2norm(k))
    for ref_fn, ours_fn in ((partial(torch_chunk_gated_delta_rule, chunk_size=CHUNK),
                             partial(chunk_delta_rule, chunk_size=CHUNK)),
                            (torch_recurrent_gated_delta_rule, recurrent_delta_rule)):
        ref_o, ref_h = ref_fn(q, k, v, g=decay, beta=beta, initial_state=h0, output_final_state=True,
                              use_qk_l2norm_in_kernel=True)
        o, h = ours_fn(qh, kh, v, decay, beta, h0)
        torch.testing.assert_close(o, ref_o, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h, ref_h, atol=1e-5, rtol=1e-5)


def test_greedy_decoding_matches_hf(pair):
    """Our greedy continuation (a recurrent step per token) equals HF's ``generate`` (its cache and recurrent path)."""
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
    d = ours.cfg.delta
    shapes = {"in": (b, L, ours.cfg.d_model), "conv": (b, L, d.conv_dim), "q": (b, L, d.n_k_heads, d.d_k),
              "k": (b, L, d.n_k_heads, d.d_k), "v": (b, L, d.n_v_heads, d.d_v), "beta": (b, L, d.n_v_heads),
              "decay": (b, L, d.n_v_heads), "state": (b, L, d.n_v_heads, d.d_k, d.d_v),
              "y": (b, L, d.n_v_heads, d.d_v), "z": (b, L, d.value_dim), "gated": (b, L, d.value_dim),
              "out": (b, L, ours.cfg.d_model)}
    for i in _delta_layers(ours):
        c = lambda h: cache[f"blocks.{i}.ssm.hook_{h}"]  # noqa: E731
        assert {h: tuple(c(h).shape) for h in shapes} == shapes
        torch.testing.assert_close(c("q").norm(dim=-1), torch.ones(b, L, d.n_k_heads), atol=1e-4, rtol=0)
        assert bool((c("decay") <= 0).all()) and bool((c("beta") >= 0).all() & (c("beta") <= d.beta_scale).all())
        torch.testing.assert_close(cache[f"blocks.{i}.hook_mixer_out"], c("out"))
    for i in ours.cfg.attention_layers:  # post-norm: the residual adds ln1(attention output)
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_mid"],
                                   cache[f"blocks.{i}.hook_resid_pre"] + cache[f"blocks.{i}.hook_attn_out"])
        torch.testing.assert_close(cache[f"blocks.{i}.ln1.hook_normalized"] * ours.blocks[i].ln1.weight,
                                   cache[f"blocks.{i}.hook_attn_out"])


def _sequential(mixer, q, k, v, g, beta, patch: dict[int, torch.Tensor] | None = None):
    """hook_y by a step-by-step re-scan of the cached recurrence inputs, the state replaced at ``patch``'s positions
    (after that position's update, before its read-out)."""
    qh, kh = mixer.heads(q, k)
    b, L, H, dk = qh.shape
    h = torch.zeros(b, H, dk, v.shape[-1])
    ys = []
    for t in range(L):
        h = h * g[:, t].exp()[..., None, None]
        delta = (v[:, t] - (h * kh[:, t, :, :, None]).sum(-2)) * beta[:, t, :, None]
        h = h + kh[:, t, :, :, None] * delta[:, :, None]
        if patch and t in patch:
            h = patch[t]
        ys.append((h * qh[:, t, :, :, None]).sum(-2))
    return torch.stack(ys, 1)


def test_state_hook_and_patch_equal_a_sequential_rescan(pair):
    _, ours = pair
    assert_state_patch_equals_rescan(ours, _tokens(21), _delta_layers(ours)[0], _sequential)


# --- implicit attention -------------------------------------------------------------------------
def test_implicit_attention_is_exact(pair):
    """A from the chunked UT / WY form equals the direct definition; Σ_j A[i, j] v_j == hook_y (≤ 1e-5 relative);
    interaction_map's per-head map on a GDN layer is A, and "auto" picks it."""
    _, ours = pair
    tokens = _tokens(21)
    for layer in _delta_layers(ours):
        p = deltanet_parameters(ours, tokens, layer=layer)
        A = delta_attention(p.q, p.k, p.g, p.beta, chunk_size=CHUNK)
        torch.testing.assert_close(A, delta_attention_direct(p.q, p.k, p.g, p.beta), atol=1e-5, rtol=1e-4)
        y = reconstruct_delta_y(A, p.v)
        assert ((y - p.y).norm() / p.y.norm()).item() <= 1e-5 and p.y.abs().max().item() > 0.1
        assert bool((A.triu(1) == 0).all())
        torch.testing.assert_close(interaction_map(ours, tokens, layer=layer, aggregate="none"), A)
        torch.testing.assert_close(interaction_map(ours, tokens, layer=layer), A.abs().mean(1))


def test_rollout_mixes_gdn_and_attention_layers(pair):
    from interp.attention.methods import combine_layers, layer_kinds, layer_maps
    from interp.attention.views import rollout_map

    _, ours = pair
    tokens = _tokens(13, b=1)
    assert layer_kinds(ours) == ["delta" if t == "gated_deltanet" else "transformer" for t in ours.cfg.layer_types]
    _, cache = ours.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    maps = []
    for layer, kind in enumerate(ours.cfg.layer_types):
        if kind == "attention":
            maps.append(cache[f"blocks.{layer}.attn.hook_pattern"].mean(1)[0])
        else:
            p = deltanet_parameters(ours, tokens, layer=layer)
            maps.append(delta_attention(p.q, p.k, p.g, p.beta).abs().mean(1)[0])
    ref = rollout(maps)
    torch.testing.assert_close(torch.as_tensor(rollout_map(ours, tokens, method="auto")), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(combine_layers(layer_maps(ours, tokens, method="delta"), how="rollout"), ref,
                               atol=1e-5, rtol=1e-4)


# --- LRP, generation, decoding state ------------------------------------------------------------
def test_lrp_conserves(pair):
    _, ours = pair
    assert_lrp_conserves(ours, _tokens(13, b=1))


def test_greedy_equals_argmax(pair):
    _, ours = pair
    assert_greedy_equals_argmax(ours, _tokens(7, b=1, seed=5), new=32)
    assert_left_padded_generation_matches(ours, _tokens(9, seed=6))


def test_continuing_from_a_state_equals_one_forward(pair):
    _, ours = pair
    # tol 1e-4 (the logits' parity tolerance): the chunked form and the recurrent steps round differently, ~1e-5 on
    # logits of O(10) for this model
    state = assert_continuation_equals_one_forward(ours, _tokens(21), cut=11, state=HybridState(), tol=TOL)
    d = ours.cfg.delta
    n = len(_delta_layers(ours))
    assert len(state.ssm) == len(state.conv) == n and state.offset == 21
    assert state.ssm[0].shape == (2, d.n_v_heads, d.d_k, d.d_v) and state.conv[0].shape == (2, d.conv_dim,
                                                                                              d.d_conv - 1)
