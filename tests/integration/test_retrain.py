"""``tlearn retrain`` through the real CLI on a committed tiny project (3 colour classes,
a local folder source), one scenario after another on the same project: the first
champion, a run with nothing to do, the lock, the data gate, new images, a worse
challenger, and a retrain SIGKILLed during finetune. The last two are marked slow
(`make test-slow`, ~2 min more): they make their own champion when run alone. So is a
significantly better challenger's promotion, on a project of its own (~4 min)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import crontab_command
from test_tracking_pipeline import BIN, COLOURS, aliases_of, colour_images, env, make_project
from tlearn import lock

pytestmark = pytest.mark.skipif(not shutil.which("git"), reason="needs git")


def retrain(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tlearn"), "retrain", *args], cwd=project, env=env(),
                          capture_output=True, text=True, timeout=900)


def history(project: Path) -> list[dict]:
    with open(project / "reports/retrain_history.csv", newline="") as f:
        return list(csv.DictReader(f))


def client(project: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def add_images(source: Path, seed: int, per_class: int) -> None:
    rng = np.random.default_rng(seed)
    for label, colour in COLOURS.items():
        for i in range(per_class):
            img = np.full((40, 40, 3), colour, np.int16) + rng.integers(-30, 30, (40, 40, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                source / label / f"new_{seed}_{i}.png")


def source_of(project: Path) -> Path:
    return Path(yaml.safe_load((project / "params.yaml").read_text())["data"]["source"])


def set_param(project: Path, dotted: str, value) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    group, key = dotted.split(".")
    params[group][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("retrain")
    return make_project(root / "project", colour_images(root / "source"))


def test_the_first_run_makes_the_champion_and_a_second_does_nothing_in_seconds(project):
    first = retrain(project)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.strip().endswith("the first champion")
    assert aliases_of(client(project)) == {"challenger": "1", "champion": "1"}

    started = time.monotonic()
    second = retrain(project)
    seconds = time.monotonic() - started
    print(f"retrain with nothing to do: {seconds:.1f} s")
    assert second.returncode == 0 and seconds < 30  # no TensorFlow, no DVC stage
    assert "up to date" in second.stderr and "champion tlearn v1 (test accuracy" in second.stderr
    rows = history(project)
    assert [row["outcome"] for row in rows] == ["promoted", "up to date"]
    decisions = client(project).search_runs(
        [client(project).get_experiment_by_name("tlearn").experiment_id],
        filter_string="tags.stage = 'retrain'")
    assert len(decisions) == 1 and decisions[0].data.tags["outcome"] == "promoted"
    evaluate = json.loads((project / "reports/evaluate.json").read_text())
    low, high = evaluate["accuracy_ci95"]
    assert low < evaluate["accuracy"] <= high  # Wilson: an interval even at accuracy 1


def test_the_crontab_line_runs_as_written(project, tmp_path):
    """deploy/crontab's command, verbatim, with $HOME/tlearn being this project."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "tlearn").symlink_to(project)
    (project / ".venv").symlink_to(BIN.parent)  # the clone's own virtualenv
    try:
        proc = subprocess.run(["sh", "-c", crontab_command()], env=env(HOME=str(home)),
                              capture_output=True, text=True, timeout=300)
    finally:
        (project / ".venv").unlink()
    assert proc.returncode == 0 and proc.stdout == proc.stderr == ""  # all in the log
    assert "retrain: up to date" in (project / "logs/retrain.log").read_text()


def test_a_second_retrain_while_one_runs_exits_3_naming_the_holder(project):
    with lock.held(project / ".tlearn" / "retrain.lock", "test"):
        proc = retrain(project)
    assert proc.returncode == 3
    assert proc.stderr.strip() == proc.stderr.strip().splitlines()[-1]  # one line
    assert f"already running as pid {os.getpid()}" in proc.stderr


def test_the_data_gate_stops_broken_data_before_training(project):
    source = source_of(project)
    kept = source.parent / "green-kept"
    shutil.move(source / "green", kept)  # a class vanishes
    try:
        proc = retrain(project)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1] == (
            f"retrain: data gate: class(es) green vanished from {source}")
        assert aliases_of(client(project))["champion"] == "1"
        assert history(project)[-1]["outcome"] == "failed"
    finally:
        shutil.move(kept, source / "green")


def test_new_images_retrain_and_the_decision_follows_mcnemar(project):
    add_images(source_of(project), seed=7, per_class=5)
    proc = retrain(project, "--commit")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = history(project)[-1]
    assert "images added, removed or changed" in row["changed"]
    assert row["challenger_version"] == "2" and row["champion_version"] == "1"
    promoted = row["outcome"] == "promoted"
    p_value = float(row["p_value"])
    assert promoted == (float(row["difference"]) > 0 and p_value < 0.05)
    assert aliases_of(client(project))["champion"] == ("2" if promoted else "1")
    decision = proc.stdout.strip().splitlines()[-1]  # after DVC's own output
    print(f"new images: {decision}")
    log = subprocess.run(["git", "log", "-1", "--format=%s", "--", "dvc.lock"], cwd=project,
                         capture_output=True, text=True).stdout
    assert log.strip() == f"tlearn retrain: {decision}"  # --commit


def test_dvc_push_then_pull_in_a_fresh_clone_gives_the_same_models(project, tmp_path):
    from tlearn.io import file_digest

    dvc = str(BIN / "dvc")
    for cmd in ([dvc, "remote", "add", "-d", "store", str(tmp_path / "remote")],
                ["git", "commit", "-qam", "a DVC remote"], [dvc, "push", "-q"],
                ["git", "clone", "-q", str(project), str(tmp_path / "clone")]):
        proc = subprocess.run(cmd, cwd=project, env=env(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    pulled = subprocess.run([dvc, "pull", "-q"], cwd=tmp_path / "clone", env=env(),
                            capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    for name in ("models/model.keras", "models/head.keras", "models/labels.json"):
        assert file_digest(tmp_path / "clone" / name) == file_digest(project / name), name


# A head at chance level, and no linear probe shipped in its place (the floor would).
LEARNS_NOTHING = {"head.learning_rate": 1e-7, "head.epochs": 1, "finetune.probe_floor": False}


def champion_of(project: Path) -> str:
    """The champion's version; the first retrain makes one when there is none yet."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = aliases_of(client(project))
    except MlflowException:  # no registered model yet
        aliases = {}
    if "champion" not in aliases:
        assert retrain(project).returncode == 0
    return aliases_of(client(project))["champion"]


@pytest.mark.slow
def test_a_significantly_better_challenger_is_promoted(tmp_path):
    source = colour_images(tmp_path / "source")
    add_images(source, seed=3, per_class=25)  # 40 per class: ~18 test images
    project = make_project(tmp_path / "project", source)
    params = (project / "params.yaml").read_text()
    for dotted, value in {**LEARNS_NOTHING, "finetune.learning_rate": 1e-7,
                          "retrain.min_accuracy": 0.0}.items():
        set_param(project, dotted, value)
    first = retrain(project)
    assert first.returncode == 0 and aliases_of(client(project))["champion"] == "1", \
        first.stderr[-3000:]
    (project / "params.yaml").write_text(params)  # the real settings: a challenger
    proc = retrain(project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"better challenger: {proc.stdout.strip().splitlines()[-1]}")
    row = history(project)[-1]
    assert row["changed"].startswith("stages to run: tune")  # the head params changed
    assert row["outcome"] == "promoted" and float(row["p_value"]) < 0.05, row
    assert aliases_of(client(project))["champion"] == "2"


@pytest.mark.slow
def test_a_worse_challenger_is_not_promoted_and_says_why(project):
    champion = champion_of(project)
    params = (project / "params.yaml").read_text()
    for dotted, value in LEARNS_NOTHING.items():
        set_param(project, dotted, value)
    try:
        proc = retrain(project)
        assert proc.returncode == 0, proc.stderr[-3000:]
        print(f"worse challenger: {proc.stdout.strip().splitlines()[-1]}")
        row = history(project)[-1]
        assert row["outcome"] == "kept" and row["reason"].startswith("not better: -")
        assert aliases_of(client(project))["champion"] == champion
        version = client(project).get_model_version("tlearn", row["challenger_version"])
        assert version.tags["tlearn.decision"].startswith("kept: ")
    finally:
        (project / "params.yaml").write_text(params)


@pytest.mark.slow
def test_a_retrain_killed_during_finetune_leaves_the_champion_and_the_next_one_succeeds(
        project):
    champion = champion_of(project)
    set_param(project, "finetune.epochs", 2)  # something to retrain
    log = project / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "tlearn"), "retrain"], cwd=project, env=env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while "Running stage 'finetune'" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((project / ".tlearn/retrain.lock").read_text())["pid"] == proc.pid
    assert aliases_of(client(project))["champion"] == champion

    after = retrain(project)  # takes the dead process's lock over
    assert after.returncode == 0, after.stderr[-3000:]
    assert history(project)[-1]["outcome"] in ("promoted", "kept")
    assert not (project / ".tlearn/retrain.lock").exists()
