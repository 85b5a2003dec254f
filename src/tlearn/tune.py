"""Tuning the head with Optuna, in-process on the cached features.

- :func:`suggest_head`: params.yaml's ``tune.space`` as trial suggestions -> a
  :class:`~tlearn.config.HeadParams` (``head`` with the searched keys replaced);
- :class:`Objective`: one trial is :func:`tlearn.train.train_head` with the validation
  metric reported every epoch (the pruner may stop it); its value is the metric at the
  best epoch, the figure train_head reports. A trial that raises or diverges is FAIL and
  the study goes on;
- :func:`run_worker`: one process's share of a study. Any number of processes, here or on
  other machines, fill the same study until it holds ``tune.n_trials`` trials: that is
  the study's total, so a rerun after a kill runs only the missing ones.

The study lives in ``tune.storage``: a journal file (processes of one machine) or a
database URL (machines sharing a PostgreSQL). Its name comes from the feature data and the
objective, so a rerun resumes it and new data or a new space starts another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from tlearn import train
from tlearn.config import HeadParams, SearchSpace
from tlearn.errors import ConfigError, TuningError
from tlearn.features import FeatureSet

if TYPE_CHECKING:
    from tlearn.stages import Tracker

log = logging.getLogger(__name__)

DIRECTIONS = {"val_accuracy": "maximize", "val_loss": "minimize"}
#: Trial user attributes: the process running it, why it failed, why it never ran.
WORKER, ERROR, SKIPPED = "worker", "error", "skipped"
#: Seconds between the heartbeats of a trial in a database storage: a machine that died
#: leaves trials the others mark failed after three missed beats.
HEARTBEAT = 10
#: Median pruner: the first 3 trials run to the end; later ones may stop from epoch 2 on,
#: when their best so far is worse than the median of the others at that epoch.
MEDIAN_STARTUP_TRIALS, MEDIAN_WARMUP_EPOCHS = 3, 2


@dataclass(frozen=True)
class TuneData:
    train: FeatureSet
    validation: FeatureSet
    n_classes: int


@dataclass(frozen=True)
class Job:
    """What every process working on one study needs (picklable: workers get a copy)."""

    storage: str              # tune.storage
    study: str                # :func:`study_name`
    n_trials: int             # the study's total
    deadline: float | None    # time.time() after which no trial starts
    metric: str
    pruner: str
    space: SearchSpace
    head: HeadParams          # params.yaml's: the keys the space does not search
    seed: int
    tracker: Tracker          # trials nest under the tune stage's run


# --------------------------------------------------------------------------------------
# The search space
# --------------------------------------------------------------------------------------


def searched_keys(space: SearchSpace) -> list[str]:
    """The head keys tuning sets (``units`` for the layers)."""
    return [key for key in ("units", "dropout", "learning_rate", "label_smoothing",
                            "batch_size", "optimizer") if getattr(space, key) is not None]


def suggest_head(trial: optuna.Trial, space: SearchSpace, head: HeadParams) -> HeadParams:
    """The head a trial trains: ``head`` with the searched keys drawn. Also turns a finished
    trial's params back into its head, through ``optuna.trial.FixedTrial(params)``."""
    changes: dict[str, Any] = {}
    if space.units is not None:
        layers = (trial.suggest_int("layers", *space.layers) if space.layers is not None
                  else len(head.units))
        changes["units"] = [trial.suggest_int(f"units_{i}", *space.units, log=True)
                            for i in range(layers)]
    if space.dropout is not None:  # also drawn with 0 layers, where it changes nothing
        changes["dropout"] = trial.suggest_float("dropout", *space.dropout)
    if space.learning_rate is not None:
        changes["learning_rate"] = trial.suggest_float("learning_rate", *space.learning_rate,
                                                       log=True)
    if space.label_smoothing is not None:
        changes["label_smoothing"] = trial.suggest_float("label_smoothing",
                                                         *space.label_smoothing)
    if space.batch_size is not None:
        changes["batch_size"] = trial.suggest_categorical("batch_size", space.batch_size)
    if space.optimizer is not None:
        changes["optimizer"] = trial.suggest_categorical("optimizer", space.optimizer)
    return dataclasses.replace(head, **changes)


def head_of(params: dict[str, Any], space: SearchSpace, head: HeadParams) -> HeadParams:
    """The head of a finished trial, from its Optuna params."""
    return suggest_head(optuna.trial.FixedTrial(params), space, head)


# --------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------


def features_digest(data: TuneData) -> str:
    """sha256 of the arrays a trial trains and validates on."""
    digest = hashlib.sha256()
    for array in (data.train.x, data.train.y, data.validation.x, data.validation.y):
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def study_name(data_digest: str, space: SearchSpace, head: HeadParams, metric: str,
               seed: int) -> str:
    """``head-<data>-<objective>``: the same features and objective resume the same study;
    other features, another space, or a change to a head key tuning does not set (epochs,
    patience, ...) start a new one."""
    searched = searched_keys(space)
    fixed = {k: v for k, v in dataclasses.asdict(head).items() if k not in searched}
    if space.units is not None and space.layers is None:
        fixed["layers"] = len(head.units)  # the layer count comes from head.units
    objective = json.dumps({"space": dataclasses.asdict(space), "head": fixed,
                            "metric": metric, "seed": seed}, sort_keys=True)
    return f"head-{data_digest[:8]}-{hashlib.sha256(objective.encode()).hexdigest()[:8]}"


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """A database URL (``postgresql://...``, ``sqlite:///...``) or a journal file path."""
    if "://" in spec:
        return _database(spec)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(spec))


def _database(url: str, attempts: int = 3) -> optuna.storages.RDBStorage:
    """Optuna's tables in the database (made on first use), with heartbeats."""
    import sqlalchemy.exc

    attempt = 1
    while True:
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT,
                                                  grace_period=3 * HEARTBEAT)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts:  # a new database: another machine makes the tables
                raise
            time.sleep(attempt)
            attempt += 1
        except sqlalchemy.exc.SQLAlchemyError as exc:
            shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise ConfigError(f"params.yaml: tune.storage {shown} cannot be opened: "
                              f"{reason[0] if reason else type(exc).__name__}") from None


def create_study(job: Job) -> optuna.Study:
    return optuna.create_study(study_name=job.study, storage=open_storage(job.storage),
                               direction=DIRECTIONS[job.metric], load_if_exists=True)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                           n_warmup_steps=MEDIAN_WARMUP_EPOCHS)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def load_study(job: Job, worker: int) -> optuna.Study:
    """The study with this process's sampler: TPE seeded by ``base.seed``, the worker and
    the trials already there, so workers and resumed runs never draw the same sequence."""
    study = optuna.load_study(study_name=job.study, storage=open_storage(job.storage),
                              pruner=make_pruner(job.pruner, job.head.epochs))
    seed = np.random.SeedSequence([job.seed, worker, len(study.trials)]).generate_state(1)[0]
    study.sampler = optuna.samplers.TPESampler(seed=int(seed))
    return study


def counts(trial: FrozenTrial) -> bool:
    """Does a trial count toward ``n_trials``? Yes if it runs or ran to an end of its own;
    no if a killed process left it behind, it never ran because the study was full, or it
    waits in the queue (``study.enqueue_trial``) for a process to run it."""
    if trial.state == TrialState.FAIL:
        return ERROR in trial.user_attrs
    return trial.state != TrialState.WAITING


def finished(trial: FrozenTrial) -> bool:
    return trial.state.is_finished() and counts(trial)


def fail_interrupted(study: optuna.Study) -> None:
    """Mark FAIL the running trials whose process is gone, so other trials replace them:
    on this machine by process id, on others by Optuna's heartbeat (database storages)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER)
        if worker and not _alive(worker):
            try:
                study.tell(trial.number, state=TrialState.FAIL)
                log.info("trial %d: its process %s is gone; marked failed, another trial "
                         "replaces it", trial.number, worker["pid"])
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                pass  # another process marked it first


def process(pid: int | None = None) -> dict[str, Any]:
    """Which process runs a trial: host, process id and start time (ids are reused)."""
    import psutil

    pid = pid or os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": psutil.Process(pid).create_time()}


def _alive(worker: dict[str, Any]) -> bool:
    """Is the process still there? Unknown for another machine's: assume so."""
    import psutil

    if worker.get("host") != socket.gethostname():
        return True
    try:
        return psutil.Process(worker["pid"]).create_time() == worker["started"]
    except psutil.Error:
        return False


# --------------------------------------------------------------------------------------
# One trial
# --------------------------------------------------------------------------------------


class Objective:
    """One trial: the head drawn from the space, trained on the cached features; each
    epoch is logged to the trial's MLflow run and reported to the pruner."""

    def __init__(self, job: Job, data: TuneData):
        self.job, self.data = job, data
        self.worker = process()

    def __call__(self, trial: optuna.Trial) -> float:
        job = self.job
        trial.set_user_attr(WORKER, self.worker)
        head = suggest_head(trial, job.space, job.head)
        run = job.tracker.child(f"trial {trial.number}",
                                {f"head.{k}": getattr(head, k) for k in searched_keys(job.space)})
        tags = {"optuna.study": job.study, "optuna.trial": str(trial.number)}
        started = time.perf_counter()
        described = " ".join(f"{k} {_short(getattr(head, k))}" for k in searched_keys(job.space))
        try:
            value, best = self._train(trial, head, run)
        except optuna.TrialPruned as exc:
            run.end("FINISHED", tags | {"optuna.state": "PRUNED"})
            log.info("trial %d: %s -> %s (%.1f s)", trial.number, described, exc,
                     time.perf_counter() - started)
            raise
        except KeyboardInterrupt:
            run.end("KILLED", tags | {"optuna.state": "FAIL"})
            raise
        except Exception as exc:  # noqa: BLE001 - any failure ends this trial, not the study
            message = _one_line(exc)
            trial.set_user_attr(ERROR, message)
            run.end("FAILED", tags | {"optuna.state": "FAIL", "error": message})
            log.warning("trial %d: %s -> failed: %s", trial.number, described, message)
            log.debug("trial %d failed", trial.number, exc_info=True)
            return float("nan")  # Optuna records NaN as FAIL
        seconds = time.perf_counter() - started
        run.log({"value": value, "best_epoch": best["best_epoch"], "seconds": seconds})
        run.end("FINISHED", tags | {"optuna.state": "COMPLETE"})
        log.info("trial %d: %s -> %s %.4f at epoch %d (%.1f s)", trial.number, described,
                 job.metric, value, best["best_epoch"], seconds)
        return value

    def _train(self, trial: optuna.Trial, head: HeadParams, run) -> tuple[float, dict]:
        metric = self.job.metric

        def on_epoch(row: dict) -> None:
            run.log({f"head/{k}": v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
            if not (math.isfinite(row["loss"]) and math.isfinite(row["val_loss"])):
                raise FloatingPointError(f"training diverged at epoch {row['epoch']} (loss "
                                         f"{row['loss']}, val_loss {row['val_loss']})")
            trial.report(row[metric], row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {row['epoch']}")

        _, history = train.train_head(self.data.train, self.data.validation,
                                      self.data.n_classes, head, self.job.seed, on_epoch)
        best = train.best_epoch_metrics(history)
        return best[metric], best


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


# --------------------------------------------------------------------------------------
# A process's share of the study, and the result
# --------------------------------------------------------------------------------------


def run_worker(job: Job, worker: int, data: TuneData) -> None:
    """This process's share of the study (see :func:`optimize`)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is ours
    logging.getLogger(train.__name__).setLevel(logging.WARNING)  # epochs: in MLflow
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # "retracing": a new head each trial
    optimize(load_study(job, worker), Objective(job, data), job.n_trials, job.deadline)


def optimize(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int,
             deadline: float | None = None) -> None:
    """Run trials until the study holds ``n_trials`` that count, whichever processes ran
    them, then wait for the others' last trials, so every process sees the study finished.
    ``deadline`` (``time.time()``): start no trial after it, and stop waiting."""
    def counted() -> int:
        return sum(map(counts, study.get_trials(deepcopy=False)))

    def within_budget(trial: optuna.Trial) -> float:
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        if sum(map(counts, earlier)) >= n_trials:
            # Another process started the last trial meanwhile: this one never runs.
            trial.set_user_attr(SKIPPED, f"the study already had its {n_trials} trials")
            study.stop()
            return float("nan")
        return objective(trial)

    def stop_when_full(study: optuna.Study, _: FrozenTrial) -> None:
        if counted() >= n_trials:
            study.stop()

    while deadline is None or time.time() < deadline:
        fail_interrupted(study)
        if counted() < n_trials:
            timeout = None if deadline is None else max(deadline - time.time(), 0)
            study.optimize(within_budget, timeout=timeout, callbacks=[stop_when_full],
                           gc_after_trial=False)
        elif study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            time.sleep(1.0)  # another process's last trials
        else:
            break


def trained_by(study: optuna.Study, processes: list[dict[str, Any]],
               earlier: set[int] = frozenset()) -> int:
    """How many finished trials these processes (:func:`process`) trained, leaving out the
    trials numbered ``earlier`` (finished before this run: a process may run twice)."""
    return sum(finished(t) and t.number not in earlier and t.user_attrs.get(WORKER) in processes
               for t in study.get_trials(deepcopy=False))


def summary(study: optuna.Study) -> dict[str, Any]:
    """The study in numbers; raises TuningError when no trial completed."""
    trials = [t for t in study.get_trials(deepcopy=False) if counts(t)]
    states = Counter(t.state for t in trials)
    if not states[TrialState.COMPLETE]:
        errors = Counter(t.user_attrs[ERROR] for t in trials if t.state == TrialState.FAIL)
        cause = (f"the most common error ({errors.most_common(1)[0][1]}x): "
                 f"{errors.most_common(1)[0][0]}" if errors else "all were pruned")
        raise TuningError(f"tune: no trial of study {study.study_name} completed "
                          f"({len(trials)} trials); {cause}")
    best = study.best_trial
    return {"best_value": best.value, "best_trial": best.number, "best_params": best.params,
            "trials": sum(map(finished, trials)), "complete": states[TrialState.COMPLETE],
            "pruned": states[TrialState.PRUNED], "failed": states[TrialState.FAIL]}
