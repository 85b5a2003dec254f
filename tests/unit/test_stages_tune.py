"""The tune stage in-process (``tlearn tune``) on tiny features with the embedded MLflow
store: real trials (complete, pruned, failed) in Optuna and as nested MLflow runs, the
best head written for train_head, resuming, ``n_trials: 0`` passing the head through, and
a study where every trial fails exiting 2 with one line."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import yaml
from PIL import Image

from conftest import feature_blobs, tune_inputs
from tlearn import config, features, paths, tune
from tlearn.cli import main
from tlearn.stages import tune as tune_stage

pytestmark = pytest.mark.usefixtures("clean_tracking_env")


@pytest.fixture
def tiny(project, monkeypatch):
    """A project with tiny cached features, tuned on val_loss, learning rates up to 0.5."""
    tune_inputs(project, tune={"n_trials": 5, "metric": "val_loss", "pruner": "median",
                               "space": {"learning_rate": [0.00001, 0.5]}})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    return project


def study_of(project) -> optuna.Study:
    cfg = config.load(project / "params.yaml")
    data = tune_stage._load_data()  # noqa: SLF001
    name = tune.study_name(tune.features_digest(data), cfg.tune.space, cfg.head,
                           cfg.tune.metric, cfg.base.seed)
    return optuna.create_study(study_name=name, storage=tune.open_storage(cfg.tune.storage),
                               direction="minimize", load_if_exists=True)


@pytest.mark.filterwarnings("ignore:Fixed parameter dropout with value 1.5")
def test_trials_complete_prune_and_fail_in_optuna_and_mlflow(tiny):
    import mlflow

    study = study_of(tiny)
    good = {"layers": 0, "dropout": 0.0, "learning_rate": 0.3}
    for params in (good, good, good,
                   good | {"learning_rate": 0.00001},               # far behind at epoch 2
                   {"layers": 1, "units_0": 32, "dropout": 1.5, "learning_rate": 0.3}):  # Keras refuses
        study.enqueue_trial(params, skip_if_exists=False)
    assert main(["tune"]) == 0

    trials = study_of(tiny).get_trials()
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    assert trials[3].last_step == 2  # stopped at the first epoch the pruner may judge
    assert "ValueError" in trials[4].user_attrs[tune.ERROR]
    report = json.loads((tiny / "reports/tune.json").read_text())
    assert (report["complete"], report["pruned"], report["failed"], report["trials"],
            report["ran"]) == (3, 1, 1, 5, 5)
    best = min(trials[:3], key=lambda t: t.value)
    assert report["best_value"] == pytest.approx(best.value) and report["best_params"] == good
    assert report["best_value"] < 0.2 and report["metric"] == "val_loss"

    # The best head for train_head: the tuned keys, the rest params.yaml's.
    head = config.load(tiny / "params.yaml", params_files={paths.HEAD_PARAMS: ("head",)}).head
    params_yaml = config.load(tiny / "params.yaml").head
    assert (head.units, head.dropout, head.learning_rate) == ([], 0.0, 0.3)
    assert (head.epochs, head.optimizer, head.batch_size) == (6, params_yaml.optimizer, 16)
    assert "trial 0: val_loss" in paths.HEAD_PARAMS.read_text().splitlines()[0]
    rows = (tiny / "reports/tune_trials.csv").read_text().splitlines()
    assert rows[0].startswith("number,state,value,params_dropout") and len(rows) == 6
    assert "duration" not in rows[0] and "worker" not in rows[0]  # the same bytes on a rerun
    for figure in tune_stage.FIGURES.values():
        assert Image.open(tiny / figure).size[0] > 300

    # MLflow: the tune run with the best params, a nested run per trial with its state.
    client = mlflow.MlflowClient(f"sqlite:///{tiny / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tlearn").experiment_id
    (run,) = client.search_runs([exp], filter_string="tags.stage = 'tune' and "
                                                     "attributes.run_name = 'tune'")
    assert run.data.params["best.units"] == "[]" and run.data.params["best.learning_rate"] == "0.3"
    assert run.data.params["study"] == study.study_name and run.data.params["tune.n_trials"] == "5"
    assert run.data.metrics["tune.best_value"] == pytest.approx(best.value)
    assert {"reports/tune_trials.csv", "reports/tune_history.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    nested = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = "
                                                     f"'{run.info.run_id}'")
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in nested}
    assert sorted(by_trial) == [0, 1, 2, 3, 4]
    for trial in trials:
        child = by_trial[trial.number]
        assert child.data.tags["optuna.state"] == trial.state.name
        assert child.info.status == ("FAILED" if trial.state.name == "FAIL" else "FINISHED")
        assert child.data.params["head.learning_rate"] == str(trial.params["learning_rate"])
    steps = lambda n: [m.step for m in client.get_metric_history(  # noqa: E731
        by_trial[n].info.run_id, "head/val_loss")]
    assert steps(0) == [1, 2, 3, 4, 5, 6] and steps(3) == [1, 2]  # pruned after epoch 2
    assert by_trial[0].data.metrics["value"] == pytest.approx(trials[0].value)
    assert by_trial[4].data.tags["error"] == trials[4].user_attrs[tune.ERROR]

    # A rerun resumes the full study: nothing to train; one more trial when raised to 6.
    assert main(["tune"]) == 0
    assert json.loads((tiny / "reports/tune.json").read_text())["ran"] == 0
    assert main(["tune", "-S", "tune.n_trials=6"]) == 0
    assert json.loads((tiny / "reports/tune.json").read_text())["ran"] == 1
    assert len(study_of(tiny).get_trials()) == 6


def test_changed_features_start_a_new_study(tiny):
    storage = tune.open_storage("optuna/journal.log")
    assert main(["tune", "-S", "tune.n_trials=1"]) == 0
    first = json.loads((tiny / "reports/tune.json").read_text())["study"]
    validation = features.load("validation")
    features.save(features.feature_folder("validation"),
                  features.FeatureSet(validation.x + np.float32(0.01), validation.y))
    assert main(["tune", "-S", "tune.n_trials=1"]) == 0
    second = json.loads((tiny / "reports/tune.json").read_text())["study"]
    assert first.split("-")[1] != second.split("-")[1]  # the data part of the name
    assert first.split("-")[2] == second.split("-")[2]  # the same objective
    assert {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)} == {
        first: 1, second: 1}


def test_no_trials_passes_params_yaml_s_head_through(tiny):
    assert main(["tune", "-S", "tune.n_trials=0"]) == 0
    written = yaml.safe_load(paths.HEAD_PARAMS.read_text())
    assert written == {"head": yaml.safe_load((tiny / "params.yaml").read_text())["head"]}
    assert config.load(tiny / "params.yaml", params_files={paths.HEAD_PARAMS: ("head",)}) \
        == config.load(tiny / "params.yaml")  # what train_head trains: exactly params.yaml's
    report = json.loads((tiny / "reports/tune.json").read_text())
    assert (report["trials"], report["ran"], report["study"]) == (0, 0, None)
    assert (tiny / "reports/tune_trials.csv").read_text() == "number,state,value\n"
    assert not (tiny / "optuna").exists()  # no study, no storage


def test_every_trial_failing_exits_2_with_one_line_and_writes_nothing(tiny, capsys):
    broken = feature_blobs(10, 0)
    features.save(features.feature_folder("train"), features.FeatureSet(
        np.full_like(broken.x, np.nan), broken.y))
    # No hidden layer: oneDNN's ReLU turns NaN into 0 on some CPUs, so a hidden layer would
    # hide the NaN features and train a finite, useless head.
    assert main(["tune", "-S", "tune.n_trials=2", "-S", "tune.space.layers=[0, 0]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tune: no trial of study head-")
    assert "(2 trials); the most common error (2x): FloatingPointError: training diverged " \
           "at epoch 1 (loss nan" in err[0]
    assert not paths.HEAD_PARAMS.exists() and not (tiny / "reports/tune.json").exists()
    assert main(["tune", "--workers", "0"]) == 2
    assert capsys.readouterr().err == "tlearn tune: --workers must be >= 1 (got 0)\n"
