# The two commands a newcomer needs: `make run` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Never pick up a parent run by accident (see tlearn.tracking).
unexport MLFLOW_RUN_ID

.PHONY: run test test-slow bench bench-race ui tune-ui serve plots-template clean help

help:
	@echo "make run        build .venv, then the DVC pipeline on params.yaml as one MLflow run (tlearn run)"
	@echo "make test       build .venv, then the test suite (what CI runs)"
	@echo "make test-slow  the tests marked slow (largest backbones, photos preset end to end, retrain scenarios)"
	@echo "make bench      speed, memory and scale figures, printed and in reports/bench.json"
	@echo "make bench-race tlearn against the plain Keras recipe (the recipe alone: ~18 min)"
	@echo "make ui         mlflow ui on 127.0.0.1:$(UI_PORT) against the project's store (UI_PORT=...)"
	@echo "make tune-ui    optuna-dashboard on 127.0.0.1:$(TUNE_UI_PORT) against tune.storage (TUNE_UI_PORT=...)"
	@echo "make serve      mlflow models serve $(SERVE_MODEL) on 127.0.0.1:$(SERVE_PORT) (raw images in; SERVE_PORT=...)"
	@echo "make plots-template  rebuild .dvc/plots_template.html (Vega inlined) from the pinned npm packages"

$(STAMP): requirements.lock pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# One pipeline execution = one MLflow parent run; the stages DVC runs nest under it.
# Extra arguments: make run ARGS="-S head.dropout=0.2" (then it is a `dvc exp run`).
run: $(STAMP)
	$(BIN)/tlearn run $(ARGS)

# Debian packages some tests need (chromium, postgresql, Qt's libraries), installed once
# when missing (as root).
test: $(STAMP)
	bash tools/install_test_packages.sh
	$(BIN)/python -m pytest -m "not slow" -q --durations=15

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

# The registered model behind an alias as a REST service; it takes raw JPEG/PNG (base64)
# or prepared tensors (README "Serving"). make serve SERVE_MODEL=models:/tlearn@challenger
SERVE_PORT ?= 5001
SERVE_MODEL ?= models:/tlearn@champion
serve: $(STAMP)
	@echo "mlflow models serve $(SERVE_MODEL): http://127.0.0.1:$(SERVE_PORT)/invocations"
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" exec $(BIN)/mlflow models \
		serve -m "$(SERVE_MODEL)" --env-manager local --host 127.0.0.1 --port $(SERVE_PORT) --workers 1

# `dvc plots show` loads Vega from .dvc/plots_template.html (inlined, offline); this
# rebuilds it from the npm packages pinned in the script. Needs npm; not part of run/test.
plots-template:
	python3 tools/build_plots_template.py

# optuna-dashboard on the study storage params.yaml names (tune.storage): the Optuna
# counterpart of `make ui`.
TUNE_UI_PORT ?= 8080
tune-ui: $(STAMP)
	@storage=$$($(BIN)/python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['tune']['storage'])"); \
	case "$$storage" in *://*) ;; *) test -f "$$storage" || { \
		echo "no study yet in $$storage: make run (or tlearn tune) makes one"; exit 2; };; esac; \
	echo "optuna-dashboard: http://127.0.0.1:$(TUNE_UI_PORT)"; \
	exec $(BIN)/optuna-dashboard --host 127.0.0.1 --port $(TUNE_UI_PORT) "$$storage"


clean:
	rm -rf data models reports/*.png .pytest_cache
