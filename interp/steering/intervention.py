"""One intervention object: a source (what) + an operator (how) + hooks and positions (where and when).

    iv = Intervention(Direction.mean_difference(acts_S, acts_all), hook="blocks.1.hook_resid_post",
                      operator="add", scale=4.0, positions="last")
    model.run_with_hooks(tokens, fwd_hooks=iv.hooks(model))
    model.generate(prompt, max_new_tokens=8, fwd_hooks=iv.hooks(model))      # every step, recurrent SSM decoding too
    with iv.applied(model):
        logits = model(tokens)
    both = iv + Intervention(AffineMap.leace(acts, labels), hook="blocks.2.hook_resid_post", operator="affine")
    both.save("runs/steer/x");  Intervention.load("runs/steer/x")             # safetensors + JSON, no pickle

Operators and what ``scale`` / ``value`` mean (``scale = 0`` is always a no-op):

=========  ==============================================  ===========================
operator   edit of the selected activations x              sources
=========  ==============================================  ===========================
add        x + scale · v                                   Direction, SAELatents
ablate     project out the direction(s) (scale 1: fully)   Direction, SAELatents
clamp      set the coordinate along v to ``value``         Direction, SAELatents
replace    (1 - scale) x + scale · v                       Direction
affine     x + scale · (f(x) - x)                          AffineMap
=========  ==============================================  ===========================

Where: one hook name or several (the same edit at several layers). When: a :class:`~.positions.Positions`
spec ("all", "last", absolute positions, a range), read against ``hook.ctx["positions"]``, so it works in
a full forward, a prefill and every decoding step alike. Hooks whose value has more axes after the
position axis (``ssm.hook_u`` [b, pos, H, P], ``ssm.hook_state`` [b, k, H, P, N]) are edited flattened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from interp.hooks.hook_points import absolute_positions

from interp.hooks.positions import Positions, PositionsLike
from interp.io import write_json
from .sources import SOURCES, Source

__all__ = ["Intervention", "Compose", "load", "FORMAT", "CONFIG_FILE", "TENSORS_FILE"]

FORMAT = "interp.steering/1"
CONFIG_FILE = "intervention.json"
TENSORS_FILE = "intervention.safetensors"
OPERATORS = ("add", "ablate", "clamp", "replace", "affine")


def _pos_dim(model: Any, hook_name: str) -> int:
    pos_dim = getattr(model, "pos_dim", None)
    return pos_dim(hook_name) if callable(pos_dim) else 1


@dataclass(eq=False)
class Intervention:
    """An edit of hook activations: ``source`` (what), ``operator`` (how), ``hook`` and ``positions``
    (where and when), ``scale`` (how much), ``value`` (clamp target).

    Attributes:
        source: a :class:`~.sources.Source` (Direction, AffineMap, SAELatents, ...).
        hook: a hook name, or several (the same edit at each).
        operator: "add", "ablate", "clamp", "replace" or "affine" (see the module docstring).
        scale: strength; 0 is a no-op for every operator.
        value: the target coordinate(s) of ``clamp``.
        positions: "all" (default), "last", absolute positions, a slice, or a :class:`Positions`.
        name: free label.
    """

    source: Source
    hook: str | Sequence[str]
    operator: str = "add"
    scale: float = 1.0
    value: float | list[float] | None = None
    positions: PositionsLike = "all"
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.source, Source):
            raise TypeError(f"source must be a steering Source (Direction, AffineMap, SAELatents, ...), got "
                            f"{type(self.source).__name__}; wrap a raw vector as Direction(vector)")
        self.hook = (self.hook,) if isinstance(self.hook, str) else tuple(self.hook)
        if not self.hook or not all(isinstance(h, str) for h in self.hook):
            raise ValueError(f"hook must be a hook name or a non-empty list of names, got {self.hook!r}")
        if self.operator not in OPERATORS:
            raise ValueError(f"unknown operator {self.operator!r}; choose one of {OPERATORS}")
        if self.operator not in self.source.operators:
            raise ValueError(f"a {type(self.source).__name__} source supports {self.source.operators}, not "
                             f"{self.operator!r}")
        if self.operator == "clamp" and self.value is None:
            raise ValueError("operator 'clamp' needs value=... (the coordinate to set)")
        if isinstance(self.value, Tensor):
            self.value = self.value.tolist()
        self.scale = float(self.scale)
        self.positions = Positions.parse(self.positions)

    # --- applying -----------------------------------------------------------------------------
    def edit(self, act: Tensor, positions: Tensor | None = None, pos_dim: int = 1) -> Tensor:
        """Apply the edit to one hook activation [b, pos, ...] whose absolute positions are ``positions``
        [pos] (default 0..pos-1). Returns a new tensor (the input is not modified)."""
        if self.scale == 0.0:
            return act
        x = act.movedim(pos_dim, 1) if pos_dim != 1 else act
        if x.dim() < 3:
            raise ValueError(f"cannot steer an activation of shape {tuple(act.shape)}: need [batch, pos, ...]")
        b, L = x.shape[:2]
        mask = self.positions.mask(absolute_positions(positions, L, x.device))
        if not bool(mask.any()):
            return act
        flat = x.reshape(b, L, -1)
        out = flat.clone()
        out[:, mask] = self.source.edit(flat[:, mask], self.operator, self.scale, self.value).to(flat.dtype)
        out = out.reshape(x.shape)
        return out.movedim(1, pos_dim) if pos_dim != 1 else out

    def hooks(self, model: Any = None) -> list[tuple[str, Any]]:
        """``[(hook_name, fn), ...]`` for ``run_with_hooks(fwd_hooks=...)``, ``generate(fwd_hooks=...)`` and
        ``model.hooks(fwd_hooks=...)``. With ``model``, hook names are checked (closest names suggested)."""
        if model is not None and hasattr(model, "hook_dict"):
            from interp.hooks.hook_points import check_hook_names

            check_hook_names(list(self.hook), model.hook_dict)
        out = []
        for name in self.hook:
            pd = _pos_dim(model, name) if model is not None else 1

            def fn(act: Tensor, hook: Any, _pd: int = pd) -> Tensor:
                length = act.shape[_pd] if act.dim() > _pd else 0
                return self.edit(act, absolute_positions(hook, length, act.device), _pd)

            out.append((name, fn))
        return out

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        """Context manager: the intervention is active on ``model`` inside the block (every forward and
        generation step), removed afterwards."""
        with model.hooks(fwd_hooks=self.hooks(model)):
            yield model

    # --- variants and composition -------------------------------------------------------------
    def with_scale(self, scale: float) -> "Intervention":
        """A copy with another scale (the source is shared)."""
        return dataclasses.replace(self, scale=scale)

    def edited_from(self, length: int) -> int | None:
        """The first position a single forward over 0..length-1 edits (None: none)."""
        return None if self.scale == 0.0 else self.positions.first(length)

    def __add__(self, other: "Intervention | Compose") -> "Compose":
        return Compose([self]) + other

    # --- saving -------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        _, src_cfg = self.source.state()
        return {"type": "intervention", "name": self.name, "hook": list(self.hook), "operator": self.operator,
                "scale": self.scale, "value": self.value, "positions": self.positions.to_json(),
                "source": {"kind": self.source.kind, "module": type(self.source).__module__, "config": src_cfg}}

    def save(self, folder: str | Path) -> Path:
        """Write ``intervention.json`` + ``intervention.safetensors`` (and the SAE of an SAE source) to ``folder``."""
        return _save([self], folder, single=True)

    @classmethod
    def load(cls, folder: str | Path, **runtime: Any) -> "Intervention | Compose":
        """Load what :meth:`save` (or :meth:`Compose.save`) wrote: an Intervention, or a Compose.

        ``runtime`` passes objects that are not stored, e.g. ``sae=`` for an SAE clamp whose SAE could not be saved."""
        return load(folder, **runtime)


@dataclass(eq=False)
class Compose:
    """Several interventions applied in order (each hook's edits run in list order)."""

    interventions: list[Intervention] = field(default_factory=list)

    def __post_init__(self) -> None:
        flat: list[Intervention] = []
        for iv in self.interventions:
            flat.extend(iv.interventions if isinstance(iv, Compose) else [iv])
        if not all(isinstance(iv, Intervention) for iv in flat):
            raise TypeError("Compose takes Intervention objects")
        self.interventions = flat

    def __len__(self) -> int:
        return len(self.interventions)

    def __iter__(self) -> Iterator[Intervention]:
        return iter(self.interventions)

    def __add__(self, other: "Intervention | Compose") -> "Compose":
        return Compose(self.interventions + (other.interventions if isinstance(other, Compose) else [other]))

    def hooks(self, model: Any = None) -> list[tuple[str, Any]]:
        return [h for iv in self.interventions for h in iv.hooks(model)]

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        with model.hooks(fwd_hooks=self.hooks(model)):
            yield model

    def with_scale(self, scale: float) -> "Compose":
        """Every intervention at this scale."""
        return Compose([iv.with_scale(scale) for iv in self.interventions])

    def edited_from(self, length: int) -> int | None:
        firsts = [f for iv in self.interventions if (f := iv.edited_from(length)) is not None]
        return min(firsts) if firsts else None

    def save(self, folder: str | Path) -> Path:
        return _save(self.interventions, folder, single=False)

    @classmethod
    def load(cls, folder: str | Path, **runtime: Any) -> "Intervention | Compose":
        return load(folder, **runtime)


def _save(items: list[Intervention], folder: str | Path, single: bool) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    configs = []
    for k, iv in enumerate(items):
        prefix = "" if single else f"{k}."
        src_tensors, _ = iv.source.state()
        tensors.update({f"{prefix}source.{n}": t.detach().cpu().clone().contiguous() for n, t in src_tensors.items()})
        iv.source.save_extra(folder, prefix)
        configs.append(iv.to_config())
    doc = {"format": FORMAT, **configs[0]} if single else {"format": FORMAT, "type": "compose", "items": configs}
    save_file(tensors, str(folder / TENSORS_FILE), metadata={"format": FORMAT})
    write_json(folder / CONFIG_FILE, doc, checksums=[TENSORS_FILE])  # with the sha256 of the tensors and itself
    return folder


#: where the sources registered outside this package are defined, for files saved before the source's module was
#: recorded in them
_SOURCE_MODULES = {"codebook_codes": "interp.codebook.steering"}


def _source_class(kind: str, module: str | None, folder: Path) -> type[Source]:
    """The registered source class of ``kind``, importing the module that registers it (named in the saved
    config, only modules of this package) if it was not imported yet."""
    module = module or _SOURCE_MODULES.get(kind)
    if kind not in SOURCES and module and (module == "interp" or module.startswith("interp.")):
        importlib.import_module(module)
    if kind not in SOURCES:
        raise ValueError(f"{folder}: unknown source kind {kind!r}; known: {sorted(SOURCES)} (is the module that "
                         "registers it imported?)")
    return SOURCES[kind]


def _from_config(cfg: dict[str, Any], tensors: dict[str, Tensor], prefix: str, folder: Path,
                 runtime: dict[str, Any]) -> Intervention:
    kind = cfg["source"]["kind"]
    source_cls = _source_class(kind, cfg["source"].get("module"), folder)
    src_tensors = {n[len(prefix) + len("source."):]: t for n, t in tensors.items() if n.startswith(prefix + "source.")}
    source = source_cls.from_state(src_tensors, cfg["source"]["config"], folder, prefix=prefix, **runtime)
    return Intervention(source=source, hook=cfg["hook"], operator=cfg["operator"], scale=cfg["scale"],
                        value=cfg.get("value"), positions=Positions.from_json(cfg["positions"]),
                        name=cfg.get("name", ""))


def load(folder: str | Path, **runtime: Any) -> Intervention | Compose:
    """Load an intervention (or a composition) written by ``save``. ``runtime``: e.g. ``sae=`` (see
    :class:`~.sources.SAELatents`)."""
    from interp.io import read_json, read_safetensors, verify_checksums

    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a folder written by Intervention.save / Compose.save")
    verify_checksums(folder, [TENSORS_FILE], record=CONFIG_FILE, what="intervention")
    doc = read_json(path, what="intervention config")
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r}")
    tensors = read_safetensors(folder / TENSORS_FILE, what="intervention tensors")
    if doc["type"] == "intervention":
        return _from_config(doc, tensors, "", folder, runtime)
    if doc["type"] == "compose":
        return Compose([_from_config(c, tensors, f"{k}.", folder, runtime) for k, c in enumerate(doc["items"])])
    raise ValueError(f"{path}: unknown type {doc['type']!r}")
