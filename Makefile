# The two commands a newcomer needs: `make run` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Never pick up a parent run by accident (see tlearn.tracking).
unexport MLFLOW_RUN_ID

.PHONY: run test test-slow bench ui tune-ui postgres clean help

help:
	@echo "make run        build .venv, then the DVC pipeline on params.yaml as one MLflow run (tlearn run)"
	@echo "make test       build .venv, then the test suite (what CI runs)"
	@echo "make test-slow  the tests marked slow (building the four largest Keras backbones)"
	@echo "make bench      throughput and memory figures, printed"
	@echo "make ui         mlflow ui on 127.0.0.1:$(UI_PORT) against the project's store (UI_PORT=...)"
	@echo "make tune-ui    optuna-dashboard on 127.0.0.1:$(TUNE_UI_PORT) against tune.storage (TUNE_UI_PORT=...)"

$(STAMP): requirements.lock pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# One pipeline execution = one MLflow parent run; the stages DVC runs nest under it.
# Extra arguments: make run ARGS="-S head.dropout=0.2" (then it is a `dvc exp run`).
run: $(STAMP)
	$(BIN)/tlearn run $(ARGS)

test: $(STAMP) postgres
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow" -q

bench: $(STAMP)
	$(BIN)/python -m tlearn.bench

# The embedded store (sqlite:///mlflow.db, artifacts in mlartifacts/) or the database
# MLFLOW_TRACKING_URI names; a tracking server has its own UI.
UI_PORT ?= 5000
ui: $(STAMP)
	@case "$${MLFLOW_TRACKING_URI:-}" in http://*|https://*) \
		echo "MLFLOW_TRACKING_URI=$$MLFLOW_TRACKING_URI is a tracking server: open it in a browser"; exit 0;; esac; \
	echo "mlflow ui: http://127.0.0.1:$(UI_PORT)"; \
	exec $(BIN)/mlflow ui --host 127.0.0.1 --port $(UI_PORT) --workers 1 \
		--backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" --artifacts-destination ./mlartifacts

# optuna-dashboard on the study storage params.yaml names (tune.storage): the Optuna
# counterpart of `make ui`.
TUNE_UI_PORT ?= 8080
tune-ui: $(STAMP)
	@storage=$$($(BIN)/python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['tune']['storage'])"); \
	case "$$storage" in *://*) ;; *) test -f "$$storage" || { \
		echo "no study yet in $$storage: make run (or tlearn tune) makes one"; exit 2; };; esac; \
	echo "optuna-dashboard: http://127.0.0.1:$(TUNE_UI_PORT)"; \
	exec $(BIN)/optuna-dashboard --host 127.0.0.1 --port $(TUNE_UI_PORT) "$$storage"

# A test runs tuning workers on a private PostgreSQL cluster (initdb, pg_ctl from Debian's
# postgresql package): as root, install the package when it is missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -q && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
		else echo "postgresql is not installed (not root): its test is skipped"; fi; }

clean:
	rm -rf data models reports/*.png .pytest_cache
