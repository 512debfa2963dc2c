"""Evaluation of the embedded models: ``python -m interp.zoo.evaluate NAME [--path DIR]``.

* TokFSM models: **transition accuracy** as in the codebook-features paper: ``n`` sequences (100) are
  sampled at temperature 1 from BOS alone, all in one batch, until each is ``gen_len`` tokens long
  (128, BOS included, as the training sequences); the score is the fraction of consecutive state pairs
  (two digit tokens each) that are edges of the FSM, pooled over the sequences
  (:meth:`interp.data.TokFSM.transition_accuracy`; a pair with an undecodable state counts as invalid).
  Sampling uses ``generate(..., do_sample=True, seed=eval_seed)``, so the figure is reproducible.
* Copy models: **copy accuracy** on held-out sequences with copy lengths 16..32: teacher-forced, the
  fraction of ``loss_mask`` positions (those predicting a copied token) whose argmax is the copied
  token (:func:`interp.data.copy_accuracy`), plus the fraction of sequences copied without error.

Both also report the teacher-forced loss on held-out data (``eval_loss``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp.io import read_json
from interp.metrics import next_token_cross_entropy, next_token_nll
from interp.zoo.recipes import Recipe, get_recipe

__all__ = ["evaluate", "transition_accuracy", "copy_eval", "recipe_of", "main", "METRIC_OF_TASK"]

METRIC_OF_TASK = {"tokfsm": "transition_accuracy", "copy": "copy_accuracy"}
_EVAL_STREAM = 1


@torch.no_grad()
def sample_tokfsm(model: Any, n: int = 100, gen_len: int = 128, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
    """``n`` sequences sampled from BOS alone in one batch: LongTensor [n, gen_len] (BOS first)."""
    from interp.data import TOKFSM_BOS

    bos = torch.full((n, 1), TOKFSM_BOS, dtype=torch.long, device=model.device)
    return model.generate(bos, max_new_tokens=gen_len - 1, do_sample=True, temperature=temperature, seed=seed,
                          stop_at_eos=False, return_type="tokens")


def transition_accuracy(model: Any, n: int = 100, gen_len: int = 128, temperature: float = 1.0, seed: int = 0) -> float:
    """Fraction of valid FSM transitions among ``n`` sequences sampled from BOS (see the module docstring)."""
    from interp.data import TokFSM

    return float(TokFSM().transition_accuracy(sample_tokfsm(model, n, gen_len, temperature, seed).cpu()))


def _eval_copy_batches(recipe: Recipe) -> list[Any]:
    from interp.data import sample_copy_batch

    out, left, i = [], recipe.eval_n_samples, 0
    while left > 0:
        b = min(left, recipe.eval_batch_size)
        rng = np.random.default_rng([recipe.eval_seed, _EVAL_STREAM, i])
        out.append(sample_copy_batch(b, rng, n_range=recipe.eval_copy_n_range, n_symbols=recipe.copy_n_symbols,
                                     pad_to=recipe.eval_pad_to))
        left, i = left - b, i + 1
    return out


@torch.no_grad()
def copy_eval(model: Any, recipe: Recipe) -> dict[str, float]:
    """Teacher-forced copy accuracy (token level and whole sequence) and loss on held-out copies."""
    hits = total = seq_ok = n_seq = 0
    nll_sum = 0.0
    for batch in _eval_copy_batches(recipe):
        batch = batch.to(model.device)
        logits = model(batch.tokens, return_type="logits")
        m = batch.loss_mask[:, :-1]
        tgt = batch.tokens[:, 1:]
        hit = (logits[:, :-1].argmax(-1) == tgt) & m
        hits += int(hit.sum())
        total += int(m.sum())
        seq_ok += int(((hit | ~m).all(dim=1)).sum())
        n_seq += batch.tokens.shape[0]
        nll_sum += float(next_token_nll(logits.float(), batch.tokens)[m].sum())
    return {"copy_accuracy": hits / total, "copy_sequence_accuracy": seq_ok / n_seq, "eval_loss": nll_sum / total,
            "n_sequences": n_seq, "n_positions": total}


@torch.no_grad()
def tokfsm_eval_loss(model: Any, recipe: Recipe, n: int = 64) -> float:
    """Teacher-forced next-token loss on ``n`` held-out TokFSM sequences."""
    from interp.data import tokfsm_dataset

    tokens = tokfsm_dataset(n, seed=[recipe.eval_seed, _EVAL_STREAM], seq_len=recipe.seq_len).to(model.device)
    logits = model(tokens, return_type="logits")
    return float(next_token_cross_entropy(logits.float(), tokens))


def evaluate(model: Any, recipe: Recipe | str, loss: bool = True) -> dict[str, Any]:
    """The recipe's evaluation of ``model``: ``{"metric": name, name: value, ...}``."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        if recipe.task == "tokfsm":
            out: dict[str, Any] = {
                "transition_accuracy": transition_accuracy(model, recipe.eval_n_samples, recipe.eval_gen_len,
                                                           recipe.eval_temperature, recipe.eval_seed),
                "n_samples": recipe.eval_n_samples, "gen_len": recipe.eval_gen_len,
                "temperature": recipe.eval_temperature, "sampling_seed": recipe.eval_seed,
            }
            if loss:
                out["eval_loss"] = tokfsm_eval_loss(model, recipe)
        else:
            out = copy_eval(model, recipe)
            out["copy_n_range"] = list(recipe.eval_copy_n_range)
            if not loss:
                out.pop("eval_loss")
    finally:
        model.train(was_training)
    out["metric"] = METRIC_OF_TASK[recipe.task]
    out["eval_time_s"] = round(time.perf_counter() - t0, 3)
    return out


def recipe_of(name: str, folder: str | Path | None = None) -> Recipe:
    """The recipe a model was trained with: from its model card if there is one, else the registry's."""
    from interp.zoo import CARD_FILE, embedded_path

    folder = Path(folder) if folder is not None else embedded_path(name)
    if folder is not None and (Path(folder) / CARD_FILE).is_file():
        card = read_json(Path(folder) / CARD_FILE, what="model card")  # an edited card fails its own sha256
        if "recipe" in card:
            return Recipe.from_dict(card["recipe"])
    return get_recipe(name)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="interp evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="embedded model name (tokfsm-mamba, tokfsm-mamba2, tokfsm-transformer, copy-mamba, copy-mamba2)")
    p.add_argument("--path", default=None, help="evaluate this checkpoint folder instead of the installed weights")
    p.add_argument("--seed", type=int, default=None, help="override the evaluation seed")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import interp

    recipe = recipe_of(args.name, args.path)
    if args.seed is not None:
        recipe = recipe.replace(eval_seed=args.seed)
    t0 = time.perf_counter()
    model = interp.load(args.path if args.path is not None else args.name)
    load_s = time.perf_counter() - t0
    result = {"name": args.name, "load_time_s": round(load_s, 3), **evaluate(model, recipe)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":  # pragma: no cover
    from interp.cli import run

    sys.exit(run("interp evaluate", main, sys.argv[1:]))
