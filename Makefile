# ssit: one entry point for setting up, testing, preparing data and benchmarking.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# DALI wheel: 130 for CUDA 13 drivers (default), 120 for clusters on CUDA 12 drivers.
DALI_CUDA ?= 130
STAMP := $(VENV)/.installed-cuda$(DALI_CUDA)

# make shards: demo data by default, or RAW=<image folder> [LABELS=<csv>] DATASET=<name>.
DATASET ?= demo
RAW ?=
LABELS ?=
JOBS ?= $(shell nproc)
DEMO_RAW ?= shards/raw/demo
DEMO_N ?= 300

.PHONY: install test lint demo shards bench gpu-check cluster-up cluster-down clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e ".[dev,dali-cuda$(DALI_CUDA)]"
	@$(MAKE) --no-print-directory pillow-simd
	@rm -f $(VENV)/.installed-cuda*
	@touch $@

# pillow-simd replaces Pillow; it is built from source (AVX2 where the CPU has it). A failed
# build keeps Pillow, which works the same, only slower.
.PHONY: pillow-simd
pillow-simd:
	@if $(PY) -c "import PIL, sys; sys.exit('post' not in PIL.__version__)" 2>/dev/null; then \
	  echo "pillow-simd already installed"; exit 0; fi; \
	wheel=$$(ls $(VENV)/pillow-simd-wheel/pillow_simd-*.whl 2>/dev/null | head -1); \
	if [ -z "$$wheel" ]; then \
	  cc="cc"; grep -qw avx2 /proc/cpuinfo && cc="cc -mavx2"; \
	  echo "building pillow-simd (CC=$$cc)"; \
	  if CC="$$cc" $(PIP) wheel -q --no-deps --no-binary pillow-simd -w $(VENV)/pillow-simd-wheel \
	       "pillow-simd==12.1.1.post0" > $(VENV)/pillow-simd-build.log 2>&1; then \
	    wheel=$$(ls $(VENV)/pillow-simd-wheel/pillow_simd-*.whl | head -1); \
	  else \
	    echo "pillow-simd could not be built (log: $(VENV)/pillow-simd-build.log); keeping Pillow."; \
	    echo "  fix: apt-get install libjpeg62-turbo-dev zlib1g-dev libpng-dev, then make pillow-simd"; \
	    exit 0; \
	  fi; \
	fi; \
	$(PIP) uninstall -q -y pillow pillow-simd && \
	$(PIP) install -q --no-deps --force-reinstall "$$wheel" && echo "pillow-simd installed"

test: install
	$(PY) -m ruff check ssit launch tests benchmarks
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check ssit launch tests benchmarks

shards: install
ifeq ($(RAW),)
	$(VENV)/bin/ssit synth --out $(DEMO_RAW) --n $(DEMO_N) --seed 0
	$(VENV)/bin/ssit shards --input $(DEMO_RAW) --labels $(DEMO_RAW)/labels.csv \
	  --out shards/demo --dataset demo --shard-size 100 --jobs $(JOBS)
else
	$(VENV)/bin/ssit shards --input $(RAW) $(if $(LABELS),--labels $(LABELS)) \
	  --out shards/$(DATASET) --dataset $(DATASET) --jobs $(JOBS)
endif

# make demo: the main job end to end on CPU. Two synthetic sets that share no image (other
# seeds, other names): an unlabelled one for pre-training and a labelled one for grading. SSiT
# pre-trains the tiny ViT of demo_ssit_cpu through the launcher (submitit's local executor,
# DEMO_TASKS gloo ranks); then kNN and a linear probe grade it and a random encoder of the same
# architecture on the labelled set (runs/demo/grade), and a table compares them.
DEMO_RUN ?= runs/demo
DEMO_TASKS ?= 2
DEMO_PRETRAIN_N ?= 600
DEMO_GRADE_N ?= 1000
DEMO_HEIGHT ?= 400 480
DEMO_PRETRAIN_SHARDS ?= shards/demo-pretrain
DEMO_GRADE_SHARDS ?= shards/demo-grade
DEMO_GRADE = $(PY) launch/grade.py --dataset shards --data $(DEMO_GRADE_SHARDS) \
  --protocol knn linear --cpu --local --config grade_demo_cpu

$(DEMO_PRETRAIN_SHARDS)/manifest.json: | $(STAMP)
	$(VENV)/bin/ssit synth --out shards/raw/demo-pretrain --n $(DEMO_PRETRAIN_N) --seed 0 \
	  --height $(DEMO_HEIGHT) --jobs $(JOBS)
	$(VENV)/bin/ssit shards --input shards/raw/demo-pretrain --out $(DEMO_PRETRAIN_SHARDS) \
	  --dataset demo-pretrain --shard-size 100 --jobs $(JOBS)

$(DEMO_GRADE_SHARDS)/manifest.json: | $(STAMP)
	$(VENV)/bin/ssit synth --out shards/raw/demo-grade --n $(DEMO_GRADE_N) --seed 1 \
	  --height $(DEMO_HEIGHT) --jobs $(JOBS)
	$(VENV)/bin/ssit shards --input shards/raw/demo-grade --labels shards/raw/demo-grade/labels.csv \
	  --out $(DEMO_GRADE_SHARDS) --dataset demo-grade --shard-size 100 --jobs $(JOBS)

demo: install $(DEMO_PRETRAIN_SHARDS)/manifest.json $(DEMO_GRADE_SHARDS)/manifest.json
	$(VENV)/bin/ssit preview $(DEMO_GRADE_SHARDS) --out shards/demo-preview.png --n 16
	@echo "contact sheet: shards/demo-preview.png"
	rm -rf $(DEMO_RUN)
	$(PY) launch/pretrain.py --local --cpu --tasks-per-node $(DEMO_TASKS) --time 60 \
	  --config demo_ssit_cpu --output $(DEMO_RUN)/pretrain data.shards=$(DEMO_PRETRAIN_SHARDS)
	$(DEMO_GRADE) --output $(DEMO_RUN)/grade/pretrained --checkpoint \
	  $$($(PY) -c "import json; print(json.load(open('$(DEMO_RUN)/pretrain/summary.json'))['final_checkpoint'])")
	$(DEMO_GRADE) --output $(DEMO_RUN)/grade/random --checkpoint random
	$(PY) launch/demo_table.py $(DEMO_RUN)/grade

bench: install
	$(PY) -m benchmarks.run --out BENCHMARKS.md

# make gpu-check: the GPU path measured and checked in one run (< 8 min on one GPU), on its own
# synthetic shards; writes gpu-check.json and the "GPU check" section of BENCHMARKS.md. Without
# a GPU it says so and measures nothing.
gpu-check: install
	$(PY) -m benchmarks.gpu_check --out gpu-check.json --benchmarks BENCHMARKS.md

clean:
	rm -rf $(VENV) shards/raw shards/demo shards/demo-preview.png $(DEMO_PRETRAIN_SHARDS) \
	  $(DEMO_GRADE_SHARDS) $(DEMO_RUN)

# One-machine SLURM test cluster (root, Debian's slurmctld, slurmd and slurm-client): one
# controller and two nodes; afterwards `export SLURM_CONF=$(SSIT_CLUSTER_DIR)/slurm.conf`.
SSIT_CLUSTER_DIR ?= /tmp/ssit-cluster

cluster-up:
	SSIT_CLUSTER_DIR=$(SSIT_CLUSTER_DIR) slurm/test-cluster/up.sh

cluster-down:
	SSIT_CLUSTER_DIR=$(SSIT_CLUSTER_DIR) slurm/test-cluster/down.sh
