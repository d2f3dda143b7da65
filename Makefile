# vidrec: `make demo` runs the main job, `make test` the whole suite. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The real MovieLens copy next to the checkout; without it, `vidrec ingest` downloads into the cache.
ML_SMALL := $(wildcard ../shared/datasets/ml-latest-small)
DEMO_DATA := $(if $(ML_SMALL),--data-dir $(ML_SMALL),)

.PHONY: install demo test bench lock clean

install: $(STAMP)

# torch first, pinned: on these machines that version is a CPU build on local disk, and installing it
# before sentence-transformers keeps pip from fetching a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vidrec ingest --dataset movielens-small $(DEMO_DATA)

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py

# Re-resolve the environment and record it (run after changing dependencies in pyproject.toml).
lock:
	rm -rf /tmp/vidrec-lock && $(PYTHON) -m venv /tmp/vidrec-lock
	/tmp/vidrec-lock/bin/pip install --quiet --upgrade pip
	/tmp/vidrec-lock/bin/pip install --quiet torch==2.13.0 && /tmp/vidrec-lock/bin/pip install --quiet -e '.[dev]'
	(echo "# pip constraints: the resolved environment. Regenerate with 'make lock'."; \
	 /tmp/vidrec-lock/bin/pip freeze --exclude-editable | grep -v '^vidrec') > constraints.txt

clean:
	rm -rf .vidrec .pytest_cache
