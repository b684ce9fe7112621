# The two commands: `make demo` (set up, then import, detect and report on a bundled trace) and
# `make test` (set up, host included, then run the tests). Both start from a bare checkout.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= build/demo

.PHONY: setup setup-host demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Root only: bcc, kernel headers, QEMU, tracefs; bcc made importable in the venv.
setup-host: setup
	bash collectors/setup-host.sh $(VENV)

demo: setup
	rm -rf $(DEMO)
	$(BIN)/vmemtrace import jsonl tests/fixtures/demo/vfio-balloon.jsonl --run $(DEMO)
	$(BIN)/vmemtrace detect $(DEMO) --fail-on none
	$(BIN)/vmemtrace report $(DEMO)

test: setup-host
	$(BIN)/python -m pytest

bench: setup-host
	$(BIN)/python benchmarks/collector_throughput.py

clean:
	rm -rf $(VENV) build .pytest_cache
