"""Runs: one MLflow run per stage that executes, grouped under one pipeline run per
pipeline execution, however the pipeline was started.

The first stage that executes in an execution creates the pipeline run (every params.yaml
key, the tags, the final metrics of the stages upstream of it, which did not need to run);
each stage then nests its own run under it and, when done, adds its metrics, curves and
reports to the pipeline run. An execution is recognised by ``Settings.invocation``:
``tlearn run`` passes one to DVC; under a bare ``dvc repro`` or ``dvc exp run`` it is the
DVC process that started the stage. So a run of the pipeline in which DVC executes no
stage logs nothing, and every way of running it gives the same picture in ``mlflow ui``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tlearn.config import Config, to_flat_dict
from tlearn.data.splits import SPLITS
from tlearn.stages import Stage, Untracked, all_stages, upstream_of
from tlearn.tracking import provenance
from tlearn.tracking.records import (log_datasets, log_files, log_metrics, log_params,
                                     log_stage_outputs, numeric_items, report_metrics,
                                     stage_params)
from tlearn.tracking.store import Settings, Store, connect, one_line, tracked

log = logging.getLogger(__name__)
PIPELINE = "pipeline"                 # the ``stage`` tag of pipeline runs
INVOCATION_TAG = "tlearn.invocation"  # which execution a pipeline run belongs to
STAGES_TAG = "tlearn.stages"          # the stages that executed in it, in order
ADOPTED_TAG = "tlearn.adopted"        # a run `mlflow run` made: tlearn never ends it


# --------------------------------------------------------------------------------------
# Names and values
# --------------------------------------------------------------------------------------


class PipelineRun:
    """The run that groups one pipeline execution: all params, the final metrics."""

    def __init__(self, store: Store, run_id: str, cfg: Config):
        self.store, self.client, self.run_id, self.cfg = store, store.client, run_id, cfg
        self.adopted = self.client.get_run(run_id).data.tags.get(ADOPTED_TAG) == "true"

    @classmethod
    def find(cls, store: Store, cfg: Config, invocation: str) -> PipelineRun | None:
        runs = store.client.search_runs(
            [store.experiment_id], max_results=1,
            filter_string=f"tags.`{INVOCATION_TAG}` = '{invocation}'")
        return cls(store, runs[0].info.run_id, cfg) if runs else None

    @classmethod
    def create(cls, store: Store, cfg: Config, invocation: str, first_stage: Stage | None,
               adopt: str | None = None) -> PipelineRun:
        """The pipeline run of ``invocation``, made when ``first_stage`` is the first to
        execute: the stages upstream of it were skipped, so their reports are final.
        ``adopt``: make the run ``mlflow run`` created the pipeline run instead."""
        settings, client = store.settings, store.client
        tags = provenance.run_tags(cfg, PIPELINE, settings.dvc_exp_name) | {
            INVOCATION_TAG: invocation, "mlflow.source.name": "tlearn pipeline"}
        if adopt:
            run_id = adopt
            for key, value in (tags | {ADOPTED_TAG: "true"}).items():
                client.set_tag(run_id, key, value)
        else:
            name = settings.dvc_exp_name or f"{PIPELINE} {time.strftime('%Y-%m-%d %H:%M:%S')}"
            run_id = client.create_run(store.experiment_id, tags=tags, run_name=name).info.run_id
        log_params(client, run_id, to_flat_dict(cfg))
        stages = all_stages()
        upstream = [stages[s] for s in upstream_of(first_stage.name)] if first_stage else []
        log_metrics(client, run_id, [(k, v, 0) for k, v in report_metrics(upstream).items()])
        log.info("tracking: pipeline run %s at %s", run_id, store.uri)
        return cls(store, run_id, cfg)

    def stage_started(self, stage: Stage) -> None:
        if not self.adopted:  # a bare `dvc repro` ended it after the previous stage
            self.client.update_run(self.run_id, status="RUNNING")

    def stage_ended(self, stage: Stage, metrics: Mapping[str, Any] | None) -> None:
        """Add what the stage wrote (``metrics`` None: it failed) and end the run as it
        stands, so a bare ``dvc repro`` leaves it complete after its last stage."""
        client, run_id = self.client, self.run_id
        executed = [s for s in client.get_run(run_id).data.tags.get(STAGES_TAG, "").split(",")
                    if s] + [stage.name]
        client.set_tag(run_id, STAGES_TAG, ",".join(executed))
        if metrics is not None:
            log_stage_outputs(client, run_id, stage, metrics)
            log_datasets(client, run_id, self.cfg, stage.datasets)
            self.log_settled_metrics(executed)
            self.log_provenance()
        if not self.adopted:
            client.set_terminated(run_id, "FINISHED" if metrics is not None else "FAILED")

    def log_settled_metrics(self, executed: list[str]) -> None:
        """Metrics of stages DVC will not run again in this execution: those not downstream
        of any stage that executed (values already on the run are not logged twice)."""
        stages = all_stages()
        downstream = {name for name in stages if upstream_of(name) & set(executed)}
        current = self.client.get_run(self.run_id).data.metrics
        settled = report_metrics(s for s in stages.values() if s.name not in downstream)
        log_metrics(self.client, self.run_id,
                    [(k, v, 0) for k, v in settled.items() if current.get(k) != v])

    def log_provenance(self) -> None:
        commit, dirty = provenance.read_git_state()
        if commit:
            self.client.set_tag(self.run_id, "git.dirty", str(dirty).lower())
        if sha := provenance.data_sha256():
            self.client.set_tag(self.run_id, "data.sha256", sha)
        for path, digest in provenance.lock_hashes().items():
            self.client.set_tag(self.run_id, f"dvc.{path}", digest)

    def finish(self, returncode: int, files: Iterable[Path]) -> None:
        """``tlearn run``'s last word once DVC exited: the final metrics and reports of the
        stages DVC skipped, the hashes of the finished dvc.lock, ``files``, and the status
        from DVC's exit code."""
        client, run_id = self.client, self.run_id
        if returncode == 0:
            self.log_settled_metrics([])
            self.log_provenance()
            executed = client.get_run(run_id).data.tags.get(STAGES_TAG, "").split(",")
            log_files(client, run_id, [path for stage in all_stages().values()
                                       if stage.name not in executed
                                       for path in (*stage.reports, *stage.artifacts)])
            log_files(client, run_id, files)
            log_datasets(client, run_id, self.cfg, SPLITS)
        status = "FINISHED" if returncode == 0 else ("KILLED" if returncode == 130 else "FAILED")
        if self.adopted:  # `mlflow run` ends the run it made itself
            client.set_tag(run_id, "tlearn.status", status)
            if name := client.get_run(run_id).data.tags.get("dvc.exp_name"):
                client.update_run(run_id, name=name)
        else:
            client.set_terminated(run_id, status)
        metrics = client.get_run(run_id).data.metrics
        if "test/accuracy" in metrics:
            log.info("tracking: pipeline run %s: test/accuracy %.4f; compare runs with "
                     "`make ui`", run_id, metrics["test/accuracy"])


def latest_pipeline_run(store: Store) -> Any | None:
    runs = store.client.search_runs([store.experiment_id], max_results=1,
                                    filter_string=f"tags.stage = '{PIPELINE}'",
                                    order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


# --------------------------------------------------------------------------------------
# Stage runs
# --------------------------------------------------------------------------------------


class StageRun:
    """One stage's run, nested under the pipeline run of its execution when there is one."""

    def __init__(self, store: Store, stage: Stage, cfg: Config, pipeline_cfg: Config):
        import mlflow

        self.store, self.stage, self.cfg, self.client = store, stage, cfg, store.client
        self.pipeline = self._pipeline(pipeline_cfg)
        tags = provenance.run_tags(cfg, stage.name, store.settings.dvc_exp_name) | {
            "mlflow.source.name": f"tlearn {stage.name}"}
        if self.pipeline:
            tags["mlflow.parentRunId"] = self.pipeline.run_id
        experiment_id = (self.client.get_run(self.pipeline.run_id).info.experiment_id
                         if self.pipeline else store.experiment_id)
        run_id = self.client.create_run(experiment_id, run_name=stage.name,
                                        tags=tags).info.run_id
        while mlflow.active_run():  # never nest under a run left active in this process
            mlflow.end_run()
        # Active for MLflow's model logging; an explicit id wins over a stray MLFLOW_RUN_ID.
        self.run = mlflow.start_run(run_id=run_id)
        self.run_id = self.run.info.run_id
        log_params(self.client, self.run_id, stage_params(cfg, stage))
        log.info("tracking: %s run %s%s at %s", stage.name, self.run_id,
                 f" (pipeline {self.pipeline.run_id})" if self.pipeline else "", store.uri)

    def _pipeline(self, cfg: Config) -> PipelineRun | None:
        """The pipeline run of this execution (made now if this stage is the first to
        execute); None for a stage run on its own, outside DVC and ``tlearn run``."""
        invocation = self.store.settings.invocation
        if not invocation:
            return None
        pipeline = (PipelineRun.find(self.store, cfg, invocation)
                    or PipelineRun.create(self.store, cfg, invocation, self.stage))
        pipeline.stage_started(self.stage)
        return pipeline

    def child(self, name: str, params: Mapping[str, Any]) -> ChildRun | Untracked:
        """A run nested under this stage's run (see :class:`tlearn.stages.Tracker`)."""
        return child_run(self.store, self.run_id, name, params)

    def log_params(self, params: Mapping[str, Any]) -> None:
        with self.store.guarded():
            log_params(self.client, self.run_id, params)

    def for_worker(self) -> WorkerTracker:
        return WorkerTracker(self.store.settings, self.cfg.tracking.experiment,
                             self.store.required, self.run_id)

    def finish(self, metrics: Mapping[str, Any]) -> None:
        """Log what the completed stage wrote, here and on the pipeline run."""
        from tlearn.tracking import models, registry

        with self.store.guarded():
            stage, client = self.stage, self.client
            log_datasets(client, self.run_id, self.cfg, stage.datasets)
            log_stage_outputs(client, self.run_id, stage, metrics)
            if stage.model is not None:
                models.log_project_model(stage.model)
            if stage.registers_model:
                registry.register(self.store, self.cfg, metrics, self.run_id,
                                  self.pipeline.run_id if self.pipeline else None)
            if sha := provenance.data_sha256():  # download may just have written the data
                client.set_tag(self.run_id, "data.sha256", sha)
            if self.pipeline:
                self.pipeline.stage_ended(stage, metrics)

    def end(self, error: BaseException | None = None) -> None:
        import mlflow

        status = ("FINISHED" if error is None else
                  "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        if error is not None:
            with suppress(Exception):  # the stage's own error is what matters
                self.client.set_tag(self.run_id, "error", one_line(error))
                if self.pipeline:
                    self.pipeline.stage_ended(self.stage, None)
        mlflow.end_run(status)


def child_run(store: Store, parent_id: str, name: str,
              params: Mapping[str, Any]) -> ChildRun | Untracked:
    """A run nested under ``parent_id``, or :class:`Untracked` once the store failed (and
    is not required)."""
    with store.guarded():
        if not store.disabled:
            return ChildRun(store, store.client.get_run(parent_id), name, params)
    return Untracked()


class ChildRun:
    """A run nested under a stage's run: a tuning trial. Four requests whatever its number
    of epochs: create, params, then its metrics and tags in one batch, and the status."""

    def __init__(self, store: Store, parent: Any, name: str, params: Mapping[str, Any]):
        self.store, self.client = store, store.client
        tags = {"mlflow.parentRunId": parent.info.run_id, "stage": parent.data.tags["stage"]}
        self.run_id = self.client.create_run(parent.info.experiment_id, run_name=name,
                                             tags=tags).info.run_id
        log_params(self.client, self.run_id, params)
        self.metrics: list[tuple[str, float, int]] = []

    def log(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.metrics += [(k, v, step) for k, v in numeric_items(metrics).items()]

    def end(self, status: str = "FINISHED", tags: Mapping[str, str] | None = None) -> None:
        with self.store.guarded():
            log_metrics(self.client, self.run_id, self.metrics, tags=tags)
            self.client.set_terminated(self.run_id, status)


class WorkerTracker:
    """A stage run as another process sees it (``tlearn tune --workers N``): it connects
    when it is first used there and nests children under the same run. Picklable: it holds
    only where the store is and which run."""

    def __init__(self, settings: Settings, experiment: str, required: bool, run_id: str):
        self.settings, self.experiment, self.required, self.run_id = \
            settings, experiment, required, run_id
        self._store: Store | None = None
        self._connected_once = False

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None, "_connected_once": False}

    def child(self, name: str, params: Mapping[str, Any]) -> ChildRun | Untracked:
        store = self._connected()
        return child_run(store, self.run_id, name, params) if store else Untracked()

    def log_params(self, params: Mapping[str, Any]) -> None:
        if store := self._connected():
            with store.guarded():
                log_params(store.client, self.run_id, params)

    def for_worker(self) -> WorkerTracker:
        return self

    def _connected(self) -> Store | None:
        """The store, connected on first use in this process (None: down, not required)."""
        if not self._connected_once:
            self._store = connect(self.settings, self.experiment, self.required)
            self._connected_once = True
        return self._store


class _NoRun(Untracked):
    """Tracking is off: a stage runs the same, nothing is logged."""

    def finish(self, metrics: Mapping[str, Any]) -> None:
        pass


@contextmanager
def stage_run(stage: Stage, cfg: Config, settings: Settings,
              pipeline_cfg: Config | None = None) -> Iterator[StageRun | _NoRun]:
    """Track one stage: connect first (before the stage does any work), yield the run for
    ``run.finish(metrics)`` once the stage completed, end it FINISHED, FAILED or KILLED.
    ``cfg`` is what the stage ran with (its params files included); ``pipeline_cfg``,
    params.yaml's, goes to the pipeline run (default: ``cfg``)."""
    store = connect(settings, cfg.tracking.experiment, cfg.tracking.required)
    with tracked(store, lambda s: StageRun(s, stage, cfg, pipeline_cfg or cfg), _NoRun()) as run:
        yield run
