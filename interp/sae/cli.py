"""``interp train-sae``: train a sparse autoencoder from a config file, on cached or streamed activations.

    interp train-sae --config sae.json --store runs/cache/tokfsm-l1 --out runs/sae/l1
    interp train-sae --config sae.json --set k=16 --set lr=1e-3 --store runs/cache/tokfsm-l1 --out runs/sae/k16
    interp train-sae --config sae.json --model tokfsm-mamba --hook blocks.1.hook_resid_post \\
        --dataset tokfsm --batch 64 --out runs/sae/streamed          # no disk cache: activations streamed
    torchrun --nproc_per_node 2 -m interp.sae.distributed --config sae.json --store runs/cache/x --out runs/sae/x

``--config`` is a JSON object of :class:`~interp.sae.SAEConfig` fields (``{"d_sae": 512, "architecture": "topk",
"k": 16, "lr": 1e-3, "batch_size": 4096, "total_training_tokens": 2000000}``); ``--set key=value`` overrides one
field (the value is parsed as JSON, else kept as a string). ``d_in``, ``hook_name`` and ``model_name`` may be left
out: they come from the store (its hook width, hook and model) or from ``--model`` / ``--hook``.

Re-running the same command resumes from ``OUT/checkpoint`` (``--no-resume`` starts over). ``OUT`` is locked while
the run writes it (:mod:`interp.locks`: a second run on it exits at once naming the first one's PID); ``--store``
refuses an incomplete cache (a killed or running ``interp cache``) unless ``--allow-partial`` is given. The run folder ends
with ``sae_weights.safetensors`` + ``cfg.json`` (load with ``SparseAutoencoder.load``) and
``training_summary.json``; ``--export-saelens DIR`` also writes the SAE in SAE-Lens's format.

Started by ``torchrun`` with several processes, the run is data-parallel (:mod:`interp.sae.distributed`): it
needs ``--store`` (each rank reads its own shards) and ``batch_size`` is the global batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from interp.io import read_json

from .config import SAEConfig

__all__ = ["main", "build_parser", "load_config", "config_dict", "parse_overrides"]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["k=16", "hook_name=blocks.1.hook_resid_post"]`` -> {"k": 16, "hook_name": "blocks.1.hook_resid_post"}
    (values parsed as JSON, else kept as strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def config_dict(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The raw config: the JSON object in ``path`` (or {}) with ``overrides`` on top (not validated yet)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        data = read_json(path, what="SAE training config")  # CorruptFileError (a ValueError) naming the file
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object of SAEConfig fields, got a {type(data).__name__}")
    return {**data, **(overrides or {})}


def load_config(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None,
                defaults: dict[str, Any] | None = None) -> SAEConfig:
    """An :class:`SAEConfig` from a JSON file (or none), ``overrides`` on top, and ``defaults`` filling the fields
    the two leave out or set to null (``d_in``, ``hook_name``, ``model_name`` from the data)."""
    data = config_dict(path, overrides)
    for k, v in (defaults or {}).items():
        if data.get(k) is None and v is not None:
            data[k] = v
    missing = [k for k in ("d_in", "d_sae") if data.get(k) is None]
    if missing:
        raise ValueError(f"the SAE config lacks {missing}: put them in --config or pass --set {missing[0]}=N "
                         "(d_in is filled from --store / --model when those are given)")
    return SAEConfig.from_dict(data)


def build_parser() -> argparse.ArgumentParser:
    from interp.activations.cli import add_data_args

    p = argparse.ArgumentParser(prog="interp train-sae", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="JSON file of SAEConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (value parsed as JSON), e.g. --set k=16; repeatable")
    p.add_argument("--out", required=True, help="run folder (checkpoints, final SAE; re-running resumes)")
    src = p.add_argument_group("activations (one of --store, --model)")
    src.add_argument("--store", default=None, help="activation cache folder written by `interp cache`")
    src.add_argument("--model", default=None, help="stream activations from this model instead (no disk)")
    src.add_argument("--hook", default=None, help="hook to train on (default: the config's hook_name, or the "
                                                  "store's only hook)")
    src.add_argument("--epochs", type=int, default=None,
                     help="--store: passes over the cache (default: enough for total_training_tokens)")
    src.add_argument("--shuffle-seed", type=int, default=None, help="--store: shuffling seed (default: cfg.seed)")
    src.add_argument("--buffer-tokens", type=int, default=None,
                     help="--model: rows shuffled together (default 16 batches, at most 262144)")
    src.add_argument("--allow-partial", action="store_true",
                     help="--store: train on an incomplete cache (a killed or running `interp cache`); refused "
                          "otherwise")
    p.add_argument("--no-resume", action="store_true", help="delete OUT/checkpoint and start over")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this step (the schedule is unchanged)")
    p.add_argument("--export-saelens", default=None, metavar="DIR", help="also save the SAE in SAE-Lens's format")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if available; under torchrun "
                                                  "each rank's GPU)")
    p.add_argument("--backend", default=None, help="torchrun process-group backend (default nccl on GPU, else gloo)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_data_args(p, title="token data (with --model)")
    return p


def _world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def main(argv: list[str] | None = None) -> Any:
    """Run ``interp train-sae``; prints a JSON summary (rank 0) and returns the
    :class:`~interp.sae.train.SAETrainResult`."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.store is None) == (args.model is None):
        p.error("give exactly one of --store DIR (cached activations) or --model NAME (streamed)")
    distributed = _world_size() > 1
    if distributed and args.store is None:
        p.error("data-parallel training (torchrun) needs --store: cache the activations first with `interp cache`")
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        p.error(str(e))
    import torch.distributed as dist

    group_was_ours = not dist.is_initialized()  # leave a process group a caller set up alone

    if args.store is not None:
        result = _train_from_store(p, args, overrides, distributed)
    else:
        result = _train_streaming(p, args, overrides)

    rank0 = not distributed or int(os.environ.get("RANK", "0")) == 0
    if rank0:
        if args.export_saelens:
            from .saelens import save_saelens

            save_saelens(result.sae, args.export_saelens)
        print(json.dumps({"out": str(args.out), "steps": result.steps, "tokens": result.tokens,
                          "resumed_from": result.resumed_from, "final": result.final,
                          "saelens": args.export_saelens}, indent=2))
    if distributed and group_was_ours and dist.is_initialized():
        dist.destroy_process_group()
    return result


def _config_error(p: argparse.ArgumentParser, error: Exception) -> NoReturn:
    """A missing or invalid config (file or ``--set``): one line on stderr, exit status 2."""
    p.exit(2, f"{p.prog}: {error}\n")


def _config_or_exit(p: argparse.ArgumentParser, args: argparse.Namespace, overrides: dict[str, Any],
                    defaults: dict[str, Any]) -> SAEConfig:
    try:
        return load_config(args.config, overrides, defaults)
    except (ValueError, FileNotFoundError) as e:
        _config_error(p, e)


def _raw_or_exit(p: argparse.ArgumentParser, args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    try:
        return config_dict(args.config, overrides)
    except (ValueError, FileNotFoundError) as e:
        _config_error(p, e)


def _train_from_store(p: argparse.ArgumentParser, args: argparse.Namespace, overrides: dict[str, Any],
                      distributed: bool) -> Any:
    from interp.activations import ActivationStore

    from .distributed import rank_batches, train_sae_distributed
    from .train import train_sae

    store = ActivationStore(args.store)
    store.require_complete(allow_partial=args.allow_partial)  # IncompleteStoreError: one line, exit status 2
    raw = _raw_or_exit(p, args, overrides)
    wanted = args.hook or raw.get("hook_name")
    if wanted is not None and wanted not in store.hooks:
        where = "--hook" if args.hook else "the config's hook_name"
        p.error(f"{where} {wanted!r} is not in {args.store}, which holds {store.hooks}; pass --hook with one of them")
    if wanted is None and len(store.hooks) != 1:
        p.error(f"{args.store} holds several hooks {store.hooks}: choose one with --hook")
    hook = wanted or store.hooks[0]
    overrides = {**overrides, "hook_name": hook}
    cfg = _config_or_exit(p, args, overrides, {"d_in": store.d(hook), "model_name": store.manifest.model.get("name")})
    if cfg.d_in != store.d(hook):
        p.error(f"the config's d_in={cfg.d_in} differs from the width {store.d(hook)} of {hook} in {args.store}")
    kwargs = dict(hook=hook, epochs=args.epochs, seed=args.shuffle_seed)
    if distributed:
        return train_sae_distributed(cfg, store, args.out, resume=not args.no_resume, progress=not args.no_progress,
                                     max_steps=args.max_steps, backend=args.backend,
                                     allow_partial=args.allow_partial, **kwargs)
    return train_sae(cfg, lambda: rank_batches(store, cfg, **kwargs), args.out, device=args.device,
                     resume=not args.no_resume, progress=not args.no_progress, max_steps=args.max_steps)


def _train_streaming(p: argparse.ArgumentParser, args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    import interp
    from interp.activations import stream_activations
    from interp.activations.cli import filter_kwargs, token_batches_from_args

    from .train import train_sae

    raw = _raw_or_exit(p, args, overrides)
    hook = args.hook or raw.get("hook_name")
    if not hook:
        p.error("--model needs --hook NAME (or hook_name in the config)")
    try:
        token_factory, _desc, data_ids = token_batches_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = interp.load(args.model, device=device)
    filters = filter_kwargs(args, data_ids)

    def batches_for(batch_size: int, n_tokens: int | None, buffer: int, seed: int) -> Any:
        return stream_activations(model, token_factory(), hook=hook, batch_size=batch_size, buffer_tokens=buffer,
                                  seed=seed, device=device, max_tokens=n_tokens, drop_last=True, **filters)

    d_in = next(iter(batches_for(1, 1, 1, 0))).shape[-1]  # one row: the hook's width
    cfg = _config_or_exit(p, args, {**overrides, "hook_name": hook},
                          {"d_in": d_in, "model_name": str(args.model)})
    buffer = max(args.buffer_tokens or min(2**18, 16 * cfg.batch_size), cfg.batch_size)
    n_tokens = cfg.total_steps * cfg.batch_size
    return train_sae(cfg, lambda: batches_for(cfg.batch_size, n_tokens, buffer, cfg.seed), args.out, device=device,
                     resume=not args.no_resume, progress=not args.no_progress, max_steps=args.max_steps)


if __name__ == "__main__":  # pragma: no cover
    from interp.cli import run

    sys.exit(run("interp train-sae", main, sys.argv[1:]))
