"""RWKV-4 (Hugging Face ``RwkvForCausalLM``) on HookedRWKV: parity with the installed Hugging Face forward (its CPU
path ``rwkv_linear_attention_cpu``), HF's inference rescaling (``rescale_every``), every hook, the exact implicit
attention of the time-mix layers, LRP conservation, generation, decoding states and ``hook_state`` patching against
HF's own WKV function.

Two tiny random configs, each written with ``save_pretrained`` and loaded back: "rescaled" (3 layers,
rescale_every=2, attention_hidden_size 48 != hidden_size 32, intermediate_size 80) and "plain" (2 layers,
rescale_every=0, layer_norm_epsilon 1e-3, tied embeddings). HF's cached forward (``use_cache=True``) builds its
state [b, hidden_size, layers] and so fails when attention_hidden_size != hidden_size: the "rescaled" config is
compared with ``use_cache=False`` (every logits comparison is, see ``_hf_logits``)."""

from __future__ import annotations

import pytest
import torch

import interp
from family_checks import (assert_continuation_equals_one_forward, assert_greedy_equals_argmax,
                           assert_left_padded_generation_matches, assert_lrp_conserves, assert_start_stop_at_layer)
from interp.attention import interaction_map
from interp.attention.methods import default_method, layer_maps, methods_for
from interp.attention.rwkv import reconstruct_wkv, rwkv_attention, rwkv_logits, rwkv_parameters
from interp.hooks.rwkv import HookedRWKV, RWKVConfig, RWKVState, wkv_scan

V = 61
TOL = 1e-4
CONFIGS = {
    "rescaled": dict(vocab_size=V, hidden_size=32, num_hidden_layers=3, attention_hidden_size=48,
                     intermediate_size=80, rescale_every=2, context_length=256),
    "plain": dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, intermediate_size=64, rescale_every=0,
                  layer_norm_epsilon=1e-3, tie_word_embeddings=True, context_length=256),
}
_MODELS: dict[str, tuple] = {}


def make_hf_rwkv(kind: str, seed: int = 0):
    """A random tiny RwkvForCausalLM (HF's init, then the time mixes, decays and bonuses perturbed, the
    LayerNorms given non-trivial weights and biases, embeddings and head of unit / 0.5 scale), in eval mode."""
    from transformers import RwkvConfig, RwkvForCausalLM

    torch.manual_seed(seed)
    model = RwkvForCausalLM(RwkvConfig(**CONFIGS[kind]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".time_" in name:
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith(("ln1.weight", "ln2.weight", "pre_ln.weight", "ln_out.weight")):
                p.normal_(1, 0.2)
            elif name.endswith(".bias"):
                p.normal_(0, 0.2)
            elif name in ("rwkv.embeddings.weight", "head.weight"):  # HF's init makes logits ~1e-3: too small
                p.normal_(0, 1.0 if "embeddings" in name else 0.5)      # to test against 1e-4
    return model.eval()


def _use_cache(hf) -> bool:
    return hf.config.attention_hidden_size == hf.config.hidden_size


@pytest.fixture(params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(HF RwkvForCausalLM, ours loaded from its save_pretrained folder)."""
    if request.param not in _MODELS:
        hf = make_hf_rwkv(request.param)
        folder = tmp_path_factory.mktemp(request.param)
        hf.save_pretrained(folder)  # before any eval forward (HF rescales its weights in place on the first one)
        _MODELS[request.param] = (hf, interp.load(str(folder)))
    return _MODELS[request.param]


def _tokens(L: int, b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, L), generator=torch.Generator().manual_seed(seed))


def _hf_logits(hf, tokens: torch.Tensor) -> torch.Tensor:
    """HF's uncached forward: its cached one mixes the rows of a batch on a one-token input (the stored shift
    [b, d] broadcast against [b, 1, d] in ``extract_key_value``), 1e-3 off its own uncached logits."""
    with torch.no_grad():
        return hf(tokens, use_cache=False).logits


# --- loading and config -------------------------------------------------------------------------
def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.cfg, hf.config
    assert isinstance(ours, HookedRWKV) and c.family == "rwkv" and c.hf_model_type == "rwkv"
    assert (c.d_model, c.n_layers, c.d_att, c.d_mlp, c.norm_eps, c.rescale_every, c.tie_embeddings) == (
        h.hidden_size, h.num_hidden_layers, h.attention_hidden_size, h.intermediate_size, h.layer_norm_epsilon,
        h.rescale_every, h.tie_word_embeddings)


def test_other_model_types_and_quantized_configs_refused():
    from transformers import MambaConfig, RwkvConfig

    with pytest.raises(ValueError, match="not an RWKV config"):
        RWKVConfig.from_hf(MambaConfig())
    cfg = RwkvConfig(**CONFIGS["plain"])
    cfg.quantization_config = {"quant_method": "bitsandbytes"}
    with pytest.raises(ValueError, match="quantized rwkv checkpoint.*bitsandbytes"):
        RWKVConfig.from_hf(cfg)


# --- parity with Hugging Face -------------------------------------------------------------------
@pytest.mark.parametrize("L", [1, 8, 13, 24])
def test_logits_match_huggingface(pair, L):
    hf, ours = pair
    tokens = _tokens(L, seed=L)
    with torch.no_grad():
        assert (ours(tokens) - _hf_logits(hf, tokens)).abs().max().item() <= TOL


def test_resid_post_is_huggingface_hidden_states(pair):
    """Each block's hook_resid_post is HF's hidden state after that block, halved after every rescale_every-th
    block; with the rescaling switched off ours leaves those values (the check can fail)."""
    hf, ours = pair
    tokens = _tokens(11, seed=3)
    with torch.no_grad():
        ref = hf(tokens, use_cache=False, output_hidden_states=True).hidden_states
        _, cache = ours.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    for i in range(ours.cfg.n_layers):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], ref[i], atol=1e-5, rtol=1e-5)
    if ours.cfg.rescale_every > 0:  # the last block's residual is halved: not HF's without the rescaling
        last = ours.blocks[ours.cfg.rescale_every - 1]
        last.halve = False
        try:
            with torch.no_grad():
                _, off = ours.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
        finally:
            last.halve = True
        i = ours.cfg.rescale_every - 1
        assert (off[f"blocks.{i}.hook_resid_post"] - ref[i]).abs().max().item() > 1e-2


def test_in_memory_model_equals_folder_after_hf_rescaled_itself(pair):
    """interp.load of the in-memory HF model, after its eval forwards divided its output weights in place
    (``layers_are_rescaled``), gives the checkpoint's weights and the same logits."""
    hf, ours = pair
    tokens = _tokens(9, seed=4)
    ref = _hf_logits(hf, tokens)
    assert hf.rwkv.layers_are_rescaled
    mem = interp.load(hf)
    for a, b in zip(mem.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert (mem(tokens) - ref).abs().max().item() <= TOL


def test_padded_batch(pair):
    """HF ignores attention_mask. Ours: a left-padded row equals that row unpadded through HF at its real
    positions, a right-padded row equals HF on the whole row there; a hole inside a row is refused."""
    hf, ours = pair
    tokens = _tokens(13, b=3, seed=1)
    mask = torch.ones_like(tokens)
    mask[0, :4] = 0  # left padding
    mask[1, 10:] = 0  # right padding
    with torch.no_grad():
        got = ours(tokens, attention_mask=mask)
        left = _hf_logits(hf, tokens[:1, 4:])
        full = _hf_logits(hf, tokens)
    assert (got[0, 4:] - left[0]).abs().max().item() <= TOL
    assert (got[1, :10] - full[1, :10]).abs().max().item() <= TOL
    assert (got[2] - full[2]).abs().max().item() <= TOL
    hole = torch.ones_like(tokens)
    hole[0, 5] = 0
    with pytest.raises(ValueError, match="left or right padding"):
        ours(tokens, attention_mask=hole)


def test_save_pretrained_round_trip(pair, tmp_path):
    from transformers import AutoModelForCausalLM, RwkvForCausalLM

    hf, ours = pair
    ours.save_pretrained(str(tmp_path))
    assert (tmp_path / "checksums.json").is_file()  # loads verify the folder (no "unchecked" warning)
    hf_again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(hf_again, RwkvForCausalLM)
    again = interp.load(str(tmp_path))
    tokens = _tokens(10, seed=12)
    ref = _hf_logits(hf, tokens)
    with torch.no_grad():
        assert (_hf_logits(hf_again, tokens) - ref).abs().max().item() <= TOL
        assert (again(tokens) - ref).abs().max().item() <= TOL


# --- hooks --------------------------------------------------------------------------------------
def test_every_hook_fires_with_the_shapes_hook_shapes_gives(pair):
    _, ours = pair
    tokens = _tokens(7, seed=2)
    _, cache = ours.run_with_cache(tokens)
    assert set(cache.keys()) == set(ours.hook_dict)
    shapes = ours.hook_shapes(2, 7)
    assert {n: tuple(cache[n].shape) for n in cache.keys()} == shapes
    C = ours.cfg.d_att
    assert shapes["blocks.0.ssm.hook_state"] == (2, 7, 3, C) and shapes["blocks.0.ssm.hook_k"] == (2, 7, C)
    assert ours.hook_shapes(2, 7, state_positions=[2, 5])["blocks.0.ssm.hook_state"] == (2, 2, 3, C)
    torch.testing.assert_close(cache["blocks.0.ssm.hook_decay"][0, 0], -torch.exp(ours.blocks[0].ssm.time_decay))


def test_hooks_equal_huggingface_modules(pair):
    """hook_k / hook_v / hook_r (time mix) and mlp.hook_pre / hook_r equal what HF's key / value / receptance
    linears output; hook_y equals HF's rwkv_linear_attention_cpu on them."""
    from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

    hf, ours = pair
    tokens = _tokens(12, seed=5)
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for i, block in enumerate(hf.rwkv.blocks):
        for part, mod in (("att", block.attention), ("ffn", block.feed_forward)):
            for lin in ("key", "value", "receptance"):
                handles.append(getattr(mod, lin).register_forward_hook(
                    lambda m, a, out, key=f"{i}.{part}.{lin}": seen.__setitem__(key, out)))
    try:
        _hf_logits(hf, tokens)
        _, cache = ours.run_with_cache(tokens)
    finally:
        for h in handles:
            h.remove()
    for i, block in enumerate(hf.rwkv.blocks):
        c = lambda h: cache[f"blocks.{i}.{h}"]  # noqa: E731
        for ours_name, key in (("ssm.hook_k", "att.key"), ("ssm.hook_v", "att.value"), ("ssm.hook_r", "att.receptance"),
                               ("mlp.hook_pre", "ffn.key"), ("mlp.hook_r", "ffn.receptance")):
            torch.testing.assert_close(c(ours_name), seen[f"{i}.{key}"], atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            y, _ = rwkv_linear_attention_cpu(block.attention.time_decay, block.attention.time_first,
                                             c("ssm.hook_k"), c("ssm.hook_v"))
        torch.testing.assert_close(c("ssm.hook_y"), y, atol=1e-6, rtol=1e-5)


def test_start_stop_at_layer(pair):
    assert_start_stop_at_layer(pair[1], _tokens(9, seed=6))


# --- implicit attention -------------------------------------------------------------------------
@pytest.mark.parametrize("L", [1, 16, 21])
def test_implicit_attention_reconstructs_hook_y(pair, L):
    """Σ_j α[c, i, j] v_j[c] == hook_y (≤ 1e-5 relative) on every layer; α rows are causal and sum to 1; without
    the bonus u on the diagonal (u = w) the reconstruction fails."""
    _, ours = pair
    tokens = _tokens(L, b=2, seed=7)
    for layer in range(ours.cfg.n_layers):
        p = rwkv_parameters(ours, tokens, layer=layer)
        alpha = rwkv_attention(p.k, p.w, p.u)
        assert alpha.shape == (2, ours.cfg.d_att, L, L)
        rel = (reconstruct_wkv(alpha, p.v) - p.y).abs().max() / p.y.abs().max()
        assert rel.item() <= 1e-5, f"layer {layer}"
        assert torch.equal(alpha.triu(1), torch.zeros_like(alpha))
        torch.testing.assert_close(alpha.sum(-1), torch.ones_like(alpha.sum(-1)))
        if L > 1:
            wrong = reconstruct_wkv(rwkv_attention(p.k, p.w, p.w), p.v)
            assert ((wrong - p.y).abs().max() / p.y.abs().max()).item() > 1e-3


def test_logits_are_the_closed_form(pair):
    """ℓ[c, i, j] = w_c (i - 1 - j) + k_j[c] below the diagonal, u_c + k_i[c] on it (HF's constant decay)."""
    _, ours = pair
    p = rwkv_parameters(ours, _tokens(6, b=1, seed=8), layer=0)
    w, u, k = ours.blocks[0].ssm.w.detach(), ours.blocks[0].ssm.time_first.detach(), p.k[0]
    ref = torch.full((ours.cfg.d_att, 6, 6), float("-inf"))
    for i in range(6):
        for j in range(i):
            ref[:, i, j] = w * (i - 1 - j) + k[j]
        ref[:, i, i] = u + k[i]
    torch.testing.assert_close(rwkv_logits(p.k, p.w, p.u)[0], ref, atol=1e-5, rtol=1e-5)


def test_interaction_map_is_the_rwkv_method(pair):
    _, ours = pair
    tokens = _tokens(10, b=1, seed=9)
    assert default_method(ours) == "rwkv" and methods_for(ours) == ("rwkv", "lrp", "grad_x_input")
    p = rwkv_parameters(ours, tokens, layer=1)
    alpha = rwkv_attention(p.k, p.w, p.u)
    torch.testing.assert_close(interaction_map(ours, tokens, layer=1, aggregate="none"), alpha)
    torch.testing.assert_close(interaction_map(ours, tokens, layer=1), alpha.mean(1))
    torch.testing.assert_close(interaction_map(ours, tokens, layer=1, aggregate=3), alpha[:, 3])
    torch.testing.assert_close(interaction_map(ours, tokens, layer=1, aggregate="max"), alpha.amax(1))
    maps = layer_maps(ours, tokens, method="rwkv")
    assert len(maps) == ours.cfg.n_layers
    torch.testing.assert_close(maps[1], alpha.mean(1)[0])
    with pytest.raises(ValueError, match="method='hidden' is for state-space models"):
        interaction_map(ours, tokens, layer=0, method="hidden")


# --- LRP ----------------------------------------------------------------------------------------
def test_lrp_conserves_with_biases_zeroed(pair):
    from interp.lrp import zero_biases

    _, ours = pair
    with zero_biases(ours) as names:
        assert names and all(n.endswith(("ln1.bias", "ln2.bias", "embed.ln.bias", "ln_final.bias")) for n in names)
    assert_lrp_conserves(ours, _tokens(16, b=1, seed=10))


def test_lrp_differs_from_gradient_times_input(pair):
    """The rules change the relevance (they are not a no-op): LRP != gradient × input."""
    from interp.lrp import explain

    _, ours = pair
    tokens = _tokens(12, b=1, seed=11)
    lrp, gxi = explain(ours, tokens, method="lrp"), explain(ours, tokens, method="grad_x_input")
    assert (lrp.relevance - gxi.relevance).abs().max().item() > 1e-4


# --- decoding, state patching -------------------------------------------------------------------
def test_greedy_generation_equals_full_forward_argmax(pair):
    assert_greedy_equals_argmax(pair[1], _tokens(5, b=1, seed=12), new=32)


@pytest.mark.parametrize("cut", [1, 5, 9])
def test_continuing_from_a_state_equals_one_forward(pair, cut):
    """Prefix with state=, then a chunk and single tokens == the full forward; the state equals HF's
    (time-mix shift, num, den, max) where HF's cached forward runs."""
    hf, ours = pair
    tokens = _tokens(14, b=2, seed=13)
    state = RWKVState()
    with torch.no_grad():
        full = ours(tokens)
        parts = [ours(tokens[:, :cut], state=state)]
        parts.append(ours(tokens[:, cut:cut + 3], state=state))
        parts += [ours(tokens[:, t:t + 1], state=state) for t in range(cut + 3, 14)]
    assert state.offset == 14
    assert (torch.cat(parts, 1) - full).abs().max().item() <= 1e-5
    assert_continuation_equals_one_forward(ours, tokens, cut=cut, state=RWKVState())  # + a snapshot, decoding_states
    if _use_cache(hf):
        with torch.no_grad():
            hf_state = hf(tokens, use_cache=True).state  # 5 x [b, hidden, layers]
        for i in range(ours.cfg.n_layers):
            torch.testing.assert_close(state.ffn_shift[i], hf_state[0][:, :, i])
            torch.testing.assert_close(state.shift[i], hf_state[1][:, :, i])
            torch.testing.assert_close(state.wkv[i], torch.stack([s[:, :, i] for s in hf_state[2:]], 1),
                                       atol=1e-5, rtol=1e-4)


def test_decoding_states_continue_like_the_full_forward(pair):
    _, ours = pair
    tokens = _tokens(10, b=1, seed=14)
    states = ours.decoding_states(tokens, [0, 4])
    assert states[0] is None
    with torch.no_grad():
        full = ours(tokens)
        rest = ours(tokens[:, 4:], state=states[4].copy())
    assert (rest - full[:, 4:]).abs().max().item() <= 1e-5


def test_left_padded_generation_equals_each_row_alone(pair):
    _, ours = pair
    a, b = _tokens(6, b=1, seed=15), _tokens(3, b=1, seed=16)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    out = ours.generate(batch, attention_mask=mask, max_new_tokens=6, stop_at_eos=False)
    assert torch.equal(out[0, 6:], ours.generate(a, max_new_tokens=6, stop_at_eos=False)[0, 6:])
    assert torch.equal(out[1, 6:], ours.generate(b, max_new_tokens=6, stop_at_eos=False)[0, 3:])
    assert_left_padded_generation_matches(ours, _tokens(7, b=2, seed=20))


def test_state_patch_equals_sequential_rescan(pair):
    """Setting the (num, den, max) state after position t of a layer to another sequence's equals HF's WKV function
    run to t, then continued from the patched state; earlier logits unchanged, later ones changed."""
    from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

    _, ours = pair
    tokens, other, t, layer = _tokens(17, b=1, seed=17), _tokens(17, b=1, seed=18), 9, ours.cfg.n_layers - 1
    name = f"blocks.{layer}.ssm.hook_state"
    with torch.no_grad():
        _, clean = ours.run_with_cache(tokens, names_filter=lambda n: n.startswith(f"blocks.{layer}.ssm."))
        _, donor = ours.run_with_cache(other, names_filter=name, state_positions=[t])
        new = donor[name][:, 0]
        captured = {}
        logits = ours.run_with_hooks(tokens, state_positions=[t], fwd_hooks=[
            (name, lambda s, hook: new[:, None]),
            (f"blocks.{layer}.ssm.hook_y", lambda y, hook: captured.__setitem__("y", y))])
        att = ours.blocks[layer].ssm
        k, v = clean[f"blocks.{layer}.ssm.hook_k"], clean[f"blocks.{layer}.ssm.hook_v"]
        y0, _ = rwkv_linear_attention_cpu(att.time_decay, att.time_first, k[:, :t + 1], v[:, :t + 1])
        y1, _ = rwkv_linear_attention_cpu(att.time_decay, att.time_first, k[:, t + 1:], v[:, t + 1:],
                                          state=list(new.unbind(1)))
        assert (captured["y"] - torch.cat([y0, y1], 1)).abs().max().item() <= 1e-5
        plain = ours(tokens)
        assert (logits - plain)[:, :t + 1].abs().max().item() == 0.0
        assert (logits - plain)[:, t + 1:].abs().max().item() > 1e-3
        assert (captured["y"] - clean[f"blocks.{layer}.ssm.hook_y"])[:, t + 1:].abs().max().item() > 1e-3


def test_state_edit_carries_a_gradient(pair):
    """An observed hook_state gets dL/dstate: equal to a finite difference of the loss along a direction."""
    _, ours = pair
    tokens, t, layer = _tokens(8, b=1, seed=19), 4, 0
    name = f"blocks.{layer}.ssm.hook_state"
    seen = {}

    def keep(s, hook):
        s.retain_grad()
        seen["s"] = s
        return s

    loss = ours.run_with_hooks(tokens, state_positions=[t], return_type="loss", fwd_hooks=[(name, keep)])
    loss.backward()
    g = seen["s"].grad[:, 0, :2]  # num, den
    direction = torch.randn_like(g)
    eps = 1e-3

    def shifted(sign):
        def add(s, hook):
            s = s.clone()
            s[:, 0, :2] += sign * eps * direction
            return s
        with torch.no_grad():
            return ours.run_with_hooks(tokens, state_positions=[t], return_type="loss", fwd_hooks=[(name, add)])

    fd = (shifted(1) - shifted(-1)) / (2 * eps)
    torch.testing.assert_close((g * direction).sum(), fd, atol=2e-3, rtol=2e-2)


def test_wkv_scan_matches_huggingface_cpu_function():
    from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(2, 11, 5, generator=g), torch.randn(2, 11, 5, generator=g)
    td, u = torch.randn(5, generator=g), torch.randn(5, generator=g)
    w = -torch.exp(td)
    y, final, _ = wkv_scan(k, v, w.expand(2, 11, 5), u.expand(2, 11, 5))
    y_ref, s_ref = rwkv_linear_attention_cpu(td, u, k, v, return_state=True)
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(final, torch.stack(s_ref, 1))
