# The two commands a newcomer needs: `make run` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Never pick up a parent run by accident (see tlearn.tracking).
unexport MLFLOW_RUN_ID

.PHONY: run test test-slow bench bench-race ui clean help

help:
	@echo "make run        build .venv, then the DVC pipeline on params.yaml as one MLflow run (tlearn run)"
	@echo "make test       build .venv, then the test suite (what CI runs)"
	@echo "make test-slow  the tests marked slow (building the four largest Keras backbones)"
	@echo "make bench      speed, memory and scale figures, printed and in reports/bench.json"
	@echo "make bench-race tlearn against the plain Keras recipe (the recipe alone: ~30 min)"
	@echo "make ui         mlflow ui on 127.0.0.1:$(UI_PORT) against the project's store (UI_PORT=...)"

$(STAMP): requirements.lock pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# One pipeline execution = one MLflow parent run; the stages DVC runs nest under it.
# Extra arguments: make run ARGS="-S head.dropout=0.2" (then it is a `dvc exp run`).
run: $(STAMP)
	$(BIN)/tlearn run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow" -q

bench: $(STAMP)
	$(BIN)/python -m tlearn.bench

bench-race: $(STAMP)
	$(BIN)/python -m tlearn.bench race

# The embedded store (sqlite:///mlflow.db, artifacts in mlartifacts/) or the database
# MLFLOW_TRACKING_URI names; a tracking server has its own UI.
UI_PORT ?= 5000
ui: $(STAMP)
	@case "$${MLFLOW_TRACKING_URI:-}" in http://*|https://*) \
		echo "MLFLOW_TRACKING_URI=$$MLFLOW_TRACKING_URI is a tracking server: open it in a browser"; exit 0;; esac; \
	echo "mlflow ui: http://127.0.0.1:$(UI_PORT)"; \
	exec $(BIN)/mlflow ui --host 127.0.0.1 --port $(UI_PORT) --workers 1 \
		--backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" --artifacts-destination ./mlartifacts

clean:
	rm -rf data models reports/*.png .pytest_cache
