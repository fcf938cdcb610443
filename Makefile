# Quick start: `make run` (set up, then segment the demo customers) and `make test` (set up, then test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_CUSTOMERS ?= 20000

.PHONY: setup run test bench lint dist clean

$(BIN)/activate:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "segspark needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependencies change.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/activate
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# A second environment on the Spark 3.5 line, which most managed platforms still run.
VENV35 ?= .venv-spark35
$(VENV35)/.installed: pyproject.toml constraints-spark35.txt
	$(PYTHON) -m venv $(VENV35)
	$(VENV35)/bin/python -m pip install --quiet --upgrade pip
	$(VENV35)/bin/python -m pip install --quiet -c constraints-spark35.txt -e '.[test]'
	touch $@

data/demo/customers.parquet: | $(VENV)/.installed
	$(BIN)/segspark generate --customers $(DEMO_CUSTOMERS) --out data/demo --seed 7

run: setup data/demo/customers.parquet
	$(BIN)/segspark run --config conf/local.yaml

# The whole suite on pyspark 4.x, then the end-to-end tests (job, CLI, spark-submit, local-cluster)
# on pyspark 3.5.
test: setup $(VENV35)/.installed
	$(BIN)/python -m pytest
	$(VENV35)/bin/python -m pytest tests/test_job.py tests/test_cli.py \
		tests/test_cluster.py::test_local_cluster_run_matches_the_local_run

# segspark against scikit-learn at 1M customers (BENCH_SIZES="1000000 10000000" for the 10M run)
BENCH_SIZES ?= 1000000
bench: setup
	$(BIN)/python scripts/bench.py --sizes $(BENCH_SIZES)

# What a cluster needs: the wheel (for the driver's environment) and dist/segspark.zip for --py-files.
dist: setup
	rm -rf dist
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .
	$(BIN)/python scripts/build_zip.py dist/segspark.zip

lint: setup
	$(BIN)/ruff check segspark jobs scripts tests
	$(BIN)/ruff format --check segspark jobs scripts tests

clean:
	rm -rf $(VENV) $(VENV35) data lake bench-data build dist .cluster *.egg-info .pytest_cache
