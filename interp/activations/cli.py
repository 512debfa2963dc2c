"""``interp cache``: run a model over a token stream and cache hook activations to disk shards.

    interp cache --model tokfsm-mamba --hook blocks.1.hook_resid_post --dataset tokfsm --seed 0 \\
        --batch 64 --seq-len 128 --n-tokens 1000000 --out runs/cache/tokfsm-l1 --dtype float16
    interp cache --model ./ckpt --hook blocks.0.hook_resid_post,blocks.1.ssm.hook_y --dataset tokens.npy \\
        --batch 16 --out runs/cache/x
    interp train-sae --config sae.json --store runs/cache/tokfsm-l1 --out runs/sae/l1

Under ``torchrun`` every process caches a disjoint share of the token stream (token batch i goes to rank
i % world size) into its own shards, and rank 0 writes the one manifest at the end (:mod:`interp.activations.writer`);
relaunching the same command after a kill of any rank resumes, with the same number of processes:

    torchrun --nproc_per_node 4 $(which interp) cache --model ./ckpt --hook blocks.1.hook_resid_post \
        --dataset tokfsm --n-tokens 100000000 --out runs/cache/x --dtype bfloat16

Re-running the same command resumes an interrupted cache (no token lost or duplicated) and returns at once for a
finished one; ``--overwrite`` starts over. Data sets (``--dataset``): ``tokfsm`` (seeded TokFSM paths: ``--seed``,
``--batch`` sequences of ``--seq-len`` tokens), ``copy`` (seeded copying task, copy length ``--copy-len lo,hi``)
or a token file: ``.npy`` / ``.safetensors`` holding int tokens [n_seq, seq_len] (a 1-D stream is cut into rows
of ``--seq-len``; a safetensors file's tensor named ``tokens`` / ``input_ids`` or its only one), read once in
batches of ``--batch`` rows. BOS / pad rows are dropped: ids from ``--bos-id`` / ``--pad-id``, else the data set's
(TokFSM: 10; copy: its BOS / PAD), else the model's; ``--keep-bos`` / ``--keep-pad`` keep them.

The helpers here (:func:`add_data_args`, :func:`token_batches_from_args`, :func:`filter_kwargs`) are shared with
``interp train-sae --model ...`` (streaming without disk).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["main", "build_parser", "add_data_args", "token_batches_from_args", "filter_kwargs", "parse_dtype",
           "split_hooks"]

DATASETS = ("tokfsm", "copy")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``"float16"`` -> torch.float16 (None stays None); an unknown name is an error naming the choices."""
    if name is None:
        return None
    key = name.removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[key]


def split_hooks(values: list[str] | None) -> list[str]:
    """``--hook a --hook b,c`` -> [a, b, c]."""
    return [h.strip() for v in values or [] for h in v.split(",") if h.strip()]


def add_data_args(p: argparse.ArgumentParser, title: str = "data") -> None:
    """The token-stream options shared by ``interp cache`` and ``interp train-sae --model``."""
    g = p.add_argument_group(title)
    g.add_argument("--dataset", default="tokfsm",
                   help="tokfsm (default), copy, or a token file (.npy / .safetensors, int [n_seq, seq_len])")
    g.add_argument("--seed", type=int, default=0, help="data seed (tokfsm / copy), default 0")
    g.add_argument("--batch", type=int, default=32, help="sequences per model forward (default 32)")
    g.add_argument("--seq-len", type=int, default=128, help="tokfsm sequence length / row length of a 1-D token "
                                                            "file (default 128)")
    g.add_argument("--copy-len", default="16,32", help="copy task: copy length 'n' or 'lo,hi' (default 16,32)")
    g.add_argument("--bos-id", type=int, default=None, help="drop rows with this token id (default: the data "
                                                            "set's BOS, else the model's)")
    g.add_argument("--pad-id", type=int, default=None, help="drop rows with this token id (default: the data "
                                                            "set's pad, else the model's)")
    g.add_argument("--keep-bos", action="store_true", help="keep BOS rows")
    g.add_argument("--keep-pad", action="store_true", help="keep pad rows")


def _copy_range(text: str) -> tuple[int, int]:
    parts = [int(x) for x in str(text).split(",")]
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise ValueError(f"--copy-len expects 'n' or 'lo,hi', got {text!r}")
    return parts[0], parts[1]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_token_file(path: Path, seq_len: int) -> torch.Tensor:
    """int64 [n_seq, seq_len] from a .npy / .safetensors token file (no pickle)."""
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} not found (--dataset takes tokfsm, copy or a .npy / "
                                ".safetensors file)")
    if path.suffix == ".npy":
        arr = torch.from_numpy(np.load(path, allow_pickle=False))
    elif path.suffix == ".safetensors":
        from interp.io import read_safetensors

        tensors = read_safetensors(path, what="token file")
        key = next((k for k in ("tokens", "input_ids") if k in tensors), None)
        if key is None:
            if len(tensors) != 1:
                raise ValueError(f"{path} holds tensors {sorted(tensors)}: name the token tensor 'tokens'")
            key = next(iter(tensors))
        arr = tensors[key]
    else:
        raise ValueError(f"token file {path}: expected a .npy or .safetensors file, got {path.suffix!r}")
    if arr.is_floating_point() or arr.is_complex() or arr.dtype == torch.bool:
        raise ValueError(f"{path}: tokens must be integers, got {arr.dtype}")
    arr = arr.to(torch.long)
    if arr.dim() == 1:
        n = arr.numel() // seq_len
        if n == 0:
            raise ValueError(f"{path}: a 1-D stream of {arr.numel()} tokens is shorter than --seq-len {seq_len}")
        arr = arr[: n * seq_len].reshape(n, seq_len)
    if arr.dim() != 2:
        raise ValueError(f"{path}: tokens must be [n_seq, seq_len] (or a 1-D stream), got shape {tuple(arr.shape)}")
    return arr


def token_batches_from_args(args: argparse.Namespace) -> tuple[Callable[[], Iterator[torch.Tensor]], dict[str, Any],
                                                                 dict[str, int]]:
    """(factory of a fresh, deterministic token-batch iterator, JSON description of the data, the data set's
    special ids {"bos_id", "pad_id"} (may be empty)) from the :func:`add_data_args` options."""
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    name = args.dataset
    if name == "tokfsm":
        from interp.data import TOKFSM_BOS, tokfsm_batches

        desc = {"name": "tokfsm", "seed": args.seed, "batch": args.batch, "seq_len": args.seq_len}
        return (lambda: tokfsm_batches(args.batch, seq_len=args.seq_len, seed=args.seed)), desc, \
            {"bos_id": TOKFSM_BOS, "pad_id": TOKFSM_BOS}
    if name == "copy":
        from interp.data import COPY_BOS, COPY_PAD, copy_batches

        lo, hi = _copy_range(args.copy_len)
        desc = {"name": "copy", "seed": args.seed, "batch": args.batch, "copy_len": [lo, hi]}

        def copy_tokens() -> Iterator[torch.Tensor]:
            for b in copy_batches(args.batch, n_range=(lo, hi), seed=args.seed, pad_to=2 * hi + 2):
                yield b.tokens

        return copy_tokens, desc, {"bos_id": COPY_BOS, "pad_id": COPY_PAD}
    path = Path(name).expanduser()
    if path.suffix not in (".npy", ".safetensors"):
        raise ValueError(f"--dataset {name!r}: expected tokfsm, copy, or a .npy / .safetensors token file")
    tokens = _read_token_file(path, args.seq_len)
    desc = {"name": "file", "path": str(path.resolve()), "sha256": _file_sha256(path), "batch": args.batch,
            "shape": list(tokens.shape)}

    def file_tokens() -> Iterator[torch.Tensor]:
        for i in range(0, tokens.shape[0], args.batch):
            yield tokens[i:i + args.batch]

    return file_tokens, desc, {}


def filter_kwargs(args: argparse.Namespace, data_ids: dict[str, int]) -> dict[str, Any]:
    """``drop_bos`` / ``drop_pad`` / ``bos_id`` / ``pad_id`` for the activation store from the options: explicit
    ids first, then the data set's, then (None) the model's."""
    return {
        "drop_bos": not args.keep_bos, "drop_pad": not args.keep_pad,
        "bos_id": args.bos_id if args.bos_id is not None else data_ids.get("bos_id"),
        "pad_id": args.pad_id if args.pad_id is not None else data_ids.get("pad_id"),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interp cache", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="embedded model name, model folder, or hub / TransformerLens name")
    p.add_argument("--hook", action="append", required=True,
                   help="hook name(s) to cache: repeat the option or separate with commas")
    p.add_argument("--out", required=True, help="cache folder (re-running resumes it)")
    p.add_argument("--n-tokens", type=int, default=None, help="stop after this many stored rows (tokens)")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many token batches")
    p.add_argument("--dtype", default=None, help="storage dtype: float16, bfloat16, float32 (default: the model's)")
    p.add_argument("--shard-tokens", type=int, default=None, help="rows per shard (default 65536)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing cache in --out and start over")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_data_args(p)
    return p


def _torchrun_world() -> int:
    """The number of processes ``torchrun`` started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def main(argv: list[str] | None = None) -> Any:
    """Run ``interp cache``; prints a JSON summary (rank 0) and returns the finished manifest. Under ``torchrun``
    it joins the process group (gloo: it only carries the ranks' hand-shakes) unless one exists, and leaves it."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        dtype = parse_dtype(args.dtype)
        batches, desc, data_ids = token_batches_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    if desc["name"] in DATASETS and args.n_tokens is None and args.max_batches is None:
        p.error(f"the {desc['name']} data set is endless: pass --n-tokens N (or --max-batches N)")
    if _torchrun_world() == 1:
        return _cache(args, dtype, batches, desc, data_ids, args.device)

    import torch.distributed as dist

    ours = not dist.is_initialized()
    if ours:
        dist.init_process_group(backend="gloo")
    try:
        local = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per rank
        device = local if args.device == "cuda" or (args.device is None and torch.cuda.is_available()) \
            else args.device or "cpu"
        return _cache(args, dtype, batches, desc, data_ids, device, quiet=dist.get_rank() != 0)
    finally:
        if ours and dist.is_initialized():
            dist.destroy_process_group()


def _cache(args: argparse.Namespace, dtype: torch.dtype | None, batches: Callable[[], Iterator[torch.Tensor]],
           desc: dict[str, Any], data_ids: dict[str, int], device: str | None, quiet: bool = False) -> Any:
    import interp
    from interp.activations import DEFAULT_SHARD_TOKENS, cache_activations

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = interp.load(args.model, device=device)
    manifest = cache_activations(
        model, batches(), hook=split_hooks(args.hook), out=args.out,
        shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS, dtype=dtype, max_tokens=args.n_tokens,
        max_batches=args.max_batches, dataset=desc, model_name=str(args.model), overwrite=args.overwrite,
        progress=not args.no_progress, **filter_kwargs(args, data_ids),
    )
    if not quiet:
        print(json.dumps({"out": str(args.out), "rows": manifest.n_rows, "shards": len(manifest.shards),
                          "hooks": list(manifest.hook_names), "dtype": manifest.dtype, "complete": manifest.complete,
                          "world_size": manifest.world_size, "cast_error": manifest.cast_error()}, indent=2))
    return manifest


if __name__ == "__main__":  # pragma: no cover
    from interp.cli import run

    sys.exit(run("interp cache", main, sys.argv[1:]))
