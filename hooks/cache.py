"""TransformerLens's ``ActivationCache`` with the SSM meaning of its helpers: :class:`InterpActivationCache`.

``run_with_cache`` of every model returns one. On a transformer it *is* TransformerLens's cache (nothing is
overridden). On an SSM (:class:`~interp.hooks.mamba.HookedSSM`) a block is ``resid_post = resid_pre + mixer(
RMSNorm(resid_pre))``: there is no attention / MLP split, so the helpers read the mixer where TransformerLens reads
the attention and MLP layers:

=================================  ===============================================================================
``cache["dt", 3]``, ``"dt3"``       shorthand for the mixer's hooks: ``blocks.3.ssm.hook_dt`` (in, x, z, conv, u,
                                    dt, B, C, state, y, gated, out); ``("scale", 3)`` -> ``blocks.3.ln1.hook_scale``
``decompose_resid``                 embedding + each block's mixer output (``blocks.{l}.hook_mixer_out``); labels
                                    ``embed``, ``{l}_mixer_out``. Sums to the residual stream at ``layer``.
``stack_head_results``              each block's mixer output split over its components (below), labels
                                    ``L{l}H{h}`` (Mamba-2 heads) / ``L{l}G{g}`` (Mamba-1 channel groups)
``get_full_resid_decomposition``    the components of every block, then ``embed``, then ``bias`` (the
                                    out-projection biases, zeros without them). ``expand_neurons``: an SSM has no
                                    MLP neurons; the out-projection's input channels (``ssm.hook_gated``, d_inner
                                    per block) play their part: True (the default, as TransformerLens) gives one row
                                    per channel (``L{l}C{c}``), False one row per head / channel group.
``apply_ln_to_stack``,              the final RMSNorm (or block ``layer``'s ``ln1``) from its cached ``hook_scale``:
``accumulated_resid(apply_ln=)``,   ``x / rms`` as TransformerLens's RMS models (the norm's weight is not applied:
``logit_attrs``                     ``model.tokens_to_residual_directions`` folds it into the token directions, so
                                    Σ logit_attrs + b_U = the logit, exactly)
=================================  ===============================================================================

A mixer component: the out-projection maps the gated channels ``g`` [.., d_inner] to ``W_out g``; component k's
contribution is ``W_out[:, s_k:e_k] g[.., s_k:e_k]`` over its channel range (:meth:`SSMConfig.out_groups`: Mamba-2 one
head of ``head_dim`` channels; Mamba-1 groups of 16 channels, ``group_size=`` to change). The components of a block
sum to its mixer output minus the out-projection bias.

Transformer-only activations (``resid_mid``, ``attn_out``, ``mlp_out``, ``attn.*``, ``mlp.*``, ``ln2``) and the
arguments that select them (``mlp_input=True``, ``mode="attn"|"mlp"``) raise :class:`NoSSMCounterpartError`, a
``NotImplementedError`` (and a ``KeyError``, for code that probes a cache) saying what the SSM has instead.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.utilities import Slice, get_act_name

from .config import is_ssm
from .hook_points import suggest
from .hybrid_config import RECURRENT_MIXER_KINDS

__all__ = ["InterpActivationCache", "NoSSMCounterpartError", "MIXER_HOOKS"]

# the mixer's hooks, reachable as cache[name, layer] -> blocks.{layer}.ssm.hook_{name}
MIXER_HOOKS = ("in", "x", "z", "conv", "u", "dt", "B", "C", "state", "y", "gated", "out")

_TRANSFORMER_ONLY = re.compile(
    r"(\.(attn|mlp|ln2)\.|hook_(resid_mid|attn_out|mlp_out|pos_embed|attn_in|mlp_in|q_input|k_input|v_input)$)"
)
_SHORTHAND = re.compile(r"([A-Za-z]+)(\d+)([a-z]?.*)")

_SSM_BLOCK = ("an SSM block is resid_post = resid_pre + mixer(ln1(resid_pre)): it has no attention / MLP split, "
              "no resid_mid and no ln2")


class NoSSMCounterpartError(NotImplementedError, KeyError):
    """A TransformerLens activation or option that an SSM has no counterpart of (attention, MLP, resid_mid, ln2)."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class InterpActivationCache(ActivationCache):
    """TransformerLens's ``ActivationCache``; on an SSM its helpers take the SSM meaning (module docstring)."""

    @property
    def is_ssm(self) -> bool:
        """A recurrent model: a Mamba SSM, or any :class:`~interp.hooks.mamba.HookedSSM` (the hybrids, also those
        without Mamba layers, and RWKV), whose blocks add their mixer's (and MLP's) output to the stream."""
        from .mamba import HookedSSM  # here: hooks.mamba imports hooks.api, which imports this module

        return is_ssm(self.model) or isinstance(self.model, HookedSSM)

    # --- lookup ---------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Tensor:
        if not self.is_ssm:
            return super().__getitem__(key)
        if isinstance(key, str) and key in self.cache_dict:
            return self.cache_dict[key]
        name = self._ssm_name(key)
        if name in self.cache_dict:
            return self.cache_dict[name]
        if name.endswith("_grad") and name[: -len("_grad")] in self.model.hook_dict:
            raise KeyError(f"{name!r}: no gradients in this cache; run_with_cache(..., incl_bwd=True) caches them")
        if name in self.model.hook_dict:
            raise KeyError(f"{name!r} is a hook of this model but not in this cache: run_with_cache's names_filter / "
                           "stop_at_layer left it out")
        if _TRANSFORMER_ONLY.search(name):
            raise NoSSMCounterpartError(
                f"{name!r} has no counterpart in an SSM: {_SSM_BLOCK}. Use blocks.{{l}}.hook_resid_pre / "
                "hook_mixer_out / hook_resid_post, blocks.{l}.ssm.hook_* (the mixer's internals) and ln1")
        close = suggest(name, self.cache_dict)
        raise KeyError(f"{name!r} is not in this cache" + (f"; closest: {close}" if close else ""))

    def _ssm_name(self, key: Any) -> str:
        """A key or TransformerLens shorthand -> a hook name, with the mixer's hooks under ``blocks.{l}.ssm``."""
        if isinstance(key, str):
            if "." in key or key.startswith("hook_"):
                return key
            m = _SHORTHAND.fullmatch(key)
            name, layer, kind = (m.group(1), int(m.group(2)), m.group(3) or None) if m else (key, None, None)
        else:
            key = tuple(key)
            name, layer, kind = (list(key) + [None, None])[:3]
            if layer is not None and layer < 0:
                layer = self.model.cfg.n_layers + layer
        if layer is not None and kind in (None, "", "ssm"):
            if name in MIXER_HOOKS:
                return f"blocks.{layer}.ssm.hook_{name}"
            if name in ("scale", "normalized"):
                return f"blocks.{layer}.ln1.hook_{name}"
        return get_act_name(name, layer, kind)

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> "InterpActivationCache":
        out = super().apply_slice_to_batch_dim(batch_slice)
        return InterpActivationCache(out.cache_dict, self.model, has_batch_dim=out.has_batch_dim)

    # --- norms ----------------------------------------------------------------------------
    def apply_ln_to_stack(self, residual_stack: Tensor, layer: int | None = None, mlp_input: bool = False,
                          pos_slice: Any = None, batch_slice: Any = None, has_batch_dim: bool = True,
                          recompute_ln: bool = False) -> Tensor:
        """TransformerLens's ``apply_ln_to_stack``; on an SSM the norm is the RMSNorm before block ``layer``
        (``ln1``) or, for ``layer`` = n_layers / None / -1, the final one, divided out with its cached
        ``hook_scale``; ``mlp_input=True`` raises :class:`NoSSMCounterpartError` (no ln2)."""
        if self.is_ssm and mlp_input:
            raise NoSSMCounterpartError(f"apply_ln_to_stack(mlp_input=True): {_SSM_BLOCK}")
        return super().apply_ln_to_stack(residual_stack, layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                         batch_slice=batch_slice, has_batch_dim=has_batch_dim,
                                         recompute_ln=recompute_ln)

    # --- decompositions -------------------------------------------------------------------
    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice: Any = None, incl_embeds: bool = True,
                        return_labels: bool = False) -> Any:
        """TransformerLens's ``decompose_resid``. On an SSM: ``[embed, 0_mixer_out, ..., {layer-1}_mixer_out]``
        [n, *batch_and_pos, d_model], which sums to ``blocks.{layer}.hook_resid_pre`` (layer = n_layers / None /
        -1: the final residual stream, ``blocks.{n_layers-1}.hook_resid_post``); on a hybrid / RWKV each block's
        sublayer outputs (``{l}_attn_out``, ``{l}_mlp_out``, ...), on RWKV with ``rescale_every`` each halved as
        often as the stream is after it. ``mode`` "attn" / "mlp" and ``mlp_input=True`` raise
        :class:`NoSSMCounterpartError`."""
        if not self.is_ssm:
            return super().decompose_resid(layer, mlp_input=mlp_input, mode=mode, apply_ln=apply_ln,
                                           pos_slice=pos_slice, incl_embeds=incl_embeds, return_labels=return_labels)
        if mode != "all" or mlp_input:
            raise NoSSMCounterpartError(
                f"decompose_resid(mode={mode!r}, mlp_input={mlp_input}): {_SSM_BLOCK}; mode='all' gives the "
                "embedding and each block's mixer output")
        layer = self._layer(layer)
        ps = _slice(pos_slice)
        parts: list[Tensor] = []
        labels: list[str] = []
        if incl_embeds and self.has_embed:
            parts.append(self["hook_embed"] * self._carried(0, layer))
            labels.append("embed")
        for l in range(layer):
            for name in self._summands(l):
                parts.append(self[f"blocks.{l}.hook_{name}"] * self._carried(l, layer))
                labels.append(f"{l}_{name}")
        if not parts:
            raise ValueError(f"decompose_resid(layer={layer}, incl_embeds={incl_embeds}): nothing to stack")
        stack = torch.stack([ps.apply(p, dim=-2) for p in parts], dim=0)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=ps)
        return (stack, labels) if return_labels else stack

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice: Any = None, apply_ln: bool = False, *, group_size: int | None = None) -> Any:
        """TransformerLens's ``stack_head_results``. On an SSM: the mixer components (Mamba-2 heads ``L{l}H{h}``,
        Mamba-1 channel groups ``L{l}G{g}``) of blocks ``0..layer-1`` [n, *batch_and_pos, d_model];
        ``incl_remainder`` appends the residual stream at ``layer`` minus their sum (``remainder``)."""
        if not self.is_ssm:
            return super().stack_head_results(layer, return_labels=return_labels, incl_remainder=incl_remainder,
                                              pos_slice=pos_slice, apply_ln=apply_ln)
        layer = self._layer(layer)
        ps = _slice(pos_slice)
        stack, labels = self._components(layer, ps, per_channel=False, group_size=group_size, project=None)
        if incl_remainder:
            stack = torch.cat([stack, (self._resid(layer, ps) - stack.sum(0))[None]], dim=0)
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=ps)
        return (stack, labels) if return_labels else stack

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False, pos_slice: Any = None,
                                     return_labels: bool = False, project_output_onto: Tensor | None = None,
                                     *, group_size: int | None = None) -> Any:
        """TransformerLens's ``get_full_resid_decomposition``. On an SSM: the residual stream at ``layer`` as
        [mixer components of blocks 0..layer-1, ``embed``, ``bias``] [n, *batch_and_pos, d_model]; the rows sum to
        it exactly (up to float rounding).

        ``expand_neurons``: an SSM has no MLP neurons; the out-projection's input channels stand in for them.
        True (default) gives one row per channel of ``ssm.hook_gated`` (``L{l}C{c}``, d_inner per block),
        False one row per component (Mamba-2 head ``L{l}H{h}``, Mamba-1 group of ``group_size`` channels
        ``L{l}G{g}``). ``bias`` is the sum of the blocks' out-projection biases (zeros without them).
        ``project_output_onto`` ([d_model] or [d_model, k]) is folded into the out-projection first, so the
        [d_inner, ..., d_model] stack is never built. ``mlp_input=True`` raises :class:`NoSSMCounterpartError`."""
        if not self.is_ssm:
            return super().get_full_resid_decomposition(
                layer, mlp_input=mlp_input, expand_neurons=expand_neurons, apply_ln=apply_ln, pos_slice=pos_slice,
                return_labels=return_labels, project_output_onto=project_output_onto)
        if mlp_input:
            raise NoSSMCounterpartError(f"get_full_resid_decomposition(mlp_input=True): {_SSM_BLOCK}")
        layer = self._layer(layer)
        ps = _slice(pos_slice)
        project, squeeze = project_output_onto, False
        if project is not None and project.dim() == 1:
            project, squeeze = project[:, None], True
        stack, labels = self._components(layer, ps, per_channel=expand_neurons, group_size=group_size,
                                         project=project)
        embed = ps.apply(self["hook_embed"], dim=-2).to(stack.dtype)
        bias = torch.zeros(self.model.cfg.d_model, dtype=stack.dtype, device=embed.device)
        for block in self.model.blocks[:layer]:
            if block.ssm.out_proj.bias is not None:
                bias = bias + block.ssm.out_proj.bias.detach().to(bias.device, bias.dtype)
        if project is not None:
            embed = embed @ project.to(embed.device, embed.dtype)
            bias = bias @ project.to(bias.device, bias.dtype)
        stack = torch.cat([stack, embed[None], bias.expand(embed.shape)[None]], dim=0)
        labels += ["embed", "bias"]
        if apply_ln:  # RMS: no centring, so dividing by the scale commutes with the projection
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=ps)
        if squeeze:
            stack = stack.squeeze(-1)
        return (stack, labels) if return_labels else stack

    def compute_head_results(self) -> None:
        if self.is_ssm:
            raise NoSSMCounterpartError(f"compute_head_results: {_SSM_BLOCK}; stack_head_results gives the mixer's "
                                        "heads / channel groups")
        return super().compute_head_results()

    def stack_neuron_results(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_ssm:
            raise NoSSMCounterpartError(f"stack_neuron_results: {_SSM_BLOCK}; get_full_resid_decomposition("
                                        "expand_neurons=True) gives one row per out-projection channel")
        return super().stack_neuron_results(*args, **kwargs)

    def get_neuron_results(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_ssm:
            raise NoSSMCounterpartError(f"get_neuron_results: {_SSM_BLOCK}")
        return super().get_neuron_results(*args, **kwargs)

    # --- helpers --------------------------------------------------------------------------
    def _layer(self, layer: int | None) -> int:
        n = self.model.cfg.n_layers
        layer = n if layer is None or layer == -1 else layer
        if not 0 <= layer <= n:
            raise ValueError(f"layer must be in [0, {n}] (or None / -1 for the final residual stream), got {layer}")
        return layer

    def _resid(self, layer: int, ps: Slice) -> Tensor:
        n = self.model.cfg.n_layers
        name = f"blocks.{n - 1}.hook_resid_post" if layer == n else f"blocks.{layer}.hook_resid_pre"
        return ps.apply(self[name], dim=-2)

    def _carried(self, l: int, layer: int) -> float:
        """The factor a summand added in block ``l`` (or the embedding, l = 0) carries into the residual stream
        before block ``layer``: 1, but on RWKV with ``rescale_every`` 1/2 per block in l..layer-1 that halves the
        stream after it (:meth:`~interp.hooks.rwkv.RWKVConfig.halves_after`)."""
        halves = getattr(self.model.cfg, "halves_after", None)
        return 0.5 ** sum(bool(halves(j)) for j in range(l, layer)) if callable(halves) else 1.0

    def _summands(self, l: int) -> tuple[str, ...]:
        """What block ``l`` adds to the residual stream, as ``hook_{name}`` names: ``mixer_out`` on an SSM; on a
        hybrid by ``cfg.layer_types[l]`` (a shared-attention layer adds its SSM mixer's output only, the shared
        block feeding the mixer's input), and ``mlp_out`` where the block has an MLP sublayer (``hook_resid_mid``)."""
        types = getattr(self.model.cfg, "layer_types", None)
        names = _SUMMANDS[types[l]] if isinstance(types, list) else ("mixer_out",)  # RWKV: mixer, then its MLP
        return names + ("mlp_out",) if f"blocks.{l}.hook_resid_mid" in self.model.hook_dict else names

    def _components(self, layer: int, ps: Slice, per_channel: bool, group_size: int | None,
                    project: Tensor | None) -> tuple[Tensor, list[str]]:
        """Mixer components of blocks 0..layer-1: [n, *batch_and_pos, d_model | k] and their labels."""
        cfg = self.model.cfg
        if isinstance(getattr(cfg, "layer_types", None), list):
            raise NotImplementedError(
                "a per-head / per-channel decomposition of a hybrid model (cfg.layer_types) is not available: its "
                "attention, MLP and MoE sublayers have no components here yet; decompose_resid() splits the "
                "residual stream per sublayer output (direct_logit_attribution(per_head=False))")
        if not is_ssm(self.model):  # RWKV: its time mix is channel-wise, no heads to split it into
            raise NotImplementedError(
                f"a per-head / per-channel decomposition of {type(self.model).__name__} is not available: "
                "decompose_resid() splits the residual stream per sublayer output "
                "(direct_logit_attribution(per_head=False))")
        embed = ps.apply(self["hook_embed"], dim=-2)
        dtype = torch.promote_types(embed.dtype, torch.float32)
        rows: list[Tensor] = []
        labels: list[str] = []
        tag = "H" if cfg.family == "mamba2" and group_size is None else "G"
        for l in range(layer):
            g = ps.apply(self[f"blocks.{l}.ssm.hook_gated"], dim=-2).to(dtype)  # [..., d_inner]
            w = self.model.blocks[l].ssm.out_proj.weight.detach().T.to(g.device, dtype)  # [d_inner, d_model]
            if project is not None:
                w = w @ project.to(g.device, dtype)  # [d_inner, k]
            if per_channel:
                rows.append(torch.einsum("...c,cd->c...d", g, w))
                labels += [f"L{l}C{c}" for c in range(g.shape[-1])]
            else:
                groups = cfg.out_groups(group_size)
                rows.append(torch.stack([g[..., s:e] @ w[s:e] for s, e in groups], dim=0))
                labels += [f"L{l}{tag}{k}" for k in range(len(groups))]
        if not rows:
            k = cfg.d_model if project is None else project.shape[-1]
            return embed.new_zeros((0, *embed.shape[:-1], k), dtype=dtype), labels
        return torch.cat(rows, dim=0), labels


#: a hybrid layer kind (``cfg.layer_types``) -> the hook_{name} outputs its mixer step adds to the residual stream
_SUMMANDS = {"ssm": ("mixer_out",), "attention": ("attn_out",), "mlp": ("mlp_out",),
             "parallel": ("mixer_out", "attn_out"), "shared_attention": ("mixer_out",),
             **{kind: ("mixer_out",) for kind in RECURRENT_MIXER_KINDS if kind != "parallel"}}


def _slice(pos_slice: Any) -> Slice:
    return pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
