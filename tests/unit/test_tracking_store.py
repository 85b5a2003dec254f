"""tlearn.tracking.store: settings read from the environment, connecting, the failure
policy, and a dead server failing fast with one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port, image_folder
from tlearn.tracking import store

pytestmark = pytest.mark.usefixtures("clean_tracking_env")


def test_default_store_is_sqlite_in_the_project_root(project):
    assert store.Settings.from_environ({}).uri == f"sqlite:///{project / 'mlflow.db'}"
    server = store.Settings.from_environ({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5555"})
    assert server.uri == "http://127.0.0.1:5555" and not server.embedded
    assert store.is_embedded("sqlite:///x.db") and store.is_embedded("postgresql://h/db")


def test_settings_come_from_the_environment_once():
    settings = store.Settings.from_environ({
        store.ENV_INVOCATION: "run-1", store.ENV_OFF: "1", "MLFLOW_RUN_ID": "abc",
        store.ENV_CHECK_SECONDS: "99", "DVC_EXP_NAME": "exp-1"})
    assert (settings.invocation, settings.off, settings.mlflow_run_id, settings.check_seconds,
            settings.dvc_exp_name) == ("run-1", True, "abc", 25.0, "exp-1")
    assert store.Settings.from_environ({store.ENV_CHECK_SECONDS: "x"}).check_seconds == 15.0


def test_child_environment_drops_stray_runs_and_names_the_execution():
    settings = store.Settings(uri="sqlite:///x.db")
    env = settings.child_env({"MLFLOW_RUN_ID": "stray", "MLFLOW_EXPERIMENT_ID": "1",
                              store.ENV_INVOCATION: "old", "HOME": "/h"}, invocation="run-2")
    assert env == {"HOME": "/h", "MLFLOW_TRACKING_URI": "sqlite:///x.db",
                   store.ENV_INVOCATION: "run-2"}
    assert settings.child_env({}, off=True)[store.ENV_OFF] == "1"


def test_http_defaults_never_override_the_users():
    environ = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    store.apply_http_defaults(environ)
    assert environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    assert environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"


def test_failure_policy_raises_when_required_else_warns_once(embedded, caplog):
    connected = store.connect(embedded, "tlearn")
    with pytest.raises(store.TrackingUnavailable, match="failed: boom"):
        with connected.guarded():
            raise RuntimeError("boom")
    connected.required = False
    for _ in range(2):
        with connected.guarded():
            raise RuntimeError("boom")
    assert connected.disabled
    assert [r.message for r in caplog.records].count(
        f"tracking store {embedded.uri} failed: boom; going on without tracking "
        "(tracking.required: false)") == 1
    assert store.connect(store.Settings(uri=embedded.uri, off=True), "tlearn") is None


def test_a_deleted_experiment_is_named(embedded):
    connected = store.connect(embedded, "tlearn")
    connected.client.delete_experiment(connected.experiment_id)
    with pytest.raises(store.TrackingUnavailable, match="experiment 'tlearn' is deleted"):
        store.connect(embedded, "tlearn")


def _tlearn(*args: str, cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    full_env.update(env, TF_CPP_MIN_LOG_LEVEL="3")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tlearn.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - started


@pytest.fixture
def folder_source(tmp_path):
    image_folder(tmp_path / "src", {"a": 8, "b": 8}, size=(16, 16))
    return tmp_path / "src"


def test_a_dead_server_fails_the_stage_fast_with_one_line_and_writes_nothing(project,
                                                                            folder_source):
    uri = f"http://127.0.0.1:{free_port()}"
    proc, seconds = _tlearn("download", "-S", f"data.source={folder_source}", cwd=project,
                            MLFLOW_TRACKING_URI=uri, **{store.ENV_CHECK_SECONDS: "3"})
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and uri in lines[0] and "does not answer" in lines[0], proc.stderr
    assert seconds < 30
    assert not (project / "data").exists() and not (project / "mlflow.db").exists()


def test_not_required_warns_once_and_goes_on(project, folder_source):
    uri = f"http://127.0.0.1:{free_port()}"
    proc, _ = _tlearn("download", "-S", f"data.source={folder_source}",
                      "-S", "tracking.required=false", cwd=project, MLFLOW_TRACKING_URI=uri,
                      **{store.ENV_CHECK_SECONDS: "2"})
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and uri in warnings[0] and "without tracking" in warnings[0]
    assert (project / "data" / "raw" / "manifest.json").is_file()


def test_predict_from_a_dead_registry_exits_3(project):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(project / "x.png")
    uri = f"http://127.0.0.1:{free_port()}"
    proc, _ = _tlearn("predict", "x.png", "--model", "models:/tlearn@champion", cwd=project,
                      MLFLOW_TRACKING_URI=uri, **{store.ENV_CHECK_SECONDS: "2"})
    assert proc.returncode == 3, proc.stderr
    assert uri in proc.stderr and "does not answer" in proc.stderr
