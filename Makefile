# Every target that runs code depends on .venv, so `make test` / `make demo` work from a fresh clone.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
export DS_ACCELERATOR ?= cpu
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

.PHONY: setup test test-slow test-faults lint demo prep train eval bench bench-prep bench-train bench-kernels bench-eval ablation gpu-check clean

setup: $(VENV_STAMP)

$(VENV_STAMP): requirements.txt
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q -r requirements.txt
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

# recipes/tiny-cpu.json: the recipe that learns on a CPU from random init (recipes/paper.json is the paper's, for GPUs)
train: setup
	.venv/bin/deepspeed --num_gpus 2 pipeline/train.py --recipe tiny-cpu --data $(PREPARED) --output-dir $(RUN) \
		--max-steps 200 --save-every 50

eval: setup
	$(PY) -m eval --model $(MODEL) --flores $(TESTSET) --split devtest --langs all --out runs/eval

demo: setup
	$(PY) scripts/demo.py

ablation: setup
	$(PY) scripts/ablation.py

bench: bench-prep bench-train bench-kernels bench-eval

bench-prep: setup
	$(PY) -m data_prep.bench

bench-train: setup
	$(PY) -m pipeline.bench_step --shapes both

bench-kernels: setup
	$(PY) kernels/bench/bench_block_diag_attention.py
	$(PY) kernels/bench/bench_koleo.py

bench-eval: setup
	$(PY) -m eval.bench

# One GPU, minutes: kernel tests in fp16/bf16, kernel and step benchmarks, a ZeRO-2 bf16 run, export and eval
# (scripts/gpu_check.py; its --dry-run runs in `make test` through tests/scripts/test_gpu_check.py).
gpu-check: setup
	$(PY) scripts/gpu_check.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
