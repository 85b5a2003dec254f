# The two commands a newcomer needs: `make run` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Never pick up a parent run by accident (see tlearn.tracking).
unexport MLFLOW_RUN_ID

.PHONY: run test test-slow bench ui tune retrain clean help

help:
	@echo "make run        build .venv, then run the DVC pipeline on params.yaml (dvc repro)"
	@echo "make test       build .venv, then the test suite (what CI runs)"
	@echo "make test-slow  the tests marked slow (real data, long training)"
	@echo "make bench      throughput and memory figures, printed"
	@echo "make ui         mlflow ui on 127.0.0.1:5000 against the project's store"

$(STAMP): requirements.lock pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow" -q

bench: $(STAMP)
	$(BIN)/python -m tlearn.bench

ui: $(STAMP)
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --workers 1 \
		--backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} --artifacts-destination ./mlartifacts

clean:
	rm -rf data models reports/*.png .pytest_cache
