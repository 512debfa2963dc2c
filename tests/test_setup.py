"""Set-up guards: no folder of the repository shadows an installed package, whatever the working directory.

``python -m ...``, ``python -c ...`` and ``python -m pytest`` put the current folder first on ``sys.path``, so from
the repository root every top-level folder with an ``__init__.py`` is importable under its own name. ``kernels/``
(the package ``interp.kernels``) shares its name with the Hugging Face ``kernels`` package that ``transformers``
imports: imported as ``kernels`` it must hand over to the installed package (see ``kernels/__init__.py``).
"""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL_PACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())


def _run(code: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, *kw.pop("flags", []), "-c", code], cwd=kw.pop("cwd", ROOT), env=env,
                          capture_output=True, text=True, timeout=300, **kw)


def _installed_elsewhere(name: str) -> str | None:
    """Where ``name`` would import from if the repository root were not on sys.path (None: nowhere)."""
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != str(ROOT)]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    return None if spec is None else (spec.origin or str(list(spec.submodule_search_locations or [])))


def test_from_the_root_kernels_is_the_installed_package_and_everything_imports():
    """The acceptance command: from the root, ``kernels`` is Hugging Face's and the stack imports."""
    if _installed_elsewhere("kernels") is None:
        pytest.skip("the Hugging Face kernels package is not installed (transformers >= 5.25 depends on it)")
    proc = _run("import kernels, interp.probes, transformers, transformer_lens, interp.kernels as ours\n"
                "print(kernels.__file__); print(ours.__file__); print(hasattr(kernels, 'get_kernel'))")
    assert proc.returncode == 0, proc.stderr
    theirs, ours, has_api = proc.stdout.split()
    assert "site-packages" in theirs and not theirs.startswith(str(ROOT) + os.sep + "kernels"), theirs
    assert ours == str(ROOT / "kernels" / "__init__.py")
    assert has_api == "True"


def test_in_this_pytest_process_kernels_is_not_ours():
    """``python -m pytest`` from the root (``make test``) has the root on sys.path too."""
    import kernels

    import interp.kernels

    assert getattr(kernels, "__file__", None) != interp.kernels.__file__
    assert hasattr(interp.kernels, "HAS_TRITON")


def test_without_the_installed_package_kernels_is_an_empty_namespace(tmp_path):
    """With no Hugging Face ``kernels`` on the path, the folder behaves as one without ``__init__.py``: an empty
    namespace package, which transformers' availability check reads as "not installed"."""
    stdlib_only = [p for p in sys.path if p and "site-packages" not in p and os.path.abspath(p) != str(ROOT)]
    code = (f"import sys; sys.path[:] = [{str(ROOT)!r}] + {stdlib_only!r}\n"
            "import kernels; print(getattr(kernels, '__file__', None), list(kernels.__path__))")
    proc = _run(code, flags=["-S"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "[]"]


@pytest.mark.parametrize("name", TOP_LEVEL_PACKAGES)
def test_no_top_level_folder_shadows_an_installed_package(name):
    elsewhere = _installed_elsewhere(name)
    if elsewhere is None:
        return  # nothing installed under that name: nothing to shadow
    proc = _run(f"import {name}; print(getattr({name}, '__file__', None))")
    assert proc.returncode == 0, proc.stderr
    assert not (proc.stdout.strip() or "").startswith(str(ROOT / name)), (
        f"from the repository root, 'import {name}' gives the folder {ROOT / name}, hiding {elsewhere}")


def test_the_app_and_tests_do_not_put_the_root_on_sys_path():
    offenders = [str(p.relative_to(ROOT)) for d in ("apps", "interp", "hooks", "kernels")
                 for p in (ROOT / d).rglob("*.py") if "sys.path.insert" in p.read_text()]
    assert offenders == []



def _lock_tools():
    import importlib.util

    spec = importlib.util.spec_from_file_location("requirements_latest", ROOT / "requirements" / "latest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lock_pins_every_requirement_inside_its_range():
    """requirements/lock.txt pins each requirement of pyproject.toml (every extra) to one version its range admits,
    and holds nothing but pins: no paths, URLs or editable lines that would tie an install to one machine."""
    from packaging.requirements import Requirement

    latest = _lock_tools()
    lines = [ln for ln in (ROOT / "requirements" / "lock.txt").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert all("==" in ln and "@" not in ln and not ln.startswith("-") for ln in lines), \
        [ln for ln in lines if "==" not in ln or "@" in ln or ln.startswith("-")]
    pins = latest.pins()
    for line in latest.requirements(caps=True)[1:]:  # [0] is the torch constraint
        req = Requirement(line)
        name = latest._norm(req.name)
        assert name in pins, f"{req.name} is not in requirements/lock.txt: run `make lock`"
        assert req.specifier.contains(pins[name]), f"lock pins {req.name}=={pins[name]}, outside {req.specifier}"


def test_the_lock_leaves_torch_to_requirements_torch():
    text = (ROOT / "requirements" / "lock.txt").read_text()
    assert "\ntorch==" not in text and "# torch" in text
    assert "torch==" in (ROOT / "requirements" / "torch.txt").read_text()


def test_the_all_extra_covers_the_documented_features():
    """``pip install -e '.[all]'`` brings PNG export (kaleido), notebook progress bars (ipywidgets) and
    ``jupyter notebook``, as the README says."""
    import tomllib

    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    included = {e.strip() for e in Requirement(extras["all"][0]).extras}
    names = {Requirement(r).name for extra in included for r in extras[extra]}
    assert {"kaleido", "ipywidgets", "notebook", "jupytext", "streamlit", "sae-lens", "nnsight"} <= names


@pytest.mark.skipif(not Path("/usr/bin/chromium").is_file(), reason="kaleido needs a Chromium (apt-get install chromium)")
def test_png_export_works():
    """The app's export (and ``fig.to_image``) writes PNG: kaleido is installed and drives the machine's Chromium."""
    import plotly.graph_objects as go

    from interp.attention.figures import figure_exports

    files = figure_exports(go.Figure(go.Heatmap(z=[[0, 1], [1, 0]])))
    assert files["png"][:8] == b"\x89PNG\r\n\x1a\n"


def test_every_package_is_installed():
    """A package folder missing from pyproject.toml's list works in the editable install and is absent from a
    wheel: every folder with an ``__init__.py`` under the mapped package dirs is listed."""
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(setup["packages"]), setup["package-dir"]
    found = {name + "".join("." + part for part in init.parent.relative_to(ROOT / folder).parts)
             for name, folder in dirs.items() for init in (ROOT / folder).rglob("__init__.py")}
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"
