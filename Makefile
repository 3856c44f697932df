# Entry points (see README): `make bench` runs the main job, `make test` the tests, `make gpu-check` everything that
# needs a GPU. Each creates the virtual environment first when it is missing or older than pyproject.toml /
# constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RESULTS ?= results
BENCH_ARGS ?=

# pytest-xdist workers for `make test` / `make test-fast` (auto: one per CPU; `make test WORKERS=0` runs in-process).
# loadgroup keeps the tests of one xdist_group (one shared subprocess) on one worker.
WORKERS ?= auto
PYTEST := TRITON_INTERPRET=1 $(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup
FAST_PATHS ?= tests/ops tests/core tests/nn tests/models

.PHONY: bench test test-fast env gpu-check

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,bench,masks]"
	touch $(STAMP)

# No BENCH_ARGS: the table2 suite, --quick without CUDA (minutes on 2 cores), full size on CUDA (see README).
bench: $(STAMP)
	$(BIN)/python -m bench --out $(RESULTS) $(BENCH_ARGS)

# The full suite CI runs (.ci/run): ruff, then every test.
test: $(STAMP)
	$(BIN)/python -m ruff check adatriton kernels bench tests
	$(PYTEST)

# The inner loop (<= 2 minutes on 2 cores): ops, core, nn and models on small inputs; no slow, aot or subprocess tests.
test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not aot and not subprocess" $(FAST_PATHS)

# On one H100/H200, at most 9 minutes: GPU tests, autotuning, calibration, layers and table2 suites, the CUDA-graph
# test; every step time-boxed, a failing one does not stop the rest; log in $(RESULTS)/gpu_check.log. Without CUDA
# it says so and runs nothing (exit 0).
gpu-check: $(STAMP)
	$(BIN)/python -m bench gpu-check --out $(RESULTS)
