# protego_nb: one entry point. `make reproduce` runs the study, `make test` runs the tests.
# Both set up (or refresh) the virtual environment and the registry-shipped model assets first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
# LFW location: $PROTEGO_DATA_DIR if set, else ../shared/data next to the checkout.
export PROTEGO_DATA_DIR ?= $(abspath $(CURDIR)/../shared/data)
export PYTHONUNBUFFERED := 1

STAMP := $(VENV)/.installed
ASSETS_STAMP := $(VENV)/.assets

.PHONY: setup assets reproduce full ci-profile test test-fast bench lint strip clean-outputs help results

help:
	@echo "make reproduce   # set up, then run every notebook with the default profile (10 users; not yet timed in full on a 2-core CPU: see README)"
	@echo "make test        # set up, then run the tests (unit tests + every notebook with the ci profile)"
	@echo "make full        # paper-scale profile (hours on a CPU, minutes on a GPU)"
	@echo "make test-fast   # unit tests only (no notebooks)"
	@echo "make bench       # speed benchmarks -> papermill_runs/bench/*.json"
	@echo "make results     # regenerate data/results/default/ tables + README results from the committed run JSON"
	@echo "                 # (FROM=papermill_runs/default/results imports a finished run's JSON first)"

$(STAMP): pyproject.toml requirements-nodeps.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-nodeps.txt
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(PY) scripts/check_env.py
	@touch $@

$(ASSETS_STAMP): $(STAMP) protego_nb/assets.py
	$(PY) -m protego_nb.assets fetch
	@touch $@

setup: $(STAMP) $(ASSETS_STAMP)

assets: $(STAMP)
	$(PY) -m protego_nb.assets fetch

reproduce: setup
	$(PY) -m protego_nb.run --profile $(PROFILE)

full: setup
	$(PY) -m protego_nb.run --profile full

ci-profile: setup
	$(PY) -m protego_nb.run --profile ci

test: setup
	$(PY) -m pytest -q -ra --durations=15

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow"

BENCH := papermill_runs/bench
bench: setup
	@mkdir -p $(BENCH)
	$(PY) benchmarks/bench_zoo.py --repeats 3 --out $(BENCH)/zoo.json
	$(PY) benchmarks/bench_uv.py --n 64 --batches 1 8 32 --repeats 5 --json $(BENCH)/uv.json
	$(PY) benchmarks/bench_train.py --steps 3 --out $(BENCH)/train.json
	$(PY) benchmarks/bench_protect.py --photos 10 --frames 100 --detect-every 1 10 --out $(BENCH)/protect.json
	$(PY) benchmarks/bench_canvases.py --limit 500 --fresh-cache --no-progress --out $(BENCH)/canvases_500_cold.json

results: $(STAMP)
	$(PY) scripts/make_results.py $(if $(FROM),--from $(FROM))

lint: setup
	$(VENV)/bin/ruff check protego_nb tests scripts benchmarks notebooks

strip:
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb  # keep cell ids: small diffs

clean-outputs:
	rm -rf figures/*/ papermill_runs/*/
