"""What a run records, as MLflow requests: params (one value each, lists as JSON),
metrics in batches with their steps (an epoch), files, the splits as dataset inputs, and a
stage's figures and curves. Used by the pipeline and stage runs and by standalone commands."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from tlearn.config import Config, to_flat_dict
from tlearn.io import read_csv
from tlearn.stages import Stage
from tlearn.tracking import provenance


def numeric_items(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite int/float entries (bools, strings, lists and dicts are not metrics)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def param_value(value: Any) -> str:
    """How a params.yaml value reads as an MLflow param: ``[256]``, ``None``, ``0.3``."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def stage_params(cfg: Config, stage: Stage) -> dict[str, Any]:
    """The flattened params keys the stage declares (a group brings all its keys), with the
    values it used: a params file's (the tuned head) when ``cfg`` was loaded with it."""
    return {k: v for k, v in to_flat_dict(cfg).items()
            if any(k == key or k.startswith(key + ".") for key in stage.param_keys)}


def history_metrics(prefix: str, rows: list[dict]) -> list[tuple[str, float, int]]:
    """``(f"{prefix}/{column}", value, step=epoch)`` for every numeric column of every row."""
    return [(f"{prefix}/{key}", value, int(row["epoch"])) for row in rows
            for key, value in numeric_items({k: v for k, v in row.items() if k != "epoch"}).items()]


def report_metrics(stages: Iterable[Stage]) -> dict[str, float]:
    """The numbers in the stages' JSON reports, under their MLflow names."""
    found = {}
    for stage in stages:
        if stage.report is None:
            continue
        with suppress(OSError, ValueError):
            values = json.loads(stage.report.read_text(encoding="utf-8"))
            found |= {stage.metric_name(k): v for k, v in numeric_items(values).items()}
    return found


# --------------------------------------------------------------------------------------
# Logging calls (batched: one request per kind)
# --------------------------------------------------------------------------------------


def log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, param_value(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def log_metrics(client, run_id: str, metrics: Iterable[tuple[str, float, int]],
                model_id: str | None = None, tags: Mapping[str, str] | None = None) -> None:
    """Metrics (and tags) in batches of 1,000: one request for a tuning trial."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    items = [Metric(key, value, now, step, model_id=model_id) for key, value, step in metrics]
    run_tags = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
    for start in range(0, max(len(items), 1), 1000):
        batch = items[start:start + 1000]
        if batch or run_tags:
            client.log_batch(run_id, metrics=batch, tags=run_tags)
            run_tags = []


def log_files(client, run_id: str, files: Iterable[Path]) -> None:
    """Each existing file under its own folder: reports/x.png, models/labels.json, ..."""
    for path in files:
        if path.is_file():
            folder = path.parent.as_posix()
            client.log_artifact(run_id, str(path), None if folder == "." else folder)


def log_datasets(client, run_id: str, cfg: Config, splits: Iterable[str]) -> None:
    """The prepared splits as dataset inputs (those the run already has are skipped)."""
    from mlflow.entities import DatasetInput, InputTag

    from tlearn import paths

    run = client.get_run(run_id)
    logged = {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs} \
        if run.inputs else set()
    datasets = [(split, provenance.split_dataset(cfg, split)) for split in splits
                if paths.prepared_split(split).is_dir()]
    inputs = [DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", split)])
              for split, ds in datasets if (ds.name, ds.digest) not in logged]
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def log_stage_outputs(client, run_id: str, stage: Stage, metrics: Mapping[str, Any]) -> None:
    """A stage's metrics, per-epoch curves, reports and other files (to its own run or
    the pipeline run)."""
    log_metrics(client, run_id, [(stage.metric_name(k), v, 0)
                                 for k, v in numeric_items(metrics).items()])
    if stage.history is not None and stage.history.is_file():
        log_metrics(client, run_id, history_metrics(stage.history_prefix,
                                                    read_csv(stage.history)))
    log_files(client, run_id, (*stage.reports, *stage.artifacts))


# --------------------------------------------------------------------------------------
# The pipeline run
# --------------------------------------------------------------------------------------
