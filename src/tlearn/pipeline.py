"""``tlearn run``: one pipeline execution is one MLflow parent run.

It opens the parent run (:func:`tlearn.tracking.start_pipeline`), runs ``dvc repro`` (or
``dvc exp run -S key=value ...`` when parameters are set, so DVC records the experiment
too) with the parent's id in ``TLEARN_PARENT_RUN_ID`` for the stage processes, then logs
the complete picture to the parent (all params, the final metrics from the reports, the
dvc.lock hashes) and ends it FINISHED, or FAILED with DVC's exit code.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tlearn import config, tracking
from tlearn.config import parse_sets

log = logging.getLogger(__name__)




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


def run(sets: list[str], project_params: list[str], exp: bool = False,
        mlflow_project: bool = False, targets: list[str] | None = None,
        name: str | None = None) -> int:
    """Run the pipeline under one parent run; returns DVC's exit code."""
    pairs = parse_sets(sets) + parse_sets(project_params, keep_empty=False)
    cfg = config.load(config.PARAMS_FILE, overrides=config.typed_overrides(pairs))  # bad -S: one line, exit 2
    pipeline = tracking.start_pipeline(cfg, mlflow_project=mlflow_project)
    env = (pipeline.child_env(os.environ) if pipeline else
           {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = dvc_command(pairs, exp or mlflow_project, list(targets or []), name)
    log.info("run: %s", " ".join(cmd))
    try:
        returncode = subprocess.run(cmd, env=env).returncode
    except KeyboardInterrupt:
        returncode = 130
    except OSError as exc:
        returncode = 127
        log.error("run: cannot start %s (%s)", cmd[0], exc)
    if pipeline is not None:
        pipeline.finish(returncode)
    if returncode:
        log.error("run: %s exited with %d", " ".join(cmd[:3]), returncode)
    return returncode
