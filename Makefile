# internvl-finetune: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Costly caches (DeepSpeed's JIT-compiled ops, downloaded tool binaries) stay between runs, git-ignored.
CACHE  := $(CURDIR)/.cache

export TORCH_EXTENSIONS_DIR := $(CACHE)/torch_extensions
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DS_BUILD_OPS := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test bench demo crds docs clean

install: $(VENV)/.installed

# torch goes first and alone: with it in place, nothing later can swap in a CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[operator,trainer,dev]'
	@mkdir -p $(CACHE)
	@touch $@

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m benchmarks --output docs/benchmarks.md

demo: install
	$(BIN)/python -m examples.demo

# Regenerate every generated file (a test fails when one is stale).
crds docs: install
	$(BIN)/internvl-operator crds --output crds/
	$(BIN)/python -m internvl_operator.apidocs --output docs/api.md
	$(BIN)/python -m internvl_operator.sizing --output docs/sizing.md

clean:
	rm -rf $(VENV) $(CACHE) demo-out
