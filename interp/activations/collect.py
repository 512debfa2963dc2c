"""Run a model on one token batch and keep the rows we want: the engine shared by the disk writer
(:mod:`.writer`) and the in-memory stream (:mod:`.stream`).

A *row* is one (sequence, position) of one batch. :class:`RowFilter` decides which rows are kept
(BOS and pad tokens dropped, an optional position slice) from the tokens alone, so a resumed run can
count rows without running the model. :class:`HookCollector` runs the forward with one hook per
requested name; each hook selects the kept rows, flattens everything after the position axis and
casts to the cache dtype inside the hook, so only ``n_kept x d`` values in the cache dtype are held
(:meth:`HookCollector.collect` also measures what a narrowing cast loses, per row). The forward stops after the
deepest requested block (``stop_at_layer``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks.hook_points import check_hook_names, layer_of
from interp.hooks.tokens import model_device

from .manifest import update_stream_hash

PosSlice = slice | int | Sequence[int] | None


# --------------------------------------------------------------------------------------------
# which rows
# --------------------------------------------------------------------------------------------
def _special_id(model: Any, attr: str) -> int | None:
    """``model.cfg.<attr>`` if set, else ``model.tokenizer.<attr>``, else None."""
    for owner in (getattr(model, "cfg", None), getattr(model, "tokenizer", None)):
        value = getattr(owner, attr, None)
        if isinstance(value, int):
            return value
    return None


def pos_slice_to_json(pos_slice: PosSlice) -> Any:
    if pos_slice is None or isinstance(pos_slice, int):
        return pos_slice
    if isinstance(pos_slice, slice):
        return {"start": pos_slice.start, "stop": pos_slice.stop, "step": pos_slice.step}
    return [int(p) for p in pos_slice]


@dataclass(frozen=True)
class RowFilter:
    """Which (sequence, position) rows of a batch are kept.

    Attributes:
        bos_id: drop every token equal to this id (None: keep BOS).
        pad_id: drop every token equal to this id (None: keep pads).
        pos_slice: keep only these positions (slice, index or list, negative counts from the end).
    """

    bos_id: int | None = None
    pad_id: int | None = None
    pos_slice: PosSlice = None

    @classmethod
    def for_model(
        cls, model: Any, drop_bos: bool = True, drop_pad: bool = True, bos_id: int | None = None,
        pad_id: int | None = None, pos_slice: PosSlice = None,
    ) -> "RowFilter":
        """Ids default to ``model.cfg.{bos,pad}_token_id``, then ``model.tokenizer.{bos,pad}_token_id``."""
        ids = {}
        for role, drop, given in (("bos", drop_bos, bos_id), ("pad", drop_pad, pad_id)):
            if not drop:
                ids[role] = None
                continue
            ids[role] = given if given is not None else _special_id(model, f"{role}_token_id")
            if ids[role] is None:
                raise ValueError(
                    f"drop_{role}=True but the model names no {role.upper()} id (neither model.cfg.{role}_token_id "
                    f"nor model.tokenizer.{role}_token_id is set): pass {role}_id=... or drop_{role}=False"
                )
        if isinstance(pos_slice, Sequence) and not isinstance(pos_slice, (str, bytes)):
            pos_slice = tuple(int(p) for p in pos_slice)
        return cls(bos_id=ids["bos"], pad_id=ids["pad"], pos_slice=pos_slice)

    def keep(self, tokens: Tensor) -> Tensor:
        """tokens [batch, pos] -> bool [batch, pos], True for rows to keep."""
        keep = torch.ones_like(tokens, dtype=torch.bool)
        for special in (self.bos_id, self.pad_id):
            if special is not None:
                keep &= tokens != special
        if self.pos_slice is not None:
            L = tokens.shape[1]
            in_slice = torch.zeros(L, dtype=torch.bool, device=tokens.device)
            if isinstance(self.pos_slice, slice):
                in_slice[torch.arange(L, device=tokens.device)[self.pos_slice]] = True
            else:
                idx = torch.as_tensor([self.pos_slice] if isinstance(self.pos_slice, int) else list(self.pos_slice),
                                      dtype=torch.long, device=tokens.device)
                in_slice[idx[(idx >= -L) & (idx < L)] % max(L, 1)] = True
            keep &= in_slice
        return keep

    def to_dict(self) -> dict[str, Any]:
        return {
            "drop_bos": self.bos_id is not None, "bos_id": self.bos_id,
            "drop_pad": self.pad_id is not None, "pad_id": self.pad_id,
            "pos_slice": pos_slice_to_json(self.pos_slice),
        }


def check_tokens(tokens: Any, batch_idx: int) -> Tensor:
    """A token batch must be an integer tensor [batch, pos]; returns it as int64."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point() or tokens.is_complex():
        what = f"a tensor of shape {tuple(tokens.shape)} and dtype {tokens.dtype}" if isinstance(tokens, Tensor) \
            else type(tokens).__name__
        raise TypeError(
            f"token batch {batch_idx} is {what}; the token stream must yield LongTensor [batch, pos] batches "
            "(e.g. interp.data.tokfsm_batches(...) or dataset.split(batch_size))"
        )
    return tokens.long()


class TokenStream:
    """Walk a token stream batch by batch with the row filter and the limits applied.

    Iterating yields ``(tokens [batch, pos] int64 on CPU, keep bool [batch, pos], row_start, seq_start)``:
    the kept rows of the batch are global rows ``row_start ..`` and its sequences are ``seq_start ..``.
    ``keep`` is cut so that at most ``max_tokens`` rows are kept in all; at most ``max_batches`` batches
    are read. Attributes after (and during) the walk: ``n_batches``, ``n_sequences``, ``n_rows`` and
    ``sha256`` (hashlib object over every batch read, see :func:`~.manifest.update_stream_hash`).
    """

    def __init__(self, token_batches: Iterable[Tensor], row_filter: RowFilter,
                 max_tokens: int | None = None, max_batches: int | None = None):
        self.token_batches, self.row_filter = token_batches, row_filter
        self.max_tokens, self.max_batches = max_tokens, max_batches
        self.sha256 = hashlib.sha256()
        self.n_batches = self.n_sequences = self.n_rows = 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, int, int]]:
        batches = iter(self.token_batches)
        while self.max_batches is None or self.n_batches < self.max_batches:
            try:
                tokens = next(batches)  # never read past max_batches: the caller may keep using the iterator
            except StopIteration:
                return
            tokens = check_tokens(tokens, self.n_batches).cpu()
            update_stream_hash(self.sha256, tokens)
            self.n_batches += 1
            keep = self.row_filter.keep(tokens)
            if self.max_tokens is not None:
                keep = _first_true(keep, self.max_tokens - self.n_rows)
            row_start, seq_start = self.n_rows, self.n_sequences
            self.n_rows += int(keep.sum())
            self.n_sequences += tokens.shape[0]
            yield tokens, keep, row_start, seq_start
            if self.max_tokens is not None and self.n_rows >= self.max_tokens:
                return

    def check_nonempty(self) -> None:
        """Raise ValueError if the walk read no batch, or kept no row."""
        if self.n_batches == 0:
            raise ValueError("the token stream is empty: token_batches yielded no batch")
        if self.n_rows == 0:
            raise ValueError(
                f"no rows left after the filters {self.row_filter.to_dict()} in {self.n_batches} batch(es): every "
                "token is BOS/pad or outside pos_slice; check bos_id/pad_id/pos_slice or pass drop_bos=False / "
                "drop_pad=False"
            )


def _first_true(keep: Tensor, n_max: int) -> Tensor:
    """Keep only the first ``n_max`` True entries of ``keep`` (row-major)."""
    flat = keep.flatten().clone()
    flat[flat.nonzero()[max(n_max, 0):, 0]] = False
    return flat.view_as(keep)


def row_meta(tokens: Tensor, keep: Tensor, seq_offset: int) -> dict[str, Tensor]:
    """For the kept rows of a batch, in row-major (sequence, position) order: int64 [n_kept] each of
    ``tokens``, ``seq_idx`` (``seq_offset`` + index in batch) and ``pos``."""
    seq, pos = keep.nonzero(as_tuple=True)
    return {"tokens": tokens[seq, pos], "seq_idx": seq + seq_offset, "pos": pos}


# --------------------------------------------------------------------------------------------
# running the model
# --------------------------------------------------------------------------------------------
def deepest_stop(hook_names: Sequence[str]) -> int | None:
    """The ``stop_at_layer`` that still fires every hook: deepest block + 1 (None if a hook lies after
    the blocks, e.g. ``ln_final.hook_normalized``)."""
    layers = [layer_of(n) for n in hook_names]
    if any(layer is None for layer in layers):
        return None
    return max(layers) + 1  # type: ignore[type-var]


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def is_lossless_cast(src: torch.dtype, dst: torch.dtype) -> bool:
    """Whether every ``src`` value is exactly representable in ``dst`` (same dtype, or a float type with more bits,
    a finer epsilon and a wider range: float16/bfloat16 -> float32 -> float64). float32 -> float16/bfloat16 and
    float16 <-> bfloat16 are lossy; non-float sources count as lossless."""
    if src == dst or not src.is_floating_point or not dst.is_floating_point:
        return True
    a, b = torch.finfo(src), torch.finfo(dst)
    return b.bits > a.bits and b.eps <= a.eps and b.max >= a.max and b.tiny <= a.tiny


def cast_error_rows(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Per row of x [n, d], what casting to ``dtype`` loses, in float64: [n, 3] = (max_j |x - cast(x)|,
    Σ_j (x - cast(x))², Σ_j x²). Summed (max-ed) over rows they give the relative RMS error of the cast."""
    x64 = x.double()
    diff = x64 - x.to(dtype).double()  # [n, d]
    return torch.stack([diff.abs().amax(dim=1), diff.square().sum(dim=1), x64.square().sum(dim=1)], dim=1)


class HookCollector:
    """Runs ``model`` on token batches and returns the kept rows of each hook, already cast.

    Args:
        model: a hookable model (``HookedSSM`` / ``HookedTransformerModel``): ``run_with_hooks``,
            ``hook_dict``, ``pos_dim(name)``.
        hook: a hook name or several (``self.hooks``: the list); unknown names raise the model's
            ``UnknownHookError`` (with suggestions).
        dtype: cache dtype (the cast happens inside the hook, on the kept rows only).
        row_filter: which rows to keep.
    """

    def __init__(self, model: Any, *, hook: str | Sequence[str], dtype: torch.dtype, row_filter: RowFilter):
        hooks = [hook] if isinstance(hook, str) else list(hook)
        if not hooks:
            raise ValueError("no hooks requested: pass hook='blocks.0.hook_resid_post' (or a list of names)")
        if len(set(hooks)) != len(hooks):
            raise ValueError(f"hook lists a name twice: {hooks}")
        check_hook_names(hooks, model.hook_dict)
        self.model, self.hooks, self.dtype, self.row_filter = model, hooks, dtype, row_filter
        self.stop_at_layer = deepest_stop(hooks)
        self.shapes: dict[str, list[int]] = {}  # hook -> dims after the position axis (set by the first batch)
        self.device = model_device(model)

    def __call__(self, tokens: Tensor, keep: Tensor) -> dict[str, Tensor]:
        """tokens [batch, pos], keep bool [batch, pos] -> {hook: [n_kept, d_hook] in ``dtype``} on the
        model's device, rows in row-major (sequence, position) order."""
        return self.collect(tokens, keep, cast_error=False)[0]

    def collect(self, tokens: Tensor, keep: Tensor, *, cast_error: bool = True
                ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """As :meth:`__call__`, and with ``cast_error`` the error of the cast to ``dtype`` for every hook whose
        activations it narrows (:func:`is_lossless_cast`): {hook: float64 [n_kept, 3]} (:func:`cast_error_rows`,
        aligned with the rows; hooks cast losslessly are absent)."""
        keep_dev = keep.to(self.device)
        out: dict[str, Tensor] = {}
        errors: dict[str, Tensor] = {}

        def grab(act: Tensor, hook: Any) -> None:
            x = act.detach().movedim(self.model.pos_dim(hook.name), 1)  # [batch, pos, ...]
            if tuple(x.shape[:2]) != tuple(keep_dev.shape):
                raise ValueError(
                    f"hook {hook.name!r} gave an activation of shape {tuple(act.shape)}, which has no "
                    f"[batch, pos] = {tuple(keep_dev.shape)} axes to select rows from; cache hooks with one "
                    "value per token (e.g. hook_resid_post, ssm.hook_y)"
                )
            rows = x[keep_dev]  # [n_kept, ...]
            rows = rows.reshape(rows.shape[0], -1)  # [n_kept, d_hook]
            out[hook.name] = rows.to(self.dtype)
            if cast_error and not is_lossless_cast(rows.dtype, self.dtype):
                errors[hook.name] = cast_error_rows(rows, self.dtype)  # [n_kept, 3]
            self._check_shape(hook.name, list(x.shape[2:]))

        kwargs = {} if self.stop_at_layer is None else {"stop_at_layer": self.stop_at_layer}
        with torch.inference_mode():
            self.model.run_with_hooks(tokens.to(self.device), fwd_hooks=[(n, grab) for n in self.hooks],
                                      return_type=None, **kwargs)
        return out, errors

    def _check_shape(self, name: str, shape: list[int]) -> None:
        known = self.shapes.setdefault(name, shape)
        if known != shape:
            raise ValueError(
                f"hook {name!r} changed its per-token shape from {known} to {shape} between batches; "
                "use a fixed sequence length for hooks whose width depends on it (e.g. attention patterns)"
            )

    def hook_info(self) -> dict[str, dict[str, Any]]:
        """{hook: {"d": flattened width, "shape": dims after the position axis}} (after one batch)."""
        out = {}
        for n in self.hooks:
            shape = self.shapes[n]
            d = 1
            for s in shape:
                d *= s
            out[n] = {"d": d, "shape": shape}
        return out


def collector_for(
    model: Any, hook: str | Sequence[str], dtype: torch.dtype | None, drop_bos: bool, drop_pad: bool,
    bos_id: int | None, pad_id: int | None, pos_slice: PosSlice,
) -> HookCollector:
    """The filter and dtype arguments of ``cache_activations`` / ``stream_activations`` made into a
    :class:`HookCollector` (its ``row_filter`` from :meth:`RowFilter.for_model`, its ``dtype`` ``dtype``
    or the model's). Raises for a missing BOS / pad id first, then for unknown hook names."""
    row_filter = RowFilter.for_model(model, drop_bos, drop_pad, bos_id, pad_id, pos_slice)
    return HookCollector(model, hook=hook, dtype=dtype or model_dtype(model), row_filter=row_filter)
