# Two commands on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned to the CPU wheel on this machine's disk; install it first so the
# plain `torch` requirement below is already satisfied and no CUDA build is pulled.
TORCH_SPEC ?= torch==2.13.0

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv demo test app bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[all]"
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

clean:
	rm -rf $(VENV) build *.egg-info runs/demo
