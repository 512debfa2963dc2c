"""The checks every model family's tests make, written once (tests/test_falcon_mamba.py, test_bamba.py,
test_nemotron_h.py, ...): the SSM layers' exactness (re-scan, hidden attention), the attention layers' pattern
against Hugging Face's weights, start/stop_at_layer, greedy decoding = the full forward's argmax."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from interp.attention import hidden_attention, interaction_map, reconstruct_y, ssm_parameters
from interp.hooks.scan import sequential_scan

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
