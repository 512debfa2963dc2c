"""``interp cache`` under ``torchrun`` (issue 19, item 4): two CPU processes on gloo cache disjoint halves of the
token stream into their own shards with one merged manifest; a SIGKILL of one rank, then the same command again,
resumes to exactly the rows of an uninterrupted two-process run; the rows are the one-process run's rows; a second,
independent job is refused by the folder lock on every rank.

Two torchrun launches (2 Python processes each, one thread each):

1. a driver script, on both ranks: (a) ``cache_activations`` on a folder whose lock this test holds (an independent
   job): every rank raises FolderLockedError; (b) ``interp cache`` (the CLI's ``main``) into ``ref``, uninterrupted;
   (c) the same cache into ``out`` (the CLI's data helpers, so the run's identity is the command's) with a token
   stream that SIGKILLs rank 1 when it reads batch 7, after it has written some shards; torchrun then stops rank 0.
2. ``python -m torch.distributed.run ... -m interp.activations.cli <the same command> --out out``: resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import interp
from conftest import make_hf_ssm
from interp.activations import ActivationStore, cache_activations
from interp.activations.manifest import MANIFEST_FILE, META_KEYS, Manifest, rank_manifest_name
from interp.activations.writer import CacheMismatchError
from interp.locks import LOCK_FILE, FolderLock

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.ssm.hook_y"]
BOS, PAD = 60, 59
N_SEQ, SEQ_LEN, BATCH, SHARD = 40, 16, 4, 32  # 10 token batches: 5 per rank


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dcache")
    make_hf_ssm("mamba1").save_pretrained(str(root / "ckpt"))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, PAD, (N_SEQ, SEQ_LEN), generator=g)
    tokens[:, 0] = BOS
    for row, n_pad in enumerate(torch.randint(0, 4, (N_SEQ,), generator=g).tolist()):
        if n_pad:
            tokens[row, -n_pad:] = PAD
    np.save(root / "tokens.npy", tokens.numpy())
    args = ["--model", str(root / "ckpt"), "--hook", ",".join(HOOKS), "--dataset", str(root / "tokens.npy"),
            "--batch", str(BATCH), "--seq-len", str(SEQ_LEN), "--bos-id", str(BOS), "--pad-id", str(PAD),
            "--shard-tokens", str(SHARD), "--dtype", "float16", "--device", "cpu", "--no-progress"]
    return {"root": root, "args": args, "tokens": tokens}


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


_DRIVER = """
import os, signal, torch
import torch.distributed as dist
torch.set_num_threads(1)
import interp
from interp.activations import cache_activations
from interp.activations.cli import build_parser, filter_kwargs, main, token_batches_from_args
from interp.locks import FolderLockedError

dist.init_process_group(backend="gloo")
rank = dist.get_rank()
args = {args!r}
model = interp.load({ckpt!r})

try:  # (a) the folder is locked by another job (the test process): refused on every rank
    cache_activations(model, [torch.zeros(1, 4, dtype=torch.long)], hook="blocks.0.hook_resid_post",
                      out={locked!r}, drop_bos=False, drop_pad=False, progress=False)
    print(f"rank {{rank}}: NOT REFUSED", flush=True)
except FolderLockedError as e:
    print(f"rank {{rank}}: LOCKED {{e}}".replace(chr(10), " "), flush=True)

main(args + ["--out", "ref"])  # (b) uninterrupted

ns = build_parser().parse_args(args + ["--out", "out"])  # (c) the same command, rank 1 killed half way
batches, desc, ids = token_batches_from_args(ns)

def killed():
    for i, t in enumerate(batches()):
        if rank == 1 and i == 7:
            os.kill(os.getpid(), signal.SIGKILL)
        yield t

cache_activations(model, killed(), hook=ns.hook[0].split(","), out="out", shard_tokens=ns.shard_tokens,
                  dtype=torch.float16, dataset=desc, model_name=ns.model, progress=False, **filter_kwargs(ns, ids))
print(f"rank {{rank}}: NOT KILLED", flush=True)
"""


def _shards(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    store = ActivationStore(folder)
    return {e.file: store.shard(i) for i, e in enumerate(store.manifest.shards)}


def _by_position(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    order = torch.argsort(rows["seq_idx"] * SEQ_LEN + rows["pos"])
    return {k: v[order] for k, v in rows.items()}


def _all_rows(folder: Path) -> dict[str, torch.Tensor]:
    store = ActivationStore(folder)
    rows = dict(store.row_meta())
    rows.update({h: store.all(h, dtype=None) for h in HOOKS})
    return rows


def test_torchrun_cache_resumes_after_a_killed_rank_to_the_same_rows(setup):
    root, args = setup["root"], setup["args"]
    driver = root / "driver.py"
    driver.write_text(textwrap.dedent(_DRIVER.format(args=args, ckpt=str(root / "ckpt"), locked=str(root / "locked"))))

    with FolderLock(root / "locked", job="another job"):  # held by this process: an independent writer
        first = _torchrun([str(driver)], root)
    log = first.stdout + first.stderr
    assert first.returncode != 0, log  # rank 1 was killed
    assert "NOT REFUSED" not in log and "NOT KILLED" not in log, log
    for rank in (0, 1):
        assert f"rank {rank}: LOCKED" in log and "another job" in log, log
    assert not list((root / "locked").glob("shard_*"))

    # the uninterrupted two-process cache: one complete manifest listing both ranks' shards, nothing else
    ref, out = root / "ref", root / "out"
    m_ref = Manifest.load(ref)
    assert m_ref.complete and m_ref.world_size == 2 and {e.rank for e in m_ref.shards} == {0, 1}
    assert sorted(p.name for p in ref.iterdir()) == sorted([MANIFEST_FILE] + [e.file for e in m_ref.shards])

    # the killed run: rank 1's manifest lists only complete shards; the reader sees a partial cache
    assert not Manifest.load(out).complete
    kept = Manifest.load(out, rank_manifest_name(1))
    assert not kept.complete and kept.shards, "rank 1 should have written shards before its kill"
    partial = ActivationStore(out)
    assert not partial.complete and 0 < len(partial) < len(ActivationStore(ref))
    kept_files = {e.file: (out / e.file).stat().st_mtime_ns for e in kept.shards}
    for i, e in enumerate(partial.manifest.shards):  # every listed shard reads back and checks out
        partial.shard(i)

    # resuming with another number of processes would change the split: refused, nothing deleted
    from interp.activations.cli import build_parser, filter_kwargs, token_batches_from_args

    ns = build_parser().parse_args(args + ["--out", str(out)])
    batches, desc, ids = token_batches_from_args(ns)
    with pytest.raises(CacheMismatchError, match=r"world_size: cache has 2, this run has 1"):
        cache_activations(interp.load(str(root / "ckpt")), batches(), hook=HOOKS, out=out, shard_tokens=SHARD,
                          dtype=torch.float16, dataset=desc, model_name=ns.model, progress=False,
                          **filter_kwargs(ns, ids))
    assert all((out / f).is_file() for f in kept_files)

    second = _torchrun(["-m", "interp.activations.cli", *args, "--out", "out"], root)
    assert second.returncode == 0, second.stdout + second.stderr
    summary = json.loads(second.stdout[second.stdout.index("{"):])  # printed by rank 0 only
    assert summary["complete"] and summary["world_size"] == 2 and second.stdout.count('"rows"') == 1

    m_out = Manifest.load(out)
    assert m_out.complete and not (out / LOCK_FILE).exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_FILE] + [e.file for e in m_out.shards])
    assert {f: (out / f).stat().st_mtime_ns for f in kept_files} == kept_files  # rank 1's shards were kept
    # (not the sha256: safetensors writes its metadata in a per-process hash order, so the bytes may differ)
    assert [(e.file, e.n_rows, e.rank) for e in m_out.shards] == [(e.file, e.n_rows, e.rank) for e in m_ref.shards]
    a, b = _shards(ref), _shards(out)
    for f in a:  # bit-identical rows: tokens, seq_idx, pos and every hook
        assert a[f].keys() == b[f].keys() and all(torch.equal(a[f][k], b[f][k]) for k in a[f]), f
    assert m_out.cast_error() == m_ref.cast_error()

    # the same multiset of rows as one process (one thread, as the workers)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batches = [setup["tokens"][i:i + BATCH] for i in range(0, N_SEQ, BATCH)]
        one = cache_activations(interp.load(str(root / "ckpt")), batches, hook=HOOKS, out=root / "one",
                                shard_tokens=SHARD, dtype=torch.float16, bos_id=BOS, pad_id=PAD, progress=False)
    finally:
        torch.set_num_threads(old)
    two, single = _by_position(_all_rows(out)), _by_position(_all_rows(root / "one"))
    assert set(two) == set(single) == set(META_KEYS) | set(HOOKS)
    for k in single:
        assert torch.equal(two[k], single[k]), k
    assert len(set(zip(two["seq_idx"].tolist(), two["pos"].tolist()))) == one.n_rows == m_out.n_rows
    for hook, fig in one.cast_error().items():  # the merged error figures are the whole cache's
        got = m_out.cast_error()[hook]
        assert got["max_abs_error"] == fig["max_abs_error"] and got["n_rows"] == fig["n_rows"]
        assert got["rel_rms_error"] == pytest.approx(fig["rel_rms_error"], rel=1e-9)
    # the rank split: batch i went to rank i % 2
    for e, shard in zip(m_out.shards, ActivationStore(out)):
        assert set((shard["seq_idx"] // BATCH % 2).tolist()) == {e.rank}
