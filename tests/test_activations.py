"""The activation store (interp.activations): cached rows equal run_with_cache, filters, manifest,
resume after an interruption (exception and SIGKILL), corruption detection and repair, shuffled and
rank-split readers, the in-memory stream, and the error messages.

Tiny random models and token streams of a few hundred tokens; the SIGKILL test starts one subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

import interp
from conftest import make_hf_ssm
from interp.activations import (
    ActivationStore, CorruptShardError, ManifestError, cache_activations, stream_activations, weights_sha256,
)
from interp.activations.manifest import MANIFEST_FILE, file_sha256
from interp.data import tokfsm_batches
from interp.hooks import UnknownHookError

BOS, PAD = 60, 59  # ids in the tiny models' vocabulary of 61
RESID = "blocks.0.hook_resid_post"
HOOKS = [RESID, "blocks.1.ssm.hook_y"]
FILTER = dict(bos_id=BOS, pad_id=PAD, progress=False)
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny forwards run fastest on one thread


@pytest.fixture(scope="module")
def model():
    return interp.load(make_hf_ssm("mamba1"))


@pytest.fixture(scope="module")
def model2():
    return interp.load(make_hf_ssm("mamba2-g2"))


def token_stream(n_batches: int = 6, batch: int = 4, seq_len: int = 12, seed: int = 0):
    """Deterministic batches [batch, seq_len]: BOS first, random ids in 0..58, some rows right-padded."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        t = torch.randint(0, PAD, (batch, seq_len), generator=g)
        t[:, 0] = BOS
        for row, n_pad in enumerate(torch.randint(0, 4, (batch,), generator=g).tolist()):
            if n_pad:
                t[row, -n_pad:] = PAD
        yield t


def shard_data(folder: Path) -> list[dict[str, torch.Tensor]]:
    return list(ActivationStore(folder))


def rows_counter(x: torch.Tensor) -> Counter:
    """Multiset of rows (by their bytes)."""
    return Counter(bytes(r.numpy().tobytes()) for r in x.contiguous())


def assert_same_cache(a: Path, b: Path) -> None:
    sa, sb = shard_data(a), shard_data(b)
    assert len(sa) == len(sb)
    for x, y in zip(sa, sb):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


# --------------------------------------------------------------------------------------------
# what is stored
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rows_equal_run_with_cache(model, tmp_path, dtype):
    hooks = HOOKS + ["blocks.0.ssm.hook_state"] if dtype == torch.float32 else HOOKS
    manifest = cache_activations(model, token_stream(), hook=hooks, out=tmp_path, shard_tokens=37, dtype=dtype,
                                 **FILTER)
    store = ActivationStore(tmp_path)
    meta = store.row_meta()
    batches = list(token_stream())
    tokens = torch.cat(batches)
    kept = (tokens != BOS) & (tokens != PAD)

    assert manifest.complete and len(store) == int(kept.sum()) == manifest.n_rows
    assert [s.n_rows for s in manifest.shards][:-1] == [37] * (len(manifest.shards) - 1)
    assert torch.equal(meta["tokens"], tokens[meta["seq_idx"], meta["pos"]])  # (seq, pos) index the stream
    assert not ((meta["tokens"] == BOS) | (meta["tokens"] == PAD)).any()
    assert len(set(zip(meta["seq_idx"].tolist(), meta["pos"].tolist()))) == len(store)  # no duplicates

    # the same hooks attached (hook_state switches the SSM to the scan that exposes every state)
    caches = [model.run_with_cache(t, names_filter=hooks)[1] for t in batches]
    for hook in hooks:
        stored = store.all(hook, dtype=None)
        assert stored.dtype == dtype and stored.shape[1] == store.d(hook)
        ref = torch.cat([c[hook].reshape(*c[hook].shape[:2], -1).to(dtype) for c in caches])
        assert torch.equal(stored, ref[meta["seq_idx"], meta["pos"]]), hook
    assert store.d("blocks.1.ssm.hook_y") == model.cfg.d_inner
    assert manifest.hooks["blocks.1.ssm.hook_y"]["shape"] == [model.cfg.H, model.cfg.P]


def test_manifest_contents(model, tmp_path):
    manifest = cache_activations(model, token_stream(), hook=HOOKS, out=tmp_path, shard_tokens=50, dtype=torch.float16,
                                 dataset={"name": "random", "seed": 0}, **FILTER)
    on_disk = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert on_disk["complete"] and on_disk["n_rows"] == manifest.n_rows
    assert on_disk["model"]["weights_sha256"] == weights_sha256(model)
    assert on_disk["model"]["name"] == model.cfg.name
    assert list(on_disk["hooks"]) == HOOKS and on_disk["hooks"][RESID]["d"] == model.cfg.d_model
    assert on_disk["dtype"] == "float16" and on_disk["stop_at_layer"] == 2
    assert on_disk["filters"] == {"drop_bos": True, "bos_id": BOS, "drop_pad": True, "pad_id": PAD, "pos_slice": None}
    assert on_disk["dataset"]["description"] == {"name": "random", "seed": 0}
    assert on_disk["dataset"]["n_batches"] == 6 and len(on_disk["dataset"]["sha256"]) == 64
    for s in on_disk["shards"]:
        assert file_sha256(tmp_path / s["file"]) == s["sha256"]
        assert (tmp_path / s["file"]).stat().st_size == s["n_bytes"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted([MANIFEST_FILE] + [s["file"] for s in on_disk["shards"]])


def test_pos_slice_limits_and_stop_at_layer(model, tmp_path):
    calls = []
    handle = model.blocks[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        m = cache_activations(model, token_stream(), hook=RESID, out=tmp_path / "a", pos_slice=slice(2, 6), **FILTER)
    finally:
        handle.remove()
    assert calls == [] and m.stop_at_layer == 1  # block 1 never ran
    pos = ActivationStore(tmp_path / "a").row_meta()["pos"]
    assert pos.min() >= 2 and pos.max() <= 5 and len(pos) == 6 * 4 * 4  # BOS at 0, pads only in the last 3

    m = cache_activations(model, token_stream(), hook=RESID, out=tmp_path / "b", pos_slice=[-1, 3], drop_pad=False,
                          bos_id=BOS, progress=False)
    assert set(ActivationStore(tmp_path / "b").row_meta()["pos"].tolist()) == {3, 11}
    m = cache_activations(model, token_stream(), hook=RESID, out=tmp_path / "c", max_tokens=50, shard_tokens=16,
                          **FILTER)
    assert m.n_rows == 50 and [s.n_rows for s in m.shards] == [16, 16, 16, 2]
    batches = token_stream()
    m = cache_activations(model, batches, hook=RESID, out=tmp_path / "d", max_batches=2, **FILTER)
    assert m.dataset["n_batches"] == 2 and m.dataset["n_sequences"] == 8
    assert len(list(batches)) == 4  # not read past max_batches


def test_ids_from_tokenizer_and_transformer(tmp_path):
    from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig

    from interp.data import DigitTokenizer
    from interp.hooks.transformer import HookedTransformerModel

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=32, d_vocab=11,
                                  act_fn="gelu", normalization_type="LN", device="cpu", seed=0)
    model = HookedTransformerModel(cfg, DigitTokenizer())
    tokens = next(tokfsm_batches(3, seq_len=16, seed=0))
    m = cache_activations(model, [tokens], hook="blocks.0.hook_resid_post", out=tmp_path, progress=False)
    assert m.filters["bos_id"] == 10 and m.n_rows == 3 * 15  # TokFSM BOS (= pad) dropped, ids from the tokenizer
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    assert torch.equal(ActivationStore(tmp_path).all(), cache["blocks.0.hook_resid_post"][:, 1:].reshape(-1, 16))


# --------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------
def interrupted(n_ok: int):
    """token_stream() that raises after ``n_ok`` batches, like a run stopped half way."""
    for i, t in enumerate(token_stream()):
        if i == n_ok:
            raise KeyboardInterrupt
        yield t


def test_resume_after_interruption(model, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    full = cache_activations(model, token_stream(), hook=HOOKS, out=ref, shard_tokens=20, dtype=torch.float16, **FILTER)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(model, interrupted(3), hook=HOOKS, out=out, shard_tokens=20, dtype=torch.float16, **FILTER)
    partial = ActivationStore(out)
    assert not partial.complete and 0 < len(partial) < len(full.shards) * 20
    # a shard written just before a kill (no manifest entry) and a half-written tmp file are discarded
    (out / "shard_00099.safetensors").write_bytes(b"junk")
    (out / "shard_00005.safetensors.tmp").write_bytes(b"junk")
    resumed = cache_activations(model, token_stream(), hook=HOOKS, out=out, shard_tokens=20, dtype=torch.float16,
                                **FILTER)
    assert resumed.complete and resumed.n_rows == full.n_rows
    assert_same_cache(ref, out)
    assert not (out / "shard_00099.safetensors").exists() and not (out / "shard_00005.safetensors.tmp").exists()

    def no_stream():
        raise AssertionError("a finished cache must not re-read the stream")
        yield
    assert cache_activations(model, no_stream(), hook=HOOKS, out=out, shard_tokens=20, dtype=torch.float16,
                             **FILTER).n_rows == full.n_rows


_KILL_SCRIPT = """
import sys, time, torch
torch.set_num_threads({threads})
import interp
from interp.activations import cache_activations
sys.path.insert(0, {tests!r})
from test_activations import token_stream, HOOKS, FILTER

def slow():
    for t in token_stream(n_batches=20):
        time.sleep(0.2)
        yield t

model = interp.load({ckpt!r})
cache_activations(model, slow(), hook=HOOKS, out={out!r}, shard_tokens=16, dtype=torch.float16, **FILTER)
"""


def test_resume_after_sigkill(tmp_path):
    ckpt, out, ref = tmp_path / "ckpt", tmp_path / "out", tmp_path / "ref"
    interp.load(make_hf_ssm("mamba1")).save_pretrained(str(ckpt))
    model = interp.load(str(ckpt))
    script = _KILL_SCRIPT.format(threads=torch.get_num_threads(), tests=str(Path(__file__).parent),
                                 ckpt=str(ckpt), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if (out / MANIFEST_FILE).is_file() and json.loads((out / MANIFEST_FILE).read_text())["shards"]:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the caching subprocess ended early:\n{proc.stdout.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not json.loads((out / MANIFEST_FILE).read_text())["complete"]

    resumed = cache_activations(model, token_stream(n_batches=20), hook=HOOKS, out=out, shard_tokens=16,
                                dtype=torch.float16, **FILTER)
    full = cache_activations(model, token_stream(n_batches=20), hook=HOOKS, out=ref, shard_tokens=16,
                             dtype=torch.float16, **FILTER)
    assert resumed.n_rows == full.n_rows
    meta = ActivationStore(out).row_meta()
    assert len(set(zip(meta["seq_idx"].tolist(), meta["pos"].tolist()))) == full.n_rows
    assert_same_cache(ref, out)


# --------------------------------------------------------------------------------------------
# corruption
# --------------------------------------------------------------------------------------------
def test_corrupt_shard_detected_named_and_repaired(model, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    for folder in (ref, out):
        cache_activations(model, token_stream(), hook=RESID, out=folder, shard_tokens=30, **FILTER)
    flipped, cut = out / "shard_00001.safetensors", out / "shard_00002.safetensors"
    data = bytearray(flipped.read_bytes())
    data[-5] ^= 0xFF
    flipped.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[:-7])

    store = ActivationStore(out)
    store.shard(0)
    with pytest.raises(CorruptShardError, match=r"shard_00001\.safetensors.*sha256 mismatch.*Rerun cache_activations"):
        store.shard(1)
    with pytest.raises(CorruptShardError, match=r"shard_00002\.safetensors.*truncated"):
        store.shard(2)
    with pytest.warns(UserWarning, match="recomputing"):
        cache_activations(model, token_stream(), hook=RESID, out=out, shard_tokens=30, **FILTER)
    assert_same_cache(ref, out)


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    cache_activations(model, token_stream(n_batches=10), hook=HOOKS, out=folder, shard_tokens=16, dtype=torch.float16,
                      **FILTER)
    return folder


def test_shuffled_batches_cover_each_row_once_and_are_seeded(cache):
    store = ActivationStore(cache)
    everything = rows_counter(store.all(RESID))  # a multiset: equal prefixes give equal rows
    batches = list(store.shuffled_batches(24, seed=3, hook=RESID, epochs=2, buffer_shards=2))
    assert all(b.dtype == torch.float32 and b.shape[1] == store.d(RESID) for b in batches)
    per_epoch = len(batches) // 2
    assert all(len(b) == 24 for b in batches[:per_epoch - 1])
    for epoch in (batches[:per_epoch], batches[per_epoch:]):
        assert rows_counter(torch.cat(epoch)) == everything
    assert not torch.equal(torch.cat(batches[:per_epoch]), torch.cat(batches[per_epoch:]))  # reshuffled
    again = list(store.shuffled_batches(24, seed=3, hook=RESID, epochs=2, buffer_shards=2))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    other = torch.cat(list(store.shuffled_batches(24, seed=4, hook=RESID)))
    assert not torch.equal(other, torch.cat(batches[:per_epoch]))
    assert sum(len(b) for b in store.shuffled_batches(24, hook=RESID, drop_last=True)) == len(store) // 24 * 24


def test_rank_split_disjoint_and_covering(cache):
    store = ActivationStore(cache)
    world = 3
    files = [{s.file for s in store.rank_shards(r, world)} for r in range(world)]
    assert set().union(*files) == {s.file for s in store.manifest.shards}
    assert sum(map(len, files)) == store.n_shards  # disjoint
    parts = [torch.cat(list(store.shuffled_batches(10, seed=0, hook=RESID, rank=r, world_size=world)))
             for r in range(world)]
    assert sum((rows_counter(p) for p in parts), Counter()) == rows_counter(store.all(RESID))
    with pytest.raises(ValueError, match="rank"):
        next(store.shuffled_batches(10, hook=RESID, rank=3, world_size=3))
    with pytest.raises(ValueError, match="fewer than world_size"):
        next(store.shuffled_batches(10, hook=RESID, rank=0, world_size=store.n_shards + 1))


def test_stream_matches_disk_cache(model, cache):
    store = ActivationStore(cache)
    batches = list(stream_activations(model, token_stream(n_batches=10), hook=RESID, batch_size=16, buffer_tokens=40,
                                      seed=1, dtype=torch.float16, bos_id=BOS, pad_id=PAD))
    assert all(b.dtype == torch.float32 and len(b) == 16 for b in batches[:-1])
    assert rows_counter(torch.cat(batches)) == rows_counter(store.all(RESID))
    again = list(stream_activations(model, token_stream(n_batches=10), hook=RESID, batch_size=16, buffer_tokens=40,
                                    seed=1, dtype=torch.float16, bos_id=BOS, pad_id=PAD))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_store_on_mamba2_and_multi_hook_access(model2, tmp_path):
    cache_activations(model2, token_stream(n_batches=2), hook=HOOKS, out=tmp_path, shard_tokens=64, **FILTER)
    store = ActivationStore(tmp_path)
    assert store.hooks == HOOKS and store.d("blocks.1.ssm.hook_y") == model2.cfg.d_inner
    with pytest.raises(ValueError, match="several hooks"):
        store.d_in
    with pytest.raises(KeyError, match="not in this cache"):
        store.all("blocks.0.hook_resid_pre")
    assert "complete" in repr(store)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def test_bad_input_errors(model, model2, tmp_path):
    with pytest.raises(UnknownHookError, match="blocks.0.hook_resid_post"):
        cache_activations(model, token_stream(), hook="blocks.0.hook_resid_postt", out=tmp_path / "a", **FILTER)
    with pytest.raises(ValueError, match="empty"):
        cache_activations(model, [], hook=RESID, out=tmp_path / "b", **FILTER)
    with pytest.raises(ValueError, match="empty"):
        next(stream_activations(model, iter([]), hook=RESID, batch_size=8, buffer_tokens=16, bos_id=BOS, pad_id=PAD))
    with pytest.raises(ValueError, match="no rows left"):
        cache_activations(model, [torch.full((2, 5), PAD)], hook=RESID, out=tmp_path / "c", **FILTER)
    with pytest.raises(TypeError, match="LongTensor"):
        cache_activations(model, [torch.rand(2, 5)], hook=RESID, out=tmp_path / "d", **FILTER)
    model.cfg.bos_token_id, saved = None, model.cfg.bos_token_id
    try:
        with pytest.raises(ValueError, match="bos_id=..."):
            cache_activations(model, token_stream(), hook=RESID, out=tmp_path / "e", pad_id=PAD, progress=False)
    finally:
        model.cfg.bos_token_id = saved
    with pytest.raises(ManifestError, match="no manifest.json"):
        ActivationStore(tmp_path / "nothing-here")

    out = tmp_path / "x"
    cache_activations(model, token_stream(), hook=RESID, out=out, dtype=torch.float16, **FILTER)
    with pytest.raises(ManifestError, match=r"(?s)weights_sha256.*overwrite=True"):
        cache_activations(model2, token_stream(), hook=RESID, out=out, dtype=torch.float16, **FILTER)
    with pytest.raises(ManifestError, match=r"(?s)hooks: cache has \['blocks.0.hook_resid_post'\].*dtype"):
        cache_activations(model, token_stream(), hook=HOOKS, out=out, **FILTER)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        cache_activations(model, interrupted(3), hook=RESID, out=part, shard_tokens=10, **FILTER)
    with pytest.raises(ManifestError, match="token stream differs"):  # resuming from another stream
        cache_activations(model, token_stream(seed=1), hook=RESID, out=part, shard_tokens=10, **FILTER)
    m = cache_activations(model, token_stream(), hook=HOOKS, out=out, overwrite=True, **FILTER)
    assert m.complete and list(m.hooks) == HOOKS


# --------------------------------------------------------------------------------------------
# narrow storage: the cast's error in the manifest
# --------------------------------------------------------------------------------------------
def _direct_cast_error(model, hooks, dtype, batches) -> dict:
    """max |x - cast(x)| and sqrt(Σ(x - cast(x))² / Σx²) over the kept rows, from run_with_cache (float64)."""
    out = {}
    for hook in hooks:
        xs = []
        for t in batches:
            _, cache = model.run_with_cache(t, names_filter=[hook])
            x = cache[hook]
            xs.append(x[(t != BOS) & (t != PAD)].reshape(int(((t != BOS) & (t != PAD)).sum()), -1))
        x = torch.cat(xs).double()
        diff = x - x.float().to(dtype).double()
        out[hook] = (diff.abs().max().item(), (diff.square().sum() / x.square().sum()).sqrt().item(), len(x))
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cast_error_recorded_and_kept_on_resume(model, tmp_path, dtype):
    want = _direct_cast_error(model, HOOKS, dtype, list(token_stream()))
    with pytest.raises(KeyboardInterrupt):  # a run stopped half way, then resumed: the figures cover every row
        cache_activations(model, interrupted(3), hook=HOOKS, out=tmp_path, shard_tokens=20, dtype=dtype, **FILTER)
    assert ActivationStore(tmp_path).cast_error[RESID]["n_rows"] < want[RESID][2]
    manifest = cache_activations(model, token_stream(), hook=HOOKS, out=tmp_path, shard_tokens=20, dtype=dtype,
                                 **FILTER)
    store = ActivationStore(tmp_path)
    on_disk = json.loads((tmp_path / MANIFEST_FILE).read_text())["cast_error"]
    assert store.cast_error == manifest.cast_error() == on_disk
    for hook, (max_abs, rel_rms, n) in want.items():
        got = store.cast_error[hook]
        assert got["n_rows"] == n == len(store)
        assert got["max_abs_error"] == pytest.approx(max_abs, rel=1e-6) and max_abs > 0
        assert got["rel_rms_error"] == pytest.approx(rel_rms, rel=1e-6) and 0 < rel_rms < 1e-2


def test_cast_error_absent_for_lossless_dtype_and_old_manifests(model, tmp_path):
    from interp.io import json_bytes

    m = cache_activations(model, token_stream(n_batches=2), hook=RESID, out=tmp_path / "f32", **FILTER)
    assert m.cast_error() is None and ActivationStore(tmp_path / "f32").cast_error is None
    assert json.loads((tmp_path / "f32" / MANIFEST_FILE).read_text())["cast_error"] is None

    old = tmp_path / "old"  # a float16 cache whose manifest predates the field: loads, no figures, resumes as is
    cache_activations(model, token_stream(n_batches=2), hook=RESID, out=old, dtype=torch.float16, **FILTER)
    doc = json.loads((old / MANIFEST_FILE).read_text())
    doc.pop("cast_error"), doc.pop("world_size")
    for s in doc["shards"]:
        s.pop("cast_error"), s.pop("rank")
    (old / MANIFEST_FILE).write_bytes(json_bytes(doc, indent=1, checksums=()))
    store = ActivationStore(old)
    assert store.complete and store.cast_error is None and len(store) == m.n_rows
    again = cache_activations(model, token_stream(n_batches=2), hook=RESID, out=old, dtype=torch.float16, **FILTER)
    assert again.complete and again.n_rows == m.n_rows


# --------------------------------------------------------------------------------------------
# background writing
# --------------------------------------------------------------------------------------------
def test_shards_written_on_a_background_thread_and_errors_named(model, tmp_path, monkeypatch):
    import threading

    from interp.activations import writer
    from interp.activations.writer import ShardWriteError

    ref, out = tmp_path / "ref", tmp_path / "out"
    cache_activations(model, token_stream(), hook=HOOKS, out=ref, shard_tokens=20, dtype=torch.float16, **FILTER)
    real, threads = writer.atomic_write, []

    def failing(path, data):
        threads.append(threading.current_thread())
        if path.name == "shard_00003.safetensors":
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(writer, "atomic_write", failing)
    with pytest.raises(ShardWriteError, match=r"shard_00003\.safetensors.*No space left on device.*resume"):
        cache_activations(model, token_stream(), hook=HOOKS, out=out, shard_tokens=20, dtype=torch.float16, **FILTER)
    assert threads and all(t is not threading.main_thread() for t in threads)
    partial = ActivationStore(out)  # the manifest lists the shards before the failed one, all intact
    assert [e.index for e in partial.manifest.shards] == [0, 1, 2] and not partial.complete
    assert not (out / "shard_00003.safetensors").exists()
    monkeypatch.setattr(writer, "atomic_write", real)
    resumed = cache_activations(model, token_stream(), hook=HOOKS, out=out, shard_tokens=20, dtype=torch.float16,
                                **FILTER)
    assert resumed.complete and resumed.cast_error() == ActivationStore(ref).cast_error
    assert_same_cache(ref, out)


def test_rank_arguments_checked(model, tmp_path):
    with pytest.raises(ValueError, match="process group"):
        cache_activations(model, token_stream(), hook=RESID, out=tmp_path, rank=0, world_size=2, **FILTER)
    with pytest.raises(ValueError, match="both rank= and world_size="):
        cache_activations(model, token_stream(), hook=RESID, out=tmp_path, rank=0, **FILTER)
    m = cache_activations(model, token_stream(n_batches=2), hook=RESID, out=tmp_path, rank=0, world_size=1, **FILTER)
    assert m.complete and m.world_size == 1 and m.shards[0].file == "shard_00000.safetensors"
