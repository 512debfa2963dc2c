"""``SparseAutoencoder``: encode activations into sparse latents and decode them back.

    f = act(W_encᵀ (x - b_dec) + b_enc)        x [..., d_in] -> f [..., d_sae]
    x̂ = f W_dec + b_dec                         f [..., d_sae] -> x̂ [..., d_in]

``act`` depends on ``cfg.architecture`` (see :mod:`interp.sae.functional`):

* ``relu``: ReLU (trained with an L1 penalty weighted by decoder norms);
* ``topk``: the k largest pre-activations of each token;
* ``batchtopk``: in training mode the k·n_tokens largest over the whole batch; in eval mode a JumpReLU
  with the ``threshold`` buffer estimated during training (so one token's latents never depend on the others);
* ``jumprelu``: z · H(z - θ) with a learned per-latent ``threshold``.

The forward runs through hook points, named as SAE-Lens names them, so an SAE inserted into a model
(:func:`interp.hooks.insert`, or :func:`interp.sae.spliced` for one block) shows them in the model's
``hook_dict`` as ``<hook>.sae.hook_sae_*``: cache them, or edit the latents with an ordinary
:class:`interp.steering.Intervention` at ``<hook>.sae.hook_sae_acts_post``::

    hook_sae_input      x [..., d_in]
    hook_sae_acts_pre   W_encᵀ (x - b_dec) + b_enc          [..., d_sae]
    hook_sae_acts_post  f = act(pre), the latents           [..., d_sae]
    hook_sae_recons     x̂ = f W_dec + b_dec                 [..., d_in]
    hook_sae_error      ε = x - x̂ (x̂ of the unedited latents)  [..., d_in]
    hook_sae_output     x̂, or x̂ + ε with ``with_error``    [..., d_in]

Saved as ``sae_weights.safetensors`` + ``cfg.json`` (:meth:`SparseAutoencoder.save` / :meth:`SparseAutoencoder.load`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from transformer_lens.HookedRootModule import HookedRootModule

from interp.io import read_json, read_safetensors, verify_checksums, write_checksums
from interp.locks import warn_if_being_written

from interp.hooks.hook_points import HookPoint
from interp.hooks.protocol import HookedModel

from . import functional as F
from .config import SAEConfig

__all__ = ["SparseAutoencoder", "WEIGHTS_FILE", "CONFIG_FILE", "flatten_input"]

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"


def flatten_input(act: Tensor, d_in: int, hook: str | None = None) -> Tensor:
    """An activation as the SAE reads it: [..., d_in] as it is, or [b, pos, ...] whose axes after ``pos`` hold
    ``d_in`` values flattened to [b, pos, d_in] (an SAE of width H·P reads ``hook_u`` [b, pos, H, P]).
    ValueError, naming ``hook``, otherwise."""
    if act.shape[-1] == d_in:
        return act
    if act.dim() >= 3 and act.shape[2:].numel() == d_in:
        return act.flatten(2)
    raise ValueError(f"hook {hook or '?'!r} has shape {tuple(act.shape)}; the SAE reads d_in={d_in} features per "
                     "position")


class SparseAutoencoder(HookedRootModule):
    """A sparse autoencoder of one of four architectures (``cfg.architecture``).

    Parameters: ``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in] (one row per latent),
    ``b_dec`` [d_in]; jumprelu adds the parameter ``threshold`` [d_sae], batchtopk the buffer ``threshold``
    [d_sae] (its inference threshold). Initialisation (seeded by ``cfg.seed``): decoder rows random unit
    vectors, encoder = decoder transpose, biases zero (the trainer sets ``b_dec`` from data).

    Hook points (see the module docstring): ``hook_sae_input``, ``hook_sae_acts_pre``, ``hook_sae_acts_post``,
    ``hook_sae_recons``, ``hook_sae_error``, ``hook_sae_output``. ``with_error`` (default False; SAE-Lens's
    ``use_error_term``): :meth:`forward` returns the reconstruction plus the error term (see :meth:`forward`).
    ``insert_name``: the child name under the model's hook point when inserted (``<hook>.sae.hook_sae_*``).
    """

    insert_name: ClassVar[str] = "sae"

    def __init__(self, cfg: SAEConfig, device: str | torch.device | None = None):
        super().__init__()
        self.cfg = cfg
        self.with_error = False
        dtype = cfg.torch_dtype
        g = torch.Generator().manual_seed(cfg.seed)
        w_dec = F.unit_norm_rows(torch.randn(cfg.d_sae, cfg.d_in, generator=g, dtype=torch.float64))
        self.W_dec = nn.Parameter(w_dec.to(dtype))
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous().to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.full((cfg.d_sae,), cfg.jumprelu_init_threshold, dtype=dtype))
        elif cfg.architecture == "batchtopk":
            self.register_buffer("threshold", torch.zeros(cfg.d_sae, dtype=dtype))
        self.hook_sae_input, self.hook_sae_acts_pre, self.hook_sae_acts_post = HookPoint(), HookPoint(), HookPoint()
        self.hook_sae_recons, self.hook_sae_error, self.hook_sae_output = HookPoint(), HookPoint(), HookPoint()
        self.setup()
        if device is not None:
            self.to(device)

    # --- properties --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def decoder_norms(self) -> Tensor:
        """‖W_dec,i‖ for every latent: [d_sae]."""
        return torch.linalg.vector_norm(self.W_dec, dim=-1)

    def extra_repr(self) -> str:
        c = self.cfg
        extra = f", k={c.k}" if c.architecture in ("topk", "batchtopk") else ""
        return f"{c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}{extra}, hook_name={c.hook_name!r}"

    # --- encode / decode ----------------------------------------------------------------------
    def encode_pre(self, x: Tensor) -> Tensor:
        """Pre-activations: x [..., d_in] -> [..., d_sae] (``x - b_dec`` first if ``apply_b_dec_to_input``)."""
        x = x.to(self.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: Tensor, use_batch_topk: bool | None = None) -> Tensor:
        """The architecture's activation: pre [..., d_sae] -> latents [..., d_sae].

        ``use_batch_topk`` (batchtopk only): batch-level top-k (default in training mode) or the per-token
        threshold (default in eval mode).
        """
        arch = self.cfg.architecture
        if arch == "relu":
            return F.relu(pre)
        if arch == "topk":
            return F.topk(pre, int(self.cfg.k))
        if arch == "jumprelu":
            return F.jumprelu(pre, self.threshold, self.cfg.jumprelu_bandwidth)
        if use_batch_topk if use_batch_topk is not None else self.training:
            return F.batch_topk(pre, self.cfg.k)
        return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)

    def encode_with_pre(self, x: Tensor, use_batch_topk: bool | None = None) -> tuple[Tensor, Tensor]:
        """x [..., d_in] -> (latents [..., d_sae], pre-activations [..., d_sae])."""
        pre = self.encode_pre(x)
        return self.activation(pre, use_batch_topk), pre

    def encode(self, x: Tensor, use_batch_topk: bool | None = None) -> Tensor:
        """x [..., d_in] -> latents [..., d_sae]."""
        return self.encode_with_pre(x, use_batch_topk)[0]

    def decode(self, latents: Tensor) -> Tensor:
        """latents [..., d_sae] -> reconstruction [..., d_in]."""
        return latents.to(self.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """x [..., d_in] (or [b, pos, ...] holding d_in values per position, :func:`flatten_input`) -> the same
        shape: the reconstruction x̂, or with ``with_error`` x̂ + ε, through the hook points.

        The latents are per token (batchtopk: its threshold; batch-level top-k is a training device, see
        :func:`interp.sae.losses.sae_loss`). ``with_error``: the value is x̂' + ε, where x̂' decodes the latents as
        the hooks left them and ε = x - x̂ the error of the unedited ones. With no edit that is exactly x (bit for
        bit: computed as x + (x̂ - sg(x̂)) = x + 0), its gradient wrt x is the identity's (the encoder reads sg(x)),
        and gradients still reach the latents (attribution); with an edit the model sees only the change the edit
        makes (an edit at any hook point: input, pre-activations, latents, reconstruction). An edited
        ``hook_sae_error`` is added to x̂' as it is. Without ``with_error`` the value is x̂' (the
        error term is still computed, so ``hook_sae_error`` fires either way).
        """
        shape = x.shape
        x0 = flatten_input(x, self.cfg.d_in, getattr(self, "name", "").rpartition(".")[0] or None)
        x_in = self.hook_sae_input(x0)
        pre_raw = self.encode_pre(x_in.detach() if self.with_error else x_in)
        pre = self.hook_sae_acts_pre(pre_raw)
        acts = self.activation(pre, use_batch_topk=False)
        post = self.hook_sae_acts_post(acts)
        decoded = self.decode(post)
        recons = self.hook_sae_recons(decoded)
        if x_in is x0 and pre is pre_raw and post is acts:
            clean = decoded
        else:  # the input or the latents were edited: the error term is that of the unedited reconstruction
            with torch.no_grad():
                clean = self.decode(self.encode(x0, use_batch_topk=False))
        err = (x0 - clean.detach().to(x0.dtype))
        error = self.hook_sae_error(err)
        if not self.with_error:
            out = recons.to(x0.dtype)
        elif error is err:
            out = x0 + (recons - clean.detach()).to(x0.dtype)
        else:
            out = recons.to(x0.dtype) + error
        return self.hook_sae_output(out).reshape(shape)

    # --- training-time constraints --------------------------------------------------------------
    @torch.no_grad()
    def remove_gradient_parallel_to_decoder(self) -> None:
        """Drop the component of ``W_dec.grad`` along each decoder row (the step then keeps norms ~1)."""
        if self.W_dec.grad is not None:
            self.W_dec.grad.copy_(F.remove_parallel_component(self.W_dec.grad, self.W_dec))

    @torch.no_grad()
    def set_decoder_norm_to_unit(self) -> None:
        """Rescale every decoder row to unit norm."""
        self.W_dec.copy_(F.unit_norm_rows(self.W_dec))

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Re-impose the constraints: unit decoder rows (if ``normalize_decoder``), thresholds >= 0."""
        if self.cfg.normalize_decoder:
            self.set_decoder_norm_to_unit()
        if self.cfg.architecture == "jumprelu":
            self.threshold.clamp_(min=0.0)

    @torch.no_grad()
    def init_b_dec(self, x: Tensor, method: str | None = None) -> None:
        """Set ``b_dec`` from a batch x [n, d_in]: its geometric median, mean, or zeros (``cfg.b_dec_init``)."""
        method = method or self.cfg.b_dec_init
        x = x.reshape(-1, self.cfg.d_in).to(self.device)
        if method == "geometric_median":
            self.b_dec.copy_(F.geometric_median(x.float()).to(self.dtype))
        elif method == "mean":
            self.b_dec.copy_(x.float().mean(0).to(self.dtype))
        elif method == "zeros":
            self.b_dec.zero_()
        else:
            raise ValueError(f"b_dec init {method!r} is not one of geometric_median, mean, zeros")

    @torch.no_grad()
    def update_batchtopk_threshold(self, latents: Tensor) -> None:
        """EMA of the smallest positive latent of a batch-top-k training batch (batchtopk only)."""
        if self.cfg.architecture != "batchtopk":
            return
        positive = latents[latents > 0]
        if positive.numel():
            m = self.cfg.batchtopk_threshold_momentum
            cur = self.threshold
            new = positive.min().to(cur.dtype)
            # first update: take the value itself rather than averaging with the zero initial threshold
            self.threshold.copy_(torch.where(cur > 0, (1 - m) * cur + m * new, new.expand_as(cur)))

    # --- save / load ---------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``sae_weights.safetensors`` and ``cfg.json`` into ``folder`` (each replaced atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp_w, tmp_c = folder / (WEIGHTS_FILE + ".tmp"), folder / (CONFIG_FILE + ".tmp")
        save_file(tensors, str(tmp_w), metadata={"format": "interp.sae", "architecture": self.cfg.architecture})
        tmp_c.write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
        os.replace(tmp_w, folder / WEIGHTS_FILE)
        os.replace(tmp_c, folder / CONFIG_FILE)
        write_checksums(folder, [CONFIG_FILE, WEIGHTS_FILE])  # checksums.json, verified by load
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None) -> "SparseAutoencoder":
        """Load an SAE written by :meth:`save` (in eval mode)."""
        folder = Path(folder)
        cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise FileNotFoundError(
                f"{folder} is not a saved SAE: expected {CONFIG_FILE} and {WEIGHTS_FILE} "
                "(written by SparseAutoencoder.save or interp.sae.train_sae)"
            )
        warn_if_being_written(folder, "SAE folder")  # a training job still writes it: a snapshot
        verify_sae_folder(folder)
        cfg = SAEConfig.from_dict(read_json(cfg_path, what="SAE config"))
        sae = cls(cfg)
        sae.load_state_dict(read_safetensors(w_path, what="SAE weights"), strict=True)
        return sae.to(device=device, dtype=dtype).eval()


def verify_sae_folder(folder: str | os.PathLike) -> bool:
    """Check ``cfg.json`` and ``sae_weights.safetensors`` against the folder's ``checksums.json``
    (:func:`interp.io.verify_checksums`: :class:`interp.io.IntegrityError` naming a changed file; a folder without
    checksums, e.g. one SAE-Lens wrote, is read with a warning that the check is skipped)."""
    return verify_checksums(folder, [CONFIG_FILE, WEIGHTS_FILE], what="SAE folder")


def find_sae_folders(roots: list[Path] | tuple[Path, ...], limit: int = 200, max_depth: int = 5) -> list[Path]:
    """SAE folders (``cfg.json`` + ``sae_weights.safetensors``) under ``roots``, sorted
    (:func:`interp.loading.find_folders`)."""
    from interp.loading import find_folders

    return find_folders(roots, (CONFIG_FILE, WEIGHTS_FILE), limit, max_depth)


def check_fits(sae: "SparseAutoencoder", model: HookedModel) -> None:
    """ValueError unless ``sae`` can read ``model``: its hook exists in the model, and an SAE on the residual
    stream has ``d_in`` = the model's ``d_model``."""
    hook = sae.cfg.hook_name
    if hook not in model.hook_dict:
        raise ValueError(f"The SAE reads hook {hook!r}, which this model does not have: it was trained on another model.")
    if sae.cfg.d_in != model.cfg.d_model and hook.endswith(("resid_pre", "resid_post", "hook_embed")):
        raise ValueError(f"The SAE's d_in={sae.cfg.d_in} differs from this model's d_model={model.cfg.d_model}.")


def open_sae(folder: str | os.PathLike, roots: list[Path] | tuple[Path, ...],
             model: HookedModel) -> "SparseAutoencoder":
    """The SAE of a folder inside ``roots``, its files included (:func:`interp.loading.inside_roots`), checked against ``model``
    (:func:`check_fits`), in eval mode; every failure a ValueError."""
    from interp.loading import inside_roots

    from .saelens import load_sae

    path = inside_roots(folder, roots, contents=True)  # its files and the paths they name too
    if not path.exists():
        raise ValueError(f"The SAE folder {folder} does not exist.")
    try:
        sae = load_sae(path)
    except Exception as e:  # noqa: BLE001 - the loader's message says what is wrong
        raise ValueError(f"Could not load an SAE from {path}: {str(e)[:400]}") from e
    check_fits(sae, model)
    return sae.eval()
