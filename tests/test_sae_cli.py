"""The ``interp cache`` and ``interp train-sae`` commands end to end on a tiny random Mamba: cache (resumable,
token files), train from the store (resume by re-running, SAE-Lens export), train streaming from the model, and
the error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_hf_ssm
from interp import cli
from interp.activations import ActivationStore
from interp.sae import SparseAutoencoder
from interp.sae.saelens import load_sae, sae_format

HOOK = "blocks.0.hook_resid_post"
CFG = {"d_sae": 48, "architecture": "topk", "k": 4, "lr": 3e-3, "batch_size": 64, "total_training_tokens": 64 * 12,
       "checkpoint_every": 5, "log_every": 4, "b_dec_init": "mean"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("cli") / "tiny-mamba"
    make_hf_ssm("mamba1").save_pretrained(str(folder))
    return str(folder)


def _run(capsys, *argv: str) -> dict:
    """Run ``interp ARGV`` and return the JSON summary it prints."""
    assert cli.main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):out.rindex("}") + 1])


@pytest.fixture(scope="module")
def cache_dir(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "cache"
    cli.main(["cache", "--model", model_dir, "--hook", HOOK, "--dataset", "tokfsm", "--seed", "1", "--batch", "8",
              "--seq-len", "16", "--n-tokens", "600", "--shard-tokens", "128", "--out", str(out), "--no-progress"])
    return out


def test_cache_command_writes_and_resumes(cache_dir, model_dir, capsys):
    store = ActivationStore(cache_dir)
    assert store.complete and len(store) == 600 and store.hooks == [HOOK] and store.n_shards == 5
    assert store.manifest.dataset["description"] == {"name": "tokfsm", "seed": 1, "batch": 8, "seq_len": 16}
    assert store.manifest.model["name"] == model_dir
    assert 10 not in store.row_meta()["tokens"].tolist()  # TokFSM's BOS (10) dropped by the data set default
    # re-running the same command finds the finished cache and returns at once
    again = _run(capsys, "cache", "--model", model_dir, "--hook", HOOK, "--dataset", "tokfsm", "--seed", "1",
                 "--batch", "8", "--seq-len", "16", "--n-tokens", "600", "--shard-tokens", "128", "--out", cache_dir,
                 "--no-progress")
    assert again["rows"] == 600 and again["complete"]


def test_cache_from_token_file_and_several_hooks(model_dir, tmp_path, capsys):
    tokens = np.random.default_rng(0).integers(0, 50, size=(6, 10)).astype(np.int64)
    np.save(tmp_path / "tokens.npy", tokens)
    summary = _run(capsys, "cache", "--model", model_dir, "--hook", f"{HOOK},blocks.1.ssm.hook_y",
                   "--dataset", tmp_path / "tokens.npy", "--batch", "4", "--bos-id", "60", "--keep-pad",
                   "--dtype", "float16", "--out", tmp_path / "c", "--no-progress")
    assert summary["rows"] == 60 and summary["dtype"] == "float16"
    store = ActivationStore(tmp_path / "c")
    assert store.hooks == [HOOK, "blocks.1.ssm.hook_y"] and store.manifest.dataset["description"]["name"] == "file"
    assert torch.equal(store.row_meta()["tokens"], torch.from_numpy(tokens).flatten())


def test_train_sae_from_store_resumes_and_exports(cache_dir, tmp_path, capsys):
    (tmp_path / "sae.json").write_text(json.dumps({**CFG, "k": 8}))
    args = ["train-sae", "--config", tmp_path / "sae.json", "--set", "k=4", "--store", cache_dir,
            "--out", tmp_path / "run", "--no-progress"]
    first = _run(capsys, *args, "--max-steps", "5")  # as if killed after the step-5 checkpoint
    assert first["steps"] == 5 and first["resumed_from"] == 0
    done = _run(capsys, *args, "--export-saelens", tmp_path / "sl")  # the same command resumes
    assert done["resumed_from"] == 5 and done["steps"] == 12 and done["tokens"] == 64 * 12
    sae = SparseAutoencoder.load(tmp_path / "run")
    # d_in, hook and model filled from the store; --set overrides the config file
    assert (sae.cfg.d_in, sae.cfg.k, sae.cfg.hook_name) == (32, 4, HOOK)
    assert sae.cfg.model_name == ActivationStore(cache_dir).manifest.model["name"]
    assert sae_format(tmp_path / "sl") == "sae_lens"
    x = ActivationStore(cache_dir).all()[:50]
    assert torch.equal(load_sae(tmp_path / "sl").encode(x), sae.encode(x))


def test_train_sae_streaming_from_the_model(model_dir, tmp_path, capsys):
    (tmp_path / "sae.json").write_text(json.dumps(CFG))
    summary = _run(capsys, "train-sae", "--config", tmp_path / "sae.json", "--model", model_dir, "--hook", HOOK,
                   "--set", f"total_training_tokens={64 * 6}", "--dataset", "tokfsm", "--batch", "8",
                   "--seq-len", "16", "--out", tmp_path / "run", "--no-progress")
    assert summary["steps"] == 6 and summary["tokens"] == 64 * 6
    sae = SparseAutoencoder.load(tmp_path / "run")
    assert sae.cfg.d_in == 32 and sae.cfg.model_name == model_dir and sae.cfg.hook_name == HOOK


def test_cli_errors_are_clear(cache_dir, model_dir, tmp_path, capsys):
    def error(*argv) -> str:
        with pytest.raises(SystemExit) as e:
            cli.main([str(a) for a in argv])
        assert e.value.code == 2
        return capsys.readouterr().err

    (tmp_path / "sae.json").write_text(json.dumps(CFG))
    base = ["train-sae", "--config", tmp_path / "sae.json", "--out", tmp_path / "r"]
    assert "exactly one of --store" in error(*base)
    assert "exactly one of --store" in error(*base, "--store", cache_dir, "--model", model_dir)
    assert "is not in" in error(*base, "--store", cache_dir, "--hook", "blocks.1.hook_resid_post")
    assert "KEY=VALUE" in error(*base, "--store", cache_dir, "--set", "k")
    assert "unknown SAEConfig field" in error(*base, "--store", cache_dir, "--set", "kk=3")
    (tmp_path / "nod.json").write_text(json.dumps({"k": 4, "architecture": "topk"}))
    assert "lacks ['d_sae']" in error("train-sae", "--config", tmp_path / "nod.json", "--store", cache_dir,
                                      "--out", tmp_path / "r")
    assert "endless" in error("cache", "--model", model_dir, "--hook", HOOK, "--out", tmp_path / "c")
    assert "expected tokfsm, copy" in error("cache", "--model", model_dir, "--hook", HOOK, "--out", tmp_path / "c",
                                            "--dataset", "tokens.txt")
