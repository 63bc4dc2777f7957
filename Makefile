# Two entry points: `make demo` and `make test`. Each sets up everything it needs.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint sysdeps clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# System tools: iproute2 for namespaces; dig, kdig and knotd for interop tests.
sysdeps:
	@sh scripts/sysdeps.sh

demo: $(STAMP) sysdeps
	$(VENV)/bin/dnstfo lab demo --rtt 100ms

lint: $(STAMP)
	$(VENV)/bin/ruff check dnstfo tests bench
	$(VENV)/bin/ruff format --check dnstfo tests bench
	$(VENV)/bin/mypy

test: $(STAMP) sysdeps lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
