# Entry points (see README): `make bench` runs the main job, `make test` the tests, `make test-min` the version-
# dependent tests on the lowest supported versions, `make gpu-check` everything that needs a GPU. `bench` and `test`
# create the virtual environment first when it is missing or older than pyproject.toml / constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The lower-bound pins (constraints-min.txt: torch 2.11, torchvision 0.26, triton 3.6) in a second environment.
VENV_MIN ?= .venv-min
STAMP_MIN := $(VENV_MIN)/.installed
# What depends on the torch / Triton version: the kernels and ops (the interpreter), compile and export, the CUDA-graph
# path, converted ResNets against the dense simulation, the scoped settings under torch.compile and the GPU check's
# dry run.
MIN_TESTS ?= tests/ops tests/nn/test_compile.py tests/nn/test_cuda_graph.py tests/models/test_export.py \
	tests/models/test_resnet.py tests/runtime/test_context.py tests/bench/test_gpu_check.py
RESULTS ?= results
BENCH_ARGS ?=

# pytest-xdist workers for `make test` / `make test-fast` (auto: one per CPU; `make test WORKERS=0` runs in-process).
# loadgroup keeps the tests of one xdist_group (one shared subprocess) on one worker.
WORKERS ?= auto
PYTEST := TRITON_INTERPRET=1 $(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup
FAST_PATHS ?= tests/ops tests/core tests/nn tests/models

.PHONY: bench test test-fast test-min env env-min gpu-check

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,bench,masks,deploy]"
	touch $(STAMP)

env-min: $(STAMP_MIN)

# No ruff (the GPU machine this mirrors has none) and no `test` extra (it names ruff): pytest and hypothesis by name.
$(STAMP_MIN): pyproject.toml constraints-min.txt
	test -x $(VENV_MIN)/bin/python || $(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/python -m pip install --quiet -c constraints-min.txt -e ".[bench,masks]" pytest hypothesis
	touch $(STAMP_MIN)

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

test-min: $(STAMP_MIN)
	TRITON_INTERPRET=1 $(VENV_MIN)/bin/python -m pytest -p no:cacheprovider $(MIN_TESTS)

# On one H100/H200, at most 9 minutes, with the python that already has torch, torchvision and triton (a GPU machine's
# preinstalled software, no package registry): installs this checkout into it without dependencies or network, no
# venv and no ruff. Steps in order: environment, every backend vs torch, L2 bandwidth, convs vs cuDNN,
# compute-sanitizer, CUDA graphs, table2, GPU tests, autotuning; each time-boxed, a failing one does not stop the rest.
# Results: $(RESULTS)/gpu_check.tar.gz and $(RESULTS)/gpu_check_summary.txt. Without CUDA it says so and runs nothing
# (exit 0). The same as one command line: see docs/benchmarks.md.
# Where pip cannot build the editable install offline (no `wheel` for an old setuptools), an install of this checkout
# that is already there does.
gpu-check:
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation --no-index -e . || $(PYTHON) -c "import adatriton.kernels"
	$(PYTHON) -m bench gpu-check --out $(RESULTS)
