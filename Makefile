# Parity: `make demo` starts the product with a demo; `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install services migrate models demo run test test-fast lint bench lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/constraints.txt scripts/install.sh
	bash scripts/install.sh
	@touch $@

services:
	bash scripts/services.sh

migrate: install services
	$(PY) manage.py migrate --noinput

models: install
	$(PY) -m workers.tiny_model --out var/models

demo: migrate models
	$(PY) manage.py demo_setup
	DEMO=1 bash scripts/run-all.sh

run: migrate
	bash scripts/run-all.sh

test: install services
	bash scripts/test-tools.sh
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check parity workers dashboard tests bench examples
	$(VENV)/bin/ruff format --check parity workers dashboard tests bench examples
	$(VENV)/bin/mypy parity workers
	$(VENV)/bin/lint-imports

MLFLOW_SERVER := var/mlflow-server

bench: install services $(MLFLOW_SERVER)/.installed
	$(PY) bench/bench_metrics.py
	$(PY) bench/bench_ingest.py --mlflow-venv $(MLFLOW_SERVER)
	$(PY) bench/bench_live.py
	$(PY) bench/bench_compare.py
	$(PY) bench/bench_mlflow.py --mlflow-venv $(MLFLOW_SERVER)
	$(PY) bench/bench_engines.py

# The MLflow tracking server the benchmarks compare against, in its own venv (see the file).
$(MLFLOW_SERVER)/.installed: requirements/mlflow-server.txt
	[ -x $(MLFLOW_SERVER)/bin/python ] || python3 -m venv $(MLFLOW_SERVER)
	$(MLFLOW_SERVER)/bin/python -m pip install -q -r requirements/mlflow-server.txt
	@touch $@

lock: install
	(echo "# Exact versions for the CPU install (make install). Regenerate: make lock"; \
	 $(PY) -m pip freeze --exclude-editable) > requirements/constraints.txt

clean:
	rm -rf $(VENV) var test-artifacts .pytest_cache
