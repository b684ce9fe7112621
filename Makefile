# The two commands: `make demo` (set up, then import, detect and report on a bundled trace) and
# `make test` (set up, host included, then run the tests). Both start from a bare checkout.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= build/demo
REAL   := tests/fixtures/real/kvm-boot

.PHONY: setup setup-host demo test bench record-real clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Root only: bcc, kernel headers, QEMU, tracefs; bcc made importable in the venv.
setup-host: setup
	bash collectors/setup-host.sh $(VENV)

# A hand-written VFIO + balloon trace (no VFIO device exists on these machines), then the bundled
# real run of QEMU 7.2 under KVM booting SeaBIOS and migrating.
demo: setup
	rm -rf $(DEMO) $(DEMO)-real
	$(BIN)/vmemtrace import jsonl tests/fixtures/demo/vfio-balloon.jsonl --run $(DEMO)
	$(BIN)/vmemtrace detect $(DEMO) --fail-on none
	$(BIN)/vmemtrace report $(DEMO)
	cp -r $(REAL)/run $(DEMO)-real
	$(BIN)/vmemtrace detect $(DEMO)-real --fail-on none
	$(BIN)/vmemtrace report $(DEMO)-real

# Re-record the bundled real run (root, bcc, QEMU): eBPF collectors plus QEMU's own trace log.
record-real: setup-host
	rm -rf $(REAL) && mkdir -p $(REAL)
	$(BIN)/vmemtrace collect --run $(REAL)/run -- $(BIN)/python -m tests.qemu_vm migrate $(REAL)/qemu
	$(BIN)/vmemtrace import qemu-log $(REAL)/qemu/qemu-trace.log --run $(REAL)/run
	rm -f $(REAL)/qemu/qmp.sock

test: setup-host
	$(BIN)/python -m pytest

bench: setup-host
	$(BIN)/python benchmarks/collector_throughput.py

clean:
	rm -rf $(VENV) build .pytest_cache
