"""SAE-Lens interoperability: write our SAEs in SAE-Lens's on-disk format, read SAE-Lens SAEs into ours.

    from interp.sae.saelens import save_saelens, load_saelens, from_saelens, to_saelens, load_sae

    save_saelens(sae, "runs/sae/l1_saelens")           # sae_lens.SAE.load_from_disk(folder) loads it
    sae = load_saelens("some/sae_lens/folder")          # -> SparseAutoencoder (splice, analysis, steering)
    sae = from_saelens(sae_lens_sae)                    # an in-memory sae_lens.SAE (inference or training class)
    sl = to_saelens(sae)                                # an in-memory sae_lens.SAE (needs ``pip install sae-lens``)
    sae = load_sae(folder)                              # either format, detected from cfg.json

Both formats are a folder with ``cfg.json`` + ``sae_weights.safetensors`` and the same tensor layout
(``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in], ``b_enc`` [d_sae], ``b_dec`` [d_in], ``threshold`` [d_sae]);
they differ in ``cfg.json`` (SAE-Lens >= 6: ``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``device``,
``apply_b_dec_to_input``, ``normalize_activations``, ``reshape_activations``, per-architecture keys such as
``k`` / ``rescale_acts_by_decoder_norm``, and a ``metadata`` dict with ``hook_name``, ``model_name``, ...).
Reading and writing files needs neither ``sae_lens`` nor its import time; only :func:`to_saelens` and
:func:`from_saelens` on an object import it.

Architectures (ours -> SAE-Lens inference class; encodings and decodings identical up to float rounding):

=============  =====================  ==========================================================================
ours           SAE-Lens               notes
=============  =====================  ==========================================================================
``relu``       ``standard``           ReLU(W_encᵀ(x - b_dec) + b_enc)
``topk``       ``topk``               ``rescale_acts_by_decoder_norm=False`` (we select on the raw pre-activation)
``jumprelu``   ``jumprelu``           SAE-Lens computes ReLU(z)·H(z - θ), we z·H(z - θ): equal for θ >= 0
                                      (our trainer keeps θ >= 0; a negative θ is refused on export)
``batchtopk``  ``jumprelu``           as SAE-Lens saves its own BatchTopK SAEs: inference is a JumpReLU with the
                                      threshold estimated in training (our eval-mode ``threshold`` buffer).
                                      ``metadata.training_architecture = "batchtopk"`` and the ``k`` in
                                      ``metadata.training_architecture_details`` let us load it back as batchtopk
=============  =====================  ==========================================================================

Our full :class:`~interp.sae.config.SAEConfig` is stored in ``metadata.interp_sae_config``, so a round trip
restores every training field too. Metadata: ``hook_name`` and ``model_name`` map to our ``cfg.hook_name`` /
``cfg.model_name``.

Reading SAE-Lens SAEs: ``standard`` -> relu; ``topk`` -> topk (a ``rescale_acts_by_decoder_norm`` SAE has its
decoder norms folded into the encoder, which keeps encodings and decodings; training-class TopK SAEs default to
it); ``jumprelu`` -> jumprelu (a negative inference threshold is clamped to 0, which is exact because SAE-Lens
applies ReLU first), or batchtopk when ``metadata.training_architecture`` says so; an in-memory
``BatchTopKTrainingSAE`` (architecture ``batchtopk``) -> batchtopk with its scalar ``topk_threshold`` as the
per-latent threshold. ``apply_b_dec_to_input`` is kept. ``reshape_activations="hook_z"`` needs no handling: our
splice flattens the axes after ``pos`` when the last one is not ``d_in``. Refused with a clear error: other
architectures (gated, abstopk, transcoders, ...), ``normalize_activations`` of ``layer_norm`` /
``constant_norm_rescale`` / ``covariance_whitening`` (input-dependent or unfolded maps we cannot express) and a
fine-tuning scaling factor. ``expected_average_only_in`` loads with a warning (SAE-Lens applies it at run time
only through ``fold_activation_norm_scaling_factor``), as does a ``hook_head_index`` (our splice reads the whole
hook).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import Tensor

from interp.io import CorruptFileError, read_json, read_safetensors, write_checksums

from .config import ARCHITECTURES, SAEConfig
from .model import CONFIG_FILE, WEIGHTS_FILE, SparseAutoencoder, verify_sae_folder

__all__ = [
    "SAEFormatError", "SAELENS_ARCHITECTURE", "SUPPORTED_SAELENS_ARCHITECTURES", "INTERP_CONFIG_KEY",
    "saelens_config", "saelens_state_dict", "save_saelens", "to_saelens", "from_saelens", "load_saelens",
    "sae_format", "load_sae",
]

# our architecture -> SAE-Lens inference architecture
SAELENS_ARCHITECTURE = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}
# SAE-Lens architectures we read (``batchtopk`` only as an in-memory training SAE or a training cfg.json)
SUPPORTED_SAELENS_ARCHITECTURES = ("standard", "topk", "jumprelu", "batchtopk")
# every SAE-Lens 6.x architecture name we know of (to tell an unsupported SAE-Lens SAE from a foreign folder)
_KNOWN_SAELENS_ARCHITECTURES = SUPPORTED_SAELENS_ARCHITECTURES + (
    "gated", "abstopk", "transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder",
    "temporal", "matching_pursuit", "matryoshka_batchtopk",
)
INTERP_CONFIG_KEY = "interp_sae_config"  # metadata key holding our SAEConfig
_MIN_SAELENS_VERSION = "6.0.0"
_DTYPES = {"float32", "float64", "float16", "bfloat16"}


class SAEFormatError(ValueError):
    """A folder or object that is not an SAE we can read, or an SAE that cannot be expressed in the other format."""


# ----------------------------------------------------------------------------------------------------------------
# ours -> SAE-Lens


def _saelens_version() -> str:
    """The installed sae-lens version (>= 6.0.0 so SAE-Lens reads the config as 6.x), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("sae-lens")
        return v if int(v.split(".")[0]) >= 6 else _MIN_SAELENS_VERSION
    except (PackageNotFoundError, ValueError):  # not installed, or an unparsable version
        return _MIN_SAELENS_VERSION


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise SAEFormatError(f"dtype {dtype} has no SAE-Lens name; cast the SAE first (sae.to(torch.float32))")
    return name


def saelens_config(sae: SparseAutoencoder, metadata: dict[str, Any] | None = None,
                   reshape_activations: Literal["none", "hook_z"] = "none") -> dict[str, Any]:
    """The SAE-Lens ``cfg.json`` dict of ``sae`` (see the module docstring for the architecture mapping).

    Args:
        metadata: extra ``metadata`` entries (e.g. ``context_size``, ``prepend_bos``, ``dataset_path``); they
            override the defaults (``hook_name``, ``model_name``, versions, our config).
        reshape_activations: ``"hook_z"`` makes SAE-Lens flatten a [..., n_heads, d_head] input itself (the
            SAE's hook must end in ``_z``); ``"none"`` expects [..., d_in].
    """
    cfg = sae.cfg
    arch = SAELENS_ARCHITECTURE[cfg.architecture]
    version = _saelens_version()
    meta: dict[str, Any] = {
        "sae_lens_version": version,
        "sae_lens_training_version": version,
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "hook_head_index": None,
        INTERP_CONFIG_KEY: cfg.to_dict(),
    }
    if cfg.architecture == "batchtopk":
        # what SAE-Lens writes when it saves its own BatchTopK SAE for inference
        meta["training_architecture"] = "batchtopk"
        meta["training_architecture_details"] = {"k": cfg.k, "topk_threshold_lr": cfg.batchtopk_threshold_momentum}
    meta.update(metadata or {})
    if reshape_activations not in ("none", "hook_z"):
        raise SAEFormatError(f"reshape_activations must be 'none' or 'hook_z', got {reshape_activations!r}")
    if reshape_activations == "hook_z" and not str(meta.get("hook_name") or "").endswith("_z"):
        raise SAEFormatError("reshape_activations='hook_z' needs a hook name ending in '_z' "
                             f"(SAE-Lens refuses it otherwise); this SAE's hook is {meta.get('hook_name')!r}")
    out: dict[str, Any] = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": _dtype_name(sae.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": reshape_activations,
        "metadata": meta,
    }
    if arch == "topk":
        out["k"] = int(cfg.k)
        out["rescale_acts_by_decoder_norm"] = False
    return json.loads(json.dumps(out))  # plain JSON values


def saelens_state_dict(sae: SparseAutoencoder) -> dict[str, Tensor]:
    """The SAE-Lens ``sae_weights.safetensors`` tensors of ``sae`` (CPU, contiguous): ``W_enc`` [d_in, d_sae],
    ``W_dec`` [d_sae, d_in], ``b_enc`` [d_sae], ``b_dec`` [d_in] and, for jumprelu / batchtopk, ``threshold``
    [d_sae].

    Raises:
        SAEFormatError: a jumprelu SAE with a negative threshold (SAE-Lens would zero the negative activations
            ours lets through: clamp it with ``sae.threshold.data.clamp_(min=0)`` first).
    """
    arch = sae.cfg.architecture
    tensors = {name: getattr(sae, name).detach() for name in ("W_enc", "W_dec", "b_enc", "b_dec")}
    if arch in ("jumprelu", "batchtopk"):
        threshold = sae.threshold.detach()
        if arch == "jumprelu" and bool((threshold < 0).any()):
            raise SAEFormatError(
                f"{int((threshold < 0).sum())} JumpReLU threshold(s) are negative; SAE-Lens applies ReLU before the "
                "threshold, so these latents would encode differently. Clamp them first: "
                "sae.threshold.data.clamp_(min=0)"
            )
        tensors["threshold"] = threshold
    return {k: v.cpu().contiguous() for k, v in tensors.items()}


def save_saelens(sae: SparseAutoencoder, folder: str | os.PathLike, metadata: dict[str, Any] | None = None,
                 reshape_activations: Literal["none", "hook_z"] = "none") -> Path:
    """Write ``sae`` into ``folder`` in SAE-Lens's format (``cfg.json`` + ``sae_weights.safetensors``), so that
    ``sae_lens.SAE.load_from_disk(folder)`` loads it. Arguments as :func:`saelens_config`. Each file is replaced
    atomically. Returns the folder.

    The folder uses the same two file names as :meth:`SparseAutoencoder.save`, so give it its own folder
    (e.g. ``out / "saelens"``); :func:`load_sae` reads either format.
    """
    cfg = saelens_config(sae, metadata, reshape_activations)
    tensors = saelens_state_dict(sae)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_c = folder / (WEIGHTS_FILE + ".tmp"), folder / (CONFIG_FILE + ".tmp")
    save_file(tensors, str(tmp_w), metadata={"format": "pt"})
    tmp_c.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp_w, folder / WEIGHTS_FILE)
    os.replace(tmp_c, folder / CONFIG_FILE)
    write_checksums(folder, [CONFIG_FILE, WEIGHTS_FILE])  # checksums.json (SAE-Lens ignores it)
    return folder


def _import_sae_lens() -> Any:
    try:
        import sae_lens
    except ImportError as e:
        raise ImportError("this needs SAE-Lens: pip install 'sae-lens>=6,<7' (or pip install 'interp[sae]'); "
                          "save_saelens / load_saelens work on folders without it") from e
    return sae_lens


def to_saelens(sae: SparseAutoencoder, metadata: dict[str, Any] | None = None,
               device: str | torch.device | None = None) -> Any:
    """An in-memory ``sae_lens.SAE`` (``StandardSAE`` / ``TopKSAE`` / ``JumpReLUSAE``) with ``sae``'s weights,
    on ``device`` (default: the SAE's). Needs ``sae_lens``."""
    sae_lens = _import_sae_lens()
    cfg = saelens_config(sae, metadata)
    cfg["device"] = str(device if device is not None else sae.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = sae_lens.SAE.from_dict(cfg)
    out.load_state_dict({k: v.to(out.W_enc.device) for k, v in saelens_state_dict(sae).items()}, strict=True)
    return out.eval()


# ----------------------------------------------------------------------------------------------------------------
# SAE-Lens -> ours


def _pre6(cfg: dict[str, Any]) -> dict[str, Any]:
    """Bring a pre-6.0 SAE-Lens config (flat, ``hook_point``, ``activation_fn``) to the 6.x shape we read."""
    meta = cfg.get("metadata") or {}
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    try:
        major = int(str(version).split(".")[0]) if version else 0
    except ValueError:
        major = 0
    if major >= 6:
        return cfg
    cfg = {({"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
             "activation_fn_str": "activation_fn"}).get(k, k): v for k, v in cfg.items()}
    cfg.setdefault("architecture", "standard")
    cfg.setdefault("apply_b_dec_to_input", True)
    if cfg.get("activation_fn") == "topk" and (cfg.get("activation_fn_kwargs") or {}).get("k") is not None:
        cfg["architecture"], cfg["k"] = "topk", cfg["activation_fn_kwargs"]["k"]
    if isinstance(cfg.get("normalize_activations"), bool):
        cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
    flat_meta = {k: cfg[k] for k in ("model_name", "hook_name", "hook_head_index") if k in cfg}
    cfg["metadata"] = {**flat_meta, **meta}
    return cfg


def _meta_get(cfg: dict[str, Any], key: str) -> Any:
    meta = cfg.get("metadata") or {}
    return meta.get(key, cfg.get(key)) if isinstance(meta, dict) else cfg.get(key)


def _our_dtype(name: Any, fallback: torch.dtype) -> str:
    name = str(name or "").removeprefix("torch.")
    return name if name in _DTYPES else str(fallback).removeprefix("torch.")


def _convert(cfg: dict[str, Any], state: dict[str, Tensor], source: str, relu_first: bool,
             device: str | torch.device | None, dtype: torch.dtype | None) -> SparseAutoencoder:
    """Our SparseAutoencoder from an SAE-Lens config dict and state dict (``relu_first``: SAE-Lens's inference
    JumpReLU, ReLU(z)·H(z - θ), rather than the training one, z·H(z - θ))."""
    cfg = _pre6(cfg)
    arch = cfg.get("architecture")
    if arch not in SUPPORTED_SAELENS_ARCHITECTURES:
        raise SAEFormatError(
            f"{source}: SAE-Lens architecture {arch!r} has no equivalent here; supported: "
            f"{list(SUPPORTED_SAELENS_ARCHITECTURES)} (our relu, topk, jumprelu, batchtopk)"
        )
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm in ("layer_norm", "constant_norm_rescale"):
        raise SAEFormatError(
            f"{source}: normalize_activations={norm!r} rescales every input token at run time, which our "
            "SparseAutoencoder cannot express; use the SAE in sae_lens, or retrain with normalize_activations='none'"
        )
    if norm == "covariance_whitening":
        raise SAEFormatError(
            f"{source}: normalize_activations='covariance_whitening' is not folded into the weights; fold it in "
            "sae_lens first (sae.fold_activation_whitening(mean, M, M_inv)), then convert the folded SAE"
        )
    if norm == "expected_average_only_in":
        warnings.warn(
            f"{source}: normalize_activations='expected_average_only_in': the SAE expects inputs scaled by a norm "
            "scaling factor (SAE-Lens applies it only if you fold it: sae.fold_activation_norm_scaling_factor(f)); "
            "the weights are loaded as they are", stacklevel=3)
    if _meta_get(cfg, "hook_head_index") is not None:
        warnings.warn(
            f"{source}: the SAE reads one attention head (hook_head_index={_meta_get(cfg, 'hook_head_index')}); "
            "our splice encodes the whole hook value, so select the head yourself when splicing", stacklevel=3)
    if "scaling_factor" in state or "finetuning_scaling_factor" in state:
        s = state.get("scaling_factor", state.get("finetuning_scaling_factor"))
        if not torch.allclose(s.float(), torch.ones_like(s.float())):
            raise SAEFormatError(f"{source}: a fine-tuning scaling factor is not supported; fold it into W_dec first")

    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if "log_threshold" in state and "threshold" not in state:  # old JumpReLU checkpoints
        state = {**state, "threshold": state["log_threshold"].exp()}
    for name, shape in expected.items():
        if name not in state:
            raise SAEFormatError(f"{source}: weights lack {name!r} (have {sorted(state)}); not an SAE-Lens "
                                 f"{arch} SAE")
        if tuple(state[name].shape) != shape:
            raise SAEFormatError(f"{source}: {name} has shape {tuple(state[name].shape)}, expected {shape} for "
                                 f"d_in={d_in}, d_sae={d_sae}")
    work = torch.float64  # convert in float64, cast once at the end
    W_enc, W_dec = state["W_enc"].to(work), state["W_dec"].to(work)
    b_enc, b_dec = state["b_enc"].to(work), state["b_dec"].to(work)
    threshold: Tensor | None = None
    details = _meta_get(cfg, "training_architecture_details") or {}
    training_arch = _meta_get(cfg, "training_architecture")

    if arch == "standard":
        ours, k = "relu", None
    elif arch == "topk":
        ours, k = "topk", int(cfg.get("k", 100))
        if cfg.get("rescale_acts_by_decoder_norm", False):
            # TopK on pre·‖W_dec,i‖, decode (f / ‖W_dec,i‖) W_dec: fold the norms (SAE-Lens's own fold)
            n = torch.linalg.vector_norm(W_dec, dim=-1).clamp(min=1e-8)
            W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
    elif arch == "batchtopk":  # an in-memory BatchTopKTrainingSAE / its training cfg.json
        ours, k = "batchtopk", float(cfg.get("k", 100))
        t = state.get("topk_threshold", state.get("threshold"))
        if t is None:
            raise SAEFormatError(f"{source}: a batchtopk SAE without 'topk_threshold' (have {sorted(state)})")
        threshold = t.to(work).expand(d_sae).clone() if t.numel() == 1 else t.to(work).reshape(d_sae)
        if cfg.get("rescale_acts_by_decoder_norm", False):
            n = torch.linalg.vector_norm(W_dec, dim=-1).clamp(min=1e-8)
            W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
    else:  # jumprelu
        if "threshold" not in state:
            raise SAEFormatError(f"{source}: a jumprelu SAE without 'threshold' (have {sorted(state)})")
        threshold = state["threshold"].to(work).reshape(d_sae)
        if relu_first:
            threshold = threshold.clamp(min=0.0)  # ReLU(z)·H(z-θ) = z·H(z-max(θ,0))
        ours, k = ("batchtopk", float(details.get("k", 32))) if training_arch == "batchtopk" else ("jumprelu", None)

    dtype_name = _our_dtype(cfg.get("dtype"), state["W_enc"].dtype)
    unit = bool(torch.allclose(torch.linalg.vector_norm(W_dec, dim=-1), torch.ones(d_sae, dtype=work), atol=1e-4))
    fields: dict[str, Any] = dict(
        d_in=d_in, d_sae=d_sae, architecture=ours, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_decoder=unit, hook_name=_meta_get(cfg, "hook_name"), model_name=_meta_get(cfg, "model_name"),
        dtype=dtype_name,
    )
    if k is not None:
        fields["k"] = k
    # training hyper-parameters that mean the same in both libraries
    for theirs, mine in (("l1_coefficient", "l1_coefficient"), ("l0_coefficient", "l0_coefficient"),
                         ("jumprelu_bandwidth", "jumprelu_bandwidth"),
                         ("jumprelu_init_threshold", "jumprelu_init_threshold"),
                         ("aux_loss_coefficient", "aux_coefficient"),
                         ("topk_threshold_lr", "batchtopk_threshold_momentum")):
        value = cfg.get(theirs, details.get(theirs) if isinstance(details, dict) else None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            fields[mine] = value
    ours_saved = _meta_get(cfg, INTERP_CONFIG_KEY)
    if isinstance(ours_saved, dict) and SAELENS_ARCHITECTURE.get(ours_saved.get("architecture")) == \
            ("jumprelu" if arch == "batchtopk" else arch):
        # written by save_saelens: restore our training fields; the SAE-Lens fields stay authoritative
        names = {f.name for f in dataclasses.fields(SAEConfig)}
        keep = ("d_in", "d_sae", "apply_b_dec_to_input", "hook_name", "model_name", "dtype")
        fields = {**{k_: v for k_, v in ours_saved.items() if k_ in names}, **{k_: fields[k_] for k_ in keep}}
    try:
        our_cfg = SAEConfig(**fields)
    except ValueError as e:
        raise SAEFormatError(f"{source}: cannot express this SAE-Lens SAE as an SAEConfig: {e}") from e
    sae = SparseAutoencoder(our_cfg)
    with torch.no_grad():
        for name, value in (("W_enc", W_enc), ("W_dec", W_dec), ("b_enc", b_enc), ("b_dec", b_dec),
                            ("threshold", threshold)):
            if value is not None:
                getattr(sae, name).copy_(value.to(sae.dtype))
    return sae.to(device=device, dtype=dtype).eval()


def load_saelens(folder: str | os.PathLike, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> SparseAutoencoder:
    """Read an SAE-Lens folder (``cfg.json`` + ``sae_weights.safetensors``, as ``SAE.save_model`` /
    ``save_inference_model`` or :func:`save_saelens` write it) into our :class:`SparseAutoencoder` (eval mode).
    Does not import ``sae_lens``.

    Raises:
        SAEFormatError: not an SAE-Lens folder (the message says what the folder holds), or an architecture /
            normalisation we cannot express (module docstring).
    """
    folder = Path(folder)
    fmt = sae_format(folder)
    if fmt != "sae_lens":
        raise SAEFormatError(f"{folder} holds an SAE in interp's own format, not SAE-Lens's: load it with "
                             "SparseAutoencoder.load(folder) or load_sae(folder)")
    verify_sae_folder(folder)
    cfg = read_json(folder / CONFIG_FILE, what="SAE config")
    state = read_safetensors(folder / WEIGHTS_FILE, what="SAE weights")
    return _convert(cfg, state, str(folder), relu_first=True, device=device, dtype=dtype)


def from_saelens(source: Any, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> SparseAutoencoder:
    """Our :class:`SparseAutoencoder` (eval mode) from an SAE-Lens SAE: an in-memory ``sae_lens.SAE`` (an
    inference class, or a training class such as ``TopKTrainingSAE`` / ``BatchTopKTrainingSAE``), or a folder
    (as :func:`load_saelens`). Encodings and decodings equal SAE-Lens's for inputs [..., d_in]; ``device`` and
    ``dtype`` default to the source's."""
    if isinstance(source, (str, os.PathLike)):
        return load_saelens(source, device=device, dtype=dtype)
    cfg_obj = getattr(source, "cfg", None)
    if cfg_obj is None or not hasattr(cfg_obj, "to_dict") or not hasattr(source, "state_dict"):
        raise SAEFormatError(f"expected a sae_lens.SAE or a folder, got {type(source).__name__}")
    cfg = cfg_obj.to_dict()
    if not isinstance(cfg.get("metadata", {}), dict) and hasattr(cfg["metadata"], "to_dict"):
        cfg["metadata"] = cfg["metadata"].to_dict()
    try:
        from sae_lens.saes.sae import TrainingSAE

        training = isinstance(source, TrainingSAE)
    except ImportError:  # pragma: no cover - an object from sae_lens implies sae_lens
        training = False
    state = {k: v.detach().cpu() for k, v in source.state_dict().items()}
    if device is None and isinstance(getattr(source, "W_enc", None), Tensor):
        device = source.W_enc.device
    return _convert(cfg, state, type(source).__name__, relu_first=not training, device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# either format


def sae_format(folder: str | os.PathLike) -> Literal["interp", "sae_lens"]:
    """Which format the SAE in ``folder`` is saved in: ``"interp"`` (:meth:`SparseAutoencoder.save`) or
    ``"sae_lens"``, from the keys of its ``cfg.json``.

    Raises:
        SAEFormatError: the folder does not exist, lacks ``cfg.json`` / ``sae_weights.safetensors``, or its
            config is neither format (the message lists what was found and what to do).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SAEFormatError(f"{folder} is not a folder; pass the folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    have = sorted(p.name for p in folder.iterdir())
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
    if missing:
        hints = []
        if (folder / "checkpoint" / "state.json").is_file():
            hints.append("it holds an unfinished SAE training run: interp.sae.load_checkpoint_sae(folder) reads "
                         "its checkpoint, or re-run the training to finish it")
        if (folder / "sae.safetensors").is_file():
            hints.append("sae.safetensors is EleutherAI sparsify's format: sae_lens.SAE.load_from_disk(folder, "
                         "converter=sparsify_disk_loader) converts it, then from_saelens(sae)")
        subs = [p.name for p in folder.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file()]
        if subs:
            hints.append(f"these sub-folders hold SAEs: {sorted(subs)[:10]}")
        raise SAEFormatError(
            f"{folder} is not a saved SAE: missing {missing} (found {have[:20]}). An SAE folder holds {CONFIG_FILE} "
            f"and {WEIGHTS_FILE}, written by SparseAutoencoder.save / train_sae (interp) or SAE.save_model "
            "(SAE-Lens)" + ("; " + "; ".join(hints) if hints else "")
        )
    try:
        cfg = read_json(folder / CONFIG_FILE, what="SAE config")
    except CorruptFileError as e:
        raise SAEFormatError(f"{e} The folder is not a saved SAE.") from e
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{folder / CONFIG_FILE} holds a {type(cfg).__name__}, not an SAE config object")
    ours = {f.name for f in dataclasses.fields(SAEConfig)}
    if set(cfg) <= ours and {"d_in", "d_sae"} <= set(cfg) and cfg.get("architecture", "relu") in ARCHITECTURES:
        return "interp"
    arch = cfg.get("architecture")
    looks_saelens = ("d_in" in cfg and "d_sae" in cfg and
                     (arch in _KNOWN_SAELENS_ARCHITECTURES or "metadata" in cfg or "hook_point" in cfg
                      or "sae_lens_version" in cfg))
    if looks_saelens:
        return "sae_lens"
    raise SAEFormatError(
        f"{folder / CONFIG_FILE} is neither an interp SAE config nor an SAE-Lens one (architecture={arch!r}, keys "
        f"{sorted(cfg)[:15]}). interp configs hold only SAEConfig fields with architecture in {list(ARCHITECTURES)}; "
        f"SAE-Lens configs hold d_in, d_sae, architecture and metadata. Re-save the SAE with "
        "SparseAutoencoder.save or sae_lens's SAE.save_model"
    )


def load_sae(folder: str | os.PathLike, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None) -> SparseAutoencoder:
    """Load an SAE saved in either format (:func:`sae_format`) as our :class:`SparseAutoencoder` (eval mode)."""
    verify_sae_folder(folder)  # before the format is read from cfg.json
    if sae_format(folder) == "interp":
        return SparseAutoencoder.load(folder, device=device, dtype=dtype)
    return load_saelens(folder, device=device, dtype=dtype)
