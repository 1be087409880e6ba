PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Two stamps: serving needs only the package; tests add the test extras. Either target can follow the other.
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test test-postgres install clean bench

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "python3.11 not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(SERVE_STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $(SERVE_STAMP)

$(TEST_STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

install: $(SERVE_STAMP)

# Binds 127.0.0.1:8080 unless HOST/PORT say otherwise (see gunicorn.conf.py).
run: $(SERVE_STAMP)
	$(BIN)/gunicorn -c gunicorn.conf.py

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

# The same suite on a throwaway PostgreSQL cluster (tests/pgcluster.py; needs Debian's postgresql package).
test-postgres: $(TEST_STAMP)
	WEBUI_TEST_DATABASE=postgres $(BIN)/python -m pytest

bench: $(TEST_STAMP)
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/rag_ingest.py

clean:
	rm -rf $(VENV) build *.egg-info
