# Entry points (see README): `make bench` runs the main job, `make test` the tests, `make gpu-check` everything that
# needs a GPU. Each creates the virtual environment first when it is missing or older than pyproject.toml /
# constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RESULTS ?= results
BENCH_ARGS ?=

.PHONY: bench test env gpu-check

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,bench,masks]"
	touch $(STAMP)

# No BENCH_ARGS: the table2 suite, --quick without CUDA (minutes on 2 cores), full size on CUDA (see README).
bench: $(STAMP)
	$(BIN)/python -m bench --out $(RESULTS) $(BENCH_ARGS)

test: $(STAMP)
	$(BIN)/ruff check adatriton kernels bench tests
	TRITON_INTERPRET=1 $(BIN)/python -m pytest

# On one H100/H200, at most 9 minutes: GPU tests, autotuning, calibration, layers and table2 suites, the CUDA-graph
# test; every step time-boxed, a failing one does not stop the rest; log in $(RESULTS)/gpu_check.log. Without CUDA
# it says so and runs nothing (exit 0).
gpu-check: $(STAMP)
	$(BIN)/python -m bench gpu-check --out $(RESULTS)
