# Every target works from a fresh clone: it creates .venv and installs the project first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel by default (the local wheel on our machines); override e.g. TORCH_SPEC="torch==2.13.0 --index-url ..." for CUDA.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup test test-all train-single train-hrn train-focus train-aggregate sweep preview benchmark benchmark-renderer clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Lint first (seconds), then the fast suite; the 15 slowest tests are listed so that creep is seen.
test: $(STAMP)
	$(BIN)/ruff format --check --quiet .
	$(BIN)/ruff check --quiet .
	$(BIN)/lint-imports
	$(BIN)/pytest -q -m "not slow and not gpu and not weights and not data" --durations=15

test-all: $(STAMP)
	$(BIN)/pytest -q

# The main job: R-Net on the embedded synthetic default (about 10 minutes on a 2-core CPU; uses a GPU when
# there is one). Re-running continues or reports the finished run instead of overwriting it.
train-single: $(STAMP)
	$(BIN)/face3d train --config default --resume $(ARGS)

# HRN's detail layers (deformation and displacement maps) on the bundled R-Net, on synthetic detail faces
# (400 steps: 13-18 minutes on 2 cores, extrapolated from measured step times; README, HRN); prints the detail
# table (3DMM vs +deformation vs +displacement).
train-hrn: $(STAMP)
	$(BIN)/face3d train --config hrn --resume $(ARGS)

# FOCUS (occlusion-robust encoder + outlier-segmentation U-Net, trained by EM) from the bundled R-Net on occluded
# synthetic faces; prints the mask and shape tables (timing: README, FOCUS). Re-running continues (--resume).
train-focus: $(STAMP)
	$(BIN)/face3d train --config focus --resume $(ARGS)

# C-Net on synthetic image sets, from the train-single checkpoint (trained first if missing); prints the
# strategy table (mean per-image, shape averaging, S1-S4) on held-out identities.
train-aggregate: $(STAMP)
	$(BIN)/face3d train-aggregate --resume $(ARGS)

# Offline W&B sweep: expands the sweep YAML (grid/random) and trains each run as an offline W&B run;
# re-running continues. `make sweep SWEEP=experiments/sweeps/<name>.yaml`.
SWEEP ?= experiments/sweeps/table1_cpu.yaml
sweep: $(STAMP)
	$(BIN)/face3d sweep $(SWEEP) $(ARGS)

# Accuracy and speed report of the train-single checkpoint (synthetic 20-pose protocol, configured licensed
# datasets, timings) into benchmarks/reports/<timestamp>/; e.g. `make benchmark ARGS="--identities 4 --no-speed"`.
benchmark: $(STAMP)
	$(BIN)/face3d benchmark $(ARGS)

preview: $(STAMP)
	$(BIN)/face3d preview --out face.png

benchmark-renderer: $(STAMP)
	$(BIN)/python benchmarks/bench_renderer.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
