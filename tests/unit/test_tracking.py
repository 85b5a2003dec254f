"""tlearn.tracking and tlearn.pipeline without training: names, the promotion rule, the
registry logic on a real (embedded SQLite) store, fail-fast on a dead server, and a stray
MLFLOW_RUN_ID that must not capture a stage's run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REPO, image_folder
from tlearn import config, paths, pipeline, tracking
from tlearn.data.store import Split, save_split
from tlearn.errors import TlearnError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Tracking reads and writes os.environ (MLFLOW_*, TLEARN_*): restore it after each test."""
    saved = dict(os.environ)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", tracking.ENV_PARENT, tracking.ENV_OFF,
                "DVC_EXP_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(key, None)
    monkeypatch.setattr(tracking, "_warned", False)
    yield
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()
    os.environ.clear()
    os.environ.update(saved)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- names --------------------------------------------------------------------------

def test_metric_names_are_stable_and_prefixed():
    assert tracking.metric_name("evaluate", "accuracy") == "test/accuracy"
    assert tracking.metric_name("evaluate", "head_accuracy") == "test/head_accuracy"
    assert tracking.metric_name("finetune", "val_accuracy") == "finetune.val_accuracy"
    assert tracking.metric_name("features", "images_per_second") == "features.images_per_second"


def test_numeric_items_keep_only_finite_numbers():
    values = {"a": 1, "b": 0.5, "c": True, "d": "x", "e": [1], "f": {"g": 1}, "h": float("nan")}
    assert tracking.numeric_items(values) == {"a": 1.0, "b": 0.5}


def test_param_values_read_like_params_yaml():
    assert tracking.param_value([256, 128]) == "[256, 128]"
    assert tracking.param_value(0.3) == "0.3"
    assert tracking.param_value(None) == "None"
    assert tracking.param_value("crop") == "crop"


def test_history_metrics_keep_the_global_epoch_as_step():
    head = [{"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 0.9, "val_accuracy": 0.6},
            {"epoch": 2, "loss": 0.8, "accuracy": 0.7, "val_loss": 0.7, "val_accuracy": 0.8}]
    fine = [{"epoch": 3, "loss": 0.5, "accuracy": 0.9, "val_loss": 0.4, "val_accuracy": 0.95}]
    rows = tracking.history_metrics("head", head) + tracking.history_metrics("finetune", fine)
    assert ("head/val_accuracy", 0.6, 1) in rows and ("head/val_accuracy", 0.8, 2) in rows
    assert ("finetune/val_accuracy", 0.95, 3) in rows
    assert {name for name, _, _ in rows} == {f"{p}/{m}" for p in ("head", "finetune")
                                             for m in ("loss", "accuracy", "val_loss", "val_accuracy")}
    assert len(rows) == 12


def test_history_files_match_the_stage_modules():
    from tlearn.stages import finetune, train_head

    assert tracking.HISTORIES["train_head"][1] == train_head.HISTORY
    assert tracking.HISTORIES["finetune"][1] == finetune.HISTORY


# --- what dvc.yaml says each stage reads and writes ------------------------------------

def test_stage_params_are_the_keys_dvc_yaml_lists():
    flat = config.to_flat_dict(config.load(REPO / "params.yaml"))
    dvc_yaml = REPO / "dvc.yaml"
    finetune = tracking.select_params(flat, tracking.stage_param_keys("finetune", dvc_yaml))
    assert {"finetune.learning_rate", "finetune.unfreeze", "augment.rotation", "head.optimizer",
            "base.seed"} <= set(finetune)
    assert "augment.copies" not in finetune and "head.dropout" not in finetune
    train_head = tracking.select_params(flat, tracking.stage_param_keys("train_head", dvc_yaml))
    assert set(train_head) == {"base.seed"} | {k for k in flat if k.startswith("head.")}
    evaluate = tracking.select_params(flat, tracking.stage_param_keys("evaluate", dvc_yaml))
    assert set(evaluate) == {"evaluate.misclassified"}
    prepare = tracking.select_params(flat, tracking.stage_param_keys("prepare", dvc_yaml))
    assert "prepare.split.validation" in prepare  # nested groups come along
    assert tracking.stage_param_keys("no_such_stage", dvc_yaml) is None


def test_stage_reports_are_its_dvc_yaml_outputs_under_reports():
    dvc_yaml = REPO / "dvc.yaml"
    assert set(tracking.stage_reports("evaluate", dvc_yaml)) == {
        paths.REPORTS / n for n in ("evaluate.json", "predictions.csv", "confusion_matrix.png",
                                    "training_curves.png", "misclassified.png")}
    assert tracking.stage_reports("augment", dvc_yaml) == [paths.REPORTS / "augment_preview.png"]
    assert set(tracking.stage_reports("train_head", dvc_yaml)) == {
        paths.REPORTS / "head_history.csv", paths.REPORTS / "train_head.json"}
    assert tracking.stage_reports("download", dvc_yaml) == []


def test_lock_hashes_are_the_data_and_model_outs(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text("""schema: '2.0'
stages:
  download:
    outs:
    - path: data/raw
      hash: md5
      md5: aaa.dir
  train_head:
    outs:
    - path: models/head.keras
      md5: bbb
    - path: reports/head_history.csv
      md5: ccc
""")
    assert tracking.lock_hashes(lock) == {"data/raw": "aaa.dir", "models/head.keras": "bbb"}
    assert tracking.lock_hashes(tmp_path / "missing.lock") == {}


def test_data_sha256_is_the_archives_or_a_digest_of_every_raw_file(project):
    raw = project / "data" / "raw"
    (raw / "a").mkdir(parents=True)
    (project / ".dvc" / "tmp").mkdir(parents=True)
    (raw / "a" / "1.png").write_bytes(b"one")
    (raw / "a" / "2.png").write_bytes(b"two")
    (raw / "manifest.json").write_text(json.dumps({"source": "folder", "sha256": None}))
    first = tracking.data_sha256()
    assert len(first) == 64 and tracking.data_sha256() == first        # cached, same answer
    assert (project / ".dvc" / "tmp" / "tlearn-data-sha256.json").is_file()
    (raw / "a" / "2.png").write_bytes(b"TWO")                          # same size, new bytes
    os.utime(raw / "a" / "2.png", ns=(1, 1))
    second = tracking.data_sha256()
    assert second != first
    (raw / "a" / "2.png").write_bytes(b"two")
    os.utime(raw / "a" / "2.png", ns=(2, 2))
    assert tracking.data_sha256() == first                              # content, not mtime
    (raw / "manifest.json").write_text(json.dumps({"sha256": "f" * 64}))
    assert tracking.data_sha256() == "f" * 64                           # an archive's own


def test_git_dirty_ignores_what_the_pipeline_itself_rewrites(project):
    def git(*args):
        subprocess.run(["git", *args], check=True, capture_output=True)
    git("init", "-q")
    for name in ("dvc.lock", "reports/evaluate.json", "src.py"):
        Path(name).parent.mkdir(exist_ok=True)
        Path(name).write_text("v1")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    Path("dvc.lock").write_text("v2")
    Path("reports/evaluate.json").write_text("v2")
    assert tracking.git_state.__wrapped__()[1] is False
    Path("src.py").write_text("v2")
    assert tracking.git_state.__wrapped__()[1] is True


def test_datasets_come_from_npz_headers_with_the_file_digest(project):
    images = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    paths.PREPARED.mkdir(parents=True)
    save_split(paths.prepared_split("test"), Split(images, np.arange(5), np.array(["f"] * 5)))
    assert tracking.npz_header(paths.prepared_split("test"), "images") == ((5, 4, 4, 3), np.uint8)
    cfg = config.load("params.yaml", overrides={"data.source": "https://host/cats.tgz"})
    ds = tracking._dataset(cfg, "test")
    assert ds.name == "cats.tgz/test"
    assert ds.digest == tracking.file_digest(paths.prepared_split("test"))[:16]
    assert ds.profile["features_shape"] == (5, 4, 4, 3) and ds.profile["targets_shape"] == (5,)
    assert "uint8" in str(ds.schema) and ds.source.to_dict() == {"url": "https://host/cats.tgz"}


def test_default_store_is_sqlite_in_the_project_root(project, monkeypatch):
    assert tracking.tracking_uri() == f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5555")
    assert tracking.tracking_uri() == "http://127.0.0.1:5555"
    assert not tracking.is_embedded("http://127.0.0.1:5555")
    assert tracking.is_embedded("sqlite:///x.db") and tracking.is_embedded("postgresql://h/db")


# --- tlearn run -----------------------------------------------------------------------

def test_run_command_is_dvc_repro_or_an_experiment():
    assert pipeline.dvc_command([], False, [])[1:] == ["repro"]
    assert pipeline.dvc_command([], False, ["evaluate"])[1:] == ["repro", "evaluate"]
    sets = pipeline.parse_sets(["head.dropout=0.2", "head.units=[64, 32]"])
    assert pipeline.dvc_command(sets, False, [])[1:] == [
        "exp", "run", "-S", "head.dropout=0.2", "-S", "head.units=[64, 32]"]
    assert pipeline.dvc_command([], True, [], name="try-1")[1:] == ["exp", "run", "-n", "try-1"]


def test_project_params_with_empty_values_keep_params_yaml():
    pairs = pipeline.parse_sets(["data.source=", "model.backbone=efficientnet_lite0",
                                 "head.epochs= "], keep_empty=False)
    assert pairs == [("model.backbone", "efficientnet_lite0")]
    with pytest.raises(TlearnError, match="KEY=VALUE"):
        pipeline.parse_sets(["head.dropout"])


def test_run_rejects_a_bad_override_before_touching_dvc_or_mlflow(project, capsys):
    from tlearn.cli import main

    assert main(["run", "-S", "head.dropout=2"]) == 2
    assert "head.dropout must be <= 0.95" in capsys.readouterr().err
    assert not (project / "mlflow.db").exists()


# --- the promotion rule -----------------------------------------------------------------

@pytest.mark.parametrize("challenger, champion, margin, promoted", [
    (0.90, None, 0.0, True),     # no champion yet
    (0.91, 0.90, 0.0, True),     # better
    (0.90, 0.90, 0.0, False),    # a tie keeps the champion
    (0.89, 0.90, 0.0, False),    # worse
    (0.92, 0.90, 0.05, False),   # better, but not by the margin
    (0.95, 0.90, 0.05, True),    # exactly the margin (float noise included)
    (0.96, 0.90, 0.05, True),
])
def test_decide(challenger, champion, margin, promoted):
    decision = tracking.decide("tlearn", "3", challenger, None if champion is None else "2",
                               champion, margin)
    assert decision.promote is promoted
    assert decision.line.startswith("promoted" if promoted else "kept")
    assert f"{challenger:.4f}" in decision.line
    assert "\n" not in decision.line


def test_decide_same_version_is_kept():
    decision = tracking.decide("tlearn", "2", 0.9, "2", 0.9, 0.0)
    assert not decision.promote and "already the champion" in decision.line


# --- the registry on a real embedded store ---------------------------------------------

@pytest.fixture
def registry(project, monkeypatch):
    """An embedded store in the project; ``add`` registers a version the way evaluate does
    (tags test_accuracy and test_split_sha256, alias challenger)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    store = tracking.connect("tlearn")
    client = store.client

    def add(accuracy: float, split: str) -> str:
        logged = client.create_logged_model(store.experiment_id, name="model")
        if not client.search_registered_models("name = 'tlearn'"):
            client.create_registered_model("tlearn")
        version = client.create_model_version(
            "tlearn", source=f"models:/{logged.model_id}", model_id=logged.model_id,
            tags={"test_accuracy": repr(accuracy), "test_split_sha256": split}).version
        client.set_registered_model_alias("tlearn", tracking.CHALLENGER, version)
        return version

    def aliases() -> dict:
        return {k: int(v) for k, v in client.get_registered_model("tlearn").aliases.items()}

    return SimpleNamespace(add=add, aliases=aliases, cfg=config.load("params.yaml"), client=client)


def test_promote_follows_the_rule_on_one_test_split(registry):
    split = "a" * 64
    with pytest.raises(TlearnError, match="no registered model"):
        tracking.promote(registry.cfg)
    registry.add(0.80, split)
    assert tracking.promote(registry.cfg).line.startswith("promoted: tlearn v1")
    assert registry.aliases() == {"challenger": 1, "champion": 1}
    assert tracking.promote(registry.cfg).line.startswith("kept: tlearn v1 is already")

    registry.add(0.80, split)                               # a tie: kept
    decision = tracking.promote(registry.cfg)
    assert not decision.promote and registry.aliases() == {"challenger": 2, "champion": 1}
    registry.add(0.85, split)                               # better: promoted
    decision = tracking.promote(registry.cfg)
    assert decision.promote and "replaces v1" in decision.line
    assert registry.aliases() == {"challenger": 3, "champion": 3}

    margin = config.load("params.yaml", overrides={"tracking.promote_margin": 0.1})
    registry.add(0.90, split)                               # +0.05 < margin 0.1: kept
    assert not tracking.promote(margin).promote
    assert registry.aliases()["champion"] == 3


def test_promote_refuses_to_compare_accuracies_from_different_test_splits(registry):
    registry.add(0.80, "a" * 64)
    tracking.promote(registry.cfg)
    registry.add(0.99, "b" * 64)
    with pytest.raises(TlearnError, match="another test split"):
        tracking.promote(registry.cfg)
    assert registry.aliases()["champion"] == 1
    # Once the champion has been measured on the challenger's split, the rule applies.
    registry.client.set_model_version_tag("tlearn", "1", f"test_accuracy.{'b' * 12}", "0.7")
    assert tracking.promote(registry.cfg).promote
    assert registry.aliases()["champion"] == 2


class HalfRight:
    """A champion that predicts class 0 for every 8 px image: 2 of the 4 below right."""
    input_shape = (None, 8, 8, 3)

    def predict(self, x, verbose=0):
        return np.tile([0.9, 0.1], (len(x), 1))


def _local_test_split() -> str:
    """A prepared 8 px crop test split of 4 images and 2 classes; returns its digest."""
    images = np.zeros((4, 8, 8, 3), np.uint8)
    labels = np.array([0, 1, 0, 1])
    paths.PREPARED.mkdir(parents=True)
    save_split(paths.prepared_split("test"), Split(images, labels, np.array(["f"] * 4)))
    paths.PREPARED_PREPROCESS.write_text(json.dumps({"image_size": 8, "resize_mode": "crop"}))
    paths.MODELS.mkdir()
    paths.LABELS.write_text(json.dumps(["a", "b"]))
    return tracking.file_digest(paths.prepared_split("test"))


def test_promote_refuses_a_champion_made_for_other_images(registry, monkeypatch):
    split = _local_test_split()
    monkeypatch.setattr(tracking, "load_keras_model", lambda uri: (HalfRight(), ["a", "b"], "pad"))
    registry.add(0.9, "c" * 64)
    tracking.promote(registry.cfg)
    registry.add(0.75, split)
    with pytest.raises(TlearnError, match="takes 8 px pad images, not the 8 px crop test split"):
        tracking.promote(registry.cfg)


def test_promote_measures_the_champion_on_the_local_test_split(registry, monkeypatch):
    split = _local_test_split()
    loaded = []
    monkeypatch.setattr(tracking, "load_keras_model",
                        lambda uri: loaded.append(uri) or (HalfRight(), ["a", "b"], "crop"))
    registry.add(0.9, "c" * 64)
    tracking.promote(registry.cfg)
    registry.add(0.75, split)                     # champion on this split: 0.5 -> promoted
    decision = tracking.promote(registry.cfg)
    assert loaded == ["models:/tlearn/1"]
    assert decision.promote and "(0.5000)" in decision.line
    tags = registry.client.get_model_version("tlearn", "1").tags
    assert float(tags[f"test_accuracy.{split[:12]}"]) == 0.5


# --- stage runs on the embedded store ---------------------------------------------------

@pytest.fixture
def folder_source(tmp_path):
    image_folder(tmp_path / "src", {"a": 3, "b": 3}, size=(16, 16))
    return tmp_path / "src"


def test_stray_mlflow_run_id_never_captures_a_stage(project, folder_source, monkeypatch):
    import mlflow

    from tlearn.cli import main

    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    exp_id = tracking.connect("tlearn").experiment_id
    stray = client.create_run(exp_id, run_name="stray")
    client.set_terminated(stray.info.run_id)
    parent = client.create_run(exp_id, run_name="parent")
    monkeypatch.setenv("MLFLOW_RUN_ID", stray.info.run_id)
    monkeypatch.setenv(tracking.ENV_PARENT, parent.info.run_id)

    assert main(["download", "-S", f"data.source={folder_source}"]) == 0
    runs = client.search_runs([exp_id], filter_string="tags.stage = 'download'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id not in (stray.info.run_id, parent.info.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "download"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.params["data.source"] == str(folder_source)
    assert set(run.data.params) == {"data.source", "data.sha256", "data.max_expansion",
                                    "data.max_extracted_mb"}
    assert run.data.metrics == {"download.n_files": 6.0, "download.n_classes": 2.0}
    assert len(run.data.tags["data.sha256"]) == 64
    assert [a.path for a in client.list_artifacts(run.info.run_id, "data")] == ["data/manifest.json"]
    untouched = client.get_run(stray.info.run_id)
    assert untouched.data.params == {} and untouched.data.metrics == {}
    assert "MLFLOW_RUN_ID" not in os.environ

    # A parent that has ended is not a parent: the stage logs a top-level run.
    client.set_terminated(parent.info.run_id)
    assert main(["download", "-S", f"data.source={folder_source}"]) == 0
    runs = client.search_runs([exp_id], filter_string="tags.stage = 'download'",
                              order_by=["attributes.start_time DESC"])
    assert len(runs) == 2 and "mlflow.parentRunId" not in runs[0].data.tags


def test_a_failed_stage_ends_its_run_failed_and_logs_no_outputs(project, monkeypatch, tmp_path):
    import mlflow

    from tlearn.cli import main

    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["download", "-S", f"data.source={tmp_path / 'missing'}"]) == 2
    client = mlflow.MlflowClient(uri)
    exp_id = client.get_experiment_by_name("tlearn").experiment_id
    (run,) = client.search_runs([exp_id])
    assert run.info.status == "FAILED" and run.data.metrics == {}
    assert "missing" in run.data.tags["error"]
    assert not paths.RAW.exists()


def _tlearn(*args: str, cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    full_env.update(env, TF_CPP_MIN_LOG_LEVEL="3")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tlearn.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - started


def test_a_dead_server_fails_the_stage_fast_with_one_line_and_writes_nothing(project, folder_source):
    uri = f"http://127.0.0.1:{free_port()}"
    proc, seconds = _tlearn("download", "-S", f"data.source={folder_source}", cwd=project,
                            MLFLOW_TRACKING_URI=uri, **{tracking.ENV_CHECK_SECONDS: "3"})
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and uri in lines[0] and "does not answer" in lines[0], proc.stderr
    assert seconds < 30
    assert not (project / "data").exists() and not (project / "mlflow.db").exists()


def test_not_required_warns_once_and_goes_on(project, folder_source):
    uri = f"http://127.0.0.1:{free_port()}"
    proc, _ = _tlearn("download", "-S", f"data.source={folder_source}",
                      "-S", "tracking.required=false", cwd=project, MLFLOW_TRACKING_URI=uri,
                      **{tracking.ENV_CHECK_SECONDS: "2"})
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and uri in warnings[0] and "without tracking" in warnings[0]
    assert (project / "data" / "raw" / "manifest.json").is_file()


def test_registry_model_that_does_not_exist_is_one_line(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    tracking.connect("tlearn")
    with pytest.raises(TlearnError, match=r"models:/nothing@champion: cannot load it from sqlite"):
        tracking.load_keras_model("models:/nothing@champion")
