"""Embedded codebook models: the codebook-features TokFSM study on our TokFSM models, trained by one command.

    python -m interp.codebook.zoo tokfsm-mamba-codebooks [--install] [--steps N]
    model = load_codebook_model("tokfsm-mamba-codebooks")       # the embedded model with its codebooks attached

A recipe names the base model, the hooks (k = 1 codebooks at every layer's sequence-mixer output, as the paper's
attention codebooks), the :class:`CodebookConfig` and the :class:`CodebookTrainConfig`. :func:`evaluate_tokfsm`
measures what the paper reports, on data held out from training:

* transition accuracy with the codebooks in place (:func:`interp.zoo.evaluate.evaluate`, paper: 96.39%);
* state codes: for each FSM state the code (over all hooks) with the best precision for "the current state is
  S" on units-digit tokens (where the prefix determines the state) among codes reaching a minimum recall (0.5,
  0.25 and 0.1 reported), against the best single neuron of the codebook inputs at the recall that code reached
  (paper: 97.1% vs 70.5%); codes and neurons are chosen on one set of sequences and scored on another;
* steering by codes: forcing each hook's code of state S at the last position, share of next transitions
  valid for S, with the unsteered baseline (:func:`interp.tasks.tokfsm.tokfsm_code_steering_table`), in
  two modes: "prompt" (the prompt's last position only) and "follow" (the last position of each forward: the
  codes of "current state S" at the prompt's last token, then of "previous state S" at the generated digit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from interp.data.tokfsm import tokfsm_dataset, tokfsm_labels
from interp.io import read_json
from interp.locks import FolderLock
from interp.tasks.tokfsm import tokfsm_code_steering_table, tokfsm_state_codes
from interp.zoo.recipes import Recipe, batch_at

from .analysis import code_label_precision, collect_codes, usage_stats
from .config import CodebookTrainConfig
from .insert import make_codebooks, mixer_output_hooks
from .train import (
    INDEX_FILE, Batches, load_codebook_model, save_codebook_model, train_codebooks, write_codebook_index,
)

FIT_SEED = 7  # codes and neurons are chosen on these sequences, scored on others (``seed``)
MIN_RECALLS = (0.5, 0.25, 0.1)

__all__ = ["CodebookRecipe", "CODEBOOK_RECIPES", "training_batches", "model_batches", "evaluate_tokfsm",
           "train_recipe", "install_hint", "codebook_folder", "open_codebook_model", "codebook_prompt",
           "main"]


def training_batches(recipe: Recipe, cfg: CodebookTrainConfig) -> Batches:
    """Batch ``step`` of a codebook training stream: ``recipe``'s data (:func:`interp.zoo.recipes.batch_at`, a pure
    function of ``(data_seed, step)``) with ``cfg``'s batch size and data seed."""
    r = recipe.replace(batch_size=cfg.batch_size, data_seed=cfg.data_seed)
    return lambda step: batch_at(r, step)


def model_batches(model: Any, cfg: CodebookTrainConfig) -> Batches:
    """:func:`training_batches` of an embedded model's own recipe (the data it was trained on)."""
    from interp.zoo.evaluate import recipe_of

    name = getattr(model.cfg, "model_name", None) or getattr(model.cfg, "name", None)
    try:
        recipe = recipe_of(str(name))
    except KeyError:
        raise ValueError(f"model {name!r} is not an embedded model: use training_batches(recipe, cfg) with an "
                         "interp.zoo Recipe for its data") from None
    return training_batches(recipe, cfg)


@dataclass(frozen=True)
class CodebookRecipe:
    """Codebooks for one embedded model: ``base`` model name, ``codebook`` (CodebookConfig fields but ``d``,
    read from the model), ``train`` (the :class:`CodebookTrainConfig`); the codebooks sit at every layer's
    sequence-mixer output (:func:`mixer_output_hooks`)."""

    name: str
    base: str
    codebook: dict[str, Any] = field(default_factory=dict)
    train: CodebookTrainConfig = CodebookTrainConfig()
    description: str = ""


# What was tried (docs/benchmarks.md, "Codebooks"): on tokfsm-mamba, fine-tuning the model through 256-code
# bottlenecks diverged (the straight-through gradient is poor where the quantisation error is large) and a frozen
# model keeps its transition accuracy only with 1024 codes (256: 0.43); the transformer fine-tunes stably with 256.
CODEBOOK_RECIPES: dict[str, CodebookRecipe] = {
    r.name: r
    for r in (
        CodebookRecipe("tokfsm-mamba-codebooks", "tokfsm-mamba", dict(n_codes=1024, k=1, dead_after=200_000),
                       CodebookTrainConfig(steps=600, train_model=False),
                       "k = 1 codebooks (1024 codes) at the SSM mixer output of each of the 4 layers of tokfsm-mamba "
                       "(model frozen, codes trained with the LM loss)"),
        CodebookRecipe("tokfsm-transformer-codebooks", "tokfsm-transformer",
                       dict(n_codes=256, k=1, commitment=0.25, dead_after=200_000),
                       CodebookTrainConfig(steps=400, train_model=True),
                       "k = 1 codebooks (256 codes) at the attention output of each of the 4 layers of "
                       "tokfsm-transformer (model fine-tuned through them)"),
    )
}


@torch.no_grad()
def evaluate_tokfsm(model: Any, base: str, n_seq: int = 256, n_targets: int = 20, n_prompts: int = 32,
                    seed: int = 99) -> dict[str, Any]:
    """The three measurements of the module docstring, on held-out data (seeds apart from training)."""
    from interp.zoo.evaluate import evaluate, recipe_of

    t0 = time.perf_counter()
    out: dict[str, Any] = {"transition_accuracy": evaluate(model, recipe_of(base), loss=False)["transition_accuracy"]}
    def units_run(data_seed: int) -> tuple[Any, Tensor, dict[str, Any]]:
        tokens = tokfsm_dataset(n_seq, seed=data_seed)
        lab = tokfsm_labels(tokens)
        labels = torch.where(lab["digit_pos"] == 1, lab["state"], torch.full_like(lab["state"], -1))
        return collect_codes(model, tokens), labels, lab

    fit_run, fit_labels, _ = units_run(FIT_SEED)
    run, labels, lab = units_run(seed)
    out["state_codes"] = {}
    for mr in MIN_RECALLS:
        rep = code_label_precision(fit_run, fit_labels, n_classes=100, min_recall=mr, held_out=(run, labels))
        out["state_codes"][f"min_recall_{mr}"] = rep.summary()
    out["usage"] = usage_stats(run, mask=lab["state"] >= 0)
    codes = tokfsm_state_codes(model)
    targets = np.random.default_rng(seed).choice(100, size=n_targets, replace=False).tolist()
    out["steering"] = {"targets": targets}
    for mode in ("prompt", "follow"):
        steer = tokfsm_code_steering_table(model, codes, targets, n_prompts=n_prompts, seed=seed, mode=mode)
        out["steering"][mode] = {k: steer[k] for k in ("steered", "baseline", "steered_first_digit",
                                                       "baseline_first_digit", "n_trials")}
    out["eval_time_s"] = round(time.perf_counter() - t0, 1)
    return out


def train_recipe(name: str, out_dir: str | Path | None = None, steps: int | None = None, progress: bool = True,
                 install: bool = False, resume: bool = True) -> dict[str, Any]:
    """Train recipe ``name`` into ``out_dir`` (resumable; ``resume=False`` starts over), save the codebook model
    to ``out_dir/final``, evaluate it and write its card; ``install`` copies it to ``interp/zoo/weights/NAME``."""
    import interp
    from interp.zoo import WEIGHTS_DIR

    recipe = CODEBOOK_RECIPES[name]
    cfg = recipe.train if steps is None else recipe.train.replace(steps=steps)
    out_dir = Path(out_dir or f"runs/codebook/{name}")
    with FolderLock(out_dir, job=f"codebook recipe {name}"):  # training, final/ and the card: one writer
        model = interp.load(recipe.base)
        books = make_codebooks(model, hook=mixer_output_hooks(model), **recipe.codebook)
        result = train_codebooks(model, model_batches(model, cfg), books=books, cfg=cfg, out_dir=out_dir,
                                 resume=resume, progress=progress)
        metrics = evaluate_tokfsm(model, recipe.base)
        card = {"name": name, "base": recipe.base, "description": recipe.description, "codebook": recipe.codebook,
                "train": cfg.to_dict(), "history": result.history[-1] if result.history else None,
                "training_time_s": round(result.elapsed_s, 1), "metrics": metrics,
                "torch_threads": torch.get_num_threads(), "versions": {"torch": torch.__version__}}
        final = out_dir / "final"
        save_codebook_model(model, final, card, base=None if cfg.train_model else recipe.base)
        if install:
            dst = WEIGHTS_DIR / name
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(final, dst)
        return card


def install_hint(name: str) -> str:
    """The command that trains and installs the embedded codebook model ``name``."""
    return f"`python -m interp.codebook.zoo {name} --install`"


def codebook_folder(choice: str, roots: list[Path] | tuple[Path, ...]) -> Path:
    """The folder of a codebook model typed by the user: an installed embedded name or a folder inside ``roots``
    holding ``codebooks.json``; else ValueError (nothing outside those folders is read)."""
    from interp.loading import check_name, inside_roots
    from interp.zoo import WEIGHTS_DIR

    from .train import embedded_codebook_models

    if not (choice or "").strip():
        raise ValueError("Choose a codebook model: an embedded name or a folder inside the run folders.")
    choice = check_name(choice, "codebook model")
    if choice in embedded_codebook_models():
        return (Path(WEIGHTS_DIR) / choice).resolve()
    if choice in CODEBOOK_RECIPES:
        raise ValueError(f"The embedded codebook model {choice!r} is not installed yet: train it with "
                         f"{install_hint(choice)}.")
    path = inside_roots(choice, roots)
    if not path.is_dir():
        raise ValueError(f"The codebook folder {choice} does not exist.")
    if not (path / INDEX_FILE).is_file():
        raise ValueError(f"{choice} holds no {INDEX_FILE}: it is not a codebook model (write one with "
                         "interp.codebook.save_codebook_model).")
    return path


def open_codebook_model(folder: str | os.PathLike, roots: list[Path] | tuple[Path, ...]) -> Any:
    """:func:`load_codebook_model` of a folder inside ``roots`` or the embedded weights, checked first
    (:func:`interp.codebook.check_codebook_folder`); every failure a ValueError."""
    from interp.loading import inside_roots
    from interp.zoo import WEIGHTS_DIR

    from .train import check_codebook_folder

    folder = inside_roots(folder, [*roots, Path(WEIGHTS_DIR)], contents=True)  # its files, and paths they name
    check_codebook_folder(folder)
    try:
        return load_codebook_model(folder)
    except Exception as e:  # noqa: BLE001 - the loader's message says what is wrong
        raise ValueError(f"Could not load the codebook model in {folder}: {type(e).__name__}: {str(e)[:400]}") from e


def codebook_prompt(cb_model: Any, page_model: Any, tokens: Any, text: str, max_tokens: int,
                    tokfsm: bool = False) -> tuple[Tensor, str | None]:
    """The tokens [1, L] to run through a codebook model for a page showing ``tokens`` of ``page_model``, and a
    note when they are not those tokens: ``tokens`` if the two vocabularies match, else a TokFSM prompt (``tokfsm``:
    TokFSM codebook models), else ``text`` tokenized by the codebook model (ValueError if it cannot read it)."""
    from interp.hooks.tokens import prompt_tokens, same_vocabulary
    from interp.tasks.tokfsm import tokfsm_prompt_text

    if page_model is not None and same_vocabulary(cb_model, page_model):
        return tokens, None
    if tokfsm:
        return prompt_tokens(cb_model, tokfsm_prompt_text(16), max_tokens), (
            "The page's model reads another vocabulary than this codebook model: showing a TokFSM prompt instead.")
    return prompt_tokens(cb_model, text, max_tokens), "The page's prompt, tokenized by the codebook model."


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m interp.codebook.zoo", description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=sorted(CODEBOOK_RECIPES))
    p.add_argument("--out", default=None, help="run folder (default runs/codebook/NAME); re-running resumes")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming from OUT/checkpoint")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--install", action="store_true", help="copy the result to interp/zoo/weights/NAME")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--evaluate", action="store_true", help="only evaluate the installed (or --out) codebook model")
    p.add_argument("--write-card", action="store_true", help="with --evaluate: store the metrics in its card")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.evaluate:
        from interp.zoo import WEIGHTS_DIR

        folder = Path(a.out) / "final" if a.out else WEIGHTS_DIR / a.name
        model = load_codebook_model(folder)
        card = {"name": a.name, "metrics": evaluate_tokfsm(model, CODEBOOK_RECIPES[a.name].base)}
        if a.write_card:
            index = read_json(folder / INDEX_FILE, what="codebook index")
            index["card"]["metrics"] = card["metrics"]
            write_codebook_index(folder, index)  # with fresh checksums
    else:
        card = train_recipe(a.name, a.out, a.steps, progress=not a.no_progress, install=a.install,
                            resume=not a.no_resume)
    print(json.dumps(card["metrics"], indent=2))
    return card


if __name__ == "__main__":
    from interp.cli import run

    sys.exit(run("python -m interp.codebook.zoo", main, sys.argv[1:]))
