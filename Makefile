# The commands of the README: `make demo`, `make test` and `make test-fast`.
# Both create .venv on first use and install the project into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP := $(PY) -m pip install -q -c constraints-cpu.txt

.PHONY: demo demo-clips test test-fast lint typecheck unit unit-fast install clean bench

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	python3 -m venv $(VENV)
	$(PIP) "setuptools>=68" wheel
	# torch first: DeepSpeed's setup imports it, so it builds without isolation.
	$(PIP) torch==2.13.0 numpy
	$(PIP) --no-build-isolation -e '.[dev]'
	touch $(STAMP)

# The main job on the embedded default: long recordings generated here, ingested
# with `obs make-shards --from`, one label-free chronological pass, the
# word-referent score on held-out recordings (configs/demo_recordings.toml).
demo: $(STAMP)
	$(VENV)/bin/obs eval --task word-referent --config configs/demo_recordings.toml \
		--out runs/demo-recordings/result.json

# The labelled-clip demo of earlier versions (synthetic shards with query clips).
demo-clips: $(STAMP)
	$(VENV)/bin/obs train --config configs/demo.toml

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# One intra-op thread per process: tests start several ranks and services at
# once, and torch's default (every core in every process) oversubscribes.
# The 30 slowest tests are listed, so a CI log shows where its time went.
unit: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/pytest -q --durations=30

# Every test but the ones marked slow (over 30 s each, or an end-to-end run of
# several processes: SLURM, Prometheus, kill-and-resume, multi-rank); under 3
# minutes on 2 cores. CI runs `make test`, which runs them all.
unit-fast: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/pytest -q -m "not slow"

test: lint typecheck unit

test-fast: lint typecheck unit-fast

bench: $(STAMP)
	$(VENV)/bin/obs bench step --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
