"""Embedded models (interp.zoo): recipes train, shipped weights load fast and reproduce their model cards,
and an interrupted training run resumes from its last checkpoint to the same final weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import interp
from interp.zoo import MODEL_NAMES, embedded_path, list_models, model_card
from interp.zoo.evaluate import evaluate, recipe_of
from interp.zoo.recipes import RECIPES, Recipe, batch_at, get_recipe
from interp.training import CHECKPOINT_DIR, find_checkpoint, read_checkpoint_state
from interp.zoo.train import LOG_FILE, lr_factor, train

REPO = Path(__file__).resolve().parents[1]

# a tiny version of each recipe: same architecture family and task, small enough for a few seconds
TINY = {
    "mamba1": dict(d_model=32, n_layers=1, d_state=8),
    "mamba2": dict(d_model=32, n_layers=1, d_state=8, head_dim=16, chunk_size=16),
    "transformer": dict(n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=64, rotary_dim=16),
    "hybrid": dict(d_model=32, layer_types=["ssm", "attention"], n_heads=2, d_mlp=64,
                   ssm=dict(d_state=8, head_dim=16, chunk_size=16)),
    # by name where one arch has several layouts (the OLMo-Hybrid-layout Gated DeltaNet hybrid)
    "copy-deltanet": dict(d_model=32, layer_types=["attention", "gated_deltanet"], n_heads=2, d_mlp=64,
                          delta=dict(n_k_heads=2, n_v_heads=2, d_k=8, d_v=8, chunk_size=16)),
}


def tiny(recipe: Recipe, **kw) -> Recipe:
    """TokFSM needs ~200 steps before a tiny model beats the unigram loss ln 10; copying of 2..6 symbols, 80."""
    if recipe.task == "tokfsm":
        task = dict(seq_len=32, steps=200, batch_size=16)
    else:
        task = dict(copy_n_range=(2, 6), eval_copy_n_range=(2, 6), steps=80, batch_size=16)
    lr = 3e-3 if recipe.arch == "transformer" else 1e-2
    settings = dict(lr=lr, warmup_steps=5, checkpoint_every=10_000, eval_n_samples=8, eval_gen_len=32, **task)
    return recipe.replace(**{**settings, **TINY.get(recipe.name, TINY[recipe.arch]), **kw})


def test_registry_names_match_recipes():
    assert tuple(RECIPES) == MODEL_NAMES
    assert embedded_path("gpt2") is None and embedded_path("not-a-model") is None
    with pytest.raises(KeyError, match="tokfsm-mamba"):
        model_card("no-such-model")


def test_recipes_are_frozen_and_override():
    r = get_recipe("tokfsm-mamba")
    with pytest.raises(Exception):
        r.steps = 1  # type: ignore[misc]
    r2 = r.replace(steps=7, d_model=8)
    assert (r2.steps, r2.model["d_model"], r.model["d_model"]) == (7, 8, r.model["d_model"])
    assert Recipe.from_dict(json.loads(json.dumps(r2.to_dict()))) == r2


def test_data_stream_is_a_function_of_seed_and_step():
    for name in ("tokfsm-mamba", "copy-mamba"):
        r = get_recipe(name).replace(batch_size=4)
        a, b = batch_at(r, 17), batch_at(r, 17)
        assert torch.equal(a["tokens"], b["tokens"])
        assert not torch.equal(a["tokens"], batch_at(r, 18)["tokens"])
        assert not torch.equal(a["tokens"], batch_at(r.replace(data_seed=r.data_seed + 1), 17)["tokens"])


def test_lr_schedule_warmup_then_cosine():
    r = get_recipe("tokfsm-mamba").replace(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(r, 0) == pytest.approx(0.1) and lr_factor(r, 9) == pytest.approx(1.0)
    assert lr_factor(r, 10) == pytest.approx(1.0) and lr_factor(r, 100) == pytest.approx(0.1)
    assert all(lr_factor(r, s) >= lr_factor(r, s + 1) for s in range(10, 100))


# ----------------------------------------------------------------------------------------------------------------
# (a) every recipe trains: a shortened run from scratch lowers the loss


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_recipe_short_run_loss_falls(name, tmp_path):
    recipe = tiny(get_recipe(name))
    card = train(recipe, tmp_path, resume=False, progress=False, evaluate_at_end=False)
    curve = json.loads((tmp_path / CHECKPOINT_DIR / "state.json").read_text())["losses"]
    assert len(curve) == recipe.steps and card["steps"] == recipe.steps
    first, last = sum(curve[:5]) / 5, sum(curve[-10:]) / 10
    assert last < first - 0.1, f"{name}: loss did not fall ({first:.3f} -> {last:.3f})"
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    model = interp.load(str(tmp_path))  # the saved run loads through the public entry point
    assert model(batch_at(tiny(get_recipe(name)), 0)["tokens"][:2]).shape[-1] == get_recipe(name).vocab_size


# ----------------------------------------------------------------------------------------------------------------
# (b) shipped models: load by name in < 2 s, reproduce the model card's metric within 0.02


@pytest.fixture(scope="module")
def warm_imports():
    """Import the libraries the loaders use once, so the timing below measures loading, not imports."""
    import transformers  # noqa: F401
    from interp.hooks.transformer import HookedTransformerModel  # noqa: F401


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shipped_model_loads_fast_and_matches_card(name, warm_imports):
    assert name in list_models(), f"{name} is not installed: python -m interp.zoo.train {name} --install"
    card = model_card(name)
    t0 = time.perf_counter()
    model = interp.load(name)
    load_s = time.perf_counter() - t0
    assert load_s < 2.0, f"{name} took {load_s:.2f}s to load"
    metric = card["metric"]
    got = evaluate(model, recipe_of(name), loss=False)
    assert abs(got[metric] - card["metrics"][metric]) <= 0.02, (name, got[metric], card["metrics"][metric])
    assert card["steps"] == card["recipe"]["steps"] and card["training_time_s"] > 0
    assert card["data_seed"] == card["recipe"]["data_seed"] and card["final_loss"] > 0


def test_shipped_size_budget():
    folders = [embedded_path(n) for n in list_models()]
    total = sum(f.stat().st_size for folder in folders for f in folder.iterdir())
    assert total <= 20 * 2**20, f"shipped weights take {total / 2**20:.1f} MiB > 20 MiB"
    for folder in folders:
        assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt")), "pickle files shipped"
        size = sum(f.stat().st_size for f in folder.iterdir())
        assert size < 2 * 2**20, f"{folder.name}: {size / 2**20:.2f} MiB"


# ----------------------------------------------------------------------------------------------------------------
# (c) kill -9 mid-run, restart, same result as an uninterrupted run


TINY_CLI = ["--set", "d_model=16", "--set", "n_layers=1", "--set", "d_state=4", "--set", "batch_size=4",
            "--set", "seq_len=48", "--set", "eval_n_samples=4", "--set", "eval_gen_len=16", "--set", "lr=0.01",
            "--set", "warmup_steps=3"]
KILL_STEPS, KILL_EVERY = 60, 5


def _train_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "interp.zoo.train", "tokfsm-mamba", "--steps", str(KILL_STEPS), "--checkpoint-every",
            str(KILL_EVERY), "--out", str(out), "--no-progress", "--no-eval", "--threads", "1", *TINY_CLI]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(out), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = out / CHECKPOINT_DIR / "state.json"
    deadline = time.monotonic() + 90
    try:
        while not state.is_file():  # first checkpoint (step 5) written: kill at once, mid-run
            assert proc.poll() is None, f"training exited early:\n{proc.stdout.read().decode()}"
            assert time.monotonic() < deadline, "no checkpoint within 90 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_checkpoint_state(find_checkpoint(out))["step"]  # (.old if killed mid-swap)
    assert 0 < killed_at < KILL_STEPS, f"the kill came too late (checkpoint at step {killed_at})"
    assert not (out / "model.safetensors").exists()  # it really did not finish

    done = subprocess.run(_train_cmd(out), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    starts = [e for e in map(json.loads, (out / LOG_FILE).read_text().splitlines()) if e["event"] == "start"]
    assert [e["from_step"] for e in starts] == [0, killed_at]  # resumed from the checkpoint, not from 0
    final = read_checkpoint_state(out / CHECKPOINT_DIR)
    assert final["step"] == KILL_STEPS and len(final["losses"]) == KILL_STEPS

    ref = tmp_path / "uninterrupted"
    subprocess.run(_train_cmd(ref), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=120)
    ref_state = read_checkpoint_state(ref / CHECKPOINT_DIR)
    assert final["losses"] == ref_state["losses"]  # same batches, same updates, step by step
    got, want = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), f"{k} differs by {(got[k] - want[k]).abs().max():.3g}"


def test_model_task_reads_the_model_card():
    from interp.tasks.tokfsm import is_tokfsm_model
    from interp.zoo import list_models, model_card, model_task

    assert model_task(None) is None and model_task("no/such-model") is None and not is_tokfsm_model("/tmp")
    for name in list_models():
        assert model_task(name) == model_card(name).get("task")
        assert is_tokfsm_model(name) == (model_card(name).get("task") == "tokfsm")
