"""Tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens";
AlignmentResearch ``tuned-lens``): the logit lens with a learned affine translator per layer.

    from interp.lens import TunedLensConfig, train_tuned_lens, tuned_lens, lens_kl
    corpus = interp.data.tokfsm_dataset(512, seed=1)                  # LongTensor [N, L]: a token corpus
    lens = train_tuned_lens(model, corpus, cfg=TunedLensConfig(steps=200), out_dir="runs/lens/tokfsm-mamba")
    view = tuned_lens(model, tokens, lens=lens)                         # a LogitLens: logit_lens_figure draws it
    lens_kl(model, held_out, lens=lens), lens_kl(model, held_out)      # [n_layers] KL to the final layer: tuned, logit
    lens = TunedLens.load("runs/lens/tokfsm-mamba", model=model)

Definition (``tuned_lens/nn/lenses.py``): for each layer l = 0 .. n_layers - 1 a translator reads the residual
stream entering block l, h_l = ``blocks.{l}.hook_resid_pre`` (l = 0: the embedding), and maps it to

    h_l + A_l h_l + b_l                      (A_l [d_model, d_model], b_l [d_model], both initialised to zero)

which the model's own final norm and unembedding read (:func:`interp.lens.logit.resid_logits`). The residual
parametrisation makes an untrained lens *exactly* the logit lens, and weight decay pulls it toward the identity.
The final residual stream (``blocks.{n_layers-1}.hook_resid_post``) needs no translator: its read-out is the
model's output.

Training (``tuned_lens/scripts/train_loop.py``, loss "kl"): minimise Σ_l mean_{b, p} KL(p_final ‖ p_lens,l), the
model's own output distribution at the same position (detached) as the target, layer by layer (one backward per
layer, as the reference does, so memory stays at one layer's logits); the gradient norm clipped to 1; SGD with
Nesterov momentum and a linear decay to 0 (:class:`TunedLensConfig`). Only the translators learn; the model is frozen.

Works on SSMs and transformers alike: it needs ``run_with_cache`` on the residual hooks and ``ln_final`` /
``unembed`` (:class:`interp.hooks.HookedModel`).

Checkpoints (:mod:`interp.training`: safetensors + JSON, atomic swap, optimizer / scheduler / RNG state) go to
``out_dir/checkpoint`` every ``checkpoint_every`` steps; calling :func:`train_tuned_lens` again with the same
arguments resumes there and ends with the same translators as an uninterrupted run. The finished lens is saved
to ``out_dir`` (:meth:`TunedLens.save`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from interp.hooks import HookedModel
from interp.hooks.loading import ExistingRunError
from interp.hooks.tokens import as_tokens
from interp.io import read_json, read_safetensors, verify_checksums, write_json
from interp.locks import FolderLock, warn_if_being_written
from interp.metrics import kl_divergence
from interp.training import (
    CHECKPOINT_DIR, DECAYS, clear_checkpoints, config_diff, find_checkpoint, load_checkpoint, read_checkpoint_state,
    save_checkpoint, thread_count_warning, warmup_decay,
)

from .logit import LogitLens, _one_prompt, _read_lens, resid_logits

__all__ = ["TunedLensConfig", "TunedLens", "train_tuned_lens", "tuned_lens", "lens_kl", "translator_hooks",
           "OPTIMIZERS", "LENS_FILE", "LENS_CONFIG_FILE"]

OPTIMIZERS = ("sgd", "adam")
LENS_FILE = "tuned_lens.safetensors"
LENS_CONFIG_FILE = "tuned_lens.json"
FORMAT = "interp-tuned-lens"
FORMAT_VERSION = 1

#: what ``batches`` may be: a token corpus [N, L] (batches of ``cfg.batch_size`` rows drawn from it), or a pure
#: function of the step returning tokens [b, L] or ``{"tokens": [b, L], ...}``
Batches = Union[torch.Tensor, Callable[[int], Any]]


@dataclass
class TunedLensConfig:
    """Every knob of a tuned-lens training run, in one place.

    Optimisation (defaults: the reference's, ``tuned_lens/scripts/ingredients.py``):
        optimizer: ``"sgd"`` (the reference's default and ours: SGD with Nesterov momentum; the objective is convex
            in each translator, and the reference found SGD with these settings to converge fastest) or ``"adam"``
            (Adam with AMSGrad and betas ``(momentum, 0.999)``, as the reference offers; give it ``lr`` ~1e-3 and
            some ``warmup_steps``).
        lr: the learning rate handed to the optimizer. 0.1 = the reference's SGD default (its ``lr_scale`` 1 times
            1 - momentum, which undoes PyTorch's 1 / (1 - β) scaling of momentum SGD).
        momentum: SGD's (Nesterov) momentum, or Adam's beta1.
        weight_decay: weight decay of every translator parameter (toward the identity map, given the residual
            parametrisation).
        warmup_steps: linear warm-up steps (the reference: 0 for SGD).
        lr_decay: ``"linear"`` (the reference: to 0 at the last step), ``"cosine"`` or ``"constant"``
            (:func:`interp.training.warmup_decay`).
        grad_clip: clip the gradient norm of all translators together to this (the reference: 1.0; None: no clip).

    Run:
        steps: optimizer steps (the reference: 250).
        batch_size: prompts per step when ``batches`` is a token corpus [N, L] (ignored when ``batches`` is a
            function of the step, which decides its own batch size).
        seed: seed of the order in which the corpus rows are drawn (epoch e is a permutation seeded by
            ``(seed, e)``, so a batch is a pure function of the step and a resumed run sees the same data).
        checkpoint_every: steps between resumable checkpoints (0: only at the end; without ``out_dir``: none).
        log_every: steps between progress-bar / history updates of the mean KL.
    """

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-3
    warmup_steps: int = 0
    lr_decay: str = "linear"
    grad_clip: float | None = 1.0
    steps: int = 250
    batch_size: int = 16
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 10

    def __post_init__(self) -> None:
        def bad(field: str, want: str) -> ValueError:
            return ValueError(f"TunedLensConfig.{field} must be {want}, got {getattr(self, field)!r}")

        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"one of {OPTIMIZERS}")
        if self.lr_decay not in DECAYS:
            raise bad("lr_decay", f"one of {DECAYS}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "a finite number > 0")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise bad("momentum", "in [0, 1)")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            raise bad("weight_decay", "a finite number >= 0")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise bad("grad_clip", "None or a number > 0")
        for field, low in (("steps", 1), ("batch_size", 1), ("warmup_steps", 0), ("checkpoint_every", 0),
                           ("log_every", 1), ("seed", 0)):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise bad(field, f"an int >= {low}")
        if self.warmup_steps > self.steps:
            raise bad("warmup_steps", f"at most steps ({self.steps})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TunedLensConfig:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown TunedLensConfig fields {unknown}")
        return cls(**d)


def translator_hooks(model: HookedModel) -> tuple[str, ...]:
    """The residual hooks the translators read, one per layer: ``blocks.{l}.hook_resid_pre`` (l = 0: the embedding)."""
    return tuple(f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers))


def _readout_hash(model: HookedModel) -> str:
    """sha256 of the read-out's weights (final norm and unembedding, float32): which model a lens belongs to."""
    h = hashlib.sha256()
    tensors = [("W_U", model.W_U)] + sorted(dict(model.ln_final.state_dict()).items())
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _model_name(model: HookedModel) -> str | None:
    name = getattr(model.cfg, "model_name", None)
    return None if name is None else str(name)


class TunedLens(torch.nn.Module):
    """One affine translator per layer, ``h -> h + A_l h + b_l`` (module docstring).

    ``lens(resid, layer=l)`` translates a residual stream [..., d_model] read at ``blocks.{l}.hook_resid_pre``;
    ``layer=n_layers`` (the final residual stream) is the identity. Logits: ``resid_logits(model, lens(resid,
    layer=l))``. Build one for a model with :meth:`for_model`.

    Attributes:
        d_model, n_layers: the model's residual width and number of blocks.
        model_name: the model's ``cfg.model_name`` (provenance; None if unknown).
        readout_hash: sha256 of the model's final norm and unembedding weights (None if unknown).
        translators: ``nn.ModuleList`` of ``n_layers`` ``nn.Linear(d_model, d_model)``.
    """

    def __init__(self, d_model: int, n_layers: int, *, model_name: str | None = None,
                 readout_hash: str | None = None) -> None:
        super().__init__()
        self.d_model, self.n_layers = int(d_model), int(n_layers)
        self.model_name, self.readout_hash = model_name, readout_hash
        self.translators = torch.nn.ModuleList(torch.nn.Linear(self.d_model, self.d_model)
                                               for _ in range(self.n_layers))
        with torch.no_grad():
            for t in self.translators:
                t.weight.zero_()
                t.bias.zero_()

    @classmethod
    def for_model(cls, model: HookedModel) -> TunedLens:
        """An untrained lens (every translator zero: the logit lens) for ``model``, on its device."""
        lens = cls(model.cfg.d_model, model.cfg.n_layers, model_name=_model_name(model),
                   readout_hash=_readout_hash(model))
        return lens.to(model.W_U.device)

    def forward(self, resid: torch.Tensor, *, layer: int) -> torch.Tensor:
        """``resid`` [..., d_model] read at ``blocks.{layer}.hook_resid_pre``, translated (``layer ==
        n_layers``: the final residual stream, returned as it is)."""
        if not 0 <= int(layer) <= self.n_layers:
            raise ValueError(f"layer must be in 0..{self.n_layers}, got {layer}")
        if layer == self.n_layers:
            return resid
        t = self.translators[layer]
        return resid + t(resid.to(t.weight.dtype)).to(resid.dtype)

    def config(self) -> dict[str, Any]:
        """What ``tuned_lens.json`` holds (format, version, d_model, n_layers, model_name, readout_hash)."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "d_model": self.d_model,
                "n_layers": self.n_layers, "model_name": self.model_name, "readout_hash": self.readout_hash}

    def check_fits(self, model: HookedModel, *, where: str = "this tuned lens", strict: bool = True) -> None:
        """ValueError unless the lens was made for ``model``: same d_model and n_layers, and (``strict``) the same
        read-out weights (final norm and unembedding)."""
        theirs = (int(model.cfg.d_model), int(model.cfg.n_layers))
        if (self.d_model, self.n_layers) != theirs:
            raise ValueError(f"{where} is for a model with d_model {self.d_model} and n_layers {self.n_layers} "
                             f"({self.model_name or 'unnamed'}); this model ({_model_name(model) or 'unnamed'}) "
                             f"has d_model {theirs[0]} and n_layers {theirs[1]}: train a lens for it")
        if strict and self.readout_hash is not None and self.readout_hash != _readout_hash(model):
            raise ValueError(f"{where} was trained on another model ({self.model_name or 'unnamed'}): its final norm "
                             f"and unembedding differ from this model's ({_model_name(model) or 'unnamed'}); train "
                             "a lens for this model, or pass strict=False to use it anyway")

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/tuned_lens.safetensors`` (the translators) and ``folder/tuned_lens.json``
        (:meth:`config`); returns ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()},
                  str(folder / LENS_FILE), metadata={"format": FORMAT})
        # written last, with the sha256 of the translators and of itself (load verifies them)
        write_json(folder / LENS_CONFIG_FILE, self.config(), checksums=[LENS_FILE])
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, *, model: HookedModel, strict: bool = True) -> TunedLens:
        """The lens saved in ``folder`` by :meth:`save` (or by :func:`train_tuned_lens`), on ``model``'s device.
        ValueError, naming the folder, if it was made for another model (:meth:`check_fits`); FileNotFoundError
        if ``folder`` holds no lens."""
        folder = Path(folder)
        if not (folder / LENS_CONFIG_FILE).is_file() or not (folder / LENS_FILE).is_file():
            raise FileNotFoundError(f"no tuned lens in {folder} (expected {LENS_CONFIG_FILE} and {LENS_FILE})")
        warn_if_being_written(folder, "tuned-lens folder")  # a training job still writes it: a snapshot
        verify_checksums(folder, [LENS_FILE], record=LENS_CONFIG_FILE, what="tuned lens")
        cfg = read_json(folder / LENS_CONFIG_FILE, what="tuned-lens config")
        if cfg.get("format") != FORMAT or cfg.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder / LENS_CONFIG_FILE} is not a tuned lens of format {FORMAT} "
                             f"v{FORMAT_VERSION} (format {cfg.get('format')!r} v{cfg.get('format_version')!r})")
        lens = cls(cfg["d_model"], cfg["n_layers"], model_name=cfg.get("model_name"),
                   readout_hash=cfg.get("readout_hash"))
        lens.check_fits(model, where=f"the tuned lens in {folder}", strict=strict)
        lens.load_state_dict(read_safetensors(folder / LENS_FILE, what="tuned-lens weights"), strict=True)
        return lens.to(model.W_U.device)


# ----------------------------------------------------------------------------------------------------------------
# reading


@torch.no_grad()
def tuned_lens(model: HookedModel, tokens: Any, *, lens: TunedLens, start: int = 0,
               length: int | None = None) -> LogitLens:
    """The tuned lens of one prompt ``tokens`` (a text, ids [L] or [1, L]) over positions ``start .. start +
    length - 1``: a :class:`~interp.lens.logit.LogitLens` with the logit lens's rows (``blocks.{k}.hook_resid_post``,
    k = 0 .. n_layers - 1), row k read through translator k + 1 (it reads ``blocks.{k+1}.hook_resid_pre``, the same
    stream) and the last row, the model's output, as it is. :func:`~interp.lens.logit.logit_lens_figure` draws it;
    an untrained lens gives exactly :func:`~interp.lens.logit.logit_lens`. A batch is refused (ValueError)."""
    tokens = _one_prompt(model, tokens, "tuned_lens")
    lens.check_fits(model, strict=False)
    return _read_lens(model, tokens, start, length, translate=lambda k, resid: lens(resid, layer=k + 1))


@torch.no_grad()
def lens_kl(model: HookedModel, tokens: Any, *, lens: TunedLens | None = None, batch_size: int = 64) -> torch.Tensor:
    """float [n_layers]: per translator layer l (``blocks.{l}.hook_resid_pre``), the mean over prompts and positions
    of KL(model output ‖ lens read-out) in nats; ``lens`` None: the logit lens (no translation). ``tokens``: [b, L]
    (any form :func:`~interp.hooks.tokens.as_tokens` takes), run ``batch_size`` prompts at a time."""
    tokens = as_tokens(model, tokens)
    if lens is not None:
        lens.check_fits(model, strict=False)
    hooks = translator_hooks(model)
    total = torch.zeros(len(hooks), dtype=torch.float64)
    for i in range(0, tokens.shape[0], batch_size):
        chunk = tokens[i:i + batch_size]
        logits, cache = model.run_with_cache(chunk, names_filter=list(hooks))
        for l, h in enumerate(hooks):
            resid = cache[h] if lens is None else lens(cache[h], layer=l)
            total[l] += kl_divergence(logits.float(), resid_logits(model, resid).float()).double().sum().cpu()
    return (total / tokens.numel()).float()


# ----------------------------------------------------------------------------------------------------------------
# training


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _batch(batches: Batches, step: int, cfg: TunedLensConfig) -> torch.Tensor:
    """Batch ``step`` of the stream: rows of a corpus [N, L] in seeded epoch order, or ``batches(step)``."""
    if isinstance(batches, torch.Tensor):
        n = batches.shape[0]
        rows = [int(_epoch_order(n, cfg.seed, j // n)[j % n])
                for j in range(step * cfg.batch_size, (step + 1) * cfg.batch_size)]
        return batches[rows]
    out = batches(step)
    if isinstance(out, Mapping):
        out = out["tokens"]
    return out


def _check_batches(batches: Any) -> None:
    if isinstance(batches, torch.Tensor):
        if batches.ndim != 2 or batches.dtype not in (torch.int64, torch.int32) or batches.shape[0] < 1:
            raise ValueError(f"batches as a tensor must be a token corpus, int [N, L] with N >= 1; got "
                             f"{batches.dtype} of shape {tuple(batches.shape)}")
    elif not callable(batches):
        raise TypeError(f"batches must be a token corpus LongTensor [N, L] or a function of the step returning "
                        f"tokens [b, L] (or {{'tokens': ...}}); got {type(batches).__name__}")


def _optimizer(lens: TunedLens, cfg: TunedLensConfig) -> tuple[torch.optim.Optimizer, Any]:
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(lens.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(lens.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999), amsgrad=True,
                               weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_decay(s, cfg.steps, cfg.warmup_steps, cfg.lr_decay))
    return opt, sched


#: config fields that may differ between a run and its resumption: they do not change the trajectory
RESUME_FREE_FIELDS = ("checkpoint_every", "log_every")


def _recipe(model: HookedModel, cfg: TunedLensConfig) -> dict[str, Any]:
    """What a checkpoint stores of its run (and must match, :data:`RESUME_FREE_FIELDS` aside, to be resumed):
    the training config and the model."""
    return {"kind": "tuned_lens", **cfg.to_dict(), "d_model": int(model.cfg.d_model),
            "n_layers": int(model.cfg.n_layers), "readout_hash": _readout_hash(model)}


def _step_loss(model: HookedModel, lens: TunedLens, tokens: torch.Tensor) -> float:
    """One batch's loss Σ_l mean KL(final ‖ lens_l), backpropagated layer by layer into the translators;
    returns the mean KL over layers."""
    hooks = translator_hooks(model)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=list(hooks))
        target = logits.detach().float().log_softmax(-1)
    total = 0.0
    for l, h in enumerate(hooks):
        kl = kl_divergence(target, resid_logits(model, lens(cache[h], layer=l)).float()).mean()
        kl.backward()
        total += float(kl.detach())
    return total / len(hooks)


def train_tuned_lens(model: HookedModel, batches: Batches, *, cfg: TunedLensConfig,
                     out_dir: str | os.PathLike | None = None, resume: bool = True,
                     progress: bool = True) -> TunedLens:
    """Train a :class:`TunedLens` for ``model`` (frozen) on ``batches`` (module docstring for the objective).

    batches: a token corpus LongTensor [N, L] (``cfg.batch_size`` rows per step, in an epoch order seeded by
        ``cfg.seed``), or a pure function of the step returning tokens [b, L] or ``{"tokens": [b, L]}`` (so a
        resumed run sees the batches it would have seen).
    out_dir: checkpoints go to ``out_dir/checkpoint`` every ``cfg.checkpoint_every`` steps and the finished lens
        to ``out_dir`` (:meth:`TunedLens.load`); None: nothing is written. With ``resume`` (default) a checkpoint
        there is resumed; :class:`~interp.hooks.loading.ExistingRunError` if it belongs to another run (another
        config, another model, not a tuned-lens run) or ``out_dir`` holds a lens without a checkpoint;
        ``resume=False`` deletes the checkpoint and starts over (the lens files are overwritten at the end).
    progress: a tqdm bar with the mean KL over layers.

    ``out_dir`` is locked for the whole call (:class:`interp.locks.FolderLockedError` if another job writes it).
    """
    if not isinstance(cfg, TunedLensConfig):
        raise TypeError(f"cfg must be a TunedLensConfig, got {type(cfg).__name__}")
    _check_batches(batches)
    lens = TunedLens.for_model(model)
    opt, sched = _optimizer(lens, cfg)
    recipe = _recipe(model, cfg)
    out = None if out_dir is None else Path(out_dir)
    # one writer per out_dir, from the resume check to the saved lens
    with FolderLock(out, job="train_tuned_lens") if out is not None else nullcontext():
        start, history = 0, []
        if out is not None:
            if not resume:
                clear_checkpoints(out)
            ckpt = find_checkpoint(out)
            if ckpt is None and (out / LENS_CONFIG_FILE).exists() and resume:
                raise ExistingRunError(f"{out} holds a tuned lens but no checkpoint of the run that made it",
                                       restart="resume=False", folder="out_dir")
            if ckpt is not None:
                saved = read_checkpoint_state(ckpt)
                theirs = saved.get("recipe", {})
                if theirs.get("kind") != "tuned_lens":
                    raise ExistingRunError(f"{ckpt} is not a tuned-lens training checkpoint", restart="resume=False",
                                           folder="out_dir")
                diff = [d for d in config_diff(theirs, recipe) if d not in RESUME_FREE_FIELDS]
                if diff:
                    raise ExistingRunError(f"{ckpt} was written by another tuned-lens run (differs in {diff}); "
                                           "resuming would mix two runs", restart="resume=False", folder="out_dir")
                warning = thread_count_warning(saved)
                if warning and progress:
                    tqdm.write(warning)
                state = load_checkpoint(ckpt, lens, opt, sched)
                start, history = state["step"], state.get("history", [])
                if progress:
                    tqdm.write(f"tuned lens: resuming from {ckpt} at step {start}/{cfg.steps}")
        device = model.W_U.device
        frozen = {id(p): p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        bar = tqdm(total=cfg.steps, initial=start, desc="tuned lens", disable=not progress, dynamic_ncols=True,
                   mininterval=1.0)
        try:
            for step in range(start, cfg.steps):
                tokens = as_tokens(model, _batch(batches, step, cfg)).to(device)
                opt.zero_grad(set_to_none=True)
                kl = _step_loss(model, lens, tokens)
                if not math.isfinite(kl):
                    raise FloatingPointError(f"tuned lens training: KL is {kl} at step {step}; lower cfg.lr")
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(lens.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                done = step + 1
                bar.update(1)
                if done % cfg.log_every == 0 or done == cfg.steps:
                    history.append({"step": done, "kl": kl})
                    bar.set_postfix(kl=f"{kl:.4f}", refresh=False)
                if out is not None and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
                                        or done == cfg.steps):
                    save_checkpoint(out / CHECKPOINT_DIR, lens, opt, sched, done, recipe, {"history": history})
        finally:
            bar.close()
            for p in model.parameters():
                p.requires_grad_(frozen.get(id(p), True))
        if out is not None:
            lens.save(out)
        return lens
