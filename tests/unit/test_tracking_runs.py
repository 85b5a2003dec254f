"""tlearn.tracking.runs on an embedded store: names and values, stage runs, and the
grouping of one pipeline execution's stages under one pipeline run."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from conftest import REPO, image_folder
from tlearn import config, paths, stages
from tlearn.cli import main
from tlearn.tracking import records, runs, store

pytestmark = pytest.mark.usefixtures("clean_tracking_env")


# --- names --------------------------------------------------------------------------

def test_metric_names_are_stable_and_prefixed():
    assert stages.get("evaluate").metric_name("accuracy") == "test/accuracy"
    assert stages.get("evaluate").metric_name("head_accuracy") == "test/head_accuracy"
    assert stages.get("finetune").metric_name("val_accuracy") == "finetune.val_accuracy"
    assert stages.get("features").metric_name("images_per_second") == \
        "features.images_per_second"


def test_numeric_items_keep_only_finite_numbers():
    values = {"a": 1, "b": 0.5, "c": True, "d": "x", "e": [1], "f": {"g": 1}, "h": float("nan")}
    assert records.numeric_items(values) == {"a": 1.0, "b": 0.5}


def test_param_values_read_like_params_yaml():
    assert records.param_value([256, 128]) == "[256, 128]"
    assert records.param_value(0.3) == "0.3"
    assert records.param_value(None) == "None"
    assert records.param_value("crop") == "crop"


def test_history_metrics_keep_the_global_epoch_as_step():
    head = [{"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 0.9, "val_accuracy": 0.6},
            {"epoch": 2, "loss": 0.8, "accuracy": 0.7, "val_loss": 0.7, "val_accuracy": 0.8}]
    fine = [{"epoch": 3, "loss": 0.5, "accuracy": 0.9, "val_loss": 0.4, "val_accuracy": 0.95}]
    rows = records.history_metrics("head", head) + records.history_metrics("finetune", fine)
    assert ("head/val_accuracy", 0.6, 1) in rows and ("head/val_accuracy", 0.8, 2) in rows
    assert ("finetune/val_accuracy", 0.95, 3) in rows
    assert {name for name, _, _ in rows} == {f"{p}/{m}" for p in ("head", "finetune")
                                             for m in ("loss", "accuracy", "val_loss",
                                                       "val_accuracy")}
    assert len(rows) == 12


def test_stage_params_are_the_keys_the_stage_declares():
    cfg = config.load(REPO / "params.yaml")
    flat = config.to_flat_dict(cfg)
    finetune = records.stage_params(cfg, stages.get("finetune"))
    assert {"finetune.learning_rate", "finetune.unfreeze", "augment.rotation",
            "augment.horizontal_flip", "head.optimizer", "base.seed", "preset"} <= set(finetune)
    assert "head.dropout" not in finetune and "head.units" not in finetune
    assert set(records.stage_params(cfg, stages.get("train_head"))) == \
        {"base.seed"} | {k for k in flat if k.startswith("head.")}
    assert set(records.stage_params(cfg, stages.get("evaluate"))) == {
        "evaluate.misclassified", "evaluate.tta", "preset"}  # the values used, preset's too
    assert "prepare.split.validation" in records.stage_params(cfg, stages.get("prepare"))


# --- stage runs -------------------------------------------------------------------------

@pytest.fixture
def source(tmp_path):
    image_folder(tmp_path / "src", {"a": 8, "b": 8}, size=(16, 16))
    return tmp_path / "src"


@pytest.fixture
def client(embedded, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", embedded.uri)
    connected = store.connect(embedded, "tlearn")
    return mlflow.MlflowClient(embedded.uri), connected.experiment_id


def stage_runs(client, exp_id, stage):
    return client.search_runs([exp_id], filter_string=f"tags.stage = '{stage}'",
                              order_by=["attributes.start_time DESC"])


def test_a_stage_alone_is_a_top_level_run_and_a_stray_run_id_captures_nothing(
        client, source, monkeypatch):
    client, exp_id = client
    stray = client.create_run(exp_id, run_name="stray")
    client.set_terminated(stray.info.run_id)
    monkeypatch.setenv("MLFLOW_RUN_ID", stray.info.run_id)

    assert main(["download", "-S", f"data.source={source}"]) == 0
    (run,) = stage_runs(client, exp_id, "download")
    assert run.info.run_id != stray.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == "download"
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.params["data.source"] == str(source)
    assert set(run.data.params) == {"data.source", "data.sha256", "data.max_expansion",
                                    "data.max_extracted_mb"}
    assert run.data.metrics == {"download.n_files": 16.0, "download.n_classes": 2.0,
                                "download.linked": 16.0, "download.copied": 0.0}
    assert len(run.data.tags["data.sha256"]) == 64
    assert [a.path for a in client.list_artifacts(run.info.run_id, "data/raw")] == [
        "data/raw/manifest.json"]
    untouched = client.get_run(stray.info.run_id)
    assert untouched.data.params == {} and untouched.data.metrics == {}
    assert stage_runs(client, exp_id, runs.PIPELINE) == []


def test_stages_of_one_execution_share_one_pipeline_run(client, source, monkeypatch):
    """Two stages with one invocation nest under one pipeline run, made by the first, with
    every params.yaml key; it ends FINISHED after each stage and is reopened by the next.
    Another invocation is another pipeline run, holding the final metrics of the stages
    upstream of its first stage, which it did not run."""
    client, exp_id = client
    monkeypatch.setenv(store.ENV_INVOCATION, "run-one")
    assert main(["download", "-S", f"data.source={source}"]) == 0
    (pipeline,) = stage_runs(client, exp_id, runs.PIPELINE)
    assert pipeline.info.status == "FINISHED"
    assert main(["prepare", "-S", f"data.source={source}", "-S", "prepare.image_size=32"]) == 0
    (pipeline,) = stage_runs(client, exp_id, runs.PIPELINE)
    assert pipeline.info.status == "FINISHED"
    assert pipeline.data.tags[runs.STAGES_TAG] == "download,prepare"
    assert pipeline.data.params["data.source"] == str(source)
    assert set(pipeline.data.params) == set(config.to_flat_dict(config.load("params.yaml")))
    assert pipeline.data.metrics["download.n_files"] == 16.0
    assert pipeline.data.metrics["prepare.n_images"] == 16.0
    children = client.search_runs(
        [exp_id], filter_string=f"tags.mlflow.parentRunId = '{pipeline.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["download", "prepare"]
    assert "reports/prepare.json" in {a.path for a in
                                      client.list_artifacts(pipeline.info.run_id, "reports")}

    monkeypatch.setenv(store.ENV_INVOCATION, "run-two")
    assert main(["prepare", "-S", f"data.source={source}", "-S", "prepare.image_size=36"]) == 0
    second, first = stage_runs(client, exp_id, runs.PIPELINE)
    assert first.info.run_id == pipeline.info.run_id
    assert second.data.tags[runs.STAGES_TAG] == "prepare"
    assert second.data.params["prepare.image_size"] == "36"
    assert second.data.metrics["download.n_files"] == 16.0  # upstream, not run again


def test_a_failed_stage_ends_its_run_and_the_pipeline_run_failed(client, tmp_path,
                                                                 monkeypatch):
    client, exp_id = client
    monkeypatch.setenv(store.ENV_INVOCATION, "run-failing")
    broken = tmp_path / "photos.zip"  # passes the checks up front, fails when read
    broken.write_bytes(b"PK\x03\x04 not a zip")
    assert main(["download", "-S", f"data.source={broken}"]) == 2
    (run,) = stage_runs(client, exp_id, "download")
    assert run.info.status == "FAILED" and run.data.metrics == {}
    assert "photos.zip" in run.data.tags["error"]
    (pipeline,) = stage_runs(client, exp_id, runs.PIPELINE)
    assert pipeline.info.status == "FAILED"
    assert not paths.RAW.exists()
    # A value the checks up front refuse fails before any run is made.
    assert main(["download", "-S", f"data.source={tmp_path / 'missing'}"]) == 2
    assert len(stage_runs(client, exp_id, "download")) == 1


def test_report_metrics_read_every_declared_json_report(project):
    paths.REPORTS.mkdir()
    (paths.REPORTS / "evaluate.json").write_text(json.dumps({"accuracy": 0.9, "k": 5,
                                                             "per_class": {}}))
    (paths.REPORTS / "finetune.json").write_text("not json")
    assert records.report_metrics(stages.all_stages().values()) == {"test/accuracy": 0.9,
                                                                 "test/k": 5.0}
    assert os.environ.get(store.ENV_INVOCATION) is None


def test_a_stage_can_log_child_runs_in_one_batch_each(client, source, monkeypatch):
    """What tuning trials and baseline classifiers use: runs nested under the stage's run,
    metrics per step kept until the child ends."""
    client, exp_id = client
    from tlearn.tracking.runs import StageRun
    from tlearn.tracking.store import Settings

    connected = store.connect(Settings.from_environ(), "tlearn")
    cfg = config.load("params.yaml")
    stage_run = StageRun(connected, stages.get("download"), cfg, cfg)
    trial = stage_run.child("trial 0", {"head.dropout": 0.25})
    trial.log({"val_accuracy": 0.5}, step=1)
    trial.log({"val_accuracy": 0.75}, step=2)
    assert client.get_run(trial.run_id).data.metrics == {}  # nothing sent yet
    trial.end("KILLED", tags={"optuna.state": "PRUNED"})
    # A worker process (tlearn tune --workers) gets a picklable tracker for the same run.
    worker = pickle.loads(pickle.dumps(stage_run.for_worker()))
    other = worker.child("trial 1", {"head.dropout": 0.5})
    other.end("FINISHED", tags={"optuna.state": "COMPLETE"})
    stage_run.log_params({"best.dropout": 0.25})
    stage_run.end()
    assert client.get_run(other.run_id).data.tags["mlflow.parentRunId"] == stage_run.run_id
    assert client.get_run(stage_run.run_id).data.params["best.dropout"] == "0.25"
    got = client.get_run(trial.run_id)
    assert got.info.status == "KILLED" and got.data.tags["optuna.state"] == "PRUNED"
    assert got.data.tags["mlflow.parentRunId"] == stage_run.run_id
    assert got.data.params == {"head.dropout": "0.25"}
    assert [(m.step, m.value) for m in client.get_metric_history(trial.run_id, "val_accuracy")] \
        == [(1, 0.5), (2, 0.75)]
    assert stages.UNTRACKED.child("x", {}).log({"a": 1.0}) is None
