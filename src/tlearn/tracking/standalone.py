"""Runs of the commands outside the pipeline (``tlearn regress``, ``tlearn probe``): one
top-level run each, in the command's own experiment, with the pipeline's conventions: the
params it used, the git state as tags, per-epoch curves with step = the epoch,
``test/<metric>`` figures, its reports as artifacts and its model with a signature."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlearn.stages import Untracked
from tlearn.tracking import provenance
from tlearn.tracking.records import (history_metrics, log_files, log_metrics, log_params,
                                     numeric_items)
from tlearn.tracking.store import Settings, Store, connect, one_line, tracked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Regressor:
    """A command's regression model: ``example``, a few rows of its input table."""

    file: Path
    example: Any


@dataclass(frozen=True)
class ImageClassifier:
    """A command's image classifier: ``example``, a few prepared uint8 images."""

    file: Path
    example: np.ndarray
    labels: list[str]
    resize_mode: str  # how its images are square-ified


class CommandRun:
    def __init__(self, store: Store, name: str, params: Mapping[str, Any],
                 tags: Mapping[str, str]):
        import mlflow

        commit, dirty = provenance.git_state()
        git = {"git.commit": commit, "git.dirty": str(dirty).lower(),
               "mlflow.source.git.commit": commit} if commit else {}
        self.store, self.client = store, store.client
        self.run_id = self.client.create_run(store.experiment_id, run_name=name, tags={
            "stage": name, "mlflow.source.name": f"tlearn {name}", **git, **tags}).info.run_id
        while mlflow.active_run():  # never nest under a run left active in this process
            mlflow.end_run()
        mlflow.start_run(run_id=self.run_id)  # active for MLflow's model logging
        log_params(self.client, self.run_id, params)
        log.info("tracking: %s run %s at %s", name, self.run_id, store.uri)

    def finish(self, metrics: Mapping[str, Any], files: Iterable[Path],
               model: Regressor | ImageClassifier,
               history: tuple[str, list[dict]] | None = None) -> None:
        """The figures, the report files, the model and the per-epoch curves ``(prefix,
        rows)``, if any."""
        from tlearn.tracking import models

        with self.store.guarded():
            log_metrics(self.client, self.run_id,
                        [(k, v, 0) for k, v in numeric_items(metrics).items()]
                        + (history_metrics(*history) if history else []))
            log_files(self.client, self.run_id, files)
            if isinstance(model, Regressor):
                models.log_regressor(model.file, model.example)
            else:
                models.log_model(model.file, model.file.stem, model.labels, model.resize_mode,
                                 model.example)

    def end(self, error: BaseException | None = None) -> None:
        import mlflow

        if error is not None:
            with self.store.guarded():
                self.client.set_tag(self.run_id, "error", one_line(error))
        mlflow.end_run("FINISHED" if error is None else
                       "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")


class _NoRun(Untracked):
    def finish(self, *args, **kwargs) -> None:
        pass


@contextmanager
def command_run(settings: Settings, experiment: str, required: bool, name: str,
                params: Mapping[str, Any], tags: Mapping[str, str]
                ) -> Iterator[CommandRun | _NoRun]:
    """Track one command: connect first (a dead server fails before any work), yield the
    run for ``run.finish(...)``, end it FINISHED, FAILED or KILLED."""
    store = connect(settings, experiment, required)
    with tracked(store, lambda s: CommandRun(s, name, params, tags), _NoRun()) as run:
        yield run
