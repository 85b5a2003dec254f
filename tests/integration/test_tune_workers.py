"""``tlearn tune`` as processes on tiny cached features, with the default journal file
storage and the embedded MLflow store:

- ``--workers 2`` killed with SIGKILL mid-study; the rerun marks the killed trials failed
  and completes only the missing ones: every trial number once, none lost;
- ``make tune-ui`` (optuna-dashboard) answers on 127.0.0.1 and lists the study.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import requests

from conftest import REPO, free_port, tune_inputs
from tlearn import paths, tune

BIN = Path(sys.executable).parent
N_TRIALS = 6


def env() -> dict:
    out = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "TLEARN_", "DVC_"))}
    return out | {"PATH": f"{BIN}{os.pathsep}{out.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "3",
                  "PYTHONUNBUFFERED": "1"}


def tlearn_tune(project: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "tlearn"), "tune", *args], cwd=project, env=env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def studies(project: Path) -> dict[str, list[optuna.trial.FrozenTrial]]:
    storage = tune.open_storage(str(project / "optuna/journal.log"))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
            for s in optuna.get_all_study_summaries(storage)}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune")
    for name in ("Makefile", "requirements.lock", "pyproject.toml"):
        (root / name).write_text((REPO / name).read_text())
    return tune_inputs(root, tune={"n_trials": N_TRIALS})


def test_a_killed_study_with_two_workers_completes_only_the_missing_trials(project):
    log = project / "killed.log"
    proc = subprocess.Popen([str(BIN / "tlearn"), "tune", "--workers", "2"], cwd=project,
                            env=env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own group: the workers die with it
    deadline, finished = time.monotonic() + 300, []
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if (project / "optuna/journal.log").exists():
            (trials,) = studies(project).values() or [[]]
            finished = [t for t in trials if tune.finished(t)]
            workers = {t.user_attrs[tune.WORKER]["pid"] for t in trials if tune.WORKER in t.user_attrs}
            if len(finished) >= 2 and len(workers) == 2:
                break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"tune ended before the kill:\n{log.read_text()}"
    (trials,) = studies(project).values()
    killed = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    done = len([t for t in trials if tune.finished(t)])
    assert 2 <= done < N_TRIALS and killed, [t.state for t in trials]
    assert len({t.user_attrs[tune.WORKER]["pid"] for t in trials}) == 2  # both workers ran

    result = tlearn_tune(project)
    (name, trials), = studies(project).items()
    counted = [t for t in trials if tune.counts(t)]
    assert len(counted) == N_TRIALS and all(t.state.is_finished() for t in trials)
    assert len({t.number for t in counted}) == N_TRIALS
    for trial in killed:  # marked failed, not counted, replaced
        assert trials[trial.number].state.name == "FAIL" and not tune.counts(trials[trial.number])
        assert f"trial {trial.number}: its process" in result.stderr
    report = json.loads((project / "reports/tune.json").read_text())
    assert report["ran"] == N_TRIALS - done and report["trials"] == N_TRIALS
    assert report["study"] == name and (project / paths.HEAD_PARAMS).is_file()

    import mlflow  # the rerun's trials nest under its tune run: none ran twice

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tlearn").experiment_id
    stage_runs = client.search_runs([exp], filter_string="attributes.run_name = 'tune'",
                                    order_by=["attributes.start_time ASC"])
    rerun = client.search_runs([exp], filter_string="tags.mlflow.parentRunId = "
                                                    f"'{stage_runs[-1].info.run_id}'")
    first = client.search_runs([exp], filter_string="tags.mlflow.parentRunId = "
                                                    f"'{stage_runs[0].info.run_id}'")
    assert len(rerun) == N_TRIALS - done
    finished_numbers = {t.number for t in counted}
    numbers = [int(r.data.tags["optuna.trial"]) for r in rerun] + [
        int(r.data.tags["optuna.trial"]) for r in first if r.info.status != "RUNNING"]
    assert sorted(numbers) == sorted(finished_numbers)


def test_make_tune_ui_serves_the_dashboard_listing_the_studies(project):
    port, log = free_port(), project / "ui.log"
    make = ["make", "-o", str(BIN.parent / ".installed"), f"VENV={BIN.parent}",
            f"TUNE_UI_PORT={port}", "tune-ui"]
    ui = subprocess.Popen(make, cwd=project, env=env(), stdout=open(log, "w"),
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while time.monotonic() < deadline:
            assert ui.poll() is None, log.read_text()
            try:
                page = requests.get(f"{url}/dashboard", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.3)
        assert page.status_code == 200 and "<html" in page.text.lower()
        listed = requests.get(f"{url}/api/studies", timeout=10)
        assert listed.status_code == 200
        assert {s["study_name"] for s in listed.json()["study_summaries"]} == set(studies(project))
    finally:
        os.killpg(ui.pid, signal.SIGINT)  # gunicorn's quick shutdown (SIGTERM: graceful, 30 s)
        try:
            ui.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
