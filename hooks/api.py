"""The user-facing hook API shared by every model: checked hook names, a memory-guarded
``run_with_cache``, and ``generate``. Mixed into :class:`~interp.hooks.mamba.HookedSSM` and the
TransformerLens adapter, in front of TransformerLens's ``HookedRootModule`` methods.

Subclasses provide ``hook_shapes(batch, seq_len, **forward_kwargs) -> {name: shape}`` (for the
memory estimate) and the two decoding primitives used by :mod:`~interp.hooks.generation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from .cache import InterpActivationCache
from .hook_points import check_hook_names, layer_of
from .positions import check_indices

DEFAULT_CACHE_BUDGET_BYTES = 4 * 2**30

NamesFilter = None | str | Iterable[str] | Callable[[str], bool]


class CacheTooLargeError(MemoryError):
    """run_with_cache was asked for more activation memory than its budget allows."""


class HookNotFiredError(RuntimeError):
    """A hook was requested by name but the forward never reached it."""


def as_filter(names_filter: NamesFilter) -> Callable[[str], bool]:
    """None / str / list of str / predicate -> predicate."""
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if callable(names_filter):
        return names_filter
    names = set(names_filter)
    return lambda name: name in names


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class InterpModelMixin:
    """Mixin for a TransformerLens ``HookedRootModule`` subclass (put it first in the bases)."""

    hook_dict: dict

    # --- hooks -----------------------------------------------------------------------------
    def _checked(self, fwd_hooks: list) -> tuple[list, dict[str, list[int]]]:
        """Validate names; wrap string-named hooks so we can tell whether they fired."""
        check_hook_names([n for n, _ in fwd_hooks], self.hook_dict)
        fired: dict[str, list[int]] = {}
        wrapped = []
        for name, fn in fwd_hooks:
            if isinstance(name, str):
                counter = fired.setdefault(name, [0])

                def counting(tensor, hook, _fn=fn, _c=counter):
                    _c[0] += 1
                    out = _fn(tensor, hook=hook)
                    if isinstance(out, Tensor) and isinstance(tensor, Tensor) and tensor.is_floating_point() \
                            and not (out.is_floating_point() or out.is_complex()):
                        raise TypeError(f"the hook at {hook.name} returned a {out.dtype} tensor for a {tensor.dtype} "
                                        "activation: return a float tensor (or None to keep the activation)")
                    return out

                wrapped.append((name, counting))
            else:
                wrapped.append((name, fn))
        return wrapped, fired

    def _raise_unfired(self, fired: dict[str, list[int]], kwargs: dict) -> None:
        missing = [n for n, c in fired.items() if c[0] == 0]
        if missing:
            hint = ""
            if kwargs.get("stop_at_layer") is not None:
                hint = f" (stop_at_layer={kwargs['stop_at_layer']} stops before it?)"
            elif any(n.endswith("hook_state") for n in missing):
                hint = " (are the state_positions inside the sequence?)"
            raise HookNotFiredError(f"requested hooks did not fire: {missing}{hint}")

    def run_with_hooks(self, *model_args: Any, fwd_hooks: list = [], bwd_hooks: list = [], **kwargs: Any):
        """TransformerLens ``run_with_hooks`` with unknown names rejected (closest names suggested)
        and an error if a hook named by string never fired."""
        check_hook_names([n for n, _ in bwd_hooks], self.hook_dict)
        fwd, fired = self._checked(list(fwd_hooks))
        out = super().run_with_hooks(*model_args, fwd_hooks=fwd, bwd_hooks=bwd_hooks, **kwargs)  # type: ignore[misc]
        self._raise_unfired(fired, kwargs)
        return out

    def _set_hook_positions(self, positions: Tensor) -> None:
        """Expose the absolute positions of this forward to attached hooks as hook.ctx['positions']."""
        for hp in self.hook_dict.values():
            if hp._forward_hooks:
                hp.ctx["positions"] = positions

    # --- caching ---------------------------------------------------------------------------
    def hook_shapes(self, batch: int, seq_len: int, **forward_kwargs: Any) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def estimate_cache_bytes(
        self, batch: int, seq_len: int, names_filter: NamesFilter = None, dtype_bytes: int | None = None,
        **forward_kwargs: Any,
    ) -> int:
        """Bytes that caching the hooks selected by ``names_filter`` for a [batch, seq_len] input takes."""
        keep = as_filter(names_filter)
        if dtype_bytes is None:
            dtype_bytes = next(iter(self.parameters())).element_size()  # type: ignore[attr-defined]
        shapes = self.hook_shapes(batch, seq_len, **forward_kwargs)
        return sum(math.prod(s) for n, s in shapes.items() if keep(n)) * max(dtype_bytes, 4)

    def _input_shape(self, model_args: tuple, kwargs: dict) -> tuple[int, int]:
        x = model_args[0] if model_args else kwargs.get("input", kwargs.get("tokens"))
        if isinstance(x, Tensor):
            return (1, x.shape[-1]) if x.dim() == 1 else (x.shape[0], x.shape[1])
        tokens = self.to_tokens(x)  # type: ignore[attr-defined]
        return tokens.shape[0], tokens.shape[1]

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        pos_slice: slice | int | list[int] | None = None,
        max_cache_bytes: int | None = DEFAULT_CACHE_BUDGET_BYTES,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, InterpActivationCache]:
        """Run the model and cache activations. Returns ``(output, cache)``, the cache a TransformerLens
        ``ActivationCache`` whose helpers take the SSM meaning on SSMs
        (:class:`~interp.hooks.cache.InterpActivationCache`).

        Args:
            names_filter: hook name, list of names, or predicate (default: every hook).
            pos_slice: keep only these positions (slice, index or list) along each hook's pos axis; an index or
                list is bounds-checked (0..L-1, or -L..-1 from the end: IndexError otherwise, never wrapped).
            max_cache_bytes: refuse before running when the estimate exceeds this (None: no limit).
            incl_bwd: as TransformerLens: call ``backward()`` on the output (a scalar: pass ``return_type="loss"``)
                and cache the gradient with respect to each cached activation under ``name + "_grad"``.
            stop_at_layer: (forward kwarg) run blocks ``0..stop_at_layer-1`` only; later hooks are
                skipped, and the output is the residual stream there.
        """
        if isinstance(names_filter, str):
            check_hook_names([names_filter], self.hook_dict)
        elif names_filter is not None and not callable(names_filter):
            names_filter = list(names_filter)
            check_hook_names(names_filter, self.hook_dict)
        keep = as_filter(names_filter)
        names = [n for n in self.hook_dict if keep(n)]
        stop = kwargs.get("stop_at_layer")
        if stop is not None:
            names = [n for n in names if not _beyond_layer(n, stop)]

        if pos_slice is not None and not isinstance(pos_slice, slice):  # never wrapped: 0..L-1 or -L..-1
            L = self._input_shape(model_args, kwargs)[1]
            pos_slice = check_indices(pos_slice, L, "pos_slice", of=f"an input of {L} positions")
        if max_cache_bytes is not None:
            batch, seq_len = self._input_shape(model_args, kwargs)
            shape_kwargs = {k: v for k, v in kwargs.items() if k == "state_positions"}
            need = self.estimate_cache_bytes(batch, seq_len, names, **shape_kwargs) * (2 if incl_bwd else 1)
            if pos_slice is not None:
                need = need * _slice_len(pos_slice, seq_len) // max(seq_len, 1)
            if need > max_cache_bytes:
                raise CacheTooLargeError(
                    f"caching {len(names)} hooks for a batch of {batch} x {seq_len} positions needs about "
                    f"{_fmt_bytes(need)}, over the budget of {_fmt_bytes(max_cache_bytes)}. Cache fewer hooks "
                    "(names_filter=...), fewer positions (pos_slice=..., state_positions=... for hook_state), "
                    "stop early (stop_at_layer=...), or raise max_cache_bytes=..."
                )

        cache: dict[str, Tensor] = {}

        def save(tensor: Tensor, hook: Any, suffix: str = "") -> None:
            t = tensor.detach()
            if pos_slice is not None and not hook.name.endswith("hook_state"):
                t = _apply_pos_slice(t, pos_slice, self.pos_dim(hook.name))
            if device is not None:
                t = t.to(device)
            cache[hook.name + suffix] = t[0] if remove_batch_dim else t

        if not incl_bwd:
            out = self.run_with_hooks(*model_args, fwd_hooks=[(n, save) for n in names], **kwargs)
        else:
            fwd, fired = self._checked([(n, save) for n in names])
            bwd = [(n, lambda t, hook: save(t, hook, "_grad")) for n in names]
            with self.hooks(fwd_hooks=fwd, bwd_hooks=bwd):  # type: ignore[attr-defined]
                out = self(*model_args, **kwargs)  # type: ignore[operator]
                if not isinstance(out, Tensor) or out.numel() != 1:
                    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(
                        f"run_with_cache(incl_bwd=True) calls backward() on the model's output, which must be a "
                        f"scalar; got {shape}. Pass return_type='loss'; for another metric, attach bwd_hooks with "
                        "model.hooks(...) and call backward() on it yourself")
                out.backward()
            self._raise_unfired(fired, kwargs)
        return out, InterpActivationCache(cache, self, has_batch_dim=not remove_batch_dim)

    def pos_dim(self, hook_name: str) -> int:
        """Index of the position axis of a hook's activation (1 for every SSM hook)."""
        return 1

    # --- unembedding directions ------------------------------------------------------------
    def tokens_to_residual_directions(self, tokens: str | int | Tensor) -> Tensor:
        """The residual-stream direction whose dot product with the final-normalised stream gives a token's logit
        (TransformerLens's ``tokens_to_residual_directions``): ``w ⊙ W_U[:, t]`` with ``w`` the final norm's weight.

        TransformerLens returns ``W_U[:, t]`` and expects the weight folded into ``W_U`` (``fold_ln=True``); our
        models keep their weights as trained (an SSM ties ``W_U`` to ``W_E``, so its norm weight cannot be folded),
        so the weight is folded in here and ``ActivationCache.logit_attrs`` (``x / scale`` · direction) is exact:
        logit = Σ logit_attrs + b_U (+ the final LayerNorm's bias · W_U[:, t] on a transformer whose LayerNorm
        has one). A norm without a weight (``LNPre``, a folded model) gives ``W_U[:, t]``, as TransformerLens.

        Returns: [d_model] for one token (str, int, one-element tensor), [..., d_model] for a tensor of ids.
        """
        norm = getattr(self, "ln_final", None)
        w = getattr(norm, "w", None)
        w = getattr(norm, "gain", getattr(norm, "weight", None)) if w is None else w
        W_U = self.W_U  # type: ignore[attr-defined]
        if w is not None:
            W_U = W_U * w.to(W_U.dtype)[:, None]
        if isinstance(tokens, Tensor) and tokens.numel() > 1:
            return W_U[:, tokens.to(W_U.device)].movedim(0, -1)
        if isinstance(tokens, str):
            token = self.to_single_token(tokens)  # type: ignore[attr-defined]
        elif isinstance(tokens, Tensor):
            token = int(tokens.item())
        else:
            token = int(tokens)
        return W_U[:, token]

    # --- generation ------------------------------------------------------------------------
    def can_generate(self) -> bool:
        """Refuses, naming what works: transformers asks this of a ``PreTrainedModel`` when a pipeline is built,
        which ``nnsight.LanguageModel`` / ``TransformersModel`` do. They drive a transformers pipeline (a
        ``PreTrainedModel`` with a transformers config, ``forward(input_ids=...)`` and a transformers tokenizer);
        our models are TransformerLens-style modules, so wrap them with ``nnsight.NNsight(model)`` instead."""
        raise NotImplementedError(
            f"nnsight.LanguageModel / TransformersModel cannot wrap {type(self).__name__}: they build a transformers "
            "pipeline, which needs a transformers PreTrainedModel (config, forward(input_ids=...)) and tokenizer. "
            "Use nnsight.NNsight(model): traces, edits, .save(), .grad and every hook (ssm.hook_state included) "
            "work there, and generation runs inside a trace with "
            "`model_nn.trace(tokens, fn=model.generate, max_new_tokens=n)` (steps via `tracer.iter[0:n]`)")

    def generate(self, input: Any, max_new_tokens: int = 20, **kwargs: Any):
        """Generate with every attached hook active at every step; see :func:`interp.hooks.generation.generate`."""
        from .generation import generate

        return generate(self, input, max_new_tokens=max_new_tokens, **kwargs)


def _beyond_layer(name: str, stop_at_layer: int) -> bool:
    """Whether hook ``name`` lies past a forward that stops before block ``stop_at_layer`` (never fires)."""
    layer = layer_of(name)
    if layer is None:  # after the blocks
        return True
    return 0 <= layer and layer >= stop_at_layer  # the hooks before the blocks (-1) always fire


def _slice_len(pos_slice: slice | int | list[int], seq_len: int) -> int:
    if isinstance(pos_slice, int):
        return 1
    if isinstance(pos_slice, slice):
        return len(range(*pos_slice.indices(seq_len)))
    return len(pos_slice)


def _apply_pos_slice(t: Tensor, pos_slice: slice | int | list[int], dim: int) -> Tensor:
    if t.dim() <= dim:
        return t
    if isinstance(pos_slice, slice):
        idx = torch.arange(t.shape[dim], device=t.device)[pos_slice]
    else:  # indices checked by run_with_cache (non-negative, inside the input)
        idx = torch.as_tensor([pos_slice] if isinstance(pos_slice, int) else pos_slice, device=t.device)
    return t.index_select(dim, idx)
