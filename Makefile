# Two commands matter: `make run` and `make test`. Both install what they need first.

VENV        ?= .venv
PYTHON      ?= python3
BIN         := $(VENV)/bin
# Debian packages: PostgreSQL for the store's tests, wrk for the benchmarks, curl, jq and
# openssl for the README walk-through and the TLS test; bubblewrap and libseccomp2 for
# the sandboxes; runsc (gVisor) for the `gvisor` backend; gcc and libc6-dev to build the
# static in-sandbox agent; python3-numpy so the built-in `host` image runs seed 004's
# workflow example.
APT_PACKAGES := postgresql wrk curl jq openssl bubblewrap libseccomp2 runsc gcc libc6-dev python3-numpy

.PHONY: install system-packages run test lint typecheck proof bench clean

install: system-packages $(VENV)/.installed

system-packages:
	@scripts/apt-ensure $(APT_PACKAGES)
	@scripts/ensure-sandbox-user

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m stockade.sandbox.native
	touch $@

run: install
	$(BIN)/stockade daemon

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

# The whole suite, against SQLite and a throw-away PostgreSQL cluster on 127.0.0.1.
test: lint typecheck
	scripts/with-postgres $(BIN)/python -m pytest $(PYTEST_ARGS)

# Issue 7's crash loop in full: 100 iterations of work, kill -9 and restart on each store
# (`make test` runs 10). Prints the counts: iterations, kills, checks, violations.
STOCKADE_PROOF_ITERATIONS ?= 100
proof: install
	STOCKADE_PROOF_ITERATIONS=$(STOCKADE_PROOF_ITERATIONS) scripts/with-postgres \
		$(BIN)/python -m pytest -s tests/system/test_crash_loop.py

bench: install
	$(BIN)/python bench/api.py
	$(BIN)/python bench/sandbox.py
	$(BIN)/python bench/approvals.py
	$(BIN)/python bench/jobs.py
	$(BIN)/python bench/load.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
