"""Layer-wise relevance propagation (MambaLRP, CP-LRP) and gradient baselines, for every model.

One mechanism serves Mamba-1, Mamba-2 and transformers: the *modified forward* is the normal
forward plus hooks (:func:`lrp_hooks`) that return tensors of the same value in which some factors
are detached. Gradient × input on that forward is LRP relevance (Jafari et al., MambaLRP; Ali et
al., CP-LRP), and with biases zeroed (:func:`zero_biases`) the relevance of the input embeddings
sums to the explained logit (:func:`conservation_error`).

Rules (each hook returns ``orig.detach() + (mod - mod.detach())``: the *value* is the original
activation bit for bit, so the modified forward's logits equal the plain forward's exactly, and the
*gradient* is that of the rule ``mod``):

SSM (:class:`interp.hooks.HookedSSM`, per layer)
    * ``ssm.hook_dt``, ``ssm.hook_B``, ``ssm.hook_C`` -> detached (Δ, hence Ā, and B, C): the scan
      ``y = C·h + D·u`` is then linear in ``u``;
    * ``ssm.hook_u`` (SiLU after the conv, identity rule): ``c·σ(c).detach()`` with ``c`` the
      conv output captured at ``ssm.hook_conv`` (Mamba-2: its first ``d_inner`` channels, heads
      view); skipped for models whose conv activation is the identity;
    * ``ssm.hook_gated`` (half rule on the gate): ``g = z·σ(z).detach()`` and
      ``0.5·(y·g.detach()) + 0.5·(y.detach()·g)``; Mamba-2 then applies its grouped RMSNorm with
      ``1/rms`` detached: ``w ⊙ x · rsqrt(mean_group(x²) + eps).detach()``;
    * every RMSNorm's ``hook_scale`` (``ln1``, ``ln2``, ``ln_final``) -> detached: ``x / rms`` is then linear.

Hybrid (:class:`interp.hooks.HookedHybrid`: Bamba, Nemotron-H, Jamba, ...), block by block
    * SSM layers: the SSM rules above (the mixer's own config: Mamba-1 or Mamba-2);
    * attention layers: ``attn.hook_pattern`` -> detached (CP-LRP, as for transformers; the rotary embedding
      only reaches the pattern); gated attention's ``attn.hook_gate`` (Qwen3-Next) -> detached (sigmoid(gate) a
      constant, signal-take-all);
    * MLPs (``mlp.hook_post``): identity rule on the activation, ``g = pre · (act(pre)/pre).detach()``, and for a
      gated MLP the half rule on ``g · pre_linear`` (as on the SSM gate);
    * mixtures of experts: ``moe.hook_expert_weights`` -> detached (the router is a constant), each chosen
      expert's ``moe.hook_post`` [b, pos, k, d_mlp] gets the gated-MLP rule; a shared expert's sigmoid gate
      ``mlp.hook_gate`` (Qwen3-Next) -> detached.
    * RG-LRU layers (RecurrentGemma, hooks/rglru.py): ``ssm.hook_input_gate`` and ``ssm.hook_decay`` -> detached
      (the input gate, a and √(1 − a²) constants: the recurrence is linear in the conv output); ``ssm.hook_gated``
      = y · GeLU(z): identity rule on the GeLU and the half rule, as on Mamba's gate;
    * mLSTM layers (xLSTM, hooks/mlstm.py): ``ssm.hook_q`` / ``hook_k`` / ``hook_input_gate`` / ``hook_decay`` /
      ``hook_normalizer`` -> detached (the implicit attention A a constant: h linear in v); ``ssm.hook_gated`` =
      σ(z) · MultiHeadLayerNorm(h): 1/std detached and the gate σ(z) detached (signal-take-all);
    * a logit soft cap (``unembed.hook_post_cap``, RecurrentGemma, xLSTM): the ratio cap·tanh(x/cap) / x detached, so
      the capped logit is linear in the uncapped one and relevance is conserved.

Transformer (:class:`interp.hooks.HookedTransformerModel`, CP-LRP)
    * ``attn.hook_pattern`` -> detached (attention probabilities are constants: the head is linear
      in the values);
    * ``ln*.hook_scale`` -> detached (LayerNorm is then linear: centring is linear);
    * ``mlp.hook_post`` (identity rule): ``pre · (post/pre).detach()`` with ``pre`` captured at
      ``mlp.hook_pre``; where ``pre == 0`` the ratio is the activation's slope at 0 (0.5 for GELU).

What counts as input, what as bias (for conservation)
    Relevance is gradient × input at the output of ``hook_embed`` (token embeddings) and, for
    transformers with learned absolute positions, at ``hook_pos_embed``: positional embeddings
    count as an *input* (their relevance is kept in ``Attribution.relevance_pos_embed`` and added
    to the per-position ``relevance``), not as a bias. :func:`zero_biases` zeroes the additive
    constants that would otherwise absorb relevance: SSM conv / in_proj / out_proj biases (the dt
    bias sits inside the detached Δ and is left alone); transformer ``b_Q, b_K, b_V, b_O, b_in,
    b_out``, LayerNorm ``b`` and ``b_U``. With them zeroed, ``Σ relevance = logit``.

Padded batches (``attention_mask``) are not supported by the rules: :func:`explain` and :func:`interaction_rows`
take one sequence, [L] or [1, L], and refuse a batch with a ValueError (loop over its rows);
:func:`interaction_rows` batches copies of its one sequence internally.

Example::

    attr = explain(model, tokens)                      # LRP of the argmax logit at the last position
    attr.relevance                                     # [pos] relevance of each input token
    with zero_biases(model):
        print(conservation_error(explain(model, tokens)))   # ~1e-7
    rows = interaction_rows(model, tokens, positions=[5, 9])   # [2, pos] LRP interaction map
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks import HookedModel, is_ssm
from interp.hooks.positions import Positions, PositionsLike
from interp.hooks.tokens import as_tokens

Hook = tuple[str, Callable[..., Any]]
METHODS = ("lrp", "grad_x_input", "integrated_gradients")

__all__ = [
    "Attribution", "METHODS", "conservation_error", "explain", "interaction_rows", "lrp_hooks", "zero_biases",
]


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------
@dataclass
class Attribution:
    """Relevance of each input token for one logit.

    Attributes:
        relevance: [pos] relevance of each input position: token-embedding relevance summed over
            d_model, plus positional-embedding relevance where the model has learned positions.
            Positions after ``position`` get exactly 0 (causal models).
        relevance_embed: [pos, d_model] gradient × input at the token embeddings (``hook_embed``).
        target: the explained vocabulary id.
        position: the explained (non-negative) position.
        logit: value of the explained logit on the actual input.
        method: "lrp", "grad_x_input" or "integrated_gradients".
        relevance_pos_embed: [pos, d_model] at ``hook_pos_embed`` (transformers with learned
            absolute positions, methods lrp / grad_x_input), else None.
        baseline_logit: integrated gradients only: the logit at the baseline embedding, so that
            completeness reads ``Σ relevance ≈ logit - baseline_logit``. None otherwise.
    """

    relevance: Tensor
    relevance_embed: Tensor
    target: int
    position: int
    logit: float
    method: str
    relevance_pos_embed: Tensor | None = None
    baseline_logit: float | None = None

    @property
    def reference(self) -> float:
        """What ``relevance.sum()`` should equal: the logit (minus the baseline logit for IG)."""
        return self.logit - (self.baseline_logit or 0.0)


def conservation_error(attribution: Attribution) -> float:
    """Relative error ``|Σ_j R_j - logit| / |logit|``.

    For integrated gradients ``logit`` is replaced by ``logit - baseline_logit`` (completeness).
    LRP conserves to rounding only with biases zeroed (:func:`zero_biases`).
    """
    total = float(attribution.relevance.double().sum())
    ref = attribution.reference
    return abs(total - ref) / max(abs(ref), 1e-30)


# --------------------------------------------------------------------------------------------
# the modified forward
# --------------------------------------------------------------------------------------------
def _same_value(orig: Tensor, mod: Tensor) -> Tensor:
    """A tensor with the value of ``orig`` (exactly) and the gradient of ``mod``."""
    return orig.detach() + (mod - mod.detach()).to(orig.dtype)


def _detach(t: Tensor, hook: Any = None) -> Tensor:
    return t.detach()


def _compute_dtype(t: Tensor) -> torch.dtype:
    """At least float32 (the SSM norms compute in float32); float64 stays float64."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def lrp_hooks(model: HookedModel) -> list[Hook]:
    """The modified-forward hooks of ``model`` (a ``HookedSSM`` or a ``HookedTransformerModel``).

    Returns a list of ``(hook_name, fn)`` for ``model.run_with_hooks(tokens, fwd_hooks=...)`` or
    ``with model.hooks(fwd_hooks=...)``. The forward's values are unchanged (logits identical);
    gradient × input on it gives LRP relevance. See the module docstring for the rules. The hooks
    share a small capture dict, so use one list for one forward at a time.
    """
    if _is_rwkv(model):
        return _rwkv_hooks(model)
    if is_ssm(model) or _is_hybrid(model):
        return _ssm_hooks(model)
    if hasattr(model, "blocks") and any(n.endswith("attn.hook_pattern") for n in model.hook_dict):
        return _transformer_hooks(model)
    raise TypeError(f"lrp_hooks: unsupported model {type(model).__name__} (HookedSSM or HookedTransformerModel)")


def _is_hybrid(model: Any) -> bool:
    """A HookedHybrid (its config lists ``layer_types``), also one without Mamba layers (OLMo-Hybrid)."""
    return isinstance(getattr(getattr(model, "cfg", None), "layer_types", None), list) and hasattr(model, "blocks")


def _identity_ratio(pre: Tensor, post: Tensor, slope0: float) -> Tensor:
    """post / pre, with the activation's slope at 0 where pre == 0 (the identity rule's factor)."""
    zero = pre == 0
    return torch.where(zero, torch.full_like(pre, slope0), post / torch.where(zero, torch.ones_like(pre), pre))


def _slope_at_zero(act: Callable[[Tensor], Tensor]) -> float:
    eps = 1e-6
    return float(act(torch.tensor([eps], dtype=torch.float64)) / eps)  # act'(0): 0.5 for SiLU / GELU, 0 for relu²


def _ssm_hooks(model: Any) -> list[Hook]:
    """The rules of a HookedSSM or a HookedHybrid, block by block: each block's mixer (SSM, attention or MLP) and
    MLP / mixture-of-experts sublayer get their rule; every RMSNorm (``*.hook_scale``) is made linear."""
    store: dict[str, Tensor] = {}

    def capture(t: Tensor, hook: Any) -> None:
        store[hook.name] = t

    def silu_rule(src: str, cfg: Any) -> Callable[..., Tensor]:
        def fn(t: Tensor, hook: Any) -> Tensor:  # t = act(conv) x-part, [b, pos, H, P]
            c = store[src][..., : cfg.d_inner]
            c = c.to(_compute_dtype(c))
            mod = (c * torch.sigmoid(c).detach()).unflatten(-1, (cfg.H, cfg.P))
            return _same_value(t, mod)

        return fn

    def gate_rule(y_name: str, z_name: str, norm: Any) -> Callable[..., Tensor]:
        def fn(t: Tensor, hook: Any) -> Tensor:  # t = gated output, [b, pos, d_inner]
            z = store[z_name]
            z = z.to(_compute_dtype(z))
            y = store[y_name].flatten(-2).to(z.dtype)
            g = z * torch.sigmoid(z).detach()
            before = norm is not None and getattr(norm, "before_gate", False)
            if before:  # RMSNorm(y) · SiLU(z) (Falcon-H1): the norm, 1/rms detached, then the gate's rule
                yg = y.unflatten(-1, (norm.n_groups, -1))
                yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + norm.eps).detach()
                y = norm.weight.to(y.dtype) * yg.flatten(-2)
            x = 0.5 * (y * g.detach()) + 0.5 * (y.detach() * g)  # half rule: each factor gets half
            if norm is not None and not before:  # Mamba-2: grouped RMSNorm with 1/rms detached
                xg = x.unflatten(-1, (norm.n_groups, -1))
                xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + norm.eps).detach()
                x = norm.weight.to(x.dtype) * xg.flatten(-2)
            return _same_value(t, x)

        return fn

    def mlp_rule(pre_name: str, linear_name: str | None, act: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
        slope0 = _slope_at_zero(act)

        def fn(post: Tensor, hook: Any) -> Tensor:  # identity rule on act(pre); half rule on act(pre) · pre_linear
            pre = store[pre_name]
            pre = pre.to(_compute_dtype(pre))
            g = pre * _identity_ratio(pre, act(pre), slope0).detach()
            if linear_name is None:
                return _same_value(post, g)
            lin = store[linear_name].to(g.dtype)
            return _same_value(post, 0.5 * (g * lin.detach()) + 0.5 * (g.detach() * lin))

        return fn

    def ffn_hooks(prefix: str, module: Any) -> list[Hook]:  # a (gated) MLP or the experts of a MoE
        gated = hasattr(module, "hook_pre_linear")
        hooks = [(f"{prefix}.hook_pre", capture)] + ([(f"{prefix}.hook_pre_linear", capture)] if gated else [])
        return hooks + [(f"{prefix}.hook_post", mlp_rule(f"{prefix}.hook_pre",
                                                         f"{prefix}.hook_pre_linear" if gated else None, module.act))]

    def delta_v_rule(src: str, cfg: Any) -> Callable[..., Tensor]:
        def fn(t: Tensor, hook: Any) -> Tensor:  # t = SiLU(conv) v-part [b, pos, H_v, d_v]: identity rule
            c = store[src][..., 2 * cfg.key_dim:]
            c = c.to(_compute_dtype(c))
            return _same_value(t, (c * torch.sigmoid(c).detach()).unflatten(-1, (cfg.n_v_heads, cfg.d_v)))

        return fn

    def rglru_gate_rule(y_name: str, z_name: str, act: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
        slope0 = _slope_at_zero(act)

        def fn(t: Tensor, hook: Any) -> Tensor:  # t = y · act(z) [b, pos, d]: identity rule on act, half rule
            z = store[z_name]
            z = z.to(_compute_dtype(z))
            g = z * _identity_ratio(z, act(z), slope0).detach()
            y = store[y_name].to(z.dtype)
            return _same_value(t, 0.5 * (y * g.detach()) + 0.5 * (y.detach() * g))

        return fn

    def mlstm_gate_rule(y_name: str, z_name: str, mixer: Any) -> Callable[..., Tensor]:
        def fn(t: Tensor, hook: Any) -> Tensor:  # t = σ(z) · MultiHeadLayerNorm(y) [b, pos, H·d_v]
            z = store[z_name]
            z = z.to(_compute_dtype(z))
            y = store[y_name].to(z.dtype)  # [b, pos, H, d_v]
            yc = y - y.mean(-1, keepdim=True)  # centring is linear; 1/std detached
            yn = (yc * torch.rsqrt(y.var(-1, keepdim=True, unbiased=False) + mixer.cfg.norm_eps).detach()).flatten(-2)
            norm = mixer.multihead_norm
            yn = yn * norm.weight.to(yn.dtype) + (0 if norm.bias is None else norm.bias.to(yn.dtype))
            return _same_value(t, yn * torch.sigmoid(z).detach())  # the output gate a constant

        return fn

    def soft_cap_rule(t: Tensor, hook: Any) -> Tensor:  # t = cap · tanh(x / cap): the ratio t / x a constant
        x = store["unembed.hook_pre_cap"]
        x = x.to(_compute_dtype(x))
        return _same_value(t, x * _identity_ratio(x, t.to(x.dtype), 1.0).detach())

    def delta_gate_rule(y_name: str, z_name: str, mixer: Any) -> Callable[..., Tensor]:
        def fn(t: Tensor, hook: Any) -> Tensor:  # t = RMSNorm(y) · w · SiLU(z) [b, pos, H_v·d_v]
            z = store[z_name]
            z = z.to(_compute_dtype(z)).unflatten(-1, (mixer.cfg.n_v_heads, -1))
            y = store[y_name].to(z.dtype)
            yn = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + mixer.cfg.gate_norm_eps).detach()
            yn = mixer.o_norm.weight.to(y.dtype) * yn  # the norm, 1/rms detached, then the half rule
            if getattr(mixer.cfg, "gate_activation", "silu") == "sigmoid":  # KDA (hooks/kda.py): σ(z) a constant
                return _same_value(t, (yn * torch.sigmoid(z).detach()).flatten(-2))
            g = z * torch.sigmoid(z).detach()
            return _same_value(t, (0.5 * (yn * g.detach()) + 0.5 * (yn.detach() * g)).flatten(-2))

        return fn

    hooks: list[Hook] = [(n, _detach) for n in model.hook_dict if n.endswith("hook_scale")]  # RMSNorms: linear
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}"
        if hasattr(block, "ssm") and hasattr(block.ssm, "hook_beta"):  # Gated DeltaNet (hooks/deltanet.py), KDA:
            # β, the decay g and the q / k that set the transition are detached (the map A fixed: linear in v);
            # identity rule on v's SiLU; the gated RMSNorm with 1/rms detached and the half rule on the gate
            hooks += [(f"{p}.ssm.hook_{h}", _detach) for h in ("q", "k", "beta", "decay")]
            hooks += [(f"{p}.ssm.hook_conv", capture), (f"{p}.ssm.hook_v", delta_v_rule(f"{p}.ssm.hook_conv",
                                                                                        block.ssm.cfg)),
                      (f"{p}.ssm.hook_y", capture), (f"{p}.ssm.hook_z", capture),
                      (f"{p}.ssm.hook_gated", delta_gate_rule(f"{p}.ssm.hook_y", f"{p}.ssm.hook_z", block.ssm))]
        elif hasattr(block, "ssm") and hasattr(block.ssm, "hook_normalizer"):  # mLSTM (hooks/mlstm.py): q, k, the
            # gates and the normaliser detached (A fixed: h linear in v); the multi-head LayerNorm with 1/std detached
            # and the output gate σ(z) a constant (signal-take-all, as RWKV's receptance)
            hooks += [(f"{p}.ssm.hook_{h}", _detach) for h in ("q", "k", "input_gate", "decay", "normalizer")]
            hooks += [(f"{p}.ssm.hook_y", capture), (f"{p}.ssm.hook_z", capture),
                      (f"{p}.ssm.hook_gated", mlstm_gate_rule(f"{p}.ssm.hook_y", f"{p}.ssm.hook_z", block.ssm))]
        elif hasattr(block, "ssm") and hasattr(block.ssm, "hook_input_gate"):  # RG-LRU (hooks/rglru.py): the
            # input gate and log a (hence √(1 − a²)) detached, so u and the scan are linear in the conv output;
            # identity rule on the GeLU branch and the half rule on y · GeLU(z), as on Mamba's gate
            hooks += [(f"{p}.ssm.hook_{h}", _detach) for h in ("input_gate", "decay")]
            hooks += [(f"{p}.ssm.hook_y", capture), (f"{p}.ssm.hook_z", capture),
                      (f"{p}.ssm.hook_gated", rglru_gate_rule(f"{p}.ssm.hook_y", f"{p}.ssm.hook_z", block.ssm.act))]
        elif hasattr(block, "ssm"):
            cfg = block.ssm.cfg
            hooks += [
                (f"{p}.ssm.hook_dt", _detach),
                (f"{p}.ssm.hook_B", _detach),
                (f"{p}.ssm.hook_C", _detach),
                (f"{p}.ssm.hook_y", capture),
                (f"{p}.ssm.hook_z", capture),
                (f"{p}.ssm.hook_gated", gate_rule(f"{p}.ssm.hook_y", f"{p}.ssm.hook_z",
                                                 getattr(block.ssm, "norm", None))),  # none: y · SiLU(z)
            ]
            if cfg.activation == "silu":
                hooks += [(f"{p}.ssm.hook_conv", capture), (f"{p}.ssm.hook_u", silu_rule(f"{p}.ssm.hook_conv", cfg))]
            elif cfg.activation != "identity":
                raise NotImplementedError(f"lrp_hooks: no rule for conv activation {cfg.activation!r}")
        if hasattr(block, "attn"):
            hooks.append((f"{p}.attn.hook_pattern", _detach))
            if hasattr(block.attn, "hook_gate"):  # gated attention (Qwen3-Next): sigmoid(gate) a constant
                hooks.append((f"{p}.attn.hook_gate", _detach))
        if hasattr(block, "mlp"):
            hooks += ffn_hooks(f"{p}.mlp", block.mlp)
            if hasattr(block.mlp, "hook_gate"):  # a shared expert's sigmoid gate (Qwen3-Next): a constant
                hooks.append((f"{p}.mlp.hook_gate", _detach))
        if hasattr(block, "moe"):
            hooks += [(f"{p}.moe.hook_expert_weights", _detach), *ffn_hooks(f"{p}.moe", block.moe)]
    if "unembed.hook_post_cap" in model.hook_dict:  # logit soft cap (RecurrentGemma): cap·tanh(x/cap) / x a constant
        hooks += [("unembed.hook_pre_cap", capture), ("unembed.hook_post_cap", soft_cap_rule)]
    return hooks


def _is_rwkv(model: Any) -> bool:
    """An RWKV-4 model (:class:`interp.hooks.rwkv.HookedRWKV`)."""
    return getattr(getattr(model, "cfg", None), "family", None) == "rwkv"


def _rwkv_hooks(model: Any) -> list[Hook]:
    """The rules of a HookedRWKV, block by block: ``ssm.hook_k`` detached (the WKV weights α depend on k, w, u
    alone, so the layer is then linear in v, as MambaLRP detaches Δ, B, C); the receptance gates sigmoid(r) · wkv
    (``ssm.hook_gated``) and sigmoid(r) · value (``mlp.hook_gated``) with the gate detached (signal-take-all: the
    sigmoid is not zero-preserving, so no rule conserves relevance routed into r; the half rule with the identity
    rule on the sigmoid, r · (σ(r)/r).detach(), blows up near r = 0: Σ|R| up to 7·10⁴ × the logit and conservation
    errors of 5·10⁻⁴ on tiny random models, against Σ|R| ≈ the logit and < 2·10⁻⁷ detached); relu²
    (``mlp.hook_post``) by the identity rule; every LayerNorm's ``hook_scale`` detached."""
    store: dict[str, Tensor] = {}

    def capture(t: Tensor, hook: Any) -> None:
        store[hook.name] = t

    def gate_rule(r_name: str, y_name: str) -> Callable[..., Tensor]:
        def fn(t: Tensor, hook: Any) -> Tensor:  # t = sigmoid(r) · y: the gate a constant
            r = store[r_name]
            r = r.to(_compute_dtype(r))
            return _same_value(t, store[y_name].to(r.dtype) * torch.sigmoid(r).detach())

        return fn

    def relu2_rule(pre_name: str) -> Callable[..., Tensor]:
        def fn(post: Tensor, hook: Any) -> Tensor:
            pre = store[pre_name]
            pre = pre.to(_compute_dtype(pre))
            return _same_value(post, pre * _identity_ratio(pre, torch.relu(pre).square(), 0.0).detach())

        return fn

    hooks: list[Hook] = [(n, _detach) for n in model.hook_dict if n.endswith("hook_scale")]  # LayerNorms: linear
    for i in range(len(model.blocks)):
        p = f"blocks.{i}"
        hooks += [
            (f"{p}.ssm.hook_k", _detach),
            (f"{p}.ssm.hook_r", capture), (f"{p}.ssm.hook_y", capture),
            (f"{p}.ssm.hook_gated", gate_rule(f"{p}.ssm.hook_r", f"{p}.ssm.hook_y")),
            (f"{p}.mlp.hook_pre", capture), (f"{p}.mlp.hook_post", relu2_rule(f"{p}.mlp.hook_pre")),
            (f"{p}.mlp.hook_value", capture), (f"{p}.mlp.hook_r", capture),
            (f"{p}.mlp.hook_gated", gate_rule(f"{p}.mlp.hook_r", f"{p}.mlp.hook_value")),
        ]
    return hooks


def _transformer_hooks(model: Any) -> list[Hook]:
    cfg = model.cfg
    if getattr(cfg, "gated_mlp", False) or getattr(cfg, "num_experts", None):
        raise NotImplementedError("lrp_hooks: gated / mixture-of-experts MLPs have no rule here (plain MLPs only)")
    if cfg.is_layer_norm_activation():
        raise NotImplementedError(f"lrp_hooks: no rule for the layer-norm activation {cfg.act_fn!r}")
    store: dict[str, Tensor] = {}

    def capture(t: Tensor, hook: Any) -> None:
        store[hook.name] = t

    def act_rule(src: str, slope0: float) -> Callable[..., Tensor]:
        def fn(post: Tensor, hook: Any) -> Tensor:  # identity rule: pre · (post/pre).detach()
            pre = store[src]
            return _same_value(post, pre * _identity_ratio(pre, post, slope0).detach())

        return fn

    names = model.hook_dict
    hooks: list[Hook] = [(n, _detach) for n in names if n.endswith("hook_scale")]
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}"
        hooks.append((f"{p}.attn.hook_pattern", _detach))
        if f"{p}.mlp.hook_post" in names:
            slope0 = _slope_at_zero(block.mlp.act_fn)
            hooks += [(f"{p}.mlp.hook_pre", capture), (f"{p}.mlp.hook_post", act_rule(f"{p}.mlp.hook_pre", slope0))]
    return hooks


# --------------------------------------------------------------------------------------------
# biases
# --------------------------------------------------------------------------------------------
def _bias_names(model: Any) -> list[str]:
    names = []
    for name, _ in model.named_parameters():
        last = name.rsplit(".", 1)[-1]
        if is_ssm(model) or _is_hybrid(model) or _is_rwkv(model):  # HookedSSM / HookedHybrid / HookedRWKV: every ``.bias`` but Mamba-1's dt bias (inside the detached Δ)
            if last == "bias" and not name.endswith("dt_proj.bias"):
                names.append(name)
        elif last == "b" or last.startswith(("b_", "_b_")):
            names.append(name)
    return names


@contextlib.contextmanager
def zero_biases(model: HookedModel) -> Iterator[list[str]]:
    """Zero the model's biases for a conservation check; restore them on exit.

    SSM / hybrid: every ``*.bias`` (``conv1d``, ``in_proj``, ``out_proj``; attention and MLP projections) but the
    dt biases, which are inside the detached Δ and stay. Transformer: every ``b_*`` parameter (``b_Q, b_K, b_V, b_O, b_in, b_out, b_U``)
    and LayerNorm ``b``; positional embeddings are inputs, not biases, and stay. Yields the
    names of the zeroed parameters.
    """
    names = _bias_names(model)
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in names}
    try:
        with torch.no_grad():
            for n in names:
                params[n].zero_()
        yield names
    finally:
        with torch.no_grad():
            for n in names:
                params[n].copy_(saved[n])


# --------------------------------------------------------------------------------------------
# gradients at the embeddings
# --------------------------------------------------------------------------------------------
def _embedding_grads(
    model: Any,
    tokens: Tensor,
    positions: Tensor,
    targets: Tensor | None,
    hooks: list[Hook],
    embed_values: Tensor | None = None,
) -> dict[str, Tensor | None]:
    """One forward + backward over a batch.

    tokens [n, L]; positions [n]; targets [n] or None (argmax at each row's position);
    embed_values [n, L, d_model] replaces the token embeddings (integrated gradients) or None.
    Returns logits [n] (the explained logits), targets [n], embed / grad_embed [n, L, d_model],
    pos / grad_pos [n, L, d_model] (None without ``hook_pos_embed``). Row r of the gradients
    belongs to row r's logit only (rows are independent).
    """
    leaves: dict[str, Tensor] = {}

    def leaf(name: str, value: Tensor | None = None) -> Callable[..., Tensor]:
        def fn(t: Tensor, hook: Any) -> Tensor:
            v = (t if value is None else value.to(t.dtype)).detach().clone().requires_grad_(True)
            leaves[name] = v
            return v

        return fn

    extra = [("hook_embed", leaf("embed", embed_values))]
    if "hook_pos_embed" in model.hook_dict:
        extra.append(("hook_pos_embed", leaf("pos")))
    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=extra + list(hooks))
        rows = torch.arange(tokens.shape[0], device=logits.device)
        at = logits[rows, positions.to(logits.device)]  # [n, vocab]
        if targets is None:
            targets = at.detach().argmax(-1)
        chosen = at[rows, targets.to(logits.device)]  # [n]
        wrt = [leaves["embed"]] + ([leaves["pos"]] if "pos" in leaves else [])
        grads = torch.autograd.grad(chosen.sum(), wrt, allow_unused=True)
    grad_pos = grads[1] if len(grads) > 1 else None
    if "pos" in leaves and grad_pos is None:
        grad_pos = torch.zeros_like(leaves["pos"])
    grad_embed = grads[0] if grads[0] is not None else torch.zeros_like(leaves["embed"])
    return {
        "logits": chosen.detach(), "targets": targets,
        "embed": leaves["embed"].detach(), "grad_embed": grad_embed,
        "pos": leaves["pos"].detach() if "pos" in leaves else None, "grad_pos": grad_pos,
    }


def _resolve_position(position: int, L: int) -> int:
    p = position + L if position < 0 else position
    if not 0 <= p < L:
        raise IndexError(f"position {position} is outside a sequence of {L} tokens")
    return p


def _gxi_batch(model: Any, tokens: Tensor, positions: Sequence[int], targets: Sequence[int] | None,
               method: str) -> tuple[dict[str, Tensor | None], Tensor, Tensor | None]:
    """LRP / gradient × input for several (position, target) rows of one sequence [1, L].
    Returns (raw, relevance_embed [n, L, d], relevance_pos [n, L, d] | None)."""
    n = len(positions)
    hooks = lrp_hooks(model) if method == "lrp" else []
    raw = _embedding_grads(
        model, tokens.expand(n, -1), torch.as_tensor(list(positions)),
        None if targets is None else torch.as_tensor(list(targets)), hooks,
    )
    r_embed = raw["grad_embed"] * raw["embed"]
    r_pos = None if raw["pos"] is None else raw["grad_pos"] * raw["pos"]
    return raw, r_embed, r_pos


def _one_sequence(model: Any, tokens: Any, fn: str) -> Tensor:
    """``tokens`` as [1, L] (:func:`as_tokens`); ValueError naming ``tokens`` and its shape for a batch."""
    t = as_tokens(model, tokens)
    if t.shape[0] != 1:
        raise ValueError(f"{fn}() explains one sequence, tokens [L] or [1, L]; got tokens of shape "
                         f"{tuple(t.shape)}: loop over the rows")
    return t


def explain(
    model: HookedModel,
    tokens: Tensor | str | Sequence[int],
    *,
    target: int | None = None,
    position: int = -1,
    method: str = "lrp",
    steps: int = 32,
    baseline: str | int | Tensor = "zero",
    batch_size: int = 32,
) -> Attribution:
    """Attribute one logit to the input tokens.

    Args:
        model: a ``HookedSSM`` or ``HookedTransformerModel``.
        tokens: one sequence: token ids [pos] or [1, pos], or a text (a batch raises ValueError: loop over it).
        target: vocabulary id whose logit is explained (default: the argmax at ``position``).
        position: the position whose logit is explained (negative counts from the end).
        method: "lrp" (gradient × input on the modified forward of :func:`lrp_hooks`),
            "grad_x_input" (plain forward) or "integrated_gradients" (plain forward, straight line
            from ``baseline`` to the token embeddings, ``steps`` Riemann midpoints).
        steps: integrated-gradients steps.
        baseline: integrated gradients: "zero" (zero token embedding), a token id (its embedding
            at every position, e.g. a pad token) or a tensor [pos, d_model]. Positional embeddings
            (GPT-2) are not part of the path. Note: from the zero embedding, RMSNorm / LayerNorm
            models without positional embeddings (Mamba, NeoX) have a near-jump of the logit at
            the start of the path (normalisation is scale invariant; the jump sits at scales
            ~1e-3 and below), which Riemann sums resolve slowly. Tiny random models: Mamba
            completeness errors of 10-70 % even at 128 steps, NeoX 35 % at 32 / 0.1 % at 128,
            against ~1e-4 at 32 steps from a token baseline (GPT-2 from zero: ~7e-5 at 32).
        batch_size: path points per forward for integrated gradients.

    Returns:
        :class:`Attribution` with ``relevance`` [pos] and ``relevance_embed`` [pos, d_model].
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    tokens = _one_sequence(model, tokens, "explain")
    L = tokens.shape[1]
    p = _resolve_position(position, L)
    if method in ("lrp", "grad_x_input"):
        raw, r_embed, r_pos = _gxi_batch(model, tokens, [p], None if target is None else [target], method)
        rel = r_embed[0].sum(-1) + (0 if r_pos is None else r_pos[0].sum(-1))
        return Attribution(
            relevance=rel, relevance_embed=r_embed[0], target=int(raw["targets"][0]), position=p,
            logit=float(raw["logits"][0]), method=method, relevance_pos_embed=None if r_pos is None else r_pos[0],
        )
    return _integrated_gradients(model, tokens, p, target, steps, baseline, batch_size)


def _integrated_gradients(model: Any, tokens: Tensor, p: int, target: int | None, steps: int,
                          baseline: str | int | Tensor, batch_size: int) -> Attribution:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    pos_t = torch.tensor([p])
    # the actual input: its embeddings, logit and (default) target
    raw = _embedding_grads(model, tokens, pos_t, None if target is None else torch.tensor([target]), [])
    x = raw["embed"][0]  # [L, d]
    target_t = raw["targets"].reshape(1)
    if isinstance(baseline, str):
        if baseline != "zero":
            raise ValueError(f"unknown baseline {baseline!r}: 'zero', a token id or a tensor [pos, d_model]")
        x0 = torch.zeros_like(x)
    elif isinstance(baseline, int):  # that token's embedding at every position
        x0 = model.W_E[baseline].detach().to(x.dtype).expand_as(x)
    else:
        x0 = torch.as_tensor(baseline).to(device=x.device, dtype=x.dtype).reshape(x.shape)
    base = _embedding_grads(model, tokens, pos_t, target_t, [], embed_values=x0[None])
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    total = torch.zeros_like(x, dtype=torch.float64)
    for start in range(0, steps, batch_size):
        a = alphas[start:start + batch_size].to(x.device)
        n = len(a)
        path = x0[None].double() + a[:, None, None] * (x - x0)[None].double()  # [n, L, d]
        g = _embedding_grads(model, tokens.expand(n, -1), pos_t.expand(n), target_t.expand(n), [],
                             embed_values=path.to(x.dtype))["grad_embed"]
        total += g.double().sum(0)
    r_embed = ((x - x0).double() * total / steps).to(x.dtype)
    return Attribution(
        relevance=r_embed.sum(-1), relevance_embed=r_embed, target=int(target_t[0]), position=p,
        logit=float(raw["logits"][0]), method="integrated_gradients", baseline_logit=float(base["logits"][0]),
    )


def interaction_rows(
    model: HookedModel,
    tokens: Tensor | str | Sequence[int],
    *,
    positions: PositionsLike = None,
    method: str = "lrp",
    batch_size: int = 64,
) -> Tensor:
    """LRP token × token interaction map: row r explains the argmax logit at query ``positions[r]``.

    Batched forward + backward (a copy of the sequence per row). ``tokens``: one sequence ([pos] or [1, pos]; a
    batch raises ValueError). ``method`` may also be "grad_x_input". Returns [len(positions), pos]
    (per-position relevance, as ``Attribution.relevance``); entries right of each query position are 0.
    ``positions``: a :data:`~interp.hooks.positions.PositionsLike`, bounds-checked (IndexError outside the
    sequence); None (or "all") gives every position (the full [pos, pos] map). Rows go ``batch_size`` at a time.
    """
    if method not in ("lrp", "grad_x_input"):
        raise ValueError(f"interaction_rows supports 'lrp' and 'grad_x_input', got {method!r}")
    tokens = _one_sequence(model, tokens, "interaction_rows")
    L = tokens.shape[1]
    if isinstance(positions, (list, tuple)) and not positions:
        return torch.zeros(0, L, device=tokens.device)
    ps = Positions.parse(positions).indices(L, name="positions")
    out = []
    for start in range(0, len(ps), batch_size):
        _, r_embed, r_pos = _gxi_batch(model, tokens, ps[start:start + batch_size], None, method)
        rel = r_embed.sum(-1)
        out.append(rel if r_pos is None else rel + r_pos.sum(-1))
    return torch.cat(out).detach()
