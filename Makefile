# lorasweep: `make help` lists the targets. Every target creates and uses .venv on first use.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch goes in first: an unpinned torch from PyPI is a multi-GB CUDA build, useless without a GPU
TORCH_SPEC ?= torch>=2.3,<2.15
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
CPU_INDEX := https://download.pytorch.org/whl/cpu
# without a GPU, torch comes from PyTorch's CPU wheel index; where that index is out of reach (a machine with only a
# package mirror), pip fails over to its configured wheel folders and mirrors at once instead of retrying
CPU_INDEX_UP = $(shell python3 -c "import urllib.request as u; u.urlopen('$(CPU_INDEX)/torch/', timeout=5)" >/dev/null 2>&1 && echo 1)
TORCH_INDEX ?= $(if $(HAS_GPU),,--index-url $(CPU_INDEX)$(if $(CPU_INDEX_UP),, --retries 0))
EXTRAS ?= dev,postgres,slurm,samplers
# the offline variant reads the shared samples and GPT-2's tokenizer from here
SHARED ?= ../shared
PYTEST_ARGS ?=
# more overrides for the quick-start sweeps, e.g. SWEEP_ARGS="hydra.sweeper.storage=sqlite:///other.db"
SWEEP_ARGS ?=

help:  ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	@touch $@

setup: $(VENV)/.installed  ## create .venv: torch first (CPU wheel without a GPU), then the project

sweep: setup  ## the quick start: GPT-2 small from the hub, SMS spam, LoRA ranks vs full fine-tuning, SQLite study
	$(PY) sweep.py -m experiment=quickstart $(SWEEP_ARGS)
	@echo "Look at it: $(PY) -m analysis.report --storage sqlite:///sweeps.db   then   $(VENV)/bin/optuna-dashboard sqlite:///sweeps.db --artifact-dir sweeps-artifacts"

sweep-offline: setup  ## the same sweep offline: tiny random GPT-2, the local SMS sample in $(SHARED), no downloads
	HF_HUB_OFFLINE=1 LORASWEEP_TIKTOKEN_FILE=$(SHARED)/tokenizer/gpt2.tiktoken \
	  $(PY) sweep.py -m experiment=quickstart model=tiny task.path=$(SHARED)/data/sms_spam/SMSSpamCollection \
	  hydra.sweeper.study_name=quickstart-offline $(SWEEP_ARGS)

test: setup  ## run every test (what CI runs)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup  ## the tests without the end-to-end sweeps
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup  ## benchmarks against transformers + peft (minutes; results in BENCHMARKS.md's format)
	$(PY) bench/train_step.py && $(PY) bench/generate.py && $(PY) bench/sweep_overhead.py && $(PY) bench/pruning.py \
	  && $(PY) bench/packing.py

$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PIP) install --quiet -e ".[$(EXTRAS),docs]"
	@touch $@

docs: $(VENV)/.docs-installed  ## build the documentation site into site/ (mkdocs --strict: a broken link fails)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: $(VENV)/.docs-installed  ## serve the documentation with live reload on http://127.0.0.1:8000
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

docs-screenshot: setup  ## regenerate docs/assets/report.png from the offline quick start (needs chromium)
	PY=$(PY) SHARED=$(SHARED) bash docs/make_screenshot.sh

format: setup  ## ruff: fix and format
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

lint: setup  ## ruff: check only
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:  ## remove run artefacts (outputs/, sweeps.db, reports/, site/), keep .venv and caches
	rm -rf outputs multirun reports sweeps.db site

.PHONY: help setup sweep sweep-offline test test-fast bench docs docs-serve docs-screenshot format lint clean
