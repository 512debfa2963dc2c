"""Layers point one way (docs/architecture.md): base <- models <- kernels <- analyses <- tasks <- entry points.

Every module of the package (``interp/``, ``hooks/`` = ``interp.hooks``, ``kernels/`` = ``interp.kernels``,
``apps/`` = ``interp.apps``) is given a layer by the first matching prefix of :data:`LAYERS`; an import of a module
of a higher layer fails the test. Imports inside ``if __name__ == "__main__":`` are the module's script entry point
and belong to the entry-point layer, so they are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"interp": ROOT / "interp", "interp.hooks": ROOT / "hooks", "interp.kernels": ROOT / "kernels",
            "interp.apps": ROOT / "apps"}

# (module prefix, layer), most specific first; a module takes the layer of the first prefix it starts with
LAYERS: list[tuple[str, int]] = [
    # 5 entry points: commands, the app, the demo
    ("interp.cli", 5), ("interp.__main__", 5), ("interp.app_cli", 5), ("interp.app_links", 5), ("interp.demo", 5),
    ("interp.apps", 5),
    ("interp.activations.cli", 5), ("interp.sae.cli", 5), ("interp.attention.cli", 5),
    # 4 tasks: data sets with known ground truth, the embedded models' recipes, benchmarks on them
    ("interp.tasks", 4), ("interp.data", 4), ("interp.zoo.train", 4), ("interp.zoo.evaluate", 4),
    ("interp.zoo.recipes", 4), ("interp.codebook.zoo", 4),
    ("interp.attention.benchmarks", 4),
    # 3 analyses
    ("interp.attention", 3), ("interp.lrp", 3), ("interp.lens", 3), ("interp.probes", 3), ("interp.sae", 3),
    ("interp.codebook", 3), ("interp.steering", 3), ("interp.activations", 3), ("interp.patching", 3),
    # 2 kernels
    ("interp.kernels", 2),
    # 1 models: hookable models and loading them (the embedded models' registry included)
    ("interp.hooks", 1), ("interp.loading", 1), ("interp.zoo", 1), ("interp", 1),
    # 0 base: pure helpers every layer may use
    ("interp.metrics", 0), ("interp.training", 0), ("interp.io", 0), ("interp.locks", 0),
]
LAYERS.sort(key=lambda p: -len(p[0]))  # longest prefix first
NAMES = {5: "entry points", 4: "tasks", 3: "analyses", 2: "kernels", 1: "models", 0: "base"}


def layer_of(module: str) -> int:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise KeyError(module)


def modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``module`` imports (outside its ``__main__`` block), resolved to known module names."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip = {id(n) for top in tree.body if _is_main_guard(top) for n in ast.walk(top)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # a.b.function -> a.b
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def upward_imports() -> list[str]:
    mods = modules()
    known = set(mods)
    bad = []
    for name, path in sorted(mods.items()):
        for dep in sorted(imported(name, path, known)):
            if layer_of(dep) > layer_of(name):
                bad.append(f"{name} ({NAMES[layer_of(name)]}) imports {dep} ({NAMES[layer_of(dep)]})")
    return bad


def test_imports_point_down_the_layers():
    assert upward_imports() == []


def test_the_app_does_not_compute_with_torch():
    """``apps/`` validates inputs, keeps state and draws; every number it shows comes from a library function, so no
    module of the app imports torch (tokens it must build come from :func:`interp.hooks.tokens.as_tokens`)."""
    bad = []
    for path in sorted(PACKAGES["interp.apps"].rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                    if n == "torch" or n.startswith("torch.")]
    assert bad == []


APP_MAX_LINES = 1000


def test_the_app_stays_small():
    """``apps/`` only presents (validate inputs, keep state, draw), so it stays under :data:`APP_MAX_LINES` lines;
    a page that grows past that is computing something a library function should."""
    lines = {path.relative_to(ROOT): len(path.read_text().splitlines())
             for path in PACKAGES["interp.apps"].rglob("*.py")}
    biggest = ", ".join(f"{p} ({n})" for p, n in sorted(lines.items(), key=lambda x: -x[1])[:4])
    assert sum(lines.values()) < APP_MAX_LINES, (
        f"apps/ has {sum(lines.values())} lines (limit {APP_MAX_LINES}); biggest: {biggest}. Move computation and "
        "data shaping into library functions, repeated widget code into apps/ui.py")
