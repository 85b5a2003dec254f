"""``tlearn run``: ``dvc repro`` (or ``dvc exp run -S key=value ...`` when parameters are
set, so DVC records the experiment too) as one pipeline execution in MLflow.

It hands DVC an invocation id; the stages DVC executes group their runs under one
pipeline run for it (:mod:`tlearn.tracking.runs`). Once DVC exits, the pipeline run gets
the final metrics and hashes and ends FINISHED, or FAILED with DVC's exit code. When DVC
executes no stage there is nothing new, and no run is logged, unless the registry has no
version of the model in the workspace: then evaluate runs again to register it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from tlearn import config
from tlearn.tracking import Settings
from tlearn.tracking.store import ENV_INVOCATION

log = logging.getLogger(__name__)
PARAMS_YAML, DVC_LOCK = Path("params.yaml"), Path("dvc.lock")
RUN_PREFIX = "run-"  # invocations of `tlearn run` (a bare `dvc repro` has "dvc-<pid>-...")


def dvc_command(sets: list[tuple[str, str]], exp: bool, targets: list[str],
                name: str | None = None) -> list[str]:
    """``dvc repro [targets]``, or ``dvc exp run -S k=v ... [targets]`` when anything is set."""
    dvc = _executable("dvc")
    if not (sets or exp or name):
        return [dvc, "repro", *targets]
    cmd = [dvc, "exp", "run"]
    for key, value in sets:
        cmd += ["-S", f"{key}={value}"]
    if name:
        cmd += ["-n", name]
    return cmd + targets


def _executable(name: str) -> str:
    beside = Path(sys.executable).parent / name  # the virtualenv's own dvc and tlearn
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def run(settings: Settings, sets: list[str], project_params: list[str], exp: bool = False,
        mlflow_project: bool = False, targets: list[str] | None = None,
        name: str | None = None, force: tuple[str, ...] = ()) -> int:
    """Run the pipeline as one tracked execution; returns DVC's exit code. ``force``:
    stages to rerun first although DVC sees no change (download, when the files of a
    local folder changed: DVC does not look inside it)."""
    from tlearn import preflight
    from tlearn.tracking import runs, store as tracking_store

    pairs = config.parse_sets(sets) + config.parse_sets(project_params, mlproject=True)
    cfg = config.load(PARAMS_YAML, overrides=config.typed_overrides(pairs))  # bad -S: exit 2
    preflight.check(cfg)  # before DVC deletes any output: a bad value costs nothing
    store = tracking_store.connect(settings, cfg.tracking.experiment, cfg.tracking.required)
    invocation = f"{RUN_PREFIX}{uuid.uuid4().hex}"
    adopted = _adopt(store, cfg, invocation, settings) if mlflow_project and store else None
    env = settings.child_env(os.environ, invocation=invocation, off=store is None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = dvc_command(pairs, exp or mlflow_project, list(targets or []), name)
    log.info("run: %s", " ".join(cmd))
    params_before = PARAMS_YAML.read_bytes()
    returncode = _rerun(force, env) if force else 0
    returncode = returncode or _run_dvc(cmd, env)
    if returncode and PARAMS_YAML.read_bytes() != params_before:
        # `dvc exp run -S` wrote the failed experiment's values into params.yaml.
        PARAMS_YAML.write_bytes(params_before)
        log.info("run: params.yaml restored to what it was before the failed run")
    if not returncode and store is not None:
        returncode = _sync_registry(store, cfg, env, targets or [])
    if store is not None:
        with store.guarded():
            pipeline = adopted or runs.PipelineRun.find(store, cfg, invocation)
            if pipeline is not None:
                pipeline.finish(returncode, [PARAMS_YAML, DVC_LOCK])
            elif returncode == 0:
                latest = runs.latest_pipeline_run(store)
                log.info("run: up to date, DVC executed no stage: nothing new to log%s",
                         f"; the latest pipeline run is {latest.info.run_id} "
                         f"({latest.info.run_name})" if latest else "")
            if mlflow_project and pipeline is not None and adopted is None \
                    and settings.mlflow_run_id:  # `mlflow run`'s run in another experiment
                store.client.set_tag(settings.mlflow_run_id, "tlearn.pipeline_run_id",
                                     pipeline.run_id)
                store.client.set_tag(pipeline.run_id, "tlearn.mlflow_project_run_id",
                                     settings.mlflow_run_id)
    if returncode:
        log.error("run: %s exited with %d", " ".join(cmd[:3]), returncode)
    return returncode


def _sync_registry(store, cfg: config.Config, env: dict[str, str], targets: list[str]) -> int:
    """Make @challenger the model in the workspace (registry.sync_challenger); when that
    model has no version, run the registering stage (evaluate) again: DVC skips it when
    the model it rebuilt is the locked one byte for byte (a fresh clone, another tracking
    store). Within the same execution, so its run nests under the same pipeline run."""
    from tlearn.stages import all_stages
    from tlearn.tracking import registry

    registering = next(name for name, stage in all_stages().items() if stage.registers_model)
    if targets and registering not in {target.split(":")[-1] for target in targets}:
        return 0  # a partial run: the model may not match the data yet
    registered = True
    with store.guarded():  # a store down with tracking.required false: warned, no rerun
        registered = registry.sync_challenger(store, cfg)
    if registered:
        return 0
    log.info("run: %r in %s has no version of models/model.keras on this test split (DVC "
             "did not run %s for it): running %s again to register it",
             cfg.tracking.registered_model, store.uri, registering, registering)
    return _rerun([registering], env)


def _rerun(stages: Sequence[str], env: dict[str, str]) -> int:
    """Run ``stages`` alone although DVC sees no change in what they read."""
    return _run_dvc([_executable("dvc"), "repro", "--force", "--single-item", *stages], env)


def _run_dvc(cmd: list[str], env: dict[str, str]) -> int:
    """Run DVC; when a stage failed with one of tlearn's own exit codes (2 bad input,
    3 tracking down), return that instead of DVC's generic 255."""
    exit_file = stage_exit_file(env[ENV_INVOCATION])
    try:
        returncode = subprocess.run(cmd, env=env).returncode
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        log.error("run: cannot start %s (%s)", cmd[0], exc)
        return 127
    finally:
        stage_code = int(exit_file.read_text()) if exit_file.is_file() else None
        exit_file.unlink(missing_ok=True)
    return stage_code if returncode and stage_code in (2, 3) else returncode


def stage_exit_file(invocation: str) -> Path:
    """Where a stage of ``tlearn run``'s execution leaves its exit code when it fails."""
    return Path(".dvc") / "tmp" / f"tlearn-exit-{invocation}"


def _adopt(store, cfg: config.Config, invocation: str, settings: Settings):
    """Started by ``mlflow run``: its run becomes the pipeline run when it is a running
    project run in ``tracking.experiment``; otherwise it only gets a pointer to ours."""
    from tlearn.tracking import runs

    project_run = settings.mlflow_run_id
    try:
        run = store.client.get_run(project_run) if project_run else None
    except Exception:  # noqa: BLE001 - not a run of this store
        run = None
    if run is None or run.info.status != "RUNNING" \
            or run.data.tags.get("mlflow.source.type") != "PROJECT":
        log.warning("tracking: MLFLOW_RUN_ID=%s is not a running `mlflow run` run; ignored",
                    project_run)
        return None
    if run.info.experiment_id != store.experiment_id:
        log.info("tracking: `mlflow run` put its run %s in another experiment; the pipeline "
                 "run goes to %r (pass --experiment-name %s to make them one)", project_run,
                 cfg.tracking.experiment, cfg.tracking.experiment)
        return None
    return runs.PipelineRun.create(store, cfg, invocation, None, adopt=project_run)
