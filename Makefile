# Two entry points a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build for the demo and test environment; GPU users install their own.
TORCH ?= torch==2.13.0

.PHONY: demo test test-parallel lint bench venv chromium

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/activate
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"

demo: venv
	$(BIN)/tidemill run examples/digits_ddp/job.yaml

# tests/dashboard drive Debian's Chromium through Playwright
chromium:
	command -v chromium || (apt-get update && apt-get install -y chromium)

test: venv chromium
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy src
	$(BIN)/pytest -q --durations=30

# The tests alone, test files in parallel (pytest-xdist): one worker per CPU, at most 4, a
# file's tests on one worker in order, sharing their module and session fixtures. On this
# 2-core machine 17 minutes instead of 23-28: tests wait on processes, sockets and the broker
# more than they compute. Sharing the CPUs, tests that time real processes run slower; each
# that failed that way was a defect or a too-tight test and was fixed, but CI runs `test`.
test-parallel: venv chromium
	$(BIN)/pytest -q --numprocesses auto --maxprocesses 4 --dist loadfile

bench: venv
	$(BIN)/python benchmarks/api_throughput.py
	$(BIN)/python benchmarks/request_guards.py
	$(BIN)/python benchmarks/backlog.py
	$(BIN)/python benchmarks/job_list.py
	$(BIN)/python benchmarks/dashboard.py
	$(BIN)/python benchmarks/scheduler_throughput.py
	$(BIN)/python benchmarks/replica_start.py
	$(BIN)/python benchmarks/elastic.py
	$(BIN)/python benchmarks/data_throughput.py
	$(BIN)/python benchmarks/loader_throughput.py
	$(BIN)/python benchmarks/kubernetes.py
	$(BIN)/python benchmarks/object_sync.py
	$(BIN)/python benchmarks/checkpoint.py
	$(BIN)/python benchmarks/ps.py
	$(BIN)/python benchmarks/scheduler_sim.py
	$(BIN)/python benchmarks/metrics_report.py
