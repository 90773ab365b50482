# One command each on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch's default 2 threads crawl when the other core is busy.
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml tested-versions.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch that pip finds on this machine's disk; install it before anything can pull another.
	$(PY) -m pip install -q torch==2.13.0
	# the framework versions the suite last passed against (see tested-versions.txt)
	$(PY) -m pip install -q -c tested-versions.txt -e '.[onnx,llm,report,dev]'
	touch $@

setup: $(VENV)/.installed

# The main job on the embedded rule engine, offline: watch a bundled script with a real bug.
demo: setup
	$(VENV)/bin/modeldebug run --json .modeldebug/demo-report.json -- $(PY) examples/forgot_zero_grad.py

# Two workers (the machines have 2 cores), each test file kept on one worker (module fixtures);
# then the fault suite alone: it runs two scripts at a time itself, and the monitor's adaptive
# sampling (a time budget) must not be starved by a second worker beside it.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --ignore=tests/faults/test_detection.py
	$(PY) -m pytest -q tests/faults/test_detection.py

# The overhead benchmark of issue 4 (about 10 minutes; `$(PY) benchmarks/overhead.py --quick` for 2).
bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	WANDB_MODE=offline $(PY) benchmarks/overhead.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .modeldebug build src/*.egg-info
