"""What every training loop of the toolkit shares: checkpoints, learning-rate schedules, RNG state.

Base layer: torch, safetensors, numpy, the standard library and :mod:`interp.io` (file reads and checksums), so the embedded
models' trainer (:mod:`interp.zoo.train`), the SAE trainer (:mod:`interp.sae.train`) and the codebook trainer
(:mod:`interp.codebook.train`) all build on it.

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_decay(s, total, warmup_steps=100))
    ckpt = find_checkpoint(out_dir) if resume else None       # out_dir/checkpoint (or .old after a kill mid-swap)
    state = load_checkpoint(ckpt, model, opt, sched)           # weights, optimizer, scheduler and RNG states back
    save_checkpoint(out_dir / CHECKPOINT_DIR, model, opt, sched, step, config_dict, {"losses": losses})

A checkpoint is a folder (no pickle is written or read):

* ``model.safetensors``: the module's state dict (metadata ``step``);
* ``optimizer.safetensors``: the optimizer's per-parameter tensors, keyed ``"{param index}.{name}"``
  (e.g. AdamW's ``exp_avg``, ``exp_avg_sq``, ``step``);
* ``rng.safetensors``: the torch CPU and CUDA RNG states (:func:`capture_rng_state`);
* ``state.json``: ``format_version``, ``step``, ``data_position`` (= step: the index of the next batch of a
  stream that is a function of the step), ``recipe`` (the run's configuration), ``scheduler`` (its state dict),
  ``optimizer`` (param groups and non-tensor per-parameter values), ``python_random`` / ``numpy_random``,
  ``torch_threads``, whatever the trainer adds (losses, history, elapsed time, ...) and, last, ``checksums``:
  the sha256 of the three tensor files and of ``state.json`` itself (:mod:`interp.io`), verified before a resume
  restores anything (a damaged file raises :class:`interp.io.IntegrityError` naming it).

It is written to ``<folder>.tmp/`` (``state.json`` last: its presence marks a complete checkpoint) and swapped in
with two renames (the previous one goes to ``<folder>.old/`` in between), so a kill at any moment leaves a
complete checkpoint that :func:`find_checkpoint` finds.
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from interp.io import read_json, read_safetensors, verify_checksums, write_json

__all__ = [
    "CHECKPOINT_DIR", "FORMAT_VERSION", "DECAYS", "warmup_decay", "to_jsonable", "capture_rng_state",
    "restore_rng_state", "save_checkpoint", "find_checkpoint", "read_checkpoint_state", "load_checkpoint",
    "clear_checkpoints", "config_diff", "thread_count_warning",
]

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")
RESUME_REMEDY = ("The checkpoint cannot be resumed: start over with resume=False / --no-resume (or --overwrite), "
                 "or restore the folder from a copy")
FORMAT_VERSION = 1
DECAYS = ("constant", "linear", "cosine")


# ----------------------------------------------------------------------------------------------------------------
# schedules


def warmup_decay(step: int, total_steps: int, warmup_steps: int = 0, decay: str = "cosine",
                 decay_steps: int | None = None, min_ratio: float = 0.0) -> float:
    """Multiplier at optimizer step ``step`` (0-based) of a linear warm-up, a plateau at 1 and a decay.

        step < W:            (step + 1) / W                                   W = warmup_steps
        W <= step < s0:      1                                                s0 = max(W, T - decay_steps)
        step >= s0:          "linear":  1 - (1 - r) p
                             "cosine":  r + (1 - r) (1 + cos(π p)) / 2        p = min(1, (step - s0) / max(1, T - s0))

    with T = ``total_steps``, r = ``min_ratio`` and ``decay_steps`` defaulting to every step after the warm-up;
    ``decay="constant"`` stays at 1 after the warm-up. Use it as ``LambdaLR(opt, lambda s: warmup_decay(s, ...))``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    decay_steps = decay_steps if decay_steps is not None else total_steps - warmup_steps
    start = max(warmup_steps, total_steps - decay_steps)
    if step < start:
        return 1.0
    progress = min(1.0, (step - start) / max(1, total_steps - start))
    if decay == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------------------------
# RNG state and JSON


def to_jsonable(x: Any) -> Any:
    """``x`` with numpy / torch scalars and arrays turned into Python numbers and lists (dict keys into str)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    return x


def capture_rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Every RNG a training run draws from: (tensors for safetensors: ``torch_cpu``, ``torch_cuda_{i}``;
    JSON: ``python_random``, ``numpy_random``)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py_state = random.getstate()
    np_state = np.random.get_state()
    return tensors, {
        "python_random": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy_random": [np_state[0], np_state[1].tolist(), *[to_jsonable(v) for v in np_state[2:]]],
    }


def restore_rng_state(tensors: Mapping[str, Tensor], state: Mapping[str, Any]) -> None:
    """Set the RNGs back to what :func:`capture_rng_state` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    v, internal, gauss = state["python_random"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy_random"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ----------------------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(folder: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, step: int,
                    recipe: Mapping[str, Any], state: Mapping[str, Any]) -> Path:
    """Write a complete checkpoint of a run at ``step`` to ``folder`` atomically (module docstring).

    ``recipe``: the run's configuration as a JSON-able dict (stored as ``state.json``'s ``recipe``); ``state``:
    what the trainer needs back on resume (stored at the top level of ``state.json``). Returns ``folder``.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().clone().contiguous().cpu() for k, v in model.state_dict().items()},
              str(tmp / "model.safetensors"), metadata={"step": str(step)})
    osd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in osd["state"].items():
        for key, val in st.items():
            if isinstance(val, Tensor):
                tensors[f"{idx}.{key}"] = val.detach().clone().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = val
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    rng_tensors, rng_json = capture_rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    payload = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "data_position": step,  # index of the next batch of a stream that is a function of the step
        "recipe": to_jsonable(dict(recipe)),
        "scheduler": to_jsonable(sched.state_dict()),
        "optimizer": {"param_groups": to_jsonable(osd["param_groups"]), "scalars": to_jsonable(scalars)},
        **rng_json,
        "torch_threads": torch.get_num_threads(),
        **to_jsonable(dict(state)),
    }
    # written last (its presence marks a complete checkpoint), with the sha256 of the three tensor files and its own
    write_json(tmp / "state.json", payload, indent=None, checksums=CHECKPOINT_FILES)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def find_checkpoint(out_dir: str | Path) -> Path | None:
    """The latest complete checkpoint under ``out_dir`` (``checkpoint/``, or ``checkpoint.old/`` if a kill
    came between the two renames of a checkpoint swap), or None. A ``checkpoint.tmp/`` left complete by a kill
    after its ``state.json`` was written but before the swap (:func:`checkpoint_complete`) is returned instead
    when it is newer (a higher step) than those: the run resumes from it, not from an older step."""
    out_dir = Path(out_dir)
    found = None
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        if (out_dir / name / "state.json").is_file():
            found = out_dir / name
            break
    return _newer_tmp_checkpoint(out_dir, found) or found


def _newer_tmp_checkpoint(out_dir: Path, found: Path | None) -> Path | None:
    """``out_dir/checkpoint.tmp`` if it is complete and its step is above ``found``'s (or there is no ``found``)."""
    tmp = out_dir / (CHECKPOINT_DIR + ".tmp")
    if not checkpoint_complete(tmp):
        return None
    if found is not None:
        try:
            if int(read_checkpoint_state(found)["step"]) >= int(read_checkpoint_state(tmp)["step"]):
                return None
        except Exception:  # noqa: BLE001 - a damaged checkpoint/: load_checkpoint of it reports the damage
            return None
    return tmp


def checkpoint_complete(folder: str | Path) -> bool:
    """Whether ``folder`` holds a whole checkpoint: ``state.json`` readable with its step, the three tensor files
    present and, when ``state.json`` carries checksums (:mod:`interp.io`), every file matching them."""
    import warnings

    folder = Path(folder)
    if not (folder / "state.json").is_file() or not all((folder / f).is_file() for f in CHECKPOINT_FILES):
        return False
    try:
        if not isinstance(read_checkpoint_state(folder).get("step"), int):
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a checkpoint without checksums: the files' presence decides
            verify_checksums(folder, CHECKPOINT_FILES, record="state.json", what="checkpoint")
    except Exception:  # noqa: BLE001 - unreadable, damaged or half-written: not complete
        return False
    return True


def clear_checkpoints(out_dir: str | Path) -> None:
    """Delete ``out_dir``'s checkpoint folders (``checkpoint/``, ``.old/``, ``.tmp/``): the run starts over."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old", CHECKPOINT_DIR + ".tmp"):
        shutil.rmtree(Path(out_dir) / name, ignore_errors=True)


def read_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """A checkpoint's ``state.json`` (step, recipe, whatever the trainer stored)."""
    return read_json(Path(folder) / "state.json", what="checkpoint state")


def load_checkpoint(folder: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    sched: Any) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states from ``folder``; returns its ``state.json``.

    Raises ValueError for a checkpoint of another format version.
    """
    folder = Path(folder)
    state = read_checkpoint_state(folder)
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder}: checkpoint format {state.get('format_version')} != {FORMAT_VERSION}")
    # every file against state.json's checksums before anything is restored (IntegrityError naming the file)
    verify_checksums(folder, CHECKPOINT_FILES, record="state.json", what="checkpoint", remedy=RESUME_REMEDY)
    model.load_state_dict(read_safetensors(folder / "model.safetensors", what="checkpoint weights"), strict=True)
    tensors = read_safetensors(folder / "optimizer.safetensors", what="checkpoint optimizer state")
    per_param: dict[int, dict[str, Any]] = {}
    for key, val in list(tensors.items()) + list(state["optimizer"]["scalars"].items()):
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = val
    groups = state["optimizer"]["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": per_param, "param_groups": groups})
    sched.load_state_dict(state["scheduler"])
    restore_rng_state(read_safetensors(folder / "rng.safetensors", what="checkpoint RNG state"), state)
    return state


def config_diff(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    """The keys (sorted) whose values differ between two configuration dicts: a checkpoint resumes only when
    this is empty (otherwise the resumed run would mix two runs)."""
    return sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))


def thread_count_warning(state: Mapping[str, Any]) -> str | None:
    """A warning when the checkpoint's run used another torch thread count than this process (CPU reductions
    then differ in the last bits), else None."""
    saved = state.get("torch_threads")
    if saved in (None, torch.get_num_threads()):
        return None
    return (f"warning: checkpoint written with {saved} threads, now {torch.get_num_threads()}: the resumed run "
            "may differ in the last bits")
