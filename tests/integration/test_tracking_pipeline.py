"""MLflow tracking end to end on tiny data (3 classes x 15 PNGs, 32 px, 2 + 1 epochs):

- a real ``mlflow server`` (SQLite, artifacts in a temp dir) on a free 127.0.0.1 port,
  the pipeline run twice with different ``head.dropout`` and everything checked through
  MlflowClient: parent and nested runs, params, final metrics, per-epoch histories,
  artifacts, datasets, the model loaded with mlflow.pyfunc in a fresh process, the
  registry versions and aliases after ``tlearn promote``, ``tlearn predict`` from it;
- ``mlflow run . --env-manager local -P backbone=efficientnet_lite0 -P epochs=1`` in a
  fresh clone with the embedded SQLite store, then ``make run`` (DVC skips every stage)
  and ``make ui`` answering on 127.0.0.1;
- a server that accepts connections but never answers fails the stage within 30 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from conftest import copy_project, free_port
from tlearn import config
from tlearn.data.store import split_digest
from tlearn.io import read_csv
from tlearn.tracking import provenance, store

BIN = Path(sys.executable).parent
DVC, MLFLOW = BIN / "dvc", BIN / "mlflow"
FILES = ("params.yaml", "dvc.yaml", "MLproject", "python_env.yaml", ".gitignore", "Makefile",
         "requirements.lock", "pyproject.toml")
STAGES = ["download", "prepare", "augment", "features", "baselines", "tune", "train_head",
          "finetune", "evaluate"]
TINY = {"prepare.image_size": 32, "augment.copies": 1, "head.epochs": 2, "tune.n_trials": 0,
        "finetune.epochs": 1, "finetune.unfreeze": 5}
COLOURS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}

pytestmark = pytest.mark.skipif(not DVC.exists() or not MLFLOW.exists() or not shutil.which("git"),
                                reason="needs dvc and mlflow in the virtualenv, and git")


# --- helpers ------------------------------------------------------------------------

def env(**extra: str) -> dict:
    out = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID",
                        "MLFLOW_EXPERIMENT_NAME", store.ENV_INVOCATION, store.ENV_OFF,
                        "DVC_EXP_NAME")}
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"
    out.update(DVC_NO_ANALYTICS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    out.update(extra)
    return out


def sh(*cmd: str, cwd: Path, timeout: int = 600, stdout_only: bool = False, **extra: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(**extra), capture_output=True, text=True,
                          timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-6000:]}"
    return proc.stdout if stdout_only else output


def colour_images(root: Path) -> Path:
    """3 classes x 15 PNGs: a colour each plus a class pattern and seeded noise."""
    rng = np.random.default_rng(0)
    for index, (label, colour) in enumerate(COLOURS.items()):
        for i in range(15):
            img = np.full((40, 40, 3), colour, np.int16) + rng.integers(-30, 30, (40, 40, 3))
            if index == 0:
                img[10:30, 10:30] = 128
            elif index == 1:
                img[:, ::4] = 0
            else:
                img[::4] = 255
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / label / f"{i:02d}.png")
    return root


def make_project(root: Path, source: Path) -> Path:
    """A committed project (git + dvc) with the tiny params: what a fresh clone holds."""
    copy_project(root, FILES)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in {**TINY, "data.source": str(source)}.items():
        group, key = dotted.split(".")
        params[group][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=root)
    sh(str(DVC), "init", "-q", cwd=root)
    sh(str(DVC), "config", "core.analytics", "false", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "tiny project", cwd=root)
    return root


def children(client, parent_id: str) -> dict:
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.info.run_name: r for r in runs}


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def aliases_of(client, name: str = "tlearn") -> dict[str, str]:
    """Alias -> version (SQLite stores give ints, the REST API strings)."""
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def artifact_paths(client, run_id: str, folder: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, folder)}


def start(cmd: list[str], cwd: Path, log: Path, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env(**extra), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """End a process group this test started (the server and its workers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def wait_for(url: str, proc: subprocess.Popen, log: Path, seconds: float = 90) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        assert proc.poll() is None, f"{url} exited early:\n{log.read_text()[-3000:]}"
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return colour_images(tmp_path_factory.mktemp("images") / "colours")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` with a SQLite backend and artifacts in a temp dir, 127.0.0.1 only."""
    base = tmp_path_factory.mktemp("server")
    port, log = free_port(), base / "server.log"
    proc = start([str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port),
                  "--workers", "1", "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
                  "--artifacts-destination", str(base / "artifacts")], base, log)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{uri}/health", proc, log)
        yield uri
    finally:
        stop(proc)


# --- a tracking server, two pipeline runs ----------------------------------------------

def test_two_pipeline_runs_on_a_tracking_server(server, source, tmp_path):
    import mlflow

    project = make_project(tmp_path / "project", source)
    client = mlflow.MlflowClient(server)
    # A stray MLFLOW_RUN_ID (a finished run in another experiment) must capture nothing.
    stray_exp = client.create_experiment("stray")
    stray = client.create_run(stray_exp, run_name="stray").info.run_id
    client.set_terminated(stray)
    timings, reports, parents = {}, [], []
    for dropout in (0.1, 0.6):
        started = time.monotonic()
        out = sh(str(BIN / "tlearn"), "run", "-S", f"head.dropout={dropout}", cwd=project,
                 MLFLOW_TRACKING_URI=server, MLFLOW_RUN_ID=stray)
        timings[dropout] = time.monotonic() - started
        reports.append({name: json.loads((project / "reports" / f"{name}.json").read_text())
                        for name in ("evaluate", "train_head", "finetune")})
        reports[-1]["head_history"] = read_csv(project / "reports" / "head_history.csv")
        reports[-1]["finetune_history"] = read_csv(project / "reports" / "finetune_history.csv")
        promote = sh(str(BIN / "tlearn"), "promote", cwd=project, stdout_only=True,
                     MLFLOW_TRACKING_URI=server)
        reports[-1]["promote"] = promote.strip()
        parents.append(out)
    print(f"tlearn run on a server: {timings[0.1]:.0f} s (all stages), "
          f"{timings[0.6]:.0f} s (train_head, finetune, evaluate)")

    exp = client.get_experiment_by_name("tlearn")
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    assert client.get_run(stray).data.params == {} and client.get_run(stray).data.metrics == {}
    assert client.search_runs([stray_exp], filter_string="tags.stage = 'download'") == []

    # Two parent runs, oldest first, each with every flattened param and the final metrics.
    pipelines = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'pipeline'",
                                   order_by=["attributes.start_time ASC"])
    assert len(pipelines) == 2
    commit = sh("git", "rev-parse", "HEAD", cwd=project).strip()
    flat = config.to_flat_dict(config.load(project / "params.yaml"))
    for run, dropout, report in zip(pipelines, (0.1, 0.6), reports):
        assert run.info.status == "FINISHED" and "mlflow.parentRunId" not in run.data.tags
        assert set(run.data.params) == set(flat)
        assert run.data.params["head.dropout"] == str(dropout)
        assert run.data.params["head.units"] == "[256]" and run.data.params["prepare.image_size"] == "32"
        metrics = run.data.metrics
        assert metrics["test/accuracy"] == pytest.approx(report["evaluate"]["accuracy"])
        assert metrics["test/head_accuracy"] == pytest.approx(report["evaluate"]["head_accuracy"])
        assert metrics["test/loss"] == pytest.approx(report["evaluate"]["loss"])
        assert metrics["finetune.val_accuracy"] == pytest.approx(report["finetune"]["val_accuracy"])
        assert metrics["train_head.val_accuracy"] == pytest.approx(report["train_head"]["val_accuracy"])
        tags = run.data.tags
        assert tags["git.commit"] == commit and tags["git.dirty"] in ("true", "false")
        assert tags["backbone"] == "efficientnet_lite0" and tags["data.source"] == str(source)
        assert len(tags["data.sha256"]) == 64 and tags["dvc.exp_name"] == run.info.run_name
        lock = provenance.lock_hashes(project / "dvc.lock")
        assert tags["dvc.data/raw"] == lock["data/raw"] and tags["dvc.data/prepared"] == lock["data/prepared"]
        assert "dvc.models/model.keras" in tags
        # per-epoch curves: head epochs 1-2, fine-tune continues at 3
        head_rows, fine_rows = report["head_history"], report["finetune_history"]
        assert history(client, run.info.run_id, "head/val_accuracy") == [
            (row["epoch"], pytest.approx(row["val_accuracy"])) for row in head_rows]
        assert [step for step, _ in history(client, run.info.run_id, "finetune/val_accuracy")] == [3]
        assert [step for step, _ in history(client, run.info.run_id, "head/loss")] == [1, 2]
        assert {"params.yaml", "dvc.lock", "reports", "models", "data"} <= artifact_paths(client, run.info.run_id)
        assert {"reports/evaluate.json", "reports/training_curves.png", "reports/confusion_matrix.png",
                "reports/head_history.csv"} <= artifact_paths(client, run.info.run_id, "reports")
        inputs = {d.dataset.name.split("/")[-1]: d.dataset.digest for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"train", "validation", "test"}
        assert inputs["test"] == split_digest(project / "data/prepared/test")[:16]
    # same figures in both runs, so the compare view lines them up; timings only from the
    # stages that ran (the second run skipped download to features)
    def figures(run) -> set[str]:
        return {k for k in run.data.metrics if not k.endswith(("seconds", "per_second"))}

    assert figures(pipelines[0]) == figures(pipelines[1])
    assert "prepare.seconds" in pipelines[0].data.metrics
    assert "prepare.seconds" not in pipelines[1].data.metrics

    # Nested stage runs: every stage the first time, only what the dropout touches the second.
    first, second = (children(client, run.info.run_id) for run in pipelines)
    assert sorted(first) == sorted(STAGES)
    assert sorted(second) == ["evaluate", "finetune", "train_head", "tune"]
    for name, run in {**first, **second}.items():
        assert run.info.status == "FINISHED" and run.data.tags["stage"] == name
        assert run.data.tags["git.commit"] == commit and run.data.tags["dvc.exp_name"]
    th = second["train_head"]
    assert th.data.params["head.dropout"] == "0.6" and "finetune.learning_rate" not in th.data.params
    assert history(client, th.info.run_id, "head/val_accuracy") == history(
        client, pipelines[1].info.run_id, "head/val_accuracy")
    assert [s for s, _ in history(client, second["finetune"].info.run_id, "finetune/loss")] == [3]
    assert "models/labels.json" in artifact_paths(client, th.info.run_id, "models")
    assert {"reports/misclassified.png", "reports/predictions.csv"} <= artifact_paths(
        client, second["evaluate"].info.run_id, "reports")
    assert first["evaluate"].data.metrics["test/accuracy"] == pytest.approx(
        reports[0]["evaluate"]["accuracy"])
    assert {d.dataset.name.split("/")[-1] for d in second["evaluate"].inputs.dataset_inputs} == {"test"}

    # Models: head and fine-tuned model per run, with signature and input example.
    logged = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert sorted(m.name for m in logged) == ["head", "head", "model", "model"]

    # Registry: v1 from the first run, v2 from the second; champion as the rule says.
    name = "tlearn"
    versions = {v.version: v for v in client.search_model_versions(f"name = '{name}'")}
    assert sorted(versions, key=int) == ["1", "2"]
    acc = [float(versions[v].tags["test_accuracy"]) for v in ("1", "2")]
    assert acc == pytest.approx([r["evaluate"]["accuracy"] for r in reports])
    split = split_digest(project / "data/prepared/test")
    assert versions["1"].tags["test_split_sha256"] == versions["2"].tags["test_split_sha256"] == split
    assert versions["2"].tags["pipeline_run_id"] == pipelines[1].info.run_id
    assert reports[0]["promote"].startswith("promoted: tlearn v1")
    aliases = aliases_of(client)
    assert aliases["challenger"] == "2"
    margin = config.load(project / "params.yaml").tracking.promote_margin
    promoted = acc[1] - acc[0] > 0 and acc[1] - acc[0] >= margin
    assert aliases["champion"] == ("2" if promoted else "1")
    assert reports[1]["promote"].startswith("promoted" if promoted else "kept")
    assert pipelines[1].data.tags["registered_model_version"] == f"{name}/2"

    # The registered model loads with plain mlflow.pyfunc in a fresh process (no tlearn
    # import) and predicts class probabilities from raw RGB.
    script = (
        "import json, sys, numpy as np, mlflow\n"
        f"mlflow.set_tracking_uri({server!r})\n"
        "m = mlflow.pyfunc.load_model('models:/tlearn@challenger')\n"
        f"x = np.load({str(project / 'data/prepared/test/images.npy')!r})\n"
        f"y = np.load({str(project / 'data/prepared/test/labels.npy')!r})\n"
        "p = np.asarray(m.predict(x.astype('float32')))\n"
        "print(json.dumps({'shape': p.shape, 'sums': p.sum(1).tolist(),"
        " 'accuracy': float((p.argmax(1) == y).mean()),"
        " 'labels': m.metadata.metadata['labels'], 'inputs': sorted(m.metadata.metadata['inputs']),"
        " 'size': m.metadata.metadata['image_size']}))\n")
    out = json.loads(sh(sys.executable, "-c", script, cwd=tmp_path, stdout_only=True))
    assert out["shape"] == [6, 3] and out["labels"] == sorted(COLOURS)
    assert np.allclose(out["sums"], 1.0, atol=1e-4)
    assert out["accuracy"] == pytest.approx(acc[1])
    assert out["inputs"] == ["images", "tensor"] and out["size"] == 32

    # tlearn predict from the registry
    image = source / "red" / "00.png"
    out = sh(str(BIN / "tlearn"), "predict", "--model", f"models:/{name}@champion", "--format",
             "json", str(image), cwd=project, stdout_only=True, MLFLOW_TRACKING_URI=server)
    result = json.loads(out)
    assert [p["label"] for p in result[0]["predictions"]][:1] and len(result[0]["predictions"]) == 3
    assert sum(p["probability"] for p in result[0]["predictions"]) == pytest.approx(1.0, abs=1e-4)


# --- mlflow run . from a fresh clone, embedded store, make run, make ui -----------------

def test_mlflow_run_in_a_fresh_clone_then_make_run_and_make_ui(source, tmp_path):
    import mlflow

    origin = make_project(tmp_path / "origin", source)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(origin), str(clone), cwd=tmp_path)
    started = time.monotonic()
    out = sh(str(MLFLOW), "run", ".", "--env-manager", "local", "-P", "backbone=efficientnet_lite0",
             "-P", "epochs=1", cwd=clone)
    seconds = time.monotonic() - started
    print(f"mlflow run . on tiny data: {seconds:.0f} s")
    assert "succeeded" in out

    uri = f"sqlite:///{clone / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("tlearn")
    assert exp.artifact_location == (clone / "mlartifacts").as_uri()
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'pipeline'")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.backbone"] == "efficientnet_lite0"
    assert run.data.params["head.epochs"] == "1" and run.data.params["finetune.epochs"] == "1"
    assert run.data.params["head.dropout"] == "0.3"  # not given: params.yaml's value
    assert [s for s, _ in history(client, run.info.run_id, "head/val_accuracy")] == [1]
    assert [s for s, _ in history(client, run.info.run_id, "finetune/val_accuracy")] == [2]
    assert sorted(children(client, run.info.run_id)) == sorted(STAGES)
    assert "test/accuracy" in run.data.metrics
    # DVC recorded the same experiment
    exp_name = run.data.tags["dvc.exp_name"]
    assert exp_name in sh(str(DVC), "exp", "list", "--name-only", cwd=clone)
    # mlflow run's own run (in the Default experiment) points at the pipeline run
    project_run = client.get_run(run.data.tags["tlearn.mlflow_project_run_id"])
    assert project_run.data.tags["tlearn.pipeline_run_id"] == run.info.run_id
    assert project_run.data.params["backbone"] == "efficientnet_lite0"
    assert project_run.data.params["dropout"] == "params.yaml"  # unset reads so, not ''
    assert aliases_of(client) == {"challenger": "1"}
    assert (clone / "mlartifacts").is_dir() and not (clone / "mlruns").exists()
    assert "mlflow.db" not in sh("git", "status", "--porcelain", cwd=clone)

    # `make run`: DVC executes no stage, so nothing new is logged: no duplicate row.
    make = ["make", "-o", str(BIN.parent / ".installed"), f"VENV={BIN.parent}"]
    out = sh(*make, "run", cwd=clone)
    assert "Running stage" not in out
    assert f"up to date, DVC executed no stage: nothing new to log; the latest pipeline run is " \
           f"{run.info.run_id}" in out
    pipelines = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'pipeline'")
    assert [p.info.run_id for p in pipelines] == [run.info.run_id]
    assert "reports/evaluate.json" in artifact_paths(client, run.info.run_id, "reports")

    # A store without the model (as a fresh clone's, whose pipeline rebuilds the locked
    # model byte for byte): DVC skips evaluate, the stage that registers, so tlearn reruns it.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    diff = sh("git", "diff", cwd=clone, stdout_only=True)
    out = sh(str(BIN / "tlearn"), "run", cwd=clone, MLFLOW_TRACKING_URI=other)
    assert "running evaluate again to register it" in out
    assert sh("git", "diff", cwd=clone, stdout_only=True) == diff  # evaluate wrote the same
    other_client = mlflow.MlflowClient(other)
    assert aliases_of(other_client) == {"challenger": "1"}
    (rerun,) = other_client.search_runs(
        [other_client.get_experiment_by_name("tlearn").experiment_id],
        filter_string="tags.stage = 'pipeline'")
    assert rerun.info.status == "FINISHED" and rerun.data.tags["tlearn.stages"] == "evaluate"
    assert other_client.get_model_version("tlearn", "1").tags["pipeline_run_id"] == \
        rerun.info.run_id
    assert "Running stage" not in sh(str(BIN / "tlearn"), "run", cwd=clone,
                                     MLFLOW_TRACKING_URI=other)  # registered: nothing to do
    assert "the first champion" in sh(str(BIN / "tlearn"), "promote", cwd=clone,
                                      MLFLOW_TRACKING_URI=other)

    # `make ui` on 127.0.0.1: the page and the experiment through the REST API.
    port, log = free_port(), tmp_path / "ui.log"
    ui = start([*make, f"UI_PORT={port}", "ui"], clone, log)
    try:
        seconds = wait_for(f"http://127.0.0.1:{port}/", ui, log)
        print(f"make ui answered after {seconds:.1f} s")
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        got = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "tlearn"},
                           timeout=10)
        assert got.status_code == 200 and got.json()["experiment"]["name"] == "tlearn"
        listed = requests.post(f"{api}/experiments/search", json={"max_results": 100}, timeout=10)
        assert "tlearn" in [e["name"] for e in listed.json()["experiments"]]
        runs = requests.post(f"{api}/runs/search", timeout=10, json={
            "experiment_ids": [exp.experiment_id], "filter": "tags.stage = 'pipeline'",
            "order_by": ["metrics.`test/accuracy` DESC"]}).json()["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run.info.run_id]
    finally:
        stop(ui)


# --- failures ---------------------------------------------------------------------------

def test_a_failing_stage_fails_the_parent_with_dvcs_exit_code(source, tmp_path):
    import mlflow

    project = make_project(tmp_path / "project", source)
    missing = tmp_path / "broken.zip"  # exists, so only download can find it unreadable
    missing.write_bytes(b"not a zip archive")
    proc = subprocess.run([str(BIN / "tlearn"), "run", "-S", f"data.source={missing}"],
                          cwd=project, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr  # the stage's own code (bad data), passed on
    assert "data.source: " in proc.stderr and str(missing) in proc.stderr
    assert "compare runs" not in proc.stderr
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tlearn")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'pipeline'")
    assert parent.info.status == "FAILED" and parent.data.metrics == {}
    assert parent.data.params["data.source"] == str(missing)
    stages = children(client, parent.info.run_id)
    assert list(stages) == ["download"] and stages["download"].info.status == "FAILED"
    assert str(missing) in stages["download"].data.tags["error"]
    assert not (project / "data" / "raw").exists()


# --- a server that never answers ------------------------------------------------------

def test_a_server_that_never_answers_fails_the_stage_within_30_s(tmp_path):
    project = copy_project(tmp_path / "project")
    with socket.socket() as listener:  # accepts connections (backlog), never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        proc = subprocess.run([str(BIN / "tlearn"), "download"], cwd=project, capture_output=True,
                              text=True, timeout=60, env=env(MLFLOW_TRACKING_URI=uri))
        seconds = time.monotonic() - started
    print(f"dead server detected in {seconds:.1f} s")
    assert proc.returncode == 3
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and uri in lines[0] and "does not answer (timed out)" in lines[0]
    assert seconds < 30
    assert sorted(p.name for p in project.iterdir()) == ["dvc.yaml", "params.yaml", "src"]
