# Two commands: `make demo` (the main job on the bundled sample) and `make test` (the test suite).
# Both create .venv and install the project on first use; nothing else is needed beyond Python >= 3.10.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install lint chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m autoprompt.demo

test: $(STAMP) chromium
	$(PY) -m pytest -q

# The browser test drives Debian's Chromium through Playwright (Playwright cannot download its own browser).
chromium:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq chromium >/dev/null; }

lint: $(STAMP)
	$(VENV)/bin/ruff check autoprompt pipeline planners tests benchmarks
	$(VENV)/bin/ruff format --check autoprompt pipeline planners tests benchmarks
	$(VENV)/bin/lint-imports --no-cache
