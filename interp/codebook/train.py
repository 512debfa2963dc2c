"""Train codebook bottlenecks: k-means initialisation, then in-model fine-tuning (LM loss through the
bottlenecks) or post-hoc fitting (reconstruct a frozen model's activations); checkpoints and resumption.

    model = interp.load("tokfsm-mamba")
    books = make_codebooks(model, hook=mixer_output_hooks(model), n_codes=256, k=1)
    cfg = CodebookTrainConfig(steps=600)
    batches = model_batches(model, cfg)             # interp.codebook.zoo: the embedded model's own data
    result = train_codebooks(model, batches, books=books, cfg=cfg, out_dir="runs/codebook/tokfsm-mamba")
    save_codebook_model(model, "runs/codebook/tokfsm-mamba/final")         # model + codebooks, safetensors
    model = load_codebook_model("runs/codebook/tokfsm-mamba/final")        # codebooks attached

Data: ``batches(step)`` returns batch ``step`` of the training stream, ``{"tokens": LongTensor [b, L]}`` and
optionally ``"loss_mask"`` (bool [b, L]: the prediction at p of token p+1 counts). It must be a pure function of
``step`` so that a resumed run sees exactly the batches it would have seen (the embedded models' recipes are:
:func:`interp.codebook.zoo.training_batches`). Checkpoints use the format of :mod:`interp.training`
(safetensors + JSON, atomic swap, no pickle); calling :func:`train_codebooks` again with the same arguments
resumes from ``out_dir/checkpoint``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from interp.activations.collect import HookCollector, RowFilter
from interp.hooks import HookedModel
from interp.hooks.loading import ExistingRunError
from interp.io import read_json, verify_checksums, write_json
from interp.locks import FolderLock, warn_if_being_written
from interp.metrics import next_token_cross_entropy
from interp.training import (
    CHECKPOINT_DIR, config_diff, find_checkpoint, load_checkpoint, read_checkpoint_state, save_checkpoint,
    warmup_decay,
)

from . import functional as Fn
from .config import CodebookTrainConfig
from .insert import attach, attached, detach
from .layer import CODES_FILE, CONFIG_FILE, CodebookLayer

__all__ = ["hook_activations", "kmeans_init", "train_codebooks", "fit_post_hoc", "CodebookTrainResult",
           "save_codebook_model", "load_codebook_model", "write_codebook_index", "INDEX_FILE", "Batches",
           "check_codebook_folder", "codebook_index", "codebook_base_model", "embedded_codebook_models", "find_codebook_models",
           "codebook_folder_mtime"]

INDEX_FILE = "codebooks.json"
RESUME_FREE_FIELDS = ("checkpoint_every",)  # config fields a resumed run may change (not the trajectory)
Batches = Callable[[int], dict[str, Any]]  # step -> {"tokens": [b, L], "loss_mask": [b, L] (optional)}


def hook_activations(model: HookedModel, batches: Batches, *, hook: str | Sequence[str], n_tokens: int,
                     first_batch: int = 10**6) -> dict[str, torch.Tensor]:
    """Activations at ``hook`` (one name or several) on the first ``n_tokens`` positions of the batches from
    index ``first_batch`` on (apart from the training batches), of the model *without* codebooks at those
    hooks: {hook: float32 [n_tokens, G, d]} on the CPU (G = 1 without a head axis), collected with
    :class:`interp.activations.collect.HookCollector` (every position kept)."""
    hooks = [hook] if isinstance(hook, str) else list(hook)
    books = {s: b for s, b in attached(model).items() if s in hooks}
    if books:
        detach(model, list(books))
    try:
        collector = HookCollector(model, hook=hooks, dtype=torch.float32,
                                  row_filter=RowFilter.for_model(model, drop_bos=False, drop_pad=False))
        out: dict[str, list[torch.Tensor]] = {s: [] for s in hooks}
        seen, i = 0, first_batch
        while seen < n_tokens:
            tokens = batches(i)["tokens"]
            for s, rows in collector(tokens, torch.ones(tokens.shape, dtype=torch.bool)).items():
                shape = collector.shapes[s]  # [d] or [G, d]: the dims after the position axis
                out[s].append(rows.cpu().reshape(-1, 1 if len(shape) == 1 else shape[0], shape[-1]))
            seen += tokens.numel()
            i += 1
        return {s: torch.cat(v)[:n_tokens] for s, v in out.items()}
    finally:
        if books:
            attach(model, books)


def kmeans_init(model: Any, batches: Batches, *, books: Mapping[str, CodebookLayer], n_tokens: int = 16_384,
                iters: int = 15, seed: int = 0) -> None:
    """Set each codebook's codes to k-means centroids of its hook's activations (codebooks bypassed)."""
    acts = hook_activations(model, batches, hook=list(books), n_tokens=n_tokens)
    for s, layer in books.items():
        c = layer.cfg
        codes = Fn.kmeans(acts[s], c.n_codes, iters=iters, similarity=c.similarity, layernorm=c.layernorm, seed=seed)
        layer.codes.data.copy_(codes.to(layer.codes))


@dataclass
class CodebookTrainResult:
    """What :func:`train_codebooks` did. ``history``: per logged step {step, loss, lm_loss, recon, dead_replaced}."""

    model: Any
    codebooks: dict[str, CodebookLayer]
    history: list[dict[str, float]]
    start_step: int
    elapsed_s: float


def _optimizer(model: Any, books: Mapping[str, CodebookLayer], cfg: CodebookTrainConfig):
    code_params = [b.codes for b in books.values()]
    ids = {id(p) for p in code_params}
    groups = [{"params": code_params, "lr": cfg.lr, "weight_decay": 0.0}]
    if cfg.train_model:
        rest = [p for p in model.parameters() if id(p) not in ids]
        groups.append({"params": rest, "lr": cfg.model_lr, "weight_decay": cfg.weight_decay})
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.99))
    warm = max(1, cfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_decay(s, cfg.steps, warm, "constant"))
    return opt, sched


def _lm_loss(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Mean next-token cross-entropy of the model on ``batch["tokens"]``, only where ``batch["loss_mask"]``
    (the prediction at p of token p+1) if given."""
    tokens = batch["tokens"].to(model.device)
    logits = model(tokens, return_type="logits")
    mask = batch.get("loss_mask")
    return next_token_cross_entropy(logits.float(), tokens, None if mask is None else mask[:, :-1])


def train_codebooks(model: Any, batches: Batches, *, books: Mapping[str, CodebookLayer], cfg: CodebookTrainConfig,
                    out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
                    log_every: int = 25) -> CodebookTrainResult:
    """In-model training of ``books`` (attached to ``model`` here if they are not yet): minimise the LM loss
    of the bottlenecked model plus ``reconstruction_weight`` × Σ reconstruction losses, updating the codes
    (and the model when ``cfg.train_model``). ``batches``: the data, step -> batch (module docstring; for an
    embedded model :func:`interp.codebook.zoo.model_batches`). Resumes from ``out_dir/checkpoint`` when present
    (:class:`~interp.hooks.loading.ExistingRunError`, a ``ValueError``, if it was written with another config, raised
    before ``books`` or ``model`` are touched; a config differing only in :data:`RESUME_FREE_FIELDS`, the checkpoint
    cadence, resumes). ``out_dir`` is locked for the whole call (:class:`interp.locks.FolderLockedError` if another
    job writes it)."""
    out_dir = Path(out_dir)
    with FolderLock(out_dir, job="train_codebooks"):  # one writer per folder, from the resume check to the end
        return _train_codebooks(model, batches, books, cfg, out_dir, resume, progress, log_every)


def _train_codebooks(model: Any, batches: Batches, books: Mapping[str, CodebookLayer], cfg: CodebookTrainConfig,
                     out_dir: Path, resume: bool, progress: bool, log_every: int) -> CodebookTrainResult:
    ckpt = find_checkpoint(out_dir) if resume else None
    if ckpt is not None:  # checked before anything (k-means, attaching, the caller's codes) is touched
        diff = [k for k in config_diff(read_checkpoint_state(ckpt)["recipe"], cfg.to_dict())
                if k not in RESUME_FREE_FIELDS]
        if diff:
            raise ExistingRunError(f"{ckpt} was written with another CodebookTrainConfig (differs in {diff}); "
                                   "resuming would mix two runs", restart="resume=False", folder="out_dir")
    if cfg.kmeans_init and ckpt is None:
        torch.manual_seed(cfg.seed)
        kmeans_init(model, batches, books=books, n_tokens=cfg.kmeans_tokens, iters=cfg.kmeans_iters, seed=cfg.seed)
    new = {s: b for s, b in books.items() if attached(model).get(s) is not b}
    if new:
        attach(model, new)
    was_trainable = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(cfg.train_model)
    for b in books.values():
        b.codes.requires_grad_(True)
    opt, sched = _optimizer(model, books, cfg)
    start, history, elapsed = 0, [], 0.0
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, opt, sched)
        start, history, elapsed = state["step"], state.get("history", []), state.get("elapsed_s", 0.0)
        tqdm.write(f"codebooks: resuming from {ckpt} at step {start}/{cfg.steps}")
    model.train()
    bar = tqdm(total=cfg.steps, initial=start, desc="codebooks", disable=not progress, dynamic_ncols=True,
               mininterval=1.0)
    t0 = time.perf_counter()
    dead_total = 0
    for step in range(start, cfg.steps):
        lm = _lm_loss(model, batches(step))
        recon = sum(b.aux_loss for b in books.values())
        loss = lm + cfg.reconstruction_weight * recon
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"codebook training: loss is {value} at step {step}; lower the lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
        opt.step()
        sched.step()
        dead_total += sum(b.replace_dead_codes() for b in books.values())
        done = step + 1
        if done % log_every == 0 or done == cfg.steps:
            history.append({"step": done, "loss": value, "lm_loss": float(lm.detach()), "recon": float(recon.detach()),
                            "dead_replaced": dead_total})
            dead_total = 0
        bar.update(1)
        bar.set_postfix(lm=f"{float(lm.detach()):.3f}", recon=f"{float(recon.detach()):.3f}", refresh=False)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            now = time.perf_counter()
            elapsed, t0 = elapsed + now - t0, now
            save_checkpoint(out_dir / CHECKPOINT_DIR, model, opt, sched, done, cfg.to_dict(),
                            {"history": history, "elapsed_s": elapsed})
    bar.close()
    for p in model.parameters():
        p.requires_grad_(was_trainable.get(id(p), True))
    model.eval()
    return CodebookTrainResult(model, dict(books), history, start, elapsed)


def fit_post_hoc(books: Mapping[str, CodebookLayer], acts: Mapping[str, torch.Tensor], steps: int = 500,
                 batch_size: int = 1024, lr: float = 3e-3, kmeans_start: bool = True, kmeans_iters: int = 15,
                 seed: int = 0, progress: bool = True) -> dict[str, list[float]]:
    """Post-hoc codebooks for a frozen model: fit each codebook to its cached activations ``acts[hook]``
    [n, d] or [n, G, d] (k-means start, then AdamW on the reconstruction loss, dead codes re-seeded).
    Returns the loss curve per hook. Insert them afterwards with :func:`attach`."""
    curves: dict[str, list[float]] = {}
    g = torch.Generator().manual_seed(seed)
    for s, layer in books.items():
        x = acts[s].float()
        x = x[:, None] if x.dim() == 2 else x
        if kmeans_start:
            layer.codes.data.copy_(Fn.kmeans(x, layer.cfg.n_codes, kmeans_iters, layer.cfg.similarity,
                                             layer.cfg.layernorm, seed).to(layer.codes))
        opt = torch.optim.AdamW([layer.codes], lr=lr, weight_decay=0.0)
        layer.train()
        curve = []
        for _ in tqdm(range(steps), desc=f"codebook {s}", disable=not progress, mininterval=1.0):
            xb = x[torch.randint(0, x.shape[0], (batch_size,), generator=g)].to(layer.codes.device)
            layer(xb if layer.cfg.n_groups > 1 else xb[:, 0])
            opt.zero_grad(set_to_none=True)
            layer.aux_loss.backward()
            opt.step()
            layer.replace_dead_codes()
            curve.append(float(layer.aux_loss.detach()))
        layer.eval()
        curves[s] = curve
    return curves


# ----------------------------------------------------------------------------------------------------------------
# saving


def save_codebook_model(model: Any, folder: str | os.PathLike, card: dict[str, Any] | None = None,
                        base: str | None = None) -> Path:
    """Write each codebook (``codebooks/<i>/``), ``codebooks.json`` {sites, card, base} and the model itself
    (``save_pretrained``, without its codebooks) unless ``base`` names the embedded model it is unchanged from
    (codebooks trained on a frozen model: only the codes are stored)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    books = attached(model)
    if base is None:
        detach(model)
        try:
            model.save_pretrained(str(folder))
        finally:
            attach(model, books)
    index = {}
    for i, (site, layer) in enumerate(books.items()):
        sub = f"codebooks/{i}"
        layer.save(folder / sub)
        index[site] = sub
    write_codebook_index(folder, {"sites": index, "base": base, "card": card or {}})
    return folder


def write_codebook_index(folder: str | os.PathLike, index: Mapping[str, Any]) -> Path:
    """Write ``codebooks.json`` ({sites, base, card}) with the sha256 of every file of the folder (each codebook's
    files, the model's own files if it holds one) and of itself; :func:`load_codebook_model` verifies them."""
    folder = Path(folder)
    files = [p.name for p in folder.iterdir()
             if p.is_file() and p.name != INDEX_FILE and not p.name.startswith(".") and not p.name.endswith(".tmp")]
    for sub in index.get("sites", {}).values():
        files += [f"{sub}/{f}" for f in (CONFIG_FILE, CODES_FILE) if (folder / sub / f).is_file()]
    return write_json(folder / INDEX_FILE, index, checksums=sorted(files))


def _verify_codebook_folder(folder: Path) -> bool:
    return verify_checksums(folder, record=INDEX_FILE, what="codebook model",
                            remedy="Save the codebook model again, re-run its training, or restore the folder "
                                   "from a copy")


def load_codebook_model(name_or_folder: str | os.PathLike) -> Any:
    """A model saved by :func:`save_codebook_model` (or an embedded one by name), codebooks attached, eval mode."""
    import interp
    from interp.zoo import WEIGHTS_DIR

    folder = Path(name_or_folder)
    if not folder.is_dir() and (WEIGHTS_DIR / str(name_or_folder)).is_dir():
        folder = WEIGHTS_DIR / str(name_or_folder)
    index_path = folder / INDEX_FILE
    warn_if_being_written(folder.parent if folder.name == "final" else folder, "codebook folder")
    if not index_path.is_file():
        raise FileNotFoundError(f"{folder} holds no {INDEX_FILE}: not a codebook model (save one with "
                                "save_codebook_model)")
    verified = _verify_codebook_folder(folder)  # every file against codebooks.json before anything is parsed
    index = read_json(index_path, what="codebook index")
    model = interp.load(index["base"] if index.get("base") else str(folder))
    attach(model, {site: CodebookLayer.load(folder / sub, verify=not verified)
                   for site, sub in index["sites"].items()})
    return model.eval()


def codebook_index(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``codebooks.json`` of a codebook-model folder ({sites, base, card}); {} if it is missing or unreadable."""
    try:
        index = read_json(Path(folder) / INDEX_FILE, what="codebook index")
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def codebook_base_model(folder: str | os.PathLike) -> str | None:
    """The embedded model a codebook model derives from: its ``base`` (the codebooks sit on that model,
    unchanged), else the ``base`` its card names (a model fine-tuned through its codebooks, saved in the
    folder); None if neither is named."""
    index = codebook_index(folder)
    card = index.get("card") if isinstance(index.get("card"), dict) else {}
    return index.get("base") or card.get("base")


def check_codebook_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """The index of a codebook-model folder, checked before anything is loaded: it names at least one codebook,
    every codebook's files lie inside the folder, and its base is an installed embedded model (or the folder
    holds a model, ``config.json``, of its own). ValueError saying what is wrong."""
    from interp.loading import inside_roots
    from interp.zoo import list_models

    folder = Path(os.path.realpath(folder))
    try:
        index = read_json(folder / INDEX_FILE, what="codebook index")
    except (OSError, ValueError) as e:
        raise ValueError(f"Could not read {folder / INDEX_FILE}: {str(e)[:300]}") from e
    sites = index.get("sites") if isinstance(index, dict) else None
    if not isinstance(sites, dict) or not sites or not all(isinstance(v, str) for v in sites.values()):
        raise ValueError(f"{folder / INDEX_FILE} names no codebooks (its 'sites' entry is missing or malformed).")
    for site, sub in sites.items():
        try:  # the app's path check (interp.loading.inside_roots), with the folder as the one root
            files = [inside_roots(folder / sub / f, [folder]) for f in ("codebook.json", "codebook.safetensors")]
        except ValueError:
            raise ValueError(f"The codebook of {site} points outside its folder ({sub!r}): refused.") from None
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"The codebook of {site} is missing {sub}/{missing[0]}.")
    base = index.get("base")
    if base:
        if base not in list_models(include_missing=True):
            raise ValueError(f"This codebook model's base {base!r} is not an embedded model; codebooks load only on "
                             "embedded models or on a model saved in the same folder.")
        if base not in list_models():
            raise ValueError(f"The base model {base!r} of these codebooks is not installed yet: train it with "
                             f"`interp train {base} --install`.")
    elif not (folder / "config.json").is_file():
        raise ValueError(f"{folder} names no base model and holds no model (config.json) of its own.")
    return index


def embedded_codebook_models() -> list[str]:
    """Names of the installed embedded codebook models: folders of ``interp.zoo.WEIGHTS_DIR`` holding
    ``codebooks.json``."""
    from interp.zoo import WEIGHTS_DIR

    root = Path(WEIGHTS_DIR)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / INDEX_FILE).is_file())


def find_codebook_models(roots: list[Path] | tuple[Path, ...], limit: int = 200, max_depth: int = 5) -> list[Path]:
    """Codebook-model folders (holding ``codebooks.json``, written by :func:`save_codebook_model`) under ``roots``
    (:func:`interp.loading.find_folders`)."""
    from interp.loading import find_folders

    return find_folders(roots, (INDEX_FILE,), limit, max_depth)


def codebook_folder_mtime(folder: str | os.PathLike) -> float:
    """Latest modification time of a codebook-model folder's files (its own, and ``codebooks/*/``): a cache key
    that changes when the folder is rewritten."""
    folder = Path(folder)
    times = [folder.stat().st_mtime]
    for p in [folder, *sorted((folder / "codebooks").glob("*"))]:
        if p.is_dir():
            times += [q.stat().st_mtime for q in p.iterdir() if q.is_file()]
    return max(times)
