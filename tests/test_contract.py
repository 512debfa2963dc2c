"""The calling convention every analysis follows (docs/architecture.md, "An analysis").

A public function of an analysis package that runs the model on tokens has the shape
``fn(model, tokens, *, hook=..., positions=..., ...)``: ``model`` first, ``tokens`` (or ``batches`` for a stream of
token batches) second, every other argument keyword-only, the hook site named ``hook`` and a set of positions named
``positions``. Functions that take a cache instead of tokens keep ``(model, cache, *, ...)``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

ANALYSES = ("interp.attention", "interp.lrp", "interp.lens", "interp.probes", "interp.sae", "interp.codebook",
            "interp.steering", "interp.activations", "interp.patching")
#: what a token argument may be called (second place)
TOKENS = ("tokens", "batches")
#: names the convention replaced; none may come back
RETIRED = {"hook_name": "hook", "hooks": "hook", "site": "hook", "sites": "hook", "rows": "positions",
           "input": "tokens", "token_batches": "batches", "neutral": "tokens"}


def _modules():
    """Every module of the analysis packages (the packages and their submodules; command-line modules aside)."""
    for package in ANALYSES:
        mod = importlib.import_module(package)
        yield mod
        for info in pkgutil.walk_packages(getattr(mod, "__path__", []), prefix=f"{package}."):
            if not info.name.endswith((".cli", "__main__")):
                yield importlib.import_module(info.name)


def _public_functions():
    """{qualified name: function} of every public function defined in those modules."""
    seen = {}
    for mod in _modules():
        for name, fn in vars(mod).items():
            if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == mod.__name__:
                seen[f"{mod.__name__}.{name}"] = fn
    return seen


FUNCTIONS = _public_functions()
MODEL_FIRST = {k: f for k, f in FUNCTIONS.items() if next(iter(inspect.signature(f).parameters), None) == "model"}
ON_TOKENS = {k: f for k, f in MODEL_FIRST.items()
             if set(TOKENS) & set(inspect.signature(f).parameters)}


def test_the_analysis_packages_export_analyses():
    assert len(ON_TOKENS) >= 20, sorted(ON_TOKENS)
    for must in ("interp.attention.maps.interaction_map", "interp.lrp.explain", "interp.sae.splice.run_with_sae",
                 "interp.probes.sweep.probe_sweep", "interp.steering.evaluate.kl_cost", "interp.lens.logit.logit_lens",
                 "interp.activations.writer.cache_activations", "interp.codebook.steering.forced_continuations",
                 "interp.attention.perturbation.perturbation_test", "interp.attention.views.map_view"):
        assert must in ON_TOKENS


@pytest.mark.parametrize("name", sorted(ON_TOKENS))
def test_analysis_signature_is_model_tokens_then_keywords(name):
    params = list(inspect.signature(ON_TOKENS[name]).parameters.values())
    assert [p.name for p in params[:2]][1] in TOKENS, f"{name}: second argument must be tokens, got {params[1].name}"
    for p in params[:2]:
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, f"{name}({p.name}) must be positional"
    late = [p.name for p in params[2:] if p.kind not in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)]
    assert not late, f"{name}: {late} must be keyword-only (after *)"


@pytest.mark.parametrize("name", sorted(MODEL_FIRST))
def test_no_retired_argument_names(name):
    params = inspect.signature(MODEL_FIRST[name]).parameters
    retired = {p: RETIRED[p] for p in params if p in RETIRED}
    assert not retired, f"{name}: rename {retired}"
