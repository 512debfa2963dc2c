"""Data-parallel SAE training (interp.sae.distributed): a 2-process torchrun run on the CPU (gloo) reproduces the
single-process run on the same global batches, resumes after an interruption, and BatchTopK selects over the
global batch.

The comparison is made meaningful by giving both runs the *same global batches*: rank r of the DDP run reads its
own shards (``rank_batches(store, cfg, r, 2)``), and the single-process reference trains on
``global_batches(store, cfg, 2)``, the concatenation in rank order of both ranks' t-th batch at step t. With the
same data, initialisation and schedule the two runs differ only in floating-point summation order (DDP averages
two half-batch gradients, the reference takes one mean; the logged global loss is an all-reduce of two partial
sums), i.e. float32 rounding ~1e-7 relative per step. Adam normalises the updates, so over 30 steps these stay far
below the tolerance of 1e-4 (relative, per step of the loss curve) unless a TopK selection flips on a near tie.
A control run on differently composed batches (the same rows, shuffled as one process would) differs by more than
1e-2 somewhere, so the tolerance does tell the right data from the wrong.

One torchrun launch (2 Python processes, < 30 s on two idle cores): through the ``interp train-sae`` entry point
the TopK run stops at step 12 (as a killed run leaves it: checkpoint at step 12), a BatchTopK SAE trains, and
the same TopK command runs again, resuming from the step-12 checkpoint (fresh module, optimizer and streams, all
read back from disk) and finishing.
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
from interp.sae import SAEConfig, SparseAutoencoder, train_sae
from interp.sae.distributed import global_batches, rank_batches

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_post"
BOS, PAD = 60, 59
REL_TOL = 1e-4
BATCH, STEPS = 128, 30  # global batch: 64 rows per rank


def _cfg(**kw) -> SAEConfig:
    base = dict(d_in=32, d_sae=64, architecture="topk", k=4, lr=3e-3, batch_size=BATCH,
                total_training_tokens=BATCH * STEPS, checkpoint_every=6, log_every=5, dead_window_tokens=BATCH * 8,
                hook_name=HOOK, seed=0)
    return SAEConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """2048 rows of a tiny Mamba's residual stream in 16 shards (8 per rank)."""
    out = tmp_path_factory.mktemp("dist") / "cache"
    model = interp.load(make_hf_ssm("mamba1"))
    g = torch.Generator().manual_seed(0)

    def tokens():
        for _ in range(10):  # 256 kept rows per forward (BOS dropped)
            t = torch.randint(0, PAD, (16, 17), generator=g)
            t[:, 0] = BOS
            yield t

    cache_activations(model, tokens(), hook=HOOK, out=out, shard_tokens=128, max_tokens=2048, bos_id=BOS, pad_id=PAD,
                      progress=False)
    return out


def _torchrun(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _losses(out: Path) -> np.ndarray:
    return np.array(json.loads((out / "checkpoint" / "state.json").read_text())["losses"])


def _single(cfg: SAEConfig, batches):
    """A single-process run on one thread (as each torchrun worker)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_sae(cfg, batches, None, progress=False, device="cpu")
    finally:
        torch.set_num_threads(old)


def _reference(store: Path, cfg: SAEConfig, world_size: int = 2):
    """The single-process run on the global batches of a ``world_size``-process run."""
    s = ActivationStore(store)
    return _single(cfg, lambda: global_batches(s, cfg, world_size))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


def test_global_batches_are_the_ranks_batches_side_by_side(store):
    s, cfg = ActivationStore(store), _cfg()
    g = list(global_batches(s, cfg, 2))
    r0, r1 = list(rank_batches(s, cfg, 0, 2)), list(rank_batches(s, cfg, 1, 2))
    # 1024 rows per rank = 16 steps per epoch: 2 epochs cover the 30 steps
    assert len(g) == 32 and all(b.shape == (BATCH, 32) for b in g)
    assert all(torch.equal(a, torch.cat([b, c])) for a, b, c in zip(g, r0, r1))
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        list(rank_batches(s, _cfg(batch_size=129), 0, 2))


def test_torchrun_two_processes_match_single_process_and_resume(store, tmp_path):
    topk, btk = _cfg(), _cfg(architecture="batchtopk", k=4.0)
    (tmp_path / "topk.json").write_text(json.dumps(topk.to_dict()))
    (tmp_path / "btk.json").write_text(json.dumps(btk.to_dict()))
    run_topk = ["--config", "topk.json", "--store", str(store), "--out", "topk", "--no-progress"]

    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import json
        from interp.sae import SAEConfig
        from interp.sae.cli import main
        from interp.sae.distributed import init_distributed, train_sae_distributed
        init_distributed()  # the entry point then leaves the process group to us
        main({run_topk!r} + ["--max-steps", "12"])      # stops at step 12, as if killed after its checkpoint
        cfg = SAEConfig.from_dict(json.load(open("btk.json")))
        train_sae_distributed(cfg, {str(store)!r}, "btk", progress=False)
        main({run_topk!r})                              # the same command again: resumes and finishes
    """))
    stdout = _torchrun([str(driver)], tmp_path)
    summaries = [json.loads("{" + part[: part.rindex("}") + 1]) for part in ("\n" + stdout).split("\n{")[1:]]
    assert len(summaries) == 2, stdout  # printed by rank 0 only
    assert summaries[0]["steps"] == 12 and summaries[0]["resumed_from"] == 0
    assert summaries[1]["resumed_from"] == 12 and summaries[1]["steps"] == STEPS
    assert summaries[1]["tokens"] == BATCH * STEPS

    for name, cfg in (("topk", topk), ("btk", btk)):
        out = tmp_path / name
        ddp = _losses(out)
        ref = _reference(store, cfg)
        assert len(ddp) == len(ref.losses) == STEPS
        rel = _rel(ddp, np.array(ref.losses))
        assert rel < REL_TOL, f"{name}: the DDP loss curve differs from the single-process one by {rel:.2e}"
        assert ref.losses[-1] < 0.75 * ref.losses[0], "the runs should actually train"
        # same final SAE (rank 0 wrote it), and the same batchtopk inference threshold
        sae = SparseAutoencoder.load(out)
        for k, v in ref.sae.state_dict().items():
            assert torch.allclose(sae.state_dict()[k], v, atol=1e-4, rtol=1e-3), (name, k)
        state = json.loads((out / "checkpoint" / "state.json").read_text())
        assert state["world_size"] == 2 and state["tokens"] == BATCH * STEPS
        summary = json.loads((out / "training_summary.json").read_text())
        assert summary["world_size"] == 2 and summary["final"]["l0"] == pytest.approx(4.0, abs=2.0)

    # control: the same rows, batched as one process would shuffle them, give a clearly different curve
    s = ActivationStore(store)
    control = _single(topk, lambda: rank_batches(s, topk, 0, 1))
    assert _rel(np.array(control.losses), _losses(tmp_path / "topk")) > 1e-2

    # resuming a 2-process checkpoint with one process is refused (each rank's data depends on the split)
    with pytest.raises(ValueError, match="written by a run of 2 process"):
        train_sae(topk, lambda: global_batches(s, topk, 2), tmp_path / "topk", progress=False, device="cpu")
