"""Steering sources: what an intervention writes. Each source knows the operators it supports and how to
save itself (tensors for safetensors, the rest as JSON).

    Direction.mean_difference(acts_target, acts_all)          # CAA / ActAdd          -> add, ablate, clamp, replace
    Direction.paired_pca(acts_pos, acts_neg, k=1)             # RepE
    Direction.from_probe(probe, cls, X, y)                    # a probe's weights
    Direction.sae_decoder(sae, latent)                        # an SAE decoder row
    SAELatents(sae, [latent])                                 # SAE latent edits, error term kept -> add, ablate, clamp
    AffineMap.mean_matching(acts_source, acts_target)         # f(h) = h + (μ_t - μ_s)  -> affine
    AffineMap.gaussian_ot(acts_source, acts_target)           # f(h) = μ_t + A (h - μ_s)
    AffineMap.leace(acts, labels)                             # LEACE concept erasure

A new kind of source subclasses :class:`Source`, implements ``edit``, ``state`` and ``from_state``, and
registers with :func:`register_source`; nothing else changes. A saved intervention records the module of its
source, so :func:`interp.steering.load` imports it first (e.g. codebook codes,
:class:`interp.codebook.steering.CodebookCodes`, built by :func:`interp.codebook.code_intervention`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import functional as Fn

__all__ = ["Source", "Direction", "AffineMap", "SAELatents", "SOURCES", "register_source", "token_direction"]

SOURCES: dict[str, type["Source"]] = {}


def register_source(cls: type["Source"]) -> type["Source"]:
    """Class decorator: make a source loadable by its ``kind``."""
    if cls.kind in SOURCES and SOURCES[cls.kind] is not cls:
        raise ValueError(f"a source of kind {cls.kind!r} is already registered ({SOURCES[cls.kind].__name__})")
    SOURCES[cls.kind] = cls
    return cls


class Source:
    """Base class of steering sources.

    Subclasses set ``kind`` (registry key) and ``operators`` (those they support) and implement
    :meth:`edit`, :meth:`state` and :meth:`from_state` (and :meth:`save_extra` for data that is not a
    tensor, such as a whole SAE)."""

    kind: ClassVar[str] = ""
    operators: ClassVar[tuple[str, ...]] = ()

    @property
    def d(self) -> int | None:
        """Activation width the source applies to (None if unknown)."""
        return None

    def edit(self, x: Tensor, operator: str, scale: float, value: Any) -> Tensor:
        """x [n, d] (the selected rows of a hook's activation) -> edited [n, d]."""
        raise NotImplementedError

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """(tensors, JSON-serialisable config) that :meth:`from_state` rebuilds the source from."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], config: dict[str, Any], folder: Path | None = None,
                   **runtime: Any) -> "Source":
        raise NotImplementedError

    def save_extra(self, folder: Path, prefix: str) -> None:
        """Write anything that is not a tensor under ``folder`` (file names starting with ``prefix``)."""

    def _check_width(self, x: Tensor) -> None:
        if self.d is not None and x.shape[-1] != self.d:
            raise ValueError(
                f"this {self.kind} source has width {self.d} but the hook's activation has {x.shape[-1]} values per "
                "position: attach it to a hook of the width it was computed at"
            )


def _cast(cache: dict, key: str, t: Tensor | None, like: Tensor) -> Tensor | None:
    """``t`` on ``like``'s device and dtype, cached."""
    if t is None:
        return None
    k = (key, like.device, like.dtype)
    if k not in cache:
        cache[k] = t.to(device=like.device, dtype=like.dtype)
    return cache[k]


# --------------------------------------------------------------------------------------------
# directions
# --------------------------------------------------------------------------------------------
@register_source
@dataclass(eq=False)
class Direction(Source):
    """One or several directions in activation space.

    Attributes:
        vectors: [k, d] (a [d] vector is stored as [1, d]).
        label: where it came from ("mean_difference", "probe", ...).
        meta: JSON-serialisable provenance (class, counts, norms, ...).

    Operators: ``add`` (x + scale · Σ_j v_j), ``ablate`` (project out the span of the vectors),
    ``clamp`` (set the coordinate along the normalised direction to ``value``; several vectors are
    orthonormalised first and ``value`` is then one number or one per basis vector), ``replace``
    ((1 - scale) x + scale · v, one vector only).
    """

    vectors: Tensor
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "direction"
    operators: ClassVar[tuple[str, ...]] = ("add", "ablate", "clamp", "replace")

    def __post_init__(self) -> None:
        v = torch.as_tensor(self.vectors).detach().float().cpu()
        v = v[None] if v.dim() == 1 else v
        if v.dim() != 2 or v.shape[0] == 0:
            raise ValueError(f"vectors must be [d] or [k, d], got shape {tuple(torch.as_tensor(self.vectors).shape)}")
        if not torch.isfinite(v).all():
            raise ValueError("the direction has non-finite entries (nan/inf): check the activations it came from")
        self.vectors = v
        self._cache: dict = {}
        self._basis: Tensor | None = None

    def __repr__(self) -> str:
        k, d = self.vectors.shape
        norms = ", ".join(f"{float(n):.3g}" for n in self.vectors.norm(dim=1)[:4]) + (", ..." if k > 4 else "")
        return f"Direction({self.label or 'custom'!r}, k={k}, d={d}, norms=[{norms}], meta={self.meta})"

    @property
    def d(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def vector(self) -> Tensor:
        """The direction [d] (the sum of the vectors when there are several)."""
        return self.vectors.sum(0)

    @property
    def basis(self) -> Tensor:
        """Orthonormal rows [r, d] spanning the vectors."""
        if self._basis is None:
            self._basis = Fn.orthonormal_basis(self.vectors)
        return self._basis

    def normalized(self) -> "Direction":
        """Unit-length vectors (same label, meta notes the original norms)."""
        norms = self.vectors.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return Direction(self.vectors / norms, self.label, {**self.meta, "norms": norms[:, 0].tolist()})

    def edit(self, x: Tensor, operator: str, scale: float, value: Any) -> Tensor:
        self._check_width(x)
        if operator == "add":
            return Fn.op_add(x, _cast(self._cache, "sum", self.vector, x), scale)
        if operator == "ablate":
            return Fn.op_ablate(x, _cast(self._cache, "basis", self.basis, x), scale)
        if operator == "clamp":
            Q = _cast(self._cache, "basis", self.basis, x)
            val = torch.as_tensor(value, dtype=x.dtype, device=x.device)
            if val.dim() and val.numel() != Q.shape[0]:
                raise ValueError(f"clamp value has {val.numel()} entries for {Q.shape[0]} basis direction(s)")
            return Fn.op_clamp(x, Q, val, scale)
        if operator == "replace":
            if self.vectors.shape[0] != 1:
                raise ValueError("replace needs a single vector; this direction has "
                                 f"{self.vectors.shape[0]}")
            return Fn.op_replace(x, _cast(self._cache, "vec", self.vectors[0], x), scale)
        raise ValueError(f"a direction supports {self.operators}, not {operator!r}")

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {"vectors": self.vectors.contiguous()}, {"label": self.label, "meta": self.meta}

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], config: dict[str, Any], folder: Path | None = None,
                   **runtime: Any) -> "Direction":
        return cls(tensors["vectors"], config.get("label", ""), config.get("meta", {}))

    # --- constructors ----------------------------------------------------------------------
    @classmethod
    def mean_difference(cls, target: Tensor, baseline: Tensor, **meta: Any) -> "Direction":
        """CAA / ActAdd: mean(target) - mean(baseline) (target [n, d], baseline [m, d])."""
        v = Fn.mean_difference(target, baseline)
        return cls(v, "mean_difference", {"n_target": int(target.shape[0]), "n_baseline": int(baseline.shape[0]),
                                           "norm": float(v.norm()), **meta})

    @classmethod
    def paired_pca(cls, positive: Tensor, negative: Tensor, k: int = 1, **meta: Any) -> "Direction":
        """RepE: top-k principal directions of paired differences (see :func:`.functional.paired_pca`)."""
        V = Fn.paired_pca(positive, negative, k)
        return cls(V, "paired_pca", {"n_pairs": int(positive.shape[0]), "k": k, **meta})

    @classmethod
    def from_probe(cls, probe: Any, cls_label: Any = None, X: Tensor | None = None, y: Any = None,
                   length: str = "norm", **meta: Any) -> "Direction":
        """A probe's direction for class ``cls_label`` (``probe.direction(cls_label)``, activation space).

        Unit length without data. With the probe's training data ``X`` [n, d] and labels ``y`` [n], scaled by
        the class mean's displacement d_c = mean(X[y == c]) - mean(X): ``length="norm"`` gives it |d_c| (the
        length of the mean-difference vector, so the two sources compare at equal size), ``"projection"``
        gives d_c · u (how far the class itself sits along the probe direction)."""
        u = probe.direction(cls_label) if cls_label is not None else probe.direction()
        u = torch.as_tensor(u).float()
        u = u / u.norm().clamp(min=1e-12)
        size = 1.0
        if X is not None:
            if y is None or cls_label is None:
                raise ValueError("pass both y and cls_label with X to scale the probe direction")
            if length not in ("norm", "projection"):
                raise ValueError(f"length must be 'norm' or 'projection', got {length!r}")
            Xt = torch.as_tensor(X).float()
            sel = torch.as_tensor(y) == cls_label
            if not bool(sel.any()):
                raise ValueError(f"class {cls_label!r} has no rows in y")
            d_c = Xt[sel].mean(0) - Xt.mean(0)
            size = float(d_c.norm()) if length == "norm" else float(d_c @ u)
        label = cls_label.item() if isinstance(cls_label, Tensor) else cls_label
        return cls(u * size, "probe", {"class": _jsonable(label), "probe": type(probe).__name__,
                                       "length": size, "length_rule": length if X is not None else "unit",
                                       "cosine_to_mean_difference": None if X is None else float(
                                           torch.nn.functional.cosine_similarity(u, d_c, dim=0)), **meta})

    @classmethod
    def sae_decoder(cls, sae: Any, latent: int | list[int], **meta: Any) -> "Direction":
        """Decoder row(s) ``W_dec[latent]`` of an SAE (any object with ``W_dec`` [d_sae, d_in])."""
        lat = [latent] if isinstance(latent, int) else list(latent)
        rows = _decoder(sae)[lat].detach().float().cpu()
        return cls(rows, "sae_decoder", {"latents": lat, **meta})


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    return x if isinstance(x, (int, float, str, bool)) or x is None else str(x)


# --------------------------------------------------------------------------------------------
# affine maps
# --------------------------------------------------------------------------------------------
@register_source
@dataclass(eq=False)
class AffineMap(Source):
    """An affine map f(h) = h A^T + b (``A`` None: a pure shift h + b). Operator ``affine``:
    x + scale · (f(x) - x), so scale 1 applies the map and 0 leaves x alone."""

    b: Tensor
    A: Tensor | None = None
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "affine"
    operators: ClassVar[tuple[str, ...]] = ("affine",)

    def __post_init__(self) -> None:
        self.b = torch.as_tensor(self.b).detach().float().cpu()
        if self.b.dim() != 1:
            raise ValueError(f"b must be [d], got shape {tuple(self.b.shape)}")
        if self.A is not None:
            self.A = torch.as_tensor(self.A).detach().float().cpu()
            if tuple(self.A.shape) != (self.d, self.d):
                raise ValueError(f"A must be [d, d] = {(self.d, self.d)}, got {tuple(self.A.shape)}")
        self._cache: dict = {}

    def __repr__(self) -> str:
        return (f"AffineMap({self.label or 'custom'!r}, d={self.d}, linear={'yes' if self.A is not None else 'no'}, "
                f"|b|={float(self.b.norm()):.3g}, meta={self.meta})")

    @property
    def d(self) -> int:
        return int(self.b.shape[0])

    def __call__(self, x: Tensor) -> Tensor:
        """Apply the map: x [..., d] -> f(x)."""
        return self.edit(x, "affine", 1.0, None)

    def edit(self, x: Tensor, operator: str, scale: float, value: Any) -> Tensor:
        self._check_width(x)
        if operator != "affine":
            raise ValueError(f"an affine map supports only 'affine', not {operator!r}")
        return Fn.op_affine(x, _cast(self._cache, "A", self.A, x), _cast(self._cache, "b", self.b, x), scale)

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        t = {"b": self.b.contiguous()}
        if self.A is not None:
            t["A"] = self.A.contiguous()
        return t, {"label": self.label, "meta": self.meta}

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], config: dict[str, Any], folder: Path | None = None,
                   **runtime: Any) -> "AffineMap":
        return cls(tensors["b"], tensors.get("A"), config.get("label", ""), config.get("meta", {}))

    def then_add(self, direction: "Direction | Tensor", **meta: Any) -> "AffineMap":
        """This map followed by adding a vector: f(h) + v, one affine map. With a LEACE eraser and a direction
        toward a class this *replaces* the concept's value (erase it, then write the target's) instead of adding
        to whatever value is there."""
        v = direction.vector if isinstance(direction, Direction) else torch.as_tensor(direction).float()
        label = f"{self.label}+{direction.label}" if isinstance(direction, Direction) else f"{self.label}+shift"
        extra = {"then_add": direction.meta} if isinstance(direction, Direction) else {}
        return AffineMap(self.b + v.cpu(), self.A, label, {**self.meta, **extra, **meta})

    # --- constructors ----------------------------------------------------------------------
    @classmethod
    def mean_matching(cls, source: Tensor, target: Tensor, **meta: Any) -> "AffineMap":
        """f(h) = h + (μ_t - μ_s)."""
        return cls(Fn.mean_matching_map(source, target), None, "mean_matching", meta)

    @classmethod
    def gaussian_ot(cls, source: Tensor, target: Tensor, ridge: float = 1e-6, **meta: Any) -> "AffineMap":
        """f(h) = μ_t + A (h - μ_s), the Gaussian optimal-transport map (matches mean and covariance)."""
        A, b = Fn.gaussian_ot_map(source, target, ridge)
        return cls(b, A, "gaussian_ot", {"ridge": ridge, **meta})

    @classmethod
    def leace(cls, X: Tensor, Z: Tensor, **meta: Any) -> "AffineMap":
        """LEACE eraser of the concept ``Z`` ([n] class labels or [n, k] values) from activations X [n, d]."""
        A, b = Fn.leace_map(X, Z)
        return cls(b, A, "leace", meta)


# --------------------------------------------------------------------------------------------
# SAE latents
# --------------------------------------------------------------------------------------------
def _decoder(sae: Any) -> Tensor:
    W = getattr(sae, "W_dec", None)
    if not isinstance(W, Tensor) or W.dim() != 2:
        raise TypeError(f"{type(sae).__name__} has no W_dec [d_sae, d_in] matrix: an SAE source needs an object "
                        "with encode(x), decode(f) and W_dec (interp.sae.SparseAutoencoder, SAE-Lens SAEs)")
    return W


@register_source
class SAELatents(Source):
    """Edits of SAE latents, with the SAE's error term kept.

    ``sae`` is any object with ``encode(x [.., d_in]) -> f [.., d_sae]``, ``decode(f) -> x̂`` and ``W_dec``
    [d_sae, d_in] (``interp.sae.SparseAutoencoder``, an SAE-Lens SAE, ...). Operators:

    * ``add``: x + scale · Σ W_dec[latents] (decoder rows; needs no encode);
    * ``clamp``: latents set to ``value`` (one number or one per latent), x' = x + decode(f') - decode(f),
      i.e. decode(f') plus the error x - decode(f); ``scale`` interpolates f' between f and the value;
    * ``ablate``: latents scaled by (1 - scale) (0 at scale 1), error kept.
    """

    kind: ClassVar[str] = "sae"
    operators: ClassVar[tuple[str, ...]] = ("add", "ablate", "clamp")

    def __init__(self, sae: Any, latents: int | list[int], label: str = "sae", meta: dict[str, Any] | None = None,
                 decoder_rows: Tensor | None = None):
        self.sae = sae
        self.latents = [latents] if isinstance(latents, int) else [int(i) for i in latents]
        if not self.latents:
            raise ValueError("give at least one latent")
        rows = _decoder(sae)[self.latents] if sae is not None else decoder_rows
        if rows is None:
            raise ValueError("need an SAE (or its decoder rows)")
        self.decoder_rows = torch.as_tensor(rows).detach().float().cpu()
        self.label, self.meta = label, dict(meta or {})
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"SAELatents(latents={self.latents}, sae={type(self.sae).__name__ if self.sae is not None else None})"

    @property
    def d(self) -> int:
        return int(self.decoder_rows.shape[1])

    def edit(self, x: Tensor, operator: str, scale: float, value: Any) -> Tensor:
        self._check_width(x)
        if operator == "add":
            return Fn.op_add(x, _cast(self._cache, "sum", self.decoder_rows.sum(0), x), scale)
        if operator not in ("ablate", "clamp"):
            raise ValueError(f"an SAE source supports {self.operators}, not {operator!r}")
        if self.sae is None:
            raise RuntimeError(f"'{operator}' needs the SAE itself (encode/decode), which was not saved or loaded: "
                               "pass it when loading, Intervention.load(folder, sae=my_sae)")
        p = next(iter(self.sae.parameters()), None) if hasattr(self.sae, "parameters") else None
        xs = x if p is None else x.to(device=p.device, dtype=p.dtype)
        f = self.sae.encode(xs)
        f2 = f.clone()
        idx = torch.as_tensor(self.latents, device=f.device)
        if operator == "ablate":
            f2[..., idx] = f[..., idx] * (1 - scale)
        else:
            if value is None:
                raise ValueError("clamp needs a value (Intervention(..., value=...))")
            val = torch.as_tensor(value, dtype=f.dtype, device=f.device)
            f2[..., idx] = f[..., idx] + scale * (val - f[..., idx])
        delta = self.sae.decode(f2) - self.sae.decode(f)
        return x + delta.to(x.dtype).to(x.device)

    def _savable(self) -> bool:
        """The SAE's class defines save(folder) and load(folder) itself (not a generic ``save`` such as the one
        nnsight adds to every module)."""
        if self.sae is None:
            return False
        own = [k.__dict__ for k in type(self.sae).__mro__ if k not in (torch.nn.Module, object)]
        return any("save" in d for d in own) and any("load" in d for d in own)

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        cls_path = None if self.sae is None else f"{type(self.sae).__module__}.{type(self.sae).__qualname__}"
        return ({"decoder_rows": self.decoder_rows.contiguous()},
                {"latents": self.latents, "label": self.label, "meta": self.meta, "sae_class": cls_path,
                 "sae_saved": self._savable()})

    def save_extra(self, folder: Path, prefix: str) -> None:
        if self._savable():
            self.sae.save(str(folder / f"{prefix}sae"))

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], config: dict[str, Any], folder: Path | None = None,
                   sae: Any = None, prefix: str = "", **runtime: Any) -> "SAELatents":
        if sae is None and config.get("sae_saved") and folder is not None:
            sae = _load_saved_sae(config.get("sae_class"), folder / f"{prefix}sae")
        return cls(sae, config["latents"], config.get("label", "sae"), config.get("meta", {}),
                   decoder_rows=tensors["decoder_rows"])


def _load_saved_sae(cls_path: str | None, path: Path) -> Any:
    """Load an SAE saved next to an intervention, only for classes of this package (no arbitrary imports)."""
    if not cls_path or not cls_path.startswith("interp.") or not path.exists():
        return None
    module, _, name = cls_path.rpartition(".")
    sae_cls = getattr(importlib.import_module(module), name, None)
    load = getattr(sae_cls, "load", None)
    return load(str(path)) if callable(load) else None


def token_direction(model: Any, token_id: int) -> Tensor:
    """The unit-norm embedding row of a token: [d_model] float32 on the CPU (a simple steering direction,
    ``Direction(token_direction(model, t))``)."""
    v = model.W_E[int(token_id)].detach().float().cpu()
    return v / v.norm().clamp_min(1e-12)
