# One command to set up and run the main job, one to set up and run the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-all bench-data bench-spaces bench-search bench-cluster bench-device clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# The main job on the built-in default: a compression search on the synthetic scene set
# (trains and caches a base ResNet-18 first, then fine-tunes uniform L1 with the search's compute beside the
# final models; about 2 min on 2 CPU cores once the base is cached).
demo: setup
	$(BIN)/python -m search.run --budget 'params<25%' --min-accuracy 0.25 --image-size 32 --base-epochs 10 \
	    --trials 8 --fidelity-epochs 2 --final-epochs 3 --study demo-$(shell date +%Y%m%d-%H%M%S)

# Tests on 2 xdist workers; tests that start a Ray cluster or a server share one xdist group, so they
# run one at a time (tiers and groups: the table in tests/conftest.py).
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadgroup

# The fast tier: unit tests and the tiny end-to-end searches, not the tests marked slow (real data,
# profiling, the MLflow server in a browser, big searches); under 10 min on 2 cores.
test: setup
	$(BIN)/python -m pytest -m "not slow" $(XDIST)

# Everything, slow tier included: what CI runs (.ci/run); under 30 min on 2 cores from a fresh clone.
test-all: setup
	$(BIN)/python -m pytest $(XDIST)

bench-data: setup
	$(BIN)/python benchmarks/bench_data.py

bench-spaces: setup
	$(BIN)/python benchmarks/bench_spaces.py --finetune --tucker-fc

bench-search: setup
	$(BIN)/python benchmarks/bench_search.py --data ../shared/datasets/UCMerced_LandUse

# The same search on a 2-node and a 1-node Ray cluster on loopback, side by side (about 6 min)
bench-cluster: setup
	$(BIN)/python benchmarks/bench_ray_cluster.py --data ../shared/datasets/UCMerced_LandUse --trials 12 --fidelity-epochs 2

# Trials on CUDA beside the CPU, same plans and seeds (needs a GPU; about 2 min on an H200)
bench-device: setup
	$(BIN)/python benchmarks/bench_device.py --device cuda --data ../shared/datasets/UCMerced_LandUse --determinism 10

clean:
	rm -rf $(VENV) runs .pytest_cache
