"""The team set-up the README describes, for real: one PostgreSQL holds the Optuna study
and, behind an ``mlflow server``, MLflow's runs; two machines (two project folders with
the same features) run ``tlearn tune`` at once on it.

A private cluster (``initdb`` + ``pg_ctl`` from Debian's postgresql package, which
``make test`` installs as root) in a temporary folder on a free 127.0.0.1 port; as root,
the cluster runs as the package's ``postgres`` user (PostgreSQL refuses root)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import requests

from conftest import free_port, tune_inputs
from tlearn import paths, tune

BIN = Path(sys.executable).parent
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
N_TRIALS = 10

pytestmark = pytest.mark.skipif(not PG_BIN, reason="PostgreSQL is not installed (as root, "
                                                   "make test installs Debian's postgresql)")


def as_cluster_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    """A running private cluster; yields ``postgresql://tlearn@127.0.0.1:<port>``."""
    import psycopg

    bin_dir, port = PG_BIN[-1].parent, free_port()
    base = Path(tempfile.mkdtemp(prefix="tlearn-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data = base / "data"
    subprocess.run(as_cluster_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", "tlearn",
                                     "-A", "trust", "--no-sync"]),
                   check=True, capture_output=True)
    subprocess.run(as_cluster_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-l",
                                     str(base / "log"), "-w", "-o",
                                     f"-p {port} -k {base} -c listen_addresses=127.0.0.1 "
                                     "-c fsync=off", "start"]),
                   check=True, capture_output=True)
    url = f"postgresql://tlearn@127.0.0.1:{port}"
    try:
        with psycopg.connect(f"{url}/postgres", autocommit=True) as connection:
            for database in ("optuna", "mlflow"):
                connection.execute(f"CREATE DATABASE {database}")
        yield url
    finally:
        subprocess.run(as_cluster_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m",
                                         "immediate", "stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """``mlflow server --workers 1`` on 127.0.0.1 with its runs in the PostgreSQL."""
    base = tmp_path_factory.mktemp("mlflow")
    port, log = free_port(), base / "server.log"
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1", "--backend-store-uri",
                             f"{postgres}/mlflow", "--artifacts-destination",
                             str(base / "artifacts")], cwd=base, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        yield uri
    finally:  # a throw-away server: no need to wait for a graceful shutdown
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_two_machines_share_one_study_on_postgresql(postgres, mlflow_server, tmp_path):
    import mlflow

    storage = f"{postgres}/optuna"
    machines = [tune_inputs(tmp_path / name, tune={"n_trials": N_TRIALS, "storage": storage})
                for name in ("machine-a", "machine-b")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TLEARN_"))}
    env |= {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "3",
            "MLFLOW_TRACKING_URI": mlflow_server}
    logs = [machine / "tune.log" for machine in machines]
    procs = [subprocess.Popen([str(BIN / "tlearn"), "tune"], cwd=machine, env=env,
                              stdout=open(log, "w"), stderr=subprocess.STDOUT)
             for machine, log in zip(machines, logs)]
    for proc, log in zip(procs, logs):
        assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]

    reports = [json.loads((m / "reports/tune.json").read_text()) for m in machines]
    (name,) = {r["study"] for r in reports}
    trials = optuna.load_study(study_name=name, storage=tune.open_storage(storage)).get_trials()
    ran = [t for t in trials if tune.counts(t)]
    assert len(ran) == N_TRIALS and all(t.state.is_finished() for t in trials)
    assert sorted({t.number for t in ran}) == sorted(t.number for t in ran)  # none twice
    for trial in trials:  # a trial past the total (a rare race) is skipped, never run
        assert tune.counts(trial) or tune.SKIPPED in trial.user_attrs
    by_machine = [r["ran"] for r in reports]
    assert sum(by_machine) == N_TRIALS and min(by_machine) >= 1, by_machine
    # both machines end with the study's best head
    assert (machines[0] / paths.HEAD_PARAMS).read_text() == \
        (machines[1] / paths.HEAD_PARAMS).read_text()
    assert reports[0]["best_value"] == reports[1]["best_value"]

    client = mlflow.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("tlearn").experiment_id
    stage_runs = client.search_runs([exp], filter_string="attributes.run_name = 'tune'")
    assert len(stage_runs) == 2 and {r.info.status for r in stage_runs} == {"FINISHED"}
    nested = [r for run in stage_runs for r in client.search_runs(
        [exp], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in nested) == \
        sorted(t.number for t in ran)
    for run in nested:
        assert run.data.tags["optuna.state"] in ("COMPLETE", "PRUNED")
        assert client.get_metric_history(run.info.run_id, "head/val_accuracy")
