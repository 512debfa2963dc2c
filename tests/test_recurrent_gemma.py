"""RecurrentGemma (Hugging Face ``RecurrentGemmaForCausalLM``, model_type "recurrent_gemma") on HookedHybrid: RG-LRU
layers ("rglru", hooks/rglru.py) and local (sliding-window) MQA / GQA attention layers with a partial rotary
embedding, each followed by a gated GeLU(tanh) MLP with biases; zero-centred RMSNorms (gain 1 + w), the embedding
times √d_model rounded to bfloat16, soft-capped logits.

Parity with the installed HF forward (saved folder and in memory; lengths 16 and 21 and 40, all longer than the
attention window), our RG-LRU scan against HF's ``RecurrentGemmaRglru`` module, the attention pattern against HF's
eager weights (window included), every hook with its shape, the residual stream, the exact implicit attention
α of each RG-LRU layer (Σ_j α[c, i, j] x_j == hook_y; with the conv folded in, from linear_x's output plus the conv
bias's term) and its registry entry, LRP conservation (the soft cap's ratio detached), decoding (a state, greedy
generation past the window = the full forward's argmax = HF's own ``generate``), and a ``hook_state`` patch against
a sequential re-scan. HF's recurrent block ignores ``attention_mask`` (it neither zeroes padding nor resets at the
first real token), so a left-padded batch is checked against each row alone, not against HF.

Two tiny random variants: "mqa" (one KV head, lru_width 24 != hidden_size 32, window 6, conv width 4, tied
embeddings, recurrent, attention, recurrent) and "gqa" (2 KV heads of 4, window 5, conv width 3, exact GeLU,
attention biases, untied, attention first)."""

from __future__ import annotations

import functools
from functools import partial

import pytest
import torch

from family_checks import (assert_continuation_equals_one_forward, assert_fused_attention_matches,
                           assert_greedy_equals_argmax, assert_in_memory_model_matches_hf,
                           assert_left_padded_generation_matches, assert_logits_match_hf, assert_lrp_conserves,
                           assert_pattern_equals_hf, assert_start_stop_at_layer, left_padding_mask, random_tokens,
                           saved_pair, run_with_state_patch)
from interp.attention import interaction_map, rollout
from interp.attention.rglru import (reconstruct_rglru_y, rglru_attention, rglru_conv_attention, rglru_conv_bias,
                                    rglru_parameters)
from interp.hooks import HookedHybrid, HybridConfig
from interp.hooks.hybrid import HybridState
from interp.hooks.rglru import RGLRUMixer, rglru_scan

TOL = 1e-4
V = 67
CONFIGS = {
    "mqa": dict(vocab_size=V, hidden_size=32, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=1, lru_width=24, attention_window_size=6, conv1d_width=4, logits_soft_cap=10.0,
                block_types=["recurrent", "attention", "recurrent"], pad_token_id=0, eos_token_id=1,
                bos_token_id=2),
    "gqa": dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, attention_window_size=5, conv1d_width=3, logits_soft_cap=8.0,
                hidden_activation="gelu", attention_bias=True, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5},
                block_types=["attention", "recurrent"], pad_token_id=0, eos_token_id=1, bos_token_id=2),
}
_MODELS: dict[str, tuple] = {}


def make_hf_recurrent_gemma(kind: str, seed: int = 0):
    """A random tiny RecurrentGemmaForCausalLM with non-trivial norms, biases, gates and decays a spread over
    (0, 1), peaked attention and logits of a few units (the soft cap matters)."""
    from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

    torch.manual_seed(seed)
    model = RecurrentGemmaForCausalLM(RecurrentGemmaConfig(**CONFIGS[kind]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)  # gain 1 + w
            elif name.endswith("recurrent_param"):
                p.uniform_(-4.0, 0.0)  # a = exp(−8 r softplus(Λ)) from about 0.06 to 0.93
            elif name.endswith("gate_weight"):
                p.normal_(0, 0.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.3)
            elif "temporal_block" in name:
                p.normal_(0, 0.3)
            elif "mlp_block" in name:
                p.normal_(0, 0.15)
            elif "embed_tokens" in name or "lm_head" in name:
                p.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(HF RecurrentGemmaForCausalLM, ours loaded from its save_pretrained folder)."""
    return saved_pair(_MODELS, request.param, _hf, tmp_path_factory)


_hf = functools.cache(make_hf_recurrent_gemma)
_tokens = partial(random_tokens, V)


def _rglru_layers(model) -> list[int]:
    return [i for i, t in enumerate(model.cfg.layer_types) if t == "rglru"]


# --- loading and config -------------------------------------------------------------------------
def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.cfg, hf.config
    assert isinstance(ours, HookedHybrid) and isinstance(c, HybridConfig) and c.hf_model_type == "recurrent_gemma"
    kinds = {"linear_attention": "rglru", "sliding_attention": "attention"}
    assert c.layer_types == [kinds[t] for t in h.layers_block_type] and c.ssm is None
    assert c.attention_window == h.attention_window_size and c.rotary_dim == h.head_dim // 2
    assert c.d_mlp == h.intermediate_size // 2 and c.norm_offset == 1.0 and c.logits_soft_cap == h.logits_soft_cap
    assert c.embedding_multiplier == float(hf.model.normalizer) != h.hidden_size ** 0.5  # bfloat16-rounded
    assert (c.rglru.d_lru, c.rglru.n_heads, c.rglru.d_conv) == (h.lru_width, h.num_attention_heads, h.conv1d_width)
    assert c.tie_embeddings == h.tie_word_embeddings
    for i, block in enumerate(ours.blocks):
        assert isinstance(getattr(block, "ssm", None), RGLRUMixer) == (i in _rglru_layers(ours))


def test_unsupported_fields_are_refused():
    from transformers import RecurrentGemmaConfig

    base = CONFIGS["mqa"]
    with pytest.raises(ValueError, match="hidden_activation"):
        HybridConfig.from_hf(RecurrentGemmaConfig(**{**base, "hidden_activation": "relu"}))
    with pytest.raises(ValueError, match="rope_type"):
        HybridConfig.from_hf(RecurrentGemmaConfig(**{**base, "rope_parameters": {
            "rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}}))


# --- parity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [16, 21, 40])
def test_logits_match_hf(pair, L):
    """Every length is longer than the window (6 / 5): the local attention masks far keys."""
    hf, ours = pair
    assert_logits_match_hf(hf, ours, _tokens(L), tol=TOL, min_scale=2.0)


def test_in_memory_model_matches_hf(pair):
    hf, _ = pair
    assert_in_memory_model_matches_hf(hf, _tokens(13), kind=HookedHybrid, tol=TOL)


def test_left_padded_rows_equal_each_row_alone(pair):
    """HF's recurrent block ignores attention_mask, so there is no HF reference: ours zeroes the padding's conv
    input and u and restarts at each row's first real token, so a padded row equals the same row alone."""
    _, ours = pair
    tokens = _tokens(14, b=3)
    mask = left_padding_mask(tokens, (4, 1))
    with torch.no_grad():
        padded = ours(tokens, attention_mask=mask)
        for row, pad in enumerate((4, 1, 0)):
            alone = ours(tokens[row:row + 1, pad:])
            assert (padded[row, pad:] - alone[0]).abs().max().item() <= 1e-5
    assert torch.isfinite(padded).all()


def test_rglru_scan_equals_hf_module():
    """Our gates, decay, multiplier (1 at position 0) and scan equal HF's ``RecurrentGemmaRglru`` on random
    inputs, from the zero state and continuing from a state."""
    from transformers import RecurrentGemmaConfig
    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaRglru

    from interp.hooks.rglru import block_diagonal, input_multiplier, log_decay, reset_positions

    cfg = RecurrentGemmaConfig(**CONFIGS["mqa"])
    torch.manual_seed(3)
    ref = RecurrentGemmaRglru(cfg)
    for p in ref.parameters():
        p.data.normal_(0, 0.5)
    b, L, d = 2, 9, cfg.lru_width
    x = torch.randn(b, L, d)

    def ours(x, h0, offset):
        i = torch.sigmoid(block_diagonal(x, ref.input_gate_weight, ref.input_gate_bias))
        r = torch.sigmoid(block_diagonal(x, ref.recurrent_gate_weight, ref.recurrent_gate_bias))
        log_a = log_decay(r, ref.recurrent_param)
        u = (x * i) * input_multiplier(log_a, reset_positions(None, b, x.shape[1], offset > 0))
        return rglru_scan(u, log_a, h0)

    with torch.no_grad():
        ref.recurrent_states = None
        y_ref = ref(x[:, :5], torch.arange(5)[None].expand(b, -1))
        y, h = ours(x[:, :5], None, 0)
        torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
        y_ref = ref(x[:, 5:], torch.arange(5, L)[None].expand(b, -1))  # continues from its recurrent_states
        y, h = ours(x[:, 5:], h, 5)
        torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(h, ref.recurrent_states, atol=1e-6, rtol=1e-5)


def test_attention_pattern_and_start_stop(pair):
    hf, ours = pair
    tokens = _tokens(11)
    assert_pattern_equals_hf(hf, ours, tokens, layers=ours.cfg.attention_layers)
    _, cache = ours.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    w = ours.cfg.attention_window
    far = torch.ones(11, 11, dtype=torch.bool).tril(-w)  # keys w or more positions back
    for i in ours.cfg.attention_layers:
        assert bool((cache[f"blocks.{i}.attn.hook_pattern"][..., far] == 0).all())
    assert_start_stop_at_layer(ours, tokens)


def test_fused_attention_with_window(pair):
    """At 64+ positions PyTorch's fused attention runs with the window as a mask, equal to the computed pattern."""
    _, ours = pair
    assert_fused_attention_matches(ours, _tokens(66, b=2, seed=4))


def test_greedy_decoding_matches_hf(pair):
    """Our greedy continuation (one recurrent step per token, the window exceeded) equals HF's ``generate``."""
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
    c, d = ours.cfg, ours.cfg.rglru.d_lru
    shapes = {"in": (b, L, c.d_model), "conv": (b, L, d), "x": (b, L, d), "input_gate": (b, L, d),
              "decay": (b, L, d), "u": (b, L, d), "state": (b, L, d), "y": (b, L, d), "z": (b, L, d),
              "gate": (b, L, d), "gated": (b, L, d), "out": (b, L, c.d_model)}
    for i in _rglru_layers(ours):
        h = lambda name: cache[f"blocks.{i}.ssm.hook_{name}"]  # noqa: E731
        assert {n: tuple(h(n).shape) for n in shapes} == shapes
        assert bool((h("decay") < 0).all()) and bool(((h("input_gate") > 0) & (h("input_gate") < 1)).all())
        torch.testing.assert_close(h("x"), h("conv"))  # no padding
        torch.testing.assert_close(h("state"), h("y"))
        torch.testing.assert_close(h("gated"), h("y") * h("gate"))
        mult = torch.sqrt(1 - torch.exp(2 * h("decay")))
        mult[:, 0] = 1.0  # the reset at position 0
        torch.testing.assert_close(h("u"), h("x") * h("input_gate") * mult)
        torch.testing.assert_close(cache[f"blocks.{i}.hook_mixer_out"], h("out"))
    for i, kind in enumerate(c.layer_types):  # the residual stream adds up
        out = cache[f"blocks.{i}.hook_{'mixer_out' if kind == 'rglru' else 'attn_out'}"]
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_mid"], cache[f"blocks.{i}.hook_resid_pre"] + out)
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"],
                                   cache[f"blocks.{i}.hook_resid_mid"] + cache[f"blocks.{i}.hook_mlp_out"])
    cap = c.logits_soft_cap
    torch.testing.assert_close(cache["unembed.hook_post_cap"], cap * torch.tanh(cache["unembed.hook_pre_cap"] / cap))


def _sequential(u, log_a, patch: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """hook_y by a step-by-step re-scan of the cached u and log a, the state replaced at ``patch``'s positions."""
    h = torch.zeros(u.shape[0], u.shape[-1])
    ys = []
    for t in range(u.shape[1]):
        h = log_a[:, t].exp() * h + u[:, t]
        if patch and t in patch:
            h = patch[t]
        ys.append(h)
    return torch.stack(ys, 1)


def test_state_hook_and_patch_equal_a_sequential_rescan(pair):
    """hook_state at the requested positions is h_t; replacing it at one position changes hook_y as a
    step-by-step re-scan from the patched state does (≤ 1e-5), and the edit reaches the logits."""
    _, ours = pair
    tokens = _tokens(21)
    layer = _rglru_layers(ours)[0]
    p = 9
    names = [f"blocks.{layer}.ssm.hook_{h}" for h in ("u", "decay", "y", "state")]
    with torch.no_grad():
        clean, cache = ours.run_with_cache(tokens, names_filter=names, state_positions=[3, p])
    c = lambda h: cache[f"blocks.{layer}.ssm.hook_{h}"]  # noqa: E731
    assert c("state").shape[1] == 2
    torch.testing.assert_close(c("state"), c("y")[:, [3, p]])
    torch.testing.assert_close(c("y"), _sequential(c("u"), c("decay")), atol=1e-6, rtol=1e-5)
    new = torch.randn(c("state")[:, 1].shape, generator=torch.Generator().manual_seed(1))

    patched, y = run_with_state_patch(ours, tokens, layer, p, new)
    ref = _sequential(c("u"), c("decay"), patch={p: new})
    assert ((y - ref).abs().max() / ref.abs().max()).item() <= 1e-5
    torch.testing.assert_close(y[:, :p], c("y")[:, :p])
    assert (patched[:, p:] - clean[:, p:]).abs().max().item() > 1e-3


# --- implicit attention -------------------------------------------------------------------------
def test_implicit_attention_is_exact(pair):
    """Σ_j α[c, i, j] x_j == hook_y (≤ 1e-5 relative); with the conv folded in, Σ_l α̂[c, i, l] v_l + the conv
    bias's term == hook_y from linear_x's output v; interaction_map's per-channel map is α and "auto" picks it."""
    _, ours = pair
    tokens = _tokens(21)
    for layer in _rglru_layers(ours):
        p = rglru_parameters(ours, tokens, layer=layer)
        alpha = rglru_attention(p.log_a, p.gate)  # [b, d, L, L]
        assert bool((alpha.triu(1) == 0).all()) and bool((alpha >= 0).all())
        y = reconstruct_rglru_y(alpha, p.x)
        assert ((y - p.y).norm() / p.y.norm()).item() <= 1e-5 and p.y.abs().max().item() > 0.1
        folded = rglru_conv_attention(alpha, p.conv_weight)
        y_conv = reconstruct_rglru_y(folded, p.v) + rglru_conv_bias(alpha, p.conv_bias)
        assert ((y_conv - p.y).norm() / p.y.norm()).item() <= 1e-5
        assert rglru_conv_bias(alpha, p.conv_bias).abs().max().item() > 1e-2  # the bias term is not idle
        torch.testing.assert_close(interaction_map(ours, tokens, layer=layer, aggregate="none"), alpha)
        torch.testing.assert_close(interaction_map(ours, tokens, layer=layer), alpha.mean(1))


def test_rollout_mixes_rglru_and_attention_layers(pair):
    from interp.attention.methods import combine_layers, layer_kinds, layer_maps
    from interp.attention.views import rollout_map

    _, ours = pair
    tokens = _tokens(13, b=1)
    assert layer_kinds(ours) == ["rglru" if t == "rglru" else "transformer" for t in ours.cfg.layer_types]
    _, cache = ours.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    maps = []
    for layer, kind in enumerate(ours.cfg.layer_types):
        if kind == "attention":
            maps.append(cache[f"blocks.{layer}.attn.hook_pattern"].mean(1)[0])
        else:
            p = rglru_parameters(ours, tokens, layer=layer)
            maps.append(rglru_attention(p.log_a, p.gate).mean(1)[0])
    ref = rollout(maps)
    torch.testing.assert_close(torch.as_tensor(rollout_map(ours, tokens, method="auto")), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(combine_layers(layer_maps(ours, tokens, method="rglru"), how="rollout"), ref,
                               atol=1e-5, rtol=1e-4)


# --- LRP, generation, decoding state ------------------------------------------------------------
def test_lrp_conserves(pair):
    _, ours = pair
    assert_lrp_conserves(ours, _tokens(13, b=1))


def test_greedy_equals_argmax(pair):
    """32 new tokens after a 7-token prompt: the attention cache is trimmed to the window as decoding passes it."""
    _, ours = pair
    assert_greedy_equals_argmax(ours, _tokens(7, b=1, seed=5), new=32)
    assert_left_padded_generation_matches(ours, _tokens(9, seed=6))


def test_continuing_from_a_state_equals_one_forward(pair):
    _, ours = pair
    state = assert_continuation_equals_one_forward(ours, _tokens(21), cut=11, state=HybridState(), tol=1e-5)
    c = ours.cfg
    assert len(state.ssm) == len(state.conv) == len(_rglru_layers(ours)) and state.offset == 21
    assert state.ssm[0].shape == (2, c.rglru.d_lru) and state.conv[0].shape == (2, c.rglru.d_lru,
                                                                                c.rglru.d_conv - 1)
    assert all(k.shape[1] == c.attention_window - 1 for k in state.keys)  # only the keys a later query reads
