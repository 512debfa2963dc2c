"""Codebook bottlenecks (codebook features, Tamkin et al. 2023) for SSMs and transformers.

    model = interp.load("tokfsm-mamba")
    books = make_codebooks(model, hook=mixer_output_hooks(model), n_codes=256, k=1)
    train_codebooks(model, batches, books=books, cfg=cfg, out_dir="runs/codebook/x")    # k-means init, fine-tune
    run = collect_codes(model, tokens)                                                   # codes per hook
    code_label_precision(run, labels, n_classes=100).summary()                           # codes vs best neuron
    iv = code_intervention(model, hook="blocks.2.ssm.hook_out", code=17, mode="force", positions="last")
    model.generate(prompt, max_new_tokens=2, fwd_hooks=iv.hooks(model))

A codebook is named by the hook it replaces (``hook=``); functions that run the model take
``(model, tokens, *, hook=..., ...)``.

Modules: :mod:`.functional` (the math), :mod:`.config` (every knob), :mod:`.layer` (CodebookLayer and its hook
points), :mod:`.insert` (attach to / detach from a model at hook names), :mod:`.train` (k-means, in-model and
post-hoc training on any batches, checkpoints, save/load), :mod:`.analysis` (usage, code ↔ label precision vs
neurons, top examples, similar codes), :mod:`.steering` (force / append / disable codes: the ``CodebookCodes``
steering source and :func:`code_intervention`, the one way to build a codebook steering intervention). Tasks
built on them: :mod:`interp.codebook.zoo` (the embedded codebook models and their training data,
``model_batches``) and :mod:`interp.tasks.tokfsm` (the TokFSM steering-by-codes test).
"""

from .analysis import (
    CodeLabelReport, CodeReport, CodeRun, code_features, code_label_precision, code_report, codebook_hooks,
    collect_codes, similar_codes, top_examples, usage_stats,
)
from .config import CodebookConfig, CodebookTrainConfig
from .insert import attach, attached, detach, make_codebooks, mixer_output_hooks
from .layer import CodebookLayer
from .steering import CodebookCodes, code_intervention, forced_continuations
from .train import (
    CodebookTrainResult, check_codebook_folder, codebook_base_model, codebook_folder_mtime, codebook_index,
    embedded_codebook_models, find_codebook_models, fit_post_hoc, hook_activations, kmeans_init,
    load_codebook_model, save_codebook_model, train_codebooks,
)

__all__ = [
    "CodebookConfig", "CodebookTrainConfig", "CodebookLayer", "attach", "attached", "detach",
    "make_codebooks", "mixer_output_hooks", "train_codebooks", "fit_post_hoc", "kmeans_init", "hook_activations",
    "CodebookTrainResult", "save_codebook_model", "load_codebook_model", "CodeRun", "collect_codes", "usage_stats",
    "code_features", "code_label_precision", "CodeLabelReport", "top_examples", "similar_codes",
    "CodebookCodes", "code_intervention", "forced_continuations", "CodeReport", "code_report", "codebook_hooks",
    "check_codebook_folder", "codebook_index", "codebook_base_model", "embedded_codebook_models",
    "find_codebook_models", "codebook_folder_mtime",
]
