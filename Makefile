# Two entry points (see README): `make bench` runs the main job, `make test` the tests. Each creates the
# virtual environment first when it is missing or older than pyproject.toml / constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RESULTS ?= results
BENCH_ARGS ?=

.PHONY: bench test env

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
