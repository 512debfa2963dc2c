"""Train an embedded model: ``python -m interp.zoo.train NAME [--steps N] [--out DIR] [--install]``.

The run follows ``interp.zoo.recipes.RECIPES[NAME]`` (``--set key=value`` overrides any recipe field or
architecture key): AdamW with linear warm-up and cosine decay, a tqdm bar with the loss, and a
resumable checkpoint every ``checkpoint_every`` steps in ``DIR/checkpoint/`` (:mod:`interp.training`):

* ``model.safetensors``: the model's state dict;
* ``optimizer.safetensors``: AdamW's per-parameter tensors (``"{param}.{exp_avg|exp_avg_sq|step}"``);
* ``rng.safetensors``: the torch RNG state(s);
* ``state.json``: step, data-stream position, recipe, scheduler state, optimizer hyper-parameters,
  numpy / python RNG states, loss history and training time so far.

No pickle is written or read. A checkpoint is written to ``checkpoint.tmp/`` and swapped in with
renames, so a kill at any moment leaves a complete checkpoint. Running the same command again resumes
from it (``--no-resume`` starts over); the data stream is a function of ``(data_seed, step)``, so the
resumed run sees the batches the uninterrupted run would have seen and, with the same thread count,
ends with bit-identical weights.

At the end the model is written with ``save_pretrained`` to ``DIR`` (default ``runs/zoo/NAME``), reloaded
from there, evaluated (:mod:`interp.zoo.evaluate`) and described in ``DIR/model_card.json``;
``--install`` copies the folder to ``interp/zoo/weights/NAME/``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from interp.hooks.loading import ExistingRunError
from interp.io import (
    CHECKSUMS_FILE, RECORD_KEY, read_json, read_safetensors, safetensors_metadata, write_checksums, write_json,
)
from interp.locks import LOCK_FILE, FolderLock
from interp.metrics import next_token_cross_entropy
from interp.training import (
    CHECKPOINT_DIR, clear_checkpoints, config_diff, find_checkpoint, load_checkpoint, read_checkpoint_state,
    save_checkpoint, thread_count_warning, warmup_decay,
)
from interp.zoo.recipes import RECIPES, Recipe, batch_at, get_recipe, tokenizer_for

__all__ = ["build_model", "init_ssm_weights", "init_deltanet_weights", "lr_factor", "compute_loss", "train", "finalize",
           "install", "main"]

LOG_FILE = "train_log.jsonl"
DEFAULT_OUT = Path("runs") / "zoo"


# ----------------------------------------------------------------------------------------------------------------
# model


def init_ssm_weights(model: Any, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_floor: float = 1e-4) -> None:
    """The reference Mamba initialisation (mamba_ssm): S4D-real ``A`` (Mamba-1: A[d, n] = n+1; Mamba-2:
    A ~ U(1, 16) per head), Δ bias so that softplus(bias) is log-uniform in [dt_min, dt_max], D = 1,
    embeddings N(0, 0.02), out_proj scaled by 1/sqrt(n_layers)."""
    cfg = model.cfg
    with torch.no_grad():
        torch.nn.init.normal_(model.embed.weight, std=0.02)
        for block in model.blocks:
            if not hasattr(block, "ssm"):  # a hybrid's attention layer: PyTorch's default initialisation
                continue
            if type(block.ssm).__name__ == "GatedDeltaNetMixer":  # init_deltanet_weights
                continue
            m = block.ssm
            H = cfg.H
            if cfg.family == "mamba1":
                std = cfg.dt_rank ** -0.5
                torch.nn.init.uniform_(m.dt_proj.weight, -std, std)
                bias = m.dt_proj.bias
                m.A_log.copy_(torch.log(torch.arange(1, cfg.d_state + 1, dtype=torch.float32)).repeat(H, 1))
            else:
                bias = m.dt_bias
                m.A_log.copy_(torch.log(torch.empty(H).uniform_(1, 16)))
            dt = torch.exp(torch.rand(bias.shape[0]) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_floor)
            bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            m.D.fill_(1.0)
            m.out_proj.weight.div_(math.sqrt(cfg.n_layers))


def init_deltanet_weights(model: Any, a_log_min: float = 0.0, a_log_max: float = 16.0, dt_min: float = 1e-3,
                          dt_max: float = 1e-1, dt_floor: float = 1e-4) -> None:
    """HF OLMo-Hybrid's ``_init_weights`` for each Gated DeltaNet mixer (``OlmoHybridConfig``'s ``linear_a_log_*``
    and ``linear_dt_*`` defaults): A_log = log U(a_log_min, a_log_max), dt_bias = softplus⁻¹(dt) with dt
    log-uniform in [dt_min, dt_max] clamped at dt_floor; the other weights keep PyTorch's initialisation."""
    from interp.hooks.deltanet import GatedDeltaNetMixer

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, GatedDeltaNetMixer):
                m.A_log.copy_(torch.empty_like(m.A_log).uniform_(a_log_min, a_log_max).log())
                dt = torch.exp(torch.rand_like(m.dt_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
                dt = dt.clamp(min=dt_floor)
                m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def build_model(recipe: Recipe) -> Any:
    """A freshly initialised model for ``recipe`` (seeded by ``recipe.seed``), with its tokenizer."""
    torch.manual_seed(recipe.seed)
    tokenizer = tokenizer_for(recipe)
    if recipe.arch == "transformer":
        from interp.hooks.transformer import HookedTransformerModel

        model = HookedTransformerModel(recipe.transformer_config(), tokenizer=tokenizer)
    elif recipe.arch == "hybrid":
        from interp.hooks import HookedHybrid

        model = HookedHybrid(recipe.hybrid_config(), tokenizer=tokenizer)
        init_ssm_weights(model)
        init_deltanet_weights(model)
    else:
        from interp.hooks import HookedSSM

        model = HookedSSM(recipe.ssm_config(), tokenizer=tokenizer)
        init_ssm_weights(model)
    return model.train()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ----------------------------------------------------------------------------------------------------------------
# optimisation


def lr_factor(recipe: Recipe, step: int) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warm-up, then cosine to min_lr_ratio."""
    return warmup_decay(step, recipe.steps, recipe.warmup_steps, "cosine", min_ratio=recipe.min_lr_ratio)


_NO_DECAY_SUFFIXES = ("A_log", ".D", "dt_bias", "bias")


def _decays(name: str, p: torch.nn.Parameter) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return p.ndim >= 2 and not name.endswith(_NO_DECAY_SUFFIXES) and not leaf.startswith("b_")  # TL biases b_Q, ...


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (decay on weight matrices only; none on A_log, D, biases, norms) and its LambdaLR schedule."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (decay if _decays(name, p) else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr, betas=recipe.betas,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(recipe, s))
    return opt, sched


def compute_loss(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Mean next-token cross-entropy; only where ``loss_mask`` (the prediction at p of token p+1) if given."""
    tokens = batch["tokens"].to(model.device)
    logits = model(tokens, return_type="logits")
    mask = batch.get("loss_mask")
    return next_token_cross_entropy(logits.float(), tokens, None if mask is None else mask[:, :-1])


# ----------------------------------------------------------------------------------------------------------------
# training


def _log(out_dir: Path, **event: Any) -> None:
    event = {"time": _dt.datetime.now().isoformat(timespec="seconds"), **event}
    with open(out_dir / LOG_FILE, "a") as f:
        f.write(json.dumps(event) + "\n")


def train(recipe: Recipe, out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
          evaluate_at_end: bool = True, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train ``recipe`` into ``out_dir`` (resuming from ``out_dir/checkpoint`` if there is one, or raising
    :class:`~interp.hooks.loading.ExistingRunError` if another recipe wrote it), then :func:`finalize`. Returns the
    model card. ``out_dir`` is locked for the whole call (:class:`interp.locks.FolderLockedError` if another job
    writes it).

    ``device``: where the training steps run (e.g. ``"cuda"``); the weights are initialised on the CPU
    (same seed, same start on every device), and saving and the final evaluation happen on the CPU.
    """
    out_dir = Path(out_dir)
    with FolderLock(out_dir, job=f"interp train {recipe.name}"):  # one writer: resume check to model card
        model = build_model(recipe).to(device)
        opt, sched = make_optimizer(model, recipe)
        start, losses, elapsed, cpu = 0, [], 0.0, 0.0
        ckpt = find_checkpoint(out_dir) if resume else None
        if not resume:
            clear_checkpoints(out_dir)
            (out_dir / LOG_FILE).unlink(missing_ok=True)
        if ckpt is not None:
            saved = read_checkpoint_state(ckpt)
            diff = config_diff(Recipe.from_dict(saved["recipe"]).trajectory_dict(), recipe.trajectory_dict())
            if diff:
                raise ExistingRunError(
                    f"{ckpt} was written by a different recipe (differs in {diff}); resuming would mix two runs",
                    restart="resume=False", folder="out_dir",
                )
            warning = thread_count_warning(saved)
            if warning:
                tqdm.write(warning)
            state = load_checkpoint(ckpt, model, opt, sched)
            start, losses = state["step"], state.get("losses", [])
            elapsed, cpu = state.get("elapsed_s", 0.0), state.get("cpu_s", 0.0)
        _log(out_dir, event="start", from_step=start, steps=recipe.steps, checkpoint=str(ckpt) if ckpt else None,
             pid=os.getpid())
        if start:
            tqdm.write(f"{recipe.name}: resuming from {ckpt} at step {start}/{recipe.steps}")

        model.train()
        ckpt_dir = out_dir / CHECKPOINT_DIR
        bar = tqdm(total=recipe.steps, initial=start, desc=recipe.name, disable=not progress, dynamic_ncols=True,
                   mininterval=1.0, file=sys.stderr)
        t_seg, c_seg = time.perf_counter(), time.process_time()
        ema = losses[-1] if losses else None
        for step in range(start, recipe.steps):
            loss = compute_loss(model, batch_at(recipe, step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            sched.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"{recipe.name}: loss is {value} at step {step}; lower the lr")
            losses.append(value)
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}", refresh=False)
            done = step + 1
            if recipe.eval_every and done % recipe.eval_every == 0 and done < recipe.steps:
                from interp.zoo.evaluate import evaluate

                m = evaluate(model, recipe, loss=False)
                tqdm.write(f"step {done}: loss {ema:.4f} {m['metric']} {m[m['metric']]:.4f}")
            if done % recipe.checkpoint_every == 0 or done == recipe.steps:
                now, cnow = time.perf_counter(), time.process_time()
                elapsed, cpu = elapsed + now - t_seg, cpu + cnow - c_seg
                t_seg, c_seg = now, cnow
                save_checkpoint(ckpt_dir, model, opt, sched, done, recipe.to_dict(),
                                {"losses": losses, "elapsed_s": elapsed, "cpu_s": cpu})
                _log(out_dir, event="checkpoint", step=done, loss=value)
        bar.close()
        if start < recipe.steps:
            elapsed, cpu = elapsed + time.perf_counter() - t_seg, cpu + time.process_time() - c_seg
        _log(out_dir, event="done", step=recipe.steps, elapsed_s=elapsed, cpu_s=cpu)
        return finalize(model.cpu(), recipe, out_dir, losses, elapsed, evaluate_at_end=evaluate_at_end, cpu_s=cpu,
                        device=str(device))


def _retype_weights(path: Path, dtype: str) -> None:
    """Rewrite a safetensors file with floating tensors stored as ``dtype`` (loaders cast back)."""
    if dtype == "float32":
        return
    meta, _ = safetensors_metadata(path, what="model weights")
    tensors = {k: (v.to(getattr(torch, dtype)) if v.is_floating_point() else v)
               for k, v in read_safetensors(path, what="model weights").items()}
    save_file(tensors, str(path), metadata=meta)


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def finalize(model: Any, recipe: Recipe, out_dir: Path, losses: list[float], elapsed: float,
             evaluate_at_end: bool = True, cpu_s: float | None = None, device: str = "cpu") -> dict[str, Any]:
    """Save the model to ``out_dir``, reload it as users will, evaluate it, and write ``model_card.json``."""
    import interp

    model.eval()
    model.save_pretrained(str(out_dir))
    _retype_weights(out_dir / "model.safetensors", recipe.storage_dtype)
    model_files = sorted(read_json(out_dir / CHECKSUMS_FILE, what="checksum record")[RECORD_KEY]["files"])
    write_checksums(out_dir, model_files)  # the weights were rewritten: the reload below verifies them
    metrics: dict[str, Any] | None = None
    if evaluate_at_end:
        from interp.zoo.evaluate import evaluate

        reloaded = interp.load(str(out_dir))
        metrics = evaluate(reloaded, recipe)
    tail = losses[-20:]
    weight_files = [p for p in out_dir.iterdir()
                    if p.is_file() and p.name not in (LOG_FILE, "model_card.json", LOCK_FILE, CHECKSUMS_FILE)]
    config = read_json(out_dir / "config.json", what="model config")
    card = {
        "name": recipe.name,
        "description": recipe.description,
        "arch": recipe.arch,
        "task": recipe.task,
        "config": config,
        "recipe": recipe.to_dict(),
        "init_seed": recipe.seed,
        "data_seed": recipe.data_seed,
        "steps": recipe.steps,
        "tokens_seen": recipe.steps * recipe.batch_size * (recipe.seq_len if recipe.task == "tokfsm" else recipe.pad_to),
        "n_params": n_params(model),
        "final_loss": float(np.mean(tail)) if tail else None,
        "final_loss_note": f"mean training loss over the last {len(tail)} steps",
        "loss_curve": [[i + 1, round(v, 5)] for i, v in enumerate(losses) if (i + 1) % 25 == 0 or i + 1 == len(losses)],
        "metric": metrics["metric"] if metrics else None,
        "metrics": metrics,
        "target": recipe.target,
        "target_met": bool(metrics[metrics["metric"]] >= recipe.target) if metrics else None,
        "training_time_s": round(elapsed, 1),
        "training_time_note": "wall-clock seconds of the training loop (all resumed segments), on a CPU shared "
                              "with other jobs; training_cpu_time_s is the process CPU time (all threads)",
        "training_cpu_time_s": None if cpu_s is None else round(cpu_s, 1),
        "hardware": {"torch_threads": torch.get_num_threads(), "device": _device_name(device), "machine": platform.machine(),
                     "processor": platform.processor() or None},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "storage_dtype": recipe.storage_dtype,
        "size_bytes": sum(p.stat().st_size for p in weight_files),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # the card carries the sha256 of the model's files and its own (interp.load verifies them); one record per
    # folder, so checksums.json goes
    write_json(out_dir / "model_card.json", card, checksums=model_files)
    (out_dir / CHECKSUMS_FILE).unlink()
    if metrics:
        tqdm.write(f"{recipe.name}: {metrics['metric']} = {metrics[metrics['metric']]:.4f} "
                   f"(target {recipe.target}), final loss {card['final_loss']:.4f}, {elapsed:.0f}s")
    return card


def install(out_dir: str | os.PathLike, name: str) -> Path:
    """Copy a finished run's model files (not its checkpoint) to ``interp/zoo/weights/<name>/``."""
    from interp.zoo import CARD_FILE, MODEL_NAMES, WEIGHTS_DIR

    if name not in MODEL_NAMES:
        raise ValueError(f"{name!r} is not an embedded model name ({', '.join(MODEL_NAMES)})")
    src = Path(out_dir)
    if not (src / "config.json").is_file() or not (src / CARD_FILE).is_file():
        raise FileNotFoundError(f"{src} holds no finished run (config.json and {CARD_FILE} expected)")
    dst = WEIGHTS_DIR / name
    tmp = dst.with_name(name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in (LOG_FILE, LOCK_FILE):
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


# ----------------------------------------------------------------------------------------------------------------
# command line


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="interp train", description=__doc__.split("\n\n")[0])
    p.add_argument("name", help=f"recipe name: {', '.join(RECIPES)}")
    p.add_argument("--steps", type=int, default=None, help="number of optimizer steps (default: the recipe's)")
    p.add_argument("--out", default=None, help="run folder (default runs/zoo/NAME)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="resume from DIR/checkpoint if present (default) or start over")
    p.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint interval in steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field or architecture key (value parsed as JSON), e.g. --set d_model=32")
    p.add_argument("--install", action="store_true", help="copy the final folder to interp/zoo/weights/NAME")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="device of the training steps, e.g. cuda (default cpu)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    recipe = get_recipe(args.name)
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = _parse_value(value)
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.checkpoint_every is not None:
        overrides["checkpoint_every"] = args.checkpoint_every
    recipe = recipe.replace(**overrides)
    out = Path(args.out) if args.out else DEFAULT_OUT / recipe.name
    card = train(recipe, out, resume=args.resume, progress=not args.no_progress, evaluate_at_end=not args.no_eval,
                 device=args.device)
    if args.install:
        dst = install(out, recipe.name)
        print(f"installed {recipe.name} -> {dst}")
    print(json.dumps({k: card[k] for k in ("name", "steps", "final_loss", "metrics", "training_time_s", "size_bytes")},
                     indent=2))
    return card


if __name__ == "__main__":  # pragma: no cover
    from interp.cli import run

    sys.exit(run("interp train", main, sys.argv[1:]))
