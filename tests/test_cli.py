"""The ``interp`` command (also ``python -m interp``) dispatches to the modules' mains, names each subcommand in
its help, and explains bad input: a user's mistake ends as one line on stderr with exit status 2, a bug keeps its
traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import interp
from conftest import load_tokfsm, make_hf_ssm
from interp import cli

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_post"
CLOSE = "did you mean 'tokfsm-mamba', 'tokfsm-mamba2'?"
SAE_CFG = {"d_sae": 16, "architecture": "topk", "k": 2, "batch_size": 16, "total_training_tokens": 32,
           "checkpoint_every": 1}


def python_m(*args: str) -> subprocess.CompletedProcess:
    """``python -m ARGS`` run from the repository root, where users run it."""
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def fails(capsys, *argv) -> str:
    """Run ``interp ARGV``, which must end with exit status 2 and one line on stderr naming the subcommand;
    return that line."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"interp {argv[0]}: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "tiny-mamba"
    make_hf_ssm("mamba1").save_pretrained(str(folder))
    return folder


def cache_args(model_dir: Path, out: Path, *extra: str) -> list:
    return ["cache", "--model", model_dir, "--hook", HOOK, "--dataset", "tokfsm", "--batch", "4", "--seq-len", "16",
            "--n-tokens", "64", "--out", out, "--no-progress", *extra]


# ------------------------------------------------------------------------------------------------------------
# dispatch and help


def test_usage_lists_every_subcommand(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


def test_unknown_subcommand_suggests(capsys):
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'trian'" in err and "train" in err


def test_subcommand_help_reaches_the_module(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: interp evaluate") and "--path" in out


def test_every_subcommand_help_names_the_command(capsys):
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: interp {name} "), name


def test_python_m_interp_is_the_interp_command(capsys):
    cli.main(["--help"])
    top = python_m("interp", "--help")
    assert top.returncode == 0 and top.stdout == capsys.readouterr().out
    sub = python_m("interp", "evaluate", "--help")
    assert sub.returncode == 0 and sub.stdout.startswith("usage: interp evaluate ")
    bad = python_m("interp", "evaluate", "tokfsm-mambaa")
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"interp evaluate: no embedded model named 'tokfsm-mambaa'; {CLOSE}"


# ------------------------------------------------------------------------------------------------------------
# user errors: one line, exit status 2


def test_unknown_model_names_are_one_line(model_dir, tmp_path, capsys):
    assert fails(capsys, "evaluate", "tokfsm-mambaa").endswith(f"no embedded model named 'tokfsm-mambaa'; {CLOSE}")
    assert fails(capsys, "train", "tokfsm-mambaa", "--out", tmp_path / "t").endswith(CLOSE)
    assert fails(capsys, "demo", "--model", "tokfsm-mambaa", "--out", tmp_path / "d").endswith(CLOSE)
    nope = fails(capsys, "demo", "--model", "nope", "--out", tmp_path / "d")
    assert "'nope' is not a folder" in nope and "Embedded models: tokfsm-mamba" in nope
    assert "'nope' is not a folder" in fails(capsys, *cache_args("nope", tmp_path / "c"))
    assert not (tmp_path / "c").exists() and not (tmp_path / "t").exists()


def test_bad_hook_name_is_one_line(model_dir, tmp_path, capsys):
    args = cache_args(model_dir, tmp_path / "c")
    args[args.index(HOOK)] = "blocks.0.nonsense"
    line = fails(capsys, *args)
    assert "unknown hook name 'blocks.0.nonsense'" in line and "blocks.0.hook_resid_pre" in line
    assert not (tmp_path / "c").exists()  # checked before anything is written


def test_refused_cache_overwrite_names_the_flag(model_dir, tmp_path, capsys):
    assert cli.main([str(a) for a in cache_args(model_dir, tmp_path / "c")]) == 0
    line = fails(capsys, *cache_args(model_dir, tmp_path / "c", "--dtype", "float16"))
    assert "holds an activation cache of a different run: dtype:" in line
    assert line.endswith("Pass --overwrite to start over, or choose another folder (--out DIR).")
    assert "overwrite=True" not in line and "out=" not in line
    assert cli.main([str(a) for a in cache_args(model_dir, tmp_path / "c", "--dtype", "float16", "--overwrite")]) == 0


def test_refused_sae_resume_names_the_flag(model_dir, tmp_path, capsys):
    assert cli.main([str(a) for a in cache_args(model_dir, tmp_path / "c")]) == 0
    (tmp_path / "sae.json").write_text(json.dumps(SAE_CFG))
    args = ["train-sae", "--config", tmp_path / "sae.json", "--store", tmp_path / "c", "--out", tmp_path / "r",
            "--no-progress"]
    assert cli.main([str(a) for a in args]) == 0
    line = fails(capsys, *args, "--set", "k=3")
    assert "was written with a different SAEConfig (differs in ['k'])" in line
    assert line.endswith("Pass --no-resume to start over, or choose another folder (--out DIR).")
    assert "resume=False" not in line
    assert cli.main([str(a) for a in args + ["--set", "k=3", "--no-resume"]]) == 0


def test_refused_train_resume_names_the_flag(tmp_path, capsys):
    threads = str(torch.get_num_threads())  # the command sets the thread count: keep this process's
    args = ["train", "tokfsm-mamba", "--steps", "2", "--set", "d_model=8", "--set", "n_layers=1", "--set",
            "batch_size=2", "--no-eval", "--no-progress", "--threads", threads, "--out", tmp_path / "t"]
    assert cli.main([str(a) for a in args]) == 0
    line = fails(capsys, *args, "--set", "d_model=16")
    assert "was written by a different recipe (differs in ['model'])" in line
    assert line.endswith("Pass --no-resume to start over, or choose another folder (--out DIR).")


def test_refused_codebook_resume_is_typed(tmp_path):
    from interp.codebook import CodebookTrainConfig, make_codebooks, mixer_output_hooks, train_codebooks
    from interp.codebook.zoo import model_batches
    from interp.hooks.loading import ExistingRunError

    cfg = CodebookTrainConfig(steps=1, batch_size=2, checkpoint_every=1, kmeans_init=False)
    for steps in (1, 2):
        model = load_tokfsm("tokfsm-mamba")
        books = make_codebooks(model, hook=mixer_output_hooks(model)[:1], n_codes=8)
        if steps == 1:
            train_codebooks(model, model_batches(model, cfg), books=books, cfg=cfg, out_dir=tmp_path / "cb",
                            progress=False)
            continue
        with pytest.raises(ExistingRunError, match="another CodebookTrainConfig") as e:
            train_codebooks(model, model_batches(model, cfg), books=books, cfg=cfg.replace(steps=2),
                            out_dir=tmp_path / "cb", progress=False)
    assert "Pass resume=False to start over, or choose another folder (out_dir=...)." in str(e.value)
    assert cli.error_line(e.value).endswith("Pass --no-resume to start over, or choose another folder (--out DIR).")


def test_config_file_errors_are_one_line(model_dir, tmp_path, capsys):
    assert cli.main([str(a) for a in cache_args(model_dir, tmp_path / "c")]) == 0
    base = ["train-sae", "--store", tmp_path / "c", "--out", tmp_path / "r"]
    missing = fails(capsys, *base, "--config", tmp_path / "missing.json")
    assert missing == f"interp train-sae: config file {tmp_path / 'missing.json'} not found"
    (tmp_path / "bad.json").write_text("{")
    assert "is not valid JSON" in fails(capsys, *base, "--config", tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    assert "must hold a JSON object" in fails(capsys, *base, "--config", tmp_path / "list.json")


def test_bugs_keep_their_traceback():
    def broken(argv: list[str]) -> None:
        raise ValueError("a bug, not a user error")

    with pytest.raises(ValueError, match="a bug"):
        cli.run("interp x", broken, [])
    assert cli.run("interp x", lambda argv: 3, []) == 3  # an int result is the exit status (interp app)
    assert cli.run("interp x", lambda argv: {"result": 1}, []) == 0


# ------------------------------------------------------------------------------------------------------------
# model names from Python


def test_load_suggests_close_embedded_names():
    from interp.hooks.hook_points import suggest
    from interp.hooks.loading import UnknownModelError

    with pytest.raises(UnknownModelError, match=re.escape(CLOSE)) as e:
        interp.load("tokfsm-mambaa")
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    assert e.value.suggestions == ["tokfsm-mamba", "tokfsm-mamba2"]
    assert suggest("tokfsm-mambaa", interp.zoo.list_models(), margin=0.1) == e.value.suggestions  # one helper
    with pytest.raises(UnknownModelError, match="Embedded models: tokfsm-mamba"):
        interp.load("nope")


def test_zoo_lists_models_in_a_fresh_interpreter():
    expected = interp.zoo.list_models()
    assert "tokfsm-mamba" in expected
    for code in ("import interp; print(interp.zoo.list_models())", "import interp.zoo; print(interp.zoo.list_models())"):
        res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == str(expected)
