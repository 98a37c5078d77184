# Every target that runs code depends on .venv, so `make test` / `make demo` work from a fresh clone.
SHELL := /bin/bash
PY := .venv/bin/python
DEEPSPEED := .venv/bin/deepspeed
VENV_STAMP := .venv/.installed
export PYTHONPATH := $(CURDIR)
export TOKENIZERS_PARALLELISM ?= false
export WANDB_MODE ?= offline
export TRITON_DEFAULT_FP_FUSION ?= 1
# DeepSpeed's CPU shared-memory op is JIT-built once per venv at set-up (about 30 s), not inside a test that
# may be killed mid-build (a killed build leaves torch's lock file behind and later builds wait on it).
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.venv/torch_extensions

# Offline default locations (all git-ignored).
DATA ?= data
PREPARED ?= $(DATA)/prepared
TESTSET ?= $(DATA)/testset
RUN ?= runs/train
MODEL ?= runs/demo/train

# Offline GPU nodes (docs/training.md): the wheels such a node lacks, for CPython $(WHEELHOUSE_PY) on manylinux x86-64.
WHEELHOUSE ?= wheelhouse
WHEELHOUSE_PY ?= 3.12
# The node's own stack in a separate venv (`make test-compat`); an interpreter of the node's Python version.
COMPAT_PYTHON ?= python$(WHEELHOUSE_PY)
COMPAT := .venv-compat

.PHONY: setup test test-slow test-faults test-compat lint demo prep train eval bench bench-prep bench-train \
	bench-kernels bench-eval ablation gpu-check wheelhouse clean

setup: $(VENV_STAMP)

$(VENV_STAMP): requirements.txt pyproject.toml
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q -r requirements.txt
	.venv/bin/pip install -q --no-deps -e .  # the project itself: `python pipeline/train.py` and the mexma-* commands
	DS_ACCELERATOR=cpu .venv/bin/python -c "from deepspeed.accelerator import get_accelerator as a; \
		a().create_op_builder('ShareMemCommBuilder').load()"
	touch $(VENV_STAMP)

lint: setup
	.venv/bin/ruff check .

test: setup
	.venv/bin/ruff check .
	TRITON_INTERPRET=1 $(PY) -m pytest -q --durations=15 -m "not slow and not faults" tests

test-slow: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "slow" tests

test-faults: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "faults" tests

prep: setup
	$(PY) -m data_prep.offline --out $(DATA)

# The accelerator is picked from what is present: DS_ACCELERATOR when set, else cuda when torch sees a GPU (every
# visible GPU trains, ZeRO-2 bf16), else DeepSpeed's CPU accelerator (2 processes, fp32). The first line says which.
# recipes/tiny-cpu.json: the recipe that learns at this scale from random init (recipes/paper.json is the paper's).
TRAIN_FLAGS = pipeline/train.py --recipe tiny-cpu --data $(PREPARED) --output-dir $(RUN) --max-steps 200 --save-every 50
DETECT_ACCEL = $(PY) -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')"

train: setup
	@accel=$${DS_ACCELERATOR:-$$($(DETECT_ACCEL))}; src=$${DS_ACCELERATOR:+from DS_ACCELERATOR}; \
	echo "make train: accelerator $$accel ($${src:-detected: torch.cuda.is_available()}; DS_ACCELERATOR=cpu|cuda overrides)"; \
	if [ "$$accel" = cpu ]; then set -x; DS_ACCELERATOR=cpu $(DEEPSPEED) --quiet --num_gpus 2 $(TRAIN_FLAGS) \
		--ds-config ds_configs/zero2_cpu_fp32.json; \
	else set -x; DS_ACCELERATOR=$$accel $(DEEPSPEED) --quiet $(TRAIN_FLAGS) --ds-config ds_configs/zero2_bf16.json \
		--batch-pairs 32 --grad-accum 1; fi

eval: setup
	$(PY) -m eval --model $(MODEL) --flores $(TESTSET) --split devtest --langs all --out runs/eval

demo: setup
	$(PY) scripts/demo.py

ablation: setup
	$(PY) scripts/ablation.py

bench: bench-prep bench-train bench-kernels bench-eval

bench-prep: setup
	$(PY) -m data_prep.bench --pairs 1e6 --workers 1 2

bench-train: setup
	$(PY) -m pipeline.bench_step --shapes both

bench-kernels: setup
	$(PY) kernels/bench/bench_block_diag_attention.py
	$(PY) kernels/bench/bench_koleo.py

bench-eval: setup
	$(PY) -m eval.bench

# One GPU, minutes: a ZeRO-2 bf16 run with export and eval, step and kernel benchmarks, kernel tests in fp16/bf16
# (scripts/gpu_check.py; its --dry-run runs in `make test` through tests/scripts/test_gpu_check.py). No `setup`:
# with a venv it runs there; without one (a node with its own torch) the node's python3 runs it on the wheelhouse.
gpu-check:
	$(if $(wildcard $(VENV_STAMP)),$(PY) scripts/gpu_check.py,python3 scripts/gpu_check.py --wheelhouse $(WHEELHOUSE))

wheelhouse: $(WHEELHOUSE)/WHEELHOUSE.json

$(WHEELHOUSE)/WHEELHOUSE.json: requirements.txt scripts/wheelhouse.py
	python3 scripts/wheelhouse.py --out $(WHEELHOUSE) --python-version $(WHEELHOUSE_PY)

# The offline node's versions on this machine's CPU: the node's stack from PyPI (torch 2.11.0 there is the CUDA 13
# build, about 4 GB with its nvidia-* wheels, downloaded once), the wheelhouse on top as the node installs it, then
# gpu_check --dry-run and the kernel, model and attention tests. numpy < 2.4: Triton 3.6's interpreter (the CPU
# tests' only use of it) calls int() on 1-element arrays, an error since numpy 2.4; compiled kernels never do.
COMPAT_TESTS = tests/kernels tests/pipeline/test_model.py tests/pipeline/test_attention_backends.py \
	tests/pipeline/test_kernels_on_off.py tests/pipeline/test_model_savings.py
$(COMPAT)/.installed: scripts/wheelhouse.py
	test -x $(COMPAT)/bin/python || $(COMPAT_PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install -q $$(python3 scripts/wheelhouse.py --print-node-stack) "numpy<2.4"
	touch $@

test-compat: export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(COMPAT)/torch_extensions
test-compat: $(COMPAT)/.installed $(WHEELHOUSE)/WHEELHOUSE.json
	rm -rf $(COMPAT)/wheels
	$(COMPAT)/bin/pip install -q --no-index --no-deps --target $(COMPAT)/wheels $(WHEELHOUSE)/*.whl
	PYTHONPATH=$(CURDIR):$(CURDIR)/$(COMPAT)/wheels DS_ACCELERATOR=cpu $(COMPAT)/bin/python -c "from deepspeed.accelerator \
		import get_accelerator as a; a().create_op_builder('ShareMemCommBuilder').load()"
	$(COMPAT)/bin/python scripts/gpu_check.py --dry-run --wheelhouse $(WHEELHOUSE) --out runs/gpu-check-compat
	PYTHONPATH=$(CURDIR):$(CURDIR)/$(COMPAT)/wheels TRITON_INTERPRET=1 DS_ACCELERATOR=cpu \
		$(COMPAT)/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not faults" $(COMPAT_TESTS)

clean:
	rm -rf runs .pytest_cache .ruff_cache
