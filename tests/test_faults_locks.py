"""Issue 16, locks and safe resume: one writer per output folder (the four long jobs: activation cache, SAE training,
zoo training, codebook training), stale and foreign locks, readers of a folder being written, ``train-sae`` on an
incomplete store, codebook resume with a changed config, and a complete ``checkpoint.tmp/`` recovered.

Each concurrency test runs the first writer (the real entry point, tiny sizes) in a thread that pauses at a gate
mid-job, while the second writer is the real ``interp`` command in another process: it must exit at once with status
2 and the one-line lock message naming the folder and this process's PID; the first then completes and its output
loads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

import interp
from conftest import make_hf_ssm
from interp import cli
from interp.activations import ActivationStore, IncompleteStoreError, cache_activations
from interp.locks import (
    LOCK_FILE, FolderBeingWrittenWarning, FolderLock, FolderLockedError, StaleLockWarning, lock_holder,
)
from interp.sae import SAEConfig, SparseAutoencoder, train_sae
from interp.training import CHECKPOINT_DIR, checkpoint_complete, find_checkpoint, read_checkpoint_state

REPO = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_post"
HOST = socket.gethostname()


def dead_pid() -> int:
    """The PID of a process of this host that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock(folder: Path, pid: int, host: str = HOST, job: str = "old job") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    path.write_text(json.dumps({"pid": pid, "host": host, "job": job, "started": "2024-01-01T00:00:00+00:00",
                                "token": "t"}))
    return path


def second_writer(*argv: object) -> tuple[int, str, float]:
    """Run ``interp ARGV`` in another process: (exit status, stderr, seconds)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "interp", *map(str, argv)], capture_output=True, text=True,
                       timeout=240, cwd=REPO)
    return r.returncode, r.stderr, time.perf_counter() - t0


def assert_refused(rc: int, err: str, seconds: float, folder: Path) -> None:
    lines = [ln for ln in err.splitlines() if "being written" in ln]  # (warnings of the loaders may come first)
    assert rc == 2, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]  # one line, no traceback
    assert str(folder) in lines[0] and f"PID {os.getpid()}" in lines[0] and HOST in lines[0], lines[0]
    assert "is being written by another job" in lines[0] and lines[0].startswith(("interp ", "python -m")), lines[0]
    assert seconds < 60  # at once: imports and the refusal, no work


class Gate:
    """Pauses the first writer mid-job: ``reached`` is set when it gets there, it goes on once ``go`` is set."""

    def __init__(self) -> None:
        self.reached, self.go = threading.Event(), threading.Event()

    def wait(self) -> None:
        self.reached.set()
        assert self.go.wait(240)


class Background:
    """``fn()`` in a thread; ``result()`` joins it and re-raises its exception."""

    def __init__(self, fn) -> None:
        self.value, self.error = None, None

        def target():
            try:
                self.value = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the test thread
                self.error = e

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def result(self):
        self.thread.join(240)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.value


def start_gated(fn, gate: Gate, folder: Path) -> Background:
    job = Background(fn)
    assert gate.reached.wait(240), job.result()
    assert lock_holder(folder) is not None and lock_holder(folder).pid == os.getpid()
    return job


# ----------------------------------------------------------------------------------------------------------------
# the lock itself


def test_lock_file_holds_the_holder_and_is_removed_on_exit_and_on_error(tmp_path):
    folder = tmp_path / "run"
    with FolderLock(folder, job="unit test") as lock:
        doc = json.loads((folder / LOCK_FILE).read_text())
        assert doc["pid"] == os.getpid() and doc["host"] == HOST and doc["job"] == "unit test" and doc["started"]
        holder = lock_holder(folder)
        assert holder.pid == os.getpid() and holder.mine and lock.holder.token == doc["token"]
        with FolderLock(folder, job="nested"):  # re-entrant in the thread that holds it
            pass
        assert (folder / LOCK_FILE).is_file()
    assert not (folder / LOCK_FILE).exists() and lock_holder(folder) is None
    with pytest.raises(RuntimeError, match="boom"):
        with FolderLock(folder, job="unit test"):
            raise RuntimeError("boom")
    assert not (folder / LOCK_FILE).exists()


def test_second_writer_in_another_thread_is_refused(tmp_path):
    folder = tmp_path / "run"
    errors = []
    with FolderLock(folder, job="first"):
        t = threading.Thread(target=lambda: errors.append(_try_lock(folder)))
        t.start()
        t.join()
    assert isinstance(errors[0], FolderLockedError) and str(folder) in str(errors[0])
    assert f"PID {os.getpid()}" in str(errors[0]) and "'first'" in str(errors[0])
    assert _try_lock(folder) is None  # released: free again


def _try_lock(folder: Path) -> BaseException | None:
    try:
        with FolderLock(folder, job="second"):
            return None
    except FolderLockedError as e:
        return e


def test_live_holder_of_another_process_is_refused_with_pid_host_job_and_start(tmp_path):
    folder = tmp_path / "run"
    write_lock(folder, os.getppid(), job="interp cache")  # our parent: alive, on this host, not us
    with pytest.raises(FolderLockedError) as e:
        FolderLock(folder, job="second").acquire()
    msg = str(e.value)
    for part in (str(folder), f"PID {os.getppid()}", HOST, "'interp cache'", "2024-01-01T00:00:00", "kill"):
        assert part in msg, msg
    assert e.value.holder.pid == os.getppid() and (folder / LOCK_FILE).is_file()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    pid = dead_pid()
    write_lock(folder, pid)
    assert lock_holder(folder) is None  # stale: nobody writes it
    with pytest.warns(StaleLockWarning, match=f"PID {pid}"):
        with FolderLock(folder, job="new"):
            assert lock_holder(folder).pid == os.getpid()
    assert not (folder / LOCK_FILE).exists()


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    folder = tmp_path / "run"
    path = write_lock(folder, dead_pid(), host="other-host.example")
    with pytest.raises(FolderLockedError, match="another host") as e:
        FolderLock(folder, job="new").acquire()
    assert "other-host.example" in str(e.value) and f"remove {path}" in str(e.value)
    assert json.loads(path.read_text())["host"] == "other-host.example"  # left alone
    path.write_text("{not json")
    with pytest.raises(FolderLockedError, match="not a lock file"):
        FolderLock(folder, job="new").acquire()


def test_lock_error_is_a_one_line_user_error_of_the_cli():
    err = FolderLockedError("/x is being written by another job: PID 1\non host h", Path("/x"), None)
    assert cli.is_user_error(err) and "\n" not in cli.error_line(err)


# ----------------------------------------------------------------------------------------------------------------
# the four jobs: a second writer exits at once, the first completes and its output loads


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("locks") / "tiny-mamba"
    make_hf_ssm("mamba1").save_pretrained(str(folder))
    return folder


def token_batches(n: int, gate: Gate | None = None, at: int = 2):
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        if gate is not None and i == at:
            gate.wait()
        yield torch.randint(0, 60, (4, 16), generator=g)


def test_two_cache_writers(model_dir, tmp_path):
    model, out, gate = interp.load(str(model_dir)), tmp_path / "cache", Gate()
    job = start_gated(lambda: cache_activations(model, token_batches(6, gate), hook=HOOK, out=out, shard_tokens=32,
                                                drop_bos=False, drop_pad=False, progress=False), gate, out)
    try:
        assert_refused(*second_writer("cache", "--model", model_dir, "--hook", HOOK, "--dataset", "tokfsm",
                                      "--batch", "4", "--seq-len", "16", "--max-batches", "6", "--out", out,
                                      "--no-progress"), out)
    finally:
        gate.go.set()
    manifest = job.result()
    store = ActivationStore(out)
    assert manifest.complete and store.complete and len(store) == 6 * 4 * 16
    assert store.all().shape == (6 * 4 * 16, 32) and not (out / LOCK_FILE).exists()


@pytest.fixture(scope="module")
def store_dir(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("locks") / "store"
    cache_activations(interp.load(str(model_dir)), token_batches(4), hook=HOOK, out=out, shard_tokens=32,
                      drop_bos=False, drop_pad=False, progress=False)
    return out


SAE = {"d_sae": 16, "architecture": "topk", "k": 2, "batch_size": 16, "total_training_tokens": 16 * 6,
       "checkpoint_every": 2, "log_every": 2}


def test_two_sae_trainers(store_dir, tmp_path):
    store, out, gate = ActivationStore(store_dir), tmp_path / "sae", Gate()
    cfg = SAEConfig(d_in=store.d_in, hook_name=HOOK, **SAE)

    def batches():
        for i, x in enumerate(store.shuffled_batches(16, seed=0, drop_last=True)):
            if i == 3:
                gate.wait()
            yield x

    job = start_gated(lambda: train_sae(cfg, batches, out=out, progress=False, device="cpu"), gate, out)
    try:
        (tmp_path / "sae.json").write_text(json.dumps(SAE))
        assert_refused(*second_writer("train-sae", "--config", tmp_path / "sae.json", "--store", store_dir,
                                      "--out", out, "--no-progress", "--device", "cpu"), out)
    finally:
        gate.go.set()
    result = job.result()
    assert result.steps == 6
    loaded = SparseAutoencoder.load(out)
    assert all(torch.equal(v, result.sae.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_two_zoo_trainers(tmp_path, monkeypatch):
    import interp.zoo.train as zt
    from interp.zoo.recipes import get_recipe

    out, gate, real = tmp_path / "zoo", Gate(), zt.batch_at

    def gated_batch_at(recipe, step):  # the real batches; the first writer pauses before step 2
        if step == 2:
            gate.wait()
        return real(recipe, step)

    monkeypatch.setattr(zt, "batch_at", gated_batch_at)
    recipe = get_recipe("tokfsm-mamba").replace(steps=4, batch_size=4, seq_len=16, checkpoint_every=2, d_model=16,
                                                n_layers=1, d_state=4)
    job = start_gated(lambda: zt.train(recipe, out, progress=False, evaluate_at_end=False), gate, out)
    try:
        assert_refused(*second_writer("train", "tokfsm-mamba", "--out", out, "--steps", "2", "--no-eval",
                                      "--no-progress"), out)
    finally:
        gate.go.set()
    card = job.result()
    assert card["steps"] == 4 and read_checkpoint_state(find_checkpoint(out))["step"] == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", FolderBeingWrittenWarning)  # released: no "being written" warning
        model = interp.load(str(out))
    assert model.cfg.d_model == 16 and not (out / LOCK_FILE).exists()
    assert card["size_bytes"] == sum(p.stat().st_size for p in out.iterdir()
                                     if p.is_file() and p.name not in (zt.LOG_FILE, "model_card.json"))


def _codebook_setup():
    from interp.codebook import CodebookTrainConfig, make_codebooks, mixer_output_hooks

    cfg = CodebookTrainConfig(steps=6, batch_size=4, checkpoint_every=2, kmeans_tokens=512, kmeans_iters=2,
                              warmup_steps=2)
    m = interp.load("tokfsm-mamba", dtype=torch.float32)
    return m, make_codebooks(m, hook=mixer_output_hooks(m)[:1], n_codes=16), cfg


def test_two_codebook_trainers(tmp_path, one_thread):
    from interp.codebook import train_codebooks
    from interp.codebook.zoo import model_batches

    m, books, cfg = _codebook_setup()
    out, gate, data = tmp_path / "codebooks", Gate(), model_batches(m, cfg)

    def batches(step):
        if step == 2:
            gate.wait()
        return data(step)

    job = start_gated(lambda: train_codebooks(m, batches, books=books, cfg=cfg, out_dir=out, progress=False),
                      gate, out)
    try:
        rc, err, seconds = subprocess_codebook(out)
        assert_refused(rc, err, seconds, out)
    finally:
        gate.go.set()
    result = job.result()
    ckpt = find_checkpoint(out)
    assert result.start_step == 0 and read_checkpoint_state(ckpt)["step"] == 6 and checkpoint_complete(ckpt)
    assert not (out / LOCK_FILE).exists()


def subprocess_codebook(out: Path) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "interp.codebook.zoo", "tokfsm-mamba-codebooks", "--out", str(out),
                        "--no-progress", "--threads", "1"], capture_output=True, text=True, timeout=240, cwd=REPO)
    return r.returncode, r.stderr, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------------
# readers of a folder being written


def test_readers_say_the_folder_is_being_written(store_dir, model_dir, tmp_path):
    sae_dir = tmp_path / "sae"
    SparseAutoencoder(SAEConfig(d_in=32, d_sae=8, hook_name=HOOK)).save(sae_dir)
    model_copy = tmp_path / "model"
    shutil.copytree(model_dir, model_copy)
    store_copy = tmp_path / "store"
    shutil.copytree(store_dir, store_copy)
    for folder in (sae_dir, model_copy, store_copy):
        write_lock(folder, os.getppid(), job="a training job")  # a live process of this host holds them
    with pytest.warns(FolderBeingWrittenWarning, match=re.escape(f"SAE folder {sae_dir} is being written by PID "
                                                                 f"{os.getppid()}")):
        SparseAutoencoder.load(sae_dir)
    with pytest.warns(FolderBeingWrittenWarning, match="activation cache"):
        ActivationStore(store_copy)
    with pytest.warns(FolderBeingWrittenWarning, match="model folder"):
        interp.load(str(model_copy))
    (sae_dir / LOCK_FILE).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FolderBeingWrittenWarning)
        SparseAutoencoder.load(sae_dir)


# ----------------------------------------------------------------------------------------------------------------
# train-sae on an incomplete store


def test_train_sae_refuses_a_partial_store_unless_allowed(model_dir, tmp_path, capsys):
    store_dir = tmp_path / "partial"
    model = interp.load(str(model_dir))

    def killed():  # `interp cache` killed after 2 of 10 batches: 2 full shards written, the manifest not complete
        for i, b in enumerate(token_batches(10)):
            if i == 2:
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        cache_activations(model, killed(), hook=HOOK, out=store_dir, shard_tokens=64, max_tokens=640, drop_bos=False,
                          drop_pad=False, progress=False)
    store = ActivationStore(store_dir)
    assert not store.complete and store.n_shards == 2 and store.expected_shards() == (10, True)
    (tmp_path / "sae.json").write_text(json.dumps(SAE))
    args = ["train-sae", "--config", str(tmp_path / "sae.json"), "--store", str(store_dir), "--out",
            str(tmp_path / "run"), "--no-progress", "--device", "cpu"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(store_dir) in err and "2 shard(s) (128 rows) present of 10 expected" \
        in err and "--allow-partial" in err and "re-run the same `interp cache`" in err, err
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert cli.main(args + ["--allow-partial"]) == 0
    assert SparseAutoencoder.load(tmp_path / "run").cfg.d_in == 32

    from interp.sae.distributed import train_sae_distributed

    cfg = SAEConfig(d_in=32, hook_name=HOOK, **SAE)
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        train_sae_distributed(cfg, store_dir, tmp_path / "lib", progress=False)
    assert not (tmp_path / "lib").exists()


# ----------------------------------------------------------------------------------------------------------------
# codebook resume with a changed config


def test_codebook_resume_with_changed_config_raises_before_touching_anything(tmp_path, monkeypatch, one_thread):
    import interp.codebook.train as T
    from interp.codebook import attached, train_codebooks
    from interp.codebook.zoo import model_batches

    m, books, cfg = _codebook_setup()
    straight = train_codebooks(m, model_batches(m, cfg), books=books, cfg=cfg, out_dir=tmp_path / "straight",
                               progress=False)
    want = {k: v.clone() for k, v in straight.model.state_dict().items()}

    real_save, calls = T.save_checkpoint, []

    def killed_after_first_checkpoint(*a, **kw):
        out = real_save(*a, **kw)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the run is killed right after its step-2 checkpoint
        return out

    m, books, cfg = _codebook_setup()
    monkeypatch.setattr(T, "save_checkpoint", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_codebooks(m, model_batches(m, cfg), books=books, cfg=cfg, out_dir=tmp_path / "run", progress=False)
    monkeypatch.setattr(T, "save_checkpoint", real_save)
    assert read_checkpoint_state(find_checkpoint(tmp_path / "run"))["step"] == 2

    m, books, _ = _codebook_setup()
    codes = {s: b.codes.detach().clone() for s, b in books.items()}
    weights = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"another CodebookTrainConfig \(differs in \['lr'\]\)") as e:
        train_codebooks(m, model_batches(m, cfg), books=books, cfg=cfg.replace(lr=1e-2), out_dir=tmp_path / "run",
                        progress=False)
    assert not isinstance(e.value, SystemExit) and "resume=False" in str(e.value)
    assert all(torch.equal(b.codes, codes[s]) for s, b in books.items())  # the caller's codes untouched
    assert not attached(m) and all(torch.equal(v, weights[k]) for k, v in m.state_dict().items())
    assert read_checkpoint_state(find_checkpoint(tmp_path / "run"))["step"] == 2 and not (
        tmp_path / "run" / LOCK_FILE).exists()

    # only the checkpoint cadence changed: resumes from step 2, ends where the uninterrupted run ended
    resumed = train_codebooks(m, model_batches(m, cfg), books=books, cfg=cfg.replace(checkpoint_every=3),
                              out_dir=tmp_path / "run", progress=False)
    assert resumed.start_step == 2
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, want[k]), k


# ----------------------------------------------------------------------------------------------------------------
# a complete checkpoint.tmp/ left by a kill during a save


def _sae_cfg() -> SAEConfig:
    return SAEConfig(d_in=8, d_sae=16, architecture="topk", k=2, batch_size=16, total_training_tokens=16 * 8,
                     checkpoint_every=2, log_every=2, seed=0)


def _stream():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(16, 8, generator=g) for _ in range(8)]


def test_complete_checkpoint_tmp_is_recovered(tmp_path):
    data, cfg = _stream(), _sae_cfg()
    ref = train_sae(cfg, data, out=tmp_path / "ref", progress=False, device="cpu")
    train_sae(cfg, data, out=tmp_path / "six", progress=False, device="cpu", max_steps=6)
    run = tmp_path / "run"
    train_sae(cfg, data, out=run, progress=False, device="cpu", max_steps=4)
    # a kill after checkpoint.tmp/state.json was written, before the swap: tmp at step 6, checkpoint/ at step 4
    shutil.copytree(tmp_path / "six" / CHECKPOINT_DIR, run / "checkpoint.tmp")
    assert checkpoint_complete(run / "checkpoint.tmp") and find_checkpoint(run) == run / "checkpoint.tmp"
    resumed = train_sae(cfg, data, out=run, progress=False, device="cpu")
    assert resumed.resumed_from == 6 and resumed.losses == ref.losses
    for k, v in ref.sae.state_dict().items():
        assert torch.equal(v, resumed.sae.state_dict()[k]), k


def test_checkpoint_tmp_is_used_only_when_complete_and_newer(tmp_path):
    data, cfg = _stream(), _sae_cfg()
    train_sae(cfg, data, out=tmp_path / "six", progress=False, device="cpu", max_steps=6)
    six = tmp_path / "six" / CHECKPOINT_DIR
    # the first save of a run killed before its swap: no checkpoint/ at all, a complete tmp
    first = tmp_path / "first"
    shutil.copytree(six, first / "checkpoint.tmp")
    assert find_checkpoint(first) == first / "checkpoint.tmp"
    assert train_sae(cfg, data, out=first, progress=False, device="cpu").resumed_from == 6
    # an incomplete tmp (killed before state.json, or a file missing) is ignored
    run = tmp_path / "run"
    train_sae(cfg, data, out=run, progress=False, device="cpu", max_steps=4)
    shutil.copytree(six, run / "checkpoint.tmp")
    (run / "checkpoint.tmp" / "rng.safetensors").unlink()
    assert not checkpoint_complete(run / "checkpoint.tmp") and find_checkpoint(run) == run / CHECKPOINT_DIR
    shutil.rmtree(run / "checkpoint.tmp")
    shutil.copytree(six, run / "checkpoint.tmp")
    (run / "checkpoint.tmp" / "state.json").unlink()
    assert find_checkpoint(run) == run / CHECKPOINT_DIR
    # a damaged tmp (one flipped byte in its weights: its checksum fails) is ignored
    shutil.rmtree(run / "checkpoint.tmp")
    shutil.copytree(six, run / "checkpoint.tmp")
    w = run / "checkpoint.tmp" / "model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-3] ^= 0x10
    w.write_bytes(bytes(raw))
    assert not checkpoint_complete(run / "checkpoint.tmp") and find_checkpoint(run) == run / CHECKPOINT_DIR
    # a tmp older than checkpoint/ is ignored
    shutil.rmtree(run / "checkpoint.tmp")
    shutil.copytree(run / CHECKPOINT_DIR, tmp_path / "four")
    train_sae(cfg, data, out=run, progress=False, device="cpu", max_steps=6)
    shutil.copytree(tmp_path / "four", run / "checkpoint.tmp")
    assert checkpoint_complete(run / "checkpoint.tmp") and find_checkpoint(run) == run / CHECKPOINT_DIR
    assert train_sae(cfg, data, out=run, progress=False, device="cpu").resumed_from == 6
