# One command to set up and run the main job, one to set up and run the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench-data bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# The main job on the built-in default (synthetic scenes, no download needed).
demo: setup
	$(BIN)/python -m rsc.train --image-size 32 --epochs 15

test: setup
	$(BIN)/python -m pytest

bench-data: setup
	$(BIN)/python benchmarks/bench_data.py

clean:
	rm -rf $(VENV) runs .pytest_cache
