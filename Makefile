# Two commands on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Installs are locked: torch (CPU build; requirements/torch.txt) first, so no CUDA build is pulled, then the exact
# versions of requirements/lock.txt, then this package without dependencies (and without build isolation, so
# the build backend is the locked setuptools too).
PIP_SPEC ?= pip==26.3
PIP      := -m pip install -q --disable-pip-version-check

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv demo test app bench clean lock test-latest

$(VENV)/.installed: pyproject.toml requirements/lock.txt requirements/torch.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) $(PIP) "$(PIP_SPEC)"
	$(PY) $(PIP) -r requirements/torch.txt
	$(PY) $(PIP) -r requirements/lock.txt
	$(PY) $(PIP) --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m interp.demo

test: venv
	$(PY) -m pytest -q

app: venv
	$(PY) -m interp.cli app

bench: venv
	$(PY) bench/forward.py

# Regenerate requirements/lock.txt: the newest versions pyproject.toml's ranges allow, for this Python.
LOCK_TOOLS := .venv-lock
# every extra by name (the "all" extra names the package itself, which would put a path into the lock)
LOCK_EXTRAS := --extra=sae --extra=nnsight --extra=app --extra=ml --extra=kernels --extra=cpu-kernels \
               --extra=notebooks --extra=test
lock:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python $(PIP) "$(PIP_SPEC)" "pip-tools==7.7.0"
	$(LOCK_TOOLS)/bin/pip-compile -q --upgrade --strip-extras $(LOCK_EXTRAS) --unsafe-package=torch \
	    --constraint=requirements/torch.txt --no-emit-index-url --no-emit-find-links \
	    --output-file=requirements/lock.txt pyproject.toml

# Drift check: the newest releases pyproject.toml allows (CAPS=off: past the caps too) in a separate venv, then a
# smoke subset: imports and shadowing, logits parity with Hugging Face, the README, one notebook, the app.
LATEST ?= .venv-latest
CAPS   ?= on
SMOKE  ?= tests/test_setup.py tests/test_ssm_parity.py tests/test_transformer.py tests/test_readme.py \
          tests/test_transformer_fused.py tests/test_app.py \
          "tests/test_notebooks.py::test_notebook_runs[02_token_interactions]"
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python $(PIP) "$(PIP_SPEC)"
	$(LATEST)/bin/python $(PIP) -r requirements/torch.txt
	$(LATEST)/bin/python requirements/latest.py --caps $(CAPS) > $(LATEST)/requirements.txt
	$(LATEST)/bin/python $(PIP) --upgrade --upgrade-strategy eager -r $(LATEST)/requirements.txt
	$(LATEST)/bin/python $(PIP) --no-deps --no-build-isolation -e .
	$(LATEST)/bin/python requirements/latest.py --diff
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider $(SMOKE)

clean:
	rm -rf $(VENV) $(LATEST) $(LOCK_TOOLS) build *.egg-info runs/demo
