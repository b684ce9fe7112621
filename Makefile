# The two commands: `make demo` (set up, then detect and report on bundled or fresh runs) and
# `make test` (set up, host included, then run the tests). Both start from a bare checkout.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= build/demo
REAL   := tests/fixtures/real
QEMU   := /usr/bin/qemu-system-x86_64

.PHONY: setup setup-host demo test bench bench-collector bench-import-qemu-log bench-import-ftrace bench-detect bench-report bench-fleet \
        bench-write-gate record-real clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Root only: bcc, kernel headers, QEMU, tracefs; bcc made importable in the venv.
setup-host: setup
	bash collectors/setup-host.sh $(VENV)

# A hand-written VFIO + balloon trace (no VFIO device exists on these machines), then real runs of
# QEMU 7.2: recorded fresh when this host can trace (root, bcc set up, QEMU), else the bundled ones.
demo: setup
	rm -rf $(DEMO) $(DEMO)-kvm-boot $(DEMO)-balloon $(DEMO)-qemu
	$(BIN)/vmemtrace import jsonl tests/fixtures/demo/vfio-balloon.jsonl --run $(DEMO)
	$(BIN)/vmemtrace detect $(DEMO) --fail-on none
	$(BIN)/vmemtrace report $(DEMO)
	@if [ "$$(id -u)" = 0 ] && [ -x $(QEMU) ] && $(BIN)/python -c 'import bcc' 2>/dev/null; then \
	  echo "demo: this host can trace: recording fresh runs of QEMU" && \
	  $(BIN)/vmemtrace collect --run $(DEMO)-kvm-boot -- $(BIN)/python -m tests.qemu_vm migrate $(DEMO)-qemu/kvm-boot && \
	  $(BIN)/vmemtrace import qemu-log $(DEMO)-qemu/kvm-boot/qemu-trace.log --run $(DEMO)-kvm-boot && \
	  $(BIN)/vmemtrace collect --run $(DEMO)-balloon -- $(BIN)/python -m tests.scenarios balloon $(DEMO)-qemu/balloon && \
	  $(BIN)/vmemtrace import qemu-log $(DEMO)-qemu/balloon/qemu-trace.log --run $(DEMO)-balloon; \
	else \
	  echo "demo: this host cannot trace (needs root, make setup-host, QEMU): using the bundled real runs" && \
	  cp -r $(REAL)/kvm-boot/run $(DEMO)-kvm-boot && cp -r $(REAL)/balloon/run $(DEMO)-balloon; \
	fi
	@for r in $(DEMO)-kvm-boot $(DEMO)-balloon; do \
	  $(BIN)/vmemtrace detect $$r --fail-on none && $(BIN)/vmemtrace report $$r || exit 1; done

test: setup-host
	$(BIN)/python -m pytest

# Benchmarks (BENCHMARKS.md): each one command from a clean checkout, its comparison in one go;
# pass a script's own options with ARGS="...". `make bench` runs them all (hours at the defaults).
bench: bench-collector bench-import-qemu-log bench-import-ftrace bench-detect bench-report bench-fleet bench-write-gate

bench-collector: setup-host   # root: vmemtrace, bpftrace, perf record, trace-cmd on one workload
	$(BIN)/python benchmarks/collector_throughput.py $(ARGS)

bench-import-qemu-log: setup
	$(BIN)/python benchmarks/import_qemu_log.py $(ARGS)

bench-import-ftrace: setup
	$(BIN)/python -m benchmarks.import_ftrace $(ARGS)

bench-detect: setup
	$(BIN)/python benchmarks/detect_scale.py $(ARGS)

bench-report: setup-host      # Chromium opens the page
	$(BIN)/python benchmarks/report_scale.py $(ARGS)

bench-fleet: setup
	$(BIN)/python benchmarks/fleet_detect.py $(ARGS)

bench-write-gate: setup
	$(BIN)/python benchmarks/write_gate.py $(ARGS)

# Re-record the bundled real runs (root, bcc, QEMU): eBPF collectors plus QEMU's own trace log.
record-real: setup-host
	rm -rf $(REAL) && mkdir -p $(REAL)
	$(BIN)/vmemtrace collect --run $(REAL)/kvm-boot/run -- $(BIN)/python -m tests.qemu_vm migrate $(REAL)/kvm-boot/qemu
	for s in balloon reporting hint; do \
	  $(BIN)/vmemtrace collect --run $(REAL)/$$s/run -- $(BIN)/python -m tests.scenarios $$s $(REAL)/$$s/qemu || exit 1; done
	for s in kvm-boot balloon reporting hint; do \
	  $(BIN)/vmemtrace import qemu-log $(REAL)/$$s/qemu/qemu-trace.log --run $(REAL)/$$s/run || exit 1; \
	  gzip -9 $(REAL)/$$s/qemu/qemu-trace.log; rm -f $(REAL)/$$s/qemu/qmp.sock; done

clean:
	rm -rf $(VENV) build .pytest_cache
