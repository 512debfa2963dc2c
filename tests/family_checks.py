"""The checks every model family's tests make, written once (tests/test_falcon_mamba.py, test_bamba.py,
test_nemotron_h.py, test_jamba.py, test_granite_hybrid.py, test_zamba2.py, test_falcon_h1.py): the tiny random HF
model and ours loaded from its saved folder (``saved_pair``), logits parity with Hugging Face (one length, the
in-memory model, a left-padded batch), every hook firing with its shape, the residual stream adding up, the SSM
layers' exactness (re-scan, hidden attention), the attention layers' pattern against Hugging Face's weights,
``interaction_map`` per layer kind, start/stop_at_layer, decoding (continuing from a state, greedy and left-padded
generation = the full forward's argmax), LRP conservation and rollout."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

import interp
from interp.attention import hidden_attention, interaction_map, reconstruct_y, ssm_parameters
from interp.attention.methods import MethodNotApplicable
from interp.hooks.scan import sequential_scan

# the layer kinds (HybridConfig.layer_types) whose blocks hold softmax attention / an SSM mixer
_ATTENTION_KINDS = ("attention", "parallel", "shared_attention")
_SSM_KINDS = ("ssm", "parallel", "shared_attention")


# --- models and tokens -----------------------------------------------------------------------------
Rule = tuple[Callable[[str, torch.Tensor], bool], float, float]


def perturb_parameters(model: Any, rules: Sequence[Rule]) -> Any:
    """Redraws, in ``named_parameters`` order, each parameter of ``model`` that one of ``rules`` — (match(name,
    p), mean, std) — matches, as ``normal_(mean, std)`` of the first rule that matches (the others are left as
    built); returns ``model.eval()``. The families' tiny random models use it for non-trivial D, biases, norm
    weights and peaked attention."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            for match, mean, std in rules:
                if match(name, p):
                    p.normal_(mean, std)
                    break
    return model.eval()


def ssm_param_or_bias(name: str, p: torch.Tensor) -> bool:
    """An SSM mixer's D (a name ending ``.D``) or any 1-D bias (conv, dt, projections)."""
    return name.endswith(".D") or (name.endswith("bias") and p.dim() == 1)


def norm_weight(name: str, p: torch.Tensor) -> bool:
    """A norm's weight."""
    return "norm" in name and name.endswith("weight")


def name_has(*parts: str) -> Callable[[str, torch.Tensor], bool]:
    """Matches a parameter whose name contains one of ``parts``."""
    return lambda name, p: any(part in name for part in parts)


def name_ends(*suffixes: str) -> Callable[[str, torch.Tensor], bool]:
    """Matches a parameter whose name ends with one of ``suffixes``."""
    return lambda name, p: name.endswith(suffixes)


def saved_pair(cache: dict[str, tuple], key: str, make_hf: Callable[[str], Any], tmp_path_factory: Any, *,
               prepare: Callable[[Any], None] | None = None) -> tuple[Any, Any]:
    """(HF model ``make_hf(key)``, ours loaded by ``interp.load`` from its ``save_pretrained`` folder), built once
    per ``key`` and kept in ``cache`` (a module's dict); ``prepare(ours)`` runs once after loading (e.g. setting
    the scan's chunk size)."""
    if key not in cache:
        hf = make_hf(key)
        folder = tmp_path_factory.mktemp(key)
        hf.save_pretrained(folder)
        ours = interp.load(str(folder))
        if prepare is not None:
            prepare(ours)
        cache[key] = (hf, ours)
    return cache[key]


def random_tokens(vocab: int, L: int, b: int = 2, seed: int = 0) -> torch.Tensor:
    """[b, L] token ids uniform in [0, vocab), from a generator seeded with ``seed``."""
    return torch.randint(0, vocab, (b, L), generator=torch.Generator().manual_seed(seed))


def left_padding_mask(tokens: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
    """An attention mask for ``tokens`` [b, L] with row r left-padded by ``pads[r]`` (later rows unpadded)."""
    mask = torch.ones_like(tokens)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    return mask


# --- parity with Hugging Face ------------------------------------------------------------------------
def max_logit_error(model: Any, hf: Any, tokens: torch.Tensor, *,
                    attention_mask: torch.Tensor | None = None) -> float:
    """max |our logits - HF's| over the real (mask 1) positions; our logits must be finite there."""
    with torch.no_grad():
        got, ref = model(tokens, attention_mask=attention_mask), hf(tokens, attention_mask=attention_mask).logits
    real = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    assert torch.isfinite(got[real]).all()
    return (got[real] - ref[real]).abs().max().item()


def assert_logits_match_hf(hf: Any, model: Any, tokens: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                           tol: float = 1e-4, min_scale: float | None = None) -> None:
    """Our logits equal HF's to ``tol`` on the real positions of ``attention_mask``; with ``min_scale``, HF's
    logits reach that size (the tolerance is not met by near-zero logits)."""
    if min_scale is not None:
        with torch.no_grad():
            assert hf(tokens, attention_mask=attention_mask).logits.abs().max().item() > min_scale
    assert max_logit_error(model, hf, tokens, attention_mask=attention_mask) <= tol


def assert_in_memory_model_matches_hf(hf: Any, tokens: torch.Tensor, *, kind: type, tol: float = 1e-4) -> Any:
    """``interp.load`` of the HF model object itself (no folder) is a ``kind`` with HF's logits; returns it."""
    mem = interp.load(hf)
    assert isinstance(mem, kind)
    assert_logits_match_hf(hf, mem, tokens, tol=tol)
    return mem


def assert_padded_batch_matches_hf(hf: Any, model: Any, tokens: torch.Tensor, *, tol: float = 1e-4) -> None:
    """On ``tokens`` [b >= 3, L] with row 0 left-padded by 4 and row 1 by 1 (row 2 unpadded), our logits equal HF's
    (same mask) at every real position, and are finite there."""
    assert tokens.shape[0] >= 3
    assert_logits_match_hf(hf, model, tokens, attention_mask=left_padding_mask(tokens, (4, 1)), tol=tol)


# --- hooks ---------------------------------------------------------------------------------------------
def assert_hooks_fire_with_shapes(model: Any, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """``run_with_cache`` returns every hook of ``hook_dict`` with ``hook_shapes``' shapes; on a hybrid, each
    layer's hooks match its kind: softmax attention (attention / parallel / shared_attention) has hook_q
    [b, L, heads, d_head], hook_k [b, L, kv_heads, d_head], hook_pattern [b, heads, L, L]; an SSM mixer (ssm /
    parallel / shared_attention) has hook_y [b, L, H, P]; a layer without one has none of its hooks. Returns the
    cache (for family-specific checks)."""
    b, L = tokens.shape
    _, cache = model.run_with_cache(tokens)
    assert set(cache.keys()) == set(model.hook_dict)
    assert {n: tuple(t.shape) for n, t in cache.items()} == model.hook_shapes(b, L)
    c = model.cfg
    for i, kind in enumerate(c.layer_types):
        if kind in _ATTENTION_KINDS:
            assert cache[f"blocks.{i}.attn.hook_q"].shape == (b, L, c.n_heads, c.d_head)
            assert cache[f"blocks.{i}.attn.hook_k"].shape == (b, L, c.n_key_value_heads, c.d_head)
            assert cache[f"blocks.{i}.attn.hook_pattern"].shape == (b, c.n_heads, L, L)
        else:
            assert not any(n.startswith(f"blocks.{i}.attn.") for n in cache), (i, kind)
        if kind in _SSM_KINDS:
            assert cache[f"blocks.{i}.ssm.hook_y"].shape == (b, L, c.H, c.P)
        else:
            assert not any(n.startswith(f"blocks.{i}.ssm.") for n in cache), (i, kind)
    return cache


def assert_residual_stream_adds_up(model: Any, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """On a hybrid with an MLP after each mixer: resid_mid = resid_pre + the mixer's output (hook_mixer_out on SSM
    layers, hook_attn_out on attention layers), resid_post = resid_mid + hook_mlp_out. Returns the cache."""
    _, cache = model.run_with_cache(tokens)
    for i, kind in enumerate(model.cfg.layer_types):
        out = cache[f"blocks.{i}.hook_{'mixer_out' if kind == 'ssm' else 'attn_out'}"]
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_mid"], cache[f"blocks.{i}.hook_resid_pre"] + out)
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"],
                                   cache[f"blocks.{i}.hook_resid_mid"] + cache[f"blocks.{i}.hook_mlp_out"])
    return cache

_SCAN_HOOKS = ("hook_u", "hook_dt", "hook_B", "hook_C", "hook_y")


def assert_rescan_exact(model: Any, tokens: torch.Tensor, *, layers: Sequence[int], tol: float = 1e-5) -> None:
    """``hook_y`` equals a sequential scan of the cached u, Δ, B, C on each of ``layers``, on ``tokens`` as they are
    and with row 1 left-padded by 3 (an attention mask)."""
    mask = torch.ones_like(tokens)
    mask[1, :3] = 0
    for attention_mask in (None, mask):
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, attention_mask=attention_mask,
                                            names_filter=lambda n: n.split(".")[-1] in _SCAN_HOOKS)
        for i in layers:
            mixer = model.blocks[i].ssm
            c = lambda h: cache[f"blocks.{i}.ssm.{h}"]  # noqa: E731
            y_ref, _ = sequential_scan(c("hook_u"), c("hook_dt"), mixer.A, c("hook_B"), c("hook_C"), mixer.D.detach())
            assert (c("hook_y") - y_ref).abs().max().item() <= tol, f"layer {i}, mask {attention_mask is not None}"


def assert_hidden_attention_exact(model: Any, tokens: torch.Tensor, *, layers: Sequence[int],
                                  tol: float = 1e-5) -> list[Any]:
    """Σ_j α[i, j] u_j + D u_i == hook_y on each of ``layers``, and ``interaction_map``'s per-head map is that α.
    Returns each layer's :class:`~interp.attention.SSMParameters` (for family-specific checks)."""
    params = []
    for layer in layers:
        p = ssm_parameters(model, tokens, layer=layer)
        alpha = hidden_attention(p.dt, p.A, p.B, p.C)
        assert (reconstruct_y(alpha, p.u, p.D) - p.y).abs().max().item() <= tol, f"layer {layer}"
        torch.testing.assert_close(interaction_map(model, tokens, layer=layer, aggregate="none"), alpha,
                                   atol=1e-6, rtol=1e-5)
        params.append(p)
    return params


def assert_pattern_equals_hf(hf: Any, model: Any, tokens: torch.Tensor, *, layers: Sequence[int]) -> None:
    """``blocks.{i}.attn.hook_pattern`` equals Hugging Face's attention weights (eager path) on ``layers``."""
    impl = hf.config._attn_implementation
    hf.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            ref = hf(tokens, output_attentions=True).attentions
    finally:
        hf.config._attn_implementation = impl
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    assert len(ref) == len(layers)
    for i, r in zip(layers, ref):
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_pattern"], r, atol=1e-6, rtol=1e-5)


def assert_start_stop_at_layer(model: Any, tokens: torch.Tensor, tol: float = 1e-5, **start_kwargs: Any) -> None:
    """Running blocks 0..l-1 (stop_at_layer) then l.. (start_at_layer, with ``start_kwargs``, e.g. Zamba2's
    ``embeddings``) gives the full forward's logits, every l."""
    with torch.no_grad():
        full = model(tokens)
        for layer in range(model.cfg.n_layers):
            resid = model(tokens, stop_at_layer=layer)
            got = model(resid, start_at_layer=layer, **start_kwargs)
            assert (got - full).abs().max().item() <= tol, f"layer {layer}"


def assert_interaction_map_per_layer_kind(model: Any, tokens: torch.Tensor) -> None:
    """``interaction_map``'s method "auto" dispatches on each layer's kind (``tokens`` [1, L]): on an attention
    layer it is the head-mean softmax pattern, and method "hidden" and ``ssm_parameters`` are refused; on a layer
    with an SSM mixer (ssm / parallel / shared_attention) it is hidden attention; method "attention" is refused on
    a plain SSM layer and is the head-mean pattern on a parallel or shared-attention layer (on a parallel layer
    the two maps differ); an MLP layer has no map."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    for layer, kind in enumerate(model.cfg.layer_types):
        if kind == "mlp":
            with pytest.raises(MethodNotApplicable):
                interaction_map(model, tokens, layer=layer)
            continue
        auto = interaction_map(model, tokens, layer=layer, aggregate="mean")
        if kind == "attention":
            torch.testing.assert_close(auto, cache[f"blocks.{layer}.attn.hook_pattern"].mean(1))
            with pytest.raises(MethodNotApplicable):
                interaction_map(model, tokens, layer=layer, method="hidden")
            with pytest.raises(MethodNotApplicable, match="attention layer"):
                ssm_parameters(model, tokens, layer=layer)
            continue
        torch.testing.assert_close(auto, interaction_map(model, tokens, layer=layer, method="hidden",
                                                         aggregate="mean"))
        if kind == "ssm":
            with pytest.raises(MethodNotApplicable):
                interaction_map(model, tokens, layer=layer, method="attention")
        else:
            pattern = interaction_map(model, tokens, layer=layer, method="attention", aggregate="mean")
            torch.testing.assert_close(pattern, cache[f"blocks.{layer}.attn.hook_pattern"].mean(1))
            if kind == "parallel":
                assert (pattern - auto).abs().max().item() > 1e-3  # two different maps


def assert_continuation_equals_one_forward(model: Any, tokens: torch.Tensor, *, cut: int, state: Any,
                                           tol: float = 1e-5) -> Any:
    """Decoding with an (empty) ``state`` (an SSMState / HybridState): the prefix ``tokens[:, :cut]`` with
    ``state=``, then one step per token, gives the full forward's logits to ``tol``; so do a multi-token
    continuation from a copy taken after the prefix (the original left as it was) and one from
    ``decoding_states``. Returns ``state`` after the last step."""
    L = tokens.shape[1]
    with torch.no_grad():
        full = model(tokens)
        parts = [model(tokens[:, :cut], state=state)]
        snapshot = state.copy()
        parts += [model(tokens[:, t:t + 1], state=state) for t in range(cut, L)]
        assert (torch.cat(parts, 1) - full).abs().max().item() <= tol
        again = model(tokens[:, cut:], state=snapshot)  # a multi-token continuation from the snapshot
        assert (again - full[:, cut:]).abs().max().item() <= tol
        from_states = model.decoding_states(tokens, [cut])[cut]
        assert (model(tokens[:, cut:], state=from_states) - full[:, cut:]).abs().max().item() <= tol
    return state


def assert_left_padded_generation_matches(model: Any, tokens: torch.Tensor, *, pad: int = 3, new: int = 12) -> None:
    """A batch ``tokens`` [b, L] with row 0 left-padded by ``pad`` decodes ``new`` greedy tokens per row (padding
    kept out of the attention cache by its key mask, zeroed in the SSM layers) equal to the argmax of the full
    forward over prompt + continuation with the same mask."""
    b, L = tokens.shape
    mask = left_padding_mask(tokens, (pad,))
    out = model.generate(tokens, attention_mask=mask, max_new_tokens=new, stop_at_eos=False)
    full_mask = torch.cat([mask, torch.ones(b, new, dtype=mask.dtype)], 1)
    with torch.no_grad():
        full = model(out, attention_mask=full_mask).argmax(-1)
    assert torch.equal(out[:, L:], full[:, L - 1:-1])


def assert_greedy_equals_argmax(model: Any, prompt: torch.Tensor, new: int = 32) -> None:
    """Greedy generation of ``new`` tokens from ``prompt`` [1, L] equals the full forward's argmax over the result."""
    L = prompt.shape[1]
    out = model.generate(prompt, max_new_tokens=new, stop_at_eos=False)
    assert out.shape == (1, L + new)
    with torch.no_grad():
        full = model(out).argmax(-1)
    assert torch.equal(out[0, L:], full[0, L - 1:-1])


def assert_lrp_conserves(model: Any, tokens: torch.Tensor, *, positions: Sequence[int] = (-1, 7),
                         tol: float = 1e-4) -> None:
    """The LRP forward (``lrp_hooks``) leaves the logits unchanged, and with the biases zeroed the relevance of the
    input tokens sums to the explained logit (≤ ``tol`` relative) at each of ``positions``; ``tokens`` [1, L]."""
    from interp.lrp import conservation_error, explain, lrp_hooks, zero_biases

    with torch.no_grad():
        plain = model(tokens)
        assert (model.run_with_hooks(tokens, fwd_hooks=lrp_hooks(model)) - plain).abs().max().item() <= 1e-5
    for position in positions:
        with zero_biases(model):
            attr = explain(model, tokens, position=position)
            err = conservation_error(attr)
        assert err <= tol, f"position {position}: Σ R = {attr.relevance.sum().item():.6g}, logit {attr.logit:.6g}"


def assert_rollout_mixes_layers(model: Any, tokens: torch.Tensor) -> None:
    """Rollout through a hybrid chains each layer's own maps: mean |α| of hidden attention (from the cached Δ, B, C)
    on SSM layers, the head-mean softmax pattern on attention layers, nothing for MLP layers, the two summed on a
    "parallel" layer (Falcon-H1), the pattern then |α| on a "shared_attention" layer (Zamba2); ``rollout_map`` (the
    app's view) and ``layer_maps`` + ``combine_layers`` (the benchmarks') both equal that product; ``tokens``
    [1, L]."""
    from interp.attention import rollout
    from interp.attention.methods import combine_layers, layer_maps
    from interp.attention.views import rollout_map

    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))

    def hidden(layer: int) -> torch.Tensor:
        p = ssm_parameters(model, tokens, layer=layer)
        return hidden_attention(p.dt, p.A, p.B, p.C).abs().mean(1)[0]  # [L, L]

    def pattern(layer: int) -> torch.Tensor:
        return cache[f"blocks.{layer}.attn.hook_pattern"].mean(1)[0]

    maps = []
    for layer, kind in enumerate(model.cfg.layer_types):
        maps += {"ssm": lambda: [hidden(layer)], "attention": lambda: [pattern(layer)], "mlp": lambda: [],
                 "parallel": lambda: [pattern(layer) + hidden(layer)],
                 "shared_attention": lambda: [pattern(layer), hidden(layer)]}[kind]()
    ref = rollout(maps)
    torch.testing.assert_close(torch.as_tensor(rollout_map(model, tokens, method="auto")), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(combine_layers(layer_maps(model, tokens, method="hidden"), how="rollout"), ref,
                               atol=1e-5, rtol=1e-4)


def assert_fused_attention_matches(model: Any, tokens: torch.Tensor, *, pad: int = 5, tol: float = 1e-5) -> None:
    """Forwards of at least ``FUSED_ATTENTION_MIN`` positions with nobody observing the attention pattern run
    PyTorch's fused attention: the logits equal those of the same forward with the pattern computed (a no-op hook
    on every ``attn.hook_pattern``) to ``tol`` relative to the logits' scale, on ``tokens`` as they are (causal)
    and with row 0 left-padded by ``pad`` (a mask; every real position compared, every position finite)."""
    from interp.hooks.hybrid import FUSED_ATTENTION_MIN

    assert tokens.shape[1] >= FUSED_ATTENTION_MIN
    observed = [(n, lambda t, hook: None) for n in model.hook_dict if n.endswith("attn.hook_pattern")]
    assert observed, "the model has no attention layer"
    mask = torch.ones_like(tokens)
    mask[0, :pad] = 0
    for attention_mask in (None, mask):
        with torch.no_grad():
            fused = model(tokens, attention_mask=attention_mask)
            eager = model.run_with_hooks(tokens, attention_mask=attention_mask, fwd_hooks=observed)
        real = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        assert torch.isfinite(fused).all()
        scale = max(1.0, eager[real].abs().max().item())
        assert (fused[real] - eager[real]).abs().max().item() <= tol * scale, f"mask {attention_mask is not None}"


def run_with_state_patch(model: Any, tokens: torch.Tensor, layer: int, p: int,
                         new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A forward with ``blocks.{layer}.ssm.hook_state`` at position ``p`` replaced by ``new``: (logits, that layer's
    ``hook_y``)."""
    def patch(t, hook):
        t = t.clone()
        t[:, -1] = new
        return t

    got = {}
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, state_positions=[p], fwd_hooks=[
            (f"blocks.{layer}.ssm.hook_state", patch),
            (f"blocks.{layer}.ssm.hook_y", lambda t, hook: got.setdefault("y", t))])
    return logits, got["y"]


def assert_state_patch_equals_rescan(model: Any, tokens: torch.Tensor, layer: int, rescan: Callable[..., torch.Tensor],
                                     *, inputs: Sequence[str] = ("q", "k", "v", "decay", "beta"), p: int = 9) -> None:
    """``hook_state`` of ``layer`` at the requested positions is the recurrent state there; replacing it at position
    ``p`` changes ``hook_y`` as a step-by-step re-scan from the patched state does (≤ 1e-5 relative), leaves the
    earlier positions alone, and reaches the logits. ``rescan(mixer, *[the cached ssm.hook_<inputs>], patch={t: h}
    | None)`` is the family's sequential reference for ``hook_y``."""
    names = [f"blocks.{layer}.ssm.hook_{h}" for h in (*inputs, "y", "state")]
    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens, names_filter=names, state_positions=[3, p])
    c = lambda h: cache[f"blocks.{layer}.ssm.hook_{h}"]  # noqa: E731
    mixer, args = model.blocks[layer].ssm, [c(h) for h in inputs]
    assert c("state").shape[1] == 2
    torch.testing.assert_close(c("y"), rescan(mixer, *args), atol=1e-5, rtol=1e-5)
    new = torch.randn(c("state")[:, 1].shape, generator=torch.Generator().manual_seed(1))
    patched, y = run_with_state_patch(model, tokens, layer, p, new)
    ref = rescan(mixer, *args, patch={p: new})
    assert ((y - ref).abs().max() / ref.abs().max()).item() <= 1e-5
    torch.testing.assert_close(y[:, :p], c("y")[:, :p])
    assert (patched[:, p:] - clean[:, p:]).abs().max().item() > 1e-3
