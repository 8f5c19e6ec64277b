# The two commands of the README: `make run` and `make test`. Both create .venv when missing
# and reinstall only when pyproject.toml changed, so a rerun is fast.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: run test test-stress lint format bench bench-full browser system-tools clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dashboard,postgres,agents]"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[test,postgres]"
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(PY) manage.py serve

# What the suite needs from the system: Debian's Chromium for the browser tests (Playwright never
# downloads a browser here), redis-server (built with TLS) and openssl for the TLS tests.
# Installed with apt when missing and running as root; otherwise named, and the run stops.
SYSTEM_TOOLS := /usr/bin/chromium:chromium redis-server:redis-server openssl:openssl
system-tools:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  tool=$${pair%%:*}; package=$${pair##*:}; \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "Installing$$missing for the test suite"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "error: the test suite needs$$missing; install with: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

browser: system-tools

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(VENV)/.installed-test system-tools lint
	$(BIN)/pytest $(PYTEST_ARGS)

# Hunt flakes: N rounds of the suite (or a part), under load; each failure with its seed.
# e.g. make test-stress STRESS="--runs 3 --load 1 --beside -- tests/core tests/web"
STRESS ?= --runs 5 --load 1
test-stress: $(VENV)/.installed-test system-tools
	$(PY) -m tests.stress $(STRESS)

bench: $(VENV)/.installed-test
	-$(PY) -m pip install --quiet --no-deps redis-openai-agents  # upstream, for the comparison row
	$(PY) -m benchmarks

bench-full: $(VENV)/.installed-test
	-$(PY) -m pip install --quiet --no-deps redis-openai-agents
	$(PY) -m benchmarks --full

clean:
	rm -rf $(VENV) var .pytest_cache
