# vidrec: `make demo` runs the main job, `make test` the whole suite. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo ui serve lint secrets test test-fast bench wrk lock clean

install: $(STAMP)

# torch first, pinned: on these machines that version is a CPU build on local disk, and installing it
# before sentence-transformers keeps pip from fetching a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(MAKE) --no-print-directory browser
	touch $(STAMP)

# The browser of the UI tests (tests/test_ui_browser.py): Debian's Chromium and ChromeDriver.
# Without root or apt those tests are skipped, and say why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q chromium chromium-driver >/dev/null || echo "could not install chromium: the browser tests will be skipped"; \
	else echo "chromium + chromium-driver missing (install them as root): the browser tests will be skipped"; fi

# The main job: Airflow on SQLite (.vidrec/airflow), the three DAGs in order with `airflow dags test`
# on ml-latest-small (../shared/datasets/ml-latest-small when present, else downloaded), then the
# BentoML service on the champion answers a few users (scripts/demo.py; stage timings at the end).
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# Airflow standalone and the MLflow server on localhost (scripts/ui.sh; Ctrl-C stops both).
ui: $(STAMP)
	BIN=$(CURDIR)/$(BIN) scripts/ui.sh

# The BentoML service on the `champion` models of the MLflow registry (train one first: make demo).
serve: $(STAMP)
	@echo "the web page: http://127.0.0.1:3000/ui"
	$(BIN)/vidrec serve --host 127.0.0.1 --port 3000

# Lint and format (ruff), and imports pointing down the layers (import-linter; pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(MAKE) --no-print-directory secrets

# Secret scan of every tracked file (Yelp's detect-secrets); a false positive gets an inline
# `# pragma: allowlist secret` with the reason.
secrets: $(STAMP)
	git ls-files -z | xargs -0 $(BIN)/detect-secrets-hook  # pragma: allowlist secret

# Two pytest-xdist workers, a test file each at a time (--dist loadfile): a module's fixtures and
# servers stay in one process, and tests/services.py gives every test its own PostgreSQL database
# and Redis db number. Most of the long tests wait on servers and subprocesses, so two workers halve
# the suite even on 2 cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

# The unit layer only: no servers, no end-to-end jobs.
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not integration and not slow"

bench: $(STAMP) wrk
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_features.py
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_serving.py --online-store redis
	$(BIN)/python benchmarks/bench_redis.py
	$(BIN)/python benchmarks/bench_scale.py

# The load generator of the serving benchmark (Debian's wrk): a C client leaves the CPU to the
# servers under test; without it bench_serving.py falls back to a Python client, and says so.
wrk:
	@if command -v wrk >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q wrk >/dev/null || echo "could not install wrk: bench_serving.py uses its Python client"; \
	else echo "wrk missing (apt-get install wrk as root): bench_serving.py uses its Python client"; fi

# Re-resolve the environment and record it (run after changing dependencies in pyproject.toml).
lock:
	rm -rf /tmp/vidrec-lock && $(PYTHON) -m venv /tmp/vidrec-lock
	/tmp/vidrec-lock/bin/pip install --quiet --upgrade pip
	/tmp/vidrec-lock/bin/pip install --quiet torch==2.13.0 && /tmp/vidrec-lock/bin/pip install --quiet -e '.[dev]'
	(echo "# pip constraints: the resolved environment. Regenerate with 'make lock'."; \
	 /tmp/vidrec-lock/bin/pip freeze --exclude-editable | grep -v '^vidrec') > constraints.txt

clean:
	rm -rf .vidrec .pytest_cache
