"""tune stage: Optuna searches the head (size, dropout, learning rate, ...) on the cached
features -> models/head_params.yaml, the head train_head trains; the study in figures in
reports/. With ``tune.n_trials: 0`` it writes params.yaml's head through unchanged.

``tlearn tune --workers N`` runs the trials in N processes sharing the study's storage;
``tlearn tune`` on several machines with one database ``tune.storage`` shares one study.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import time
from typing import TYPE_CHECKING

from tlearn import paths
from tlearn.config import Config, HeadParams
from tlearn.errors import ConfigError
from tlearn.stages import UNTRACKED, Option, Stage, Tracker

if TYPE_CHECKING:
    import optuna

    from tlearn.tune import Job, TuneData

log = logging.getLogger(__name__)

TRIALS_CSV = paths.REPORTS / "tune_trials.csv"
TIMINGS = ("seconds", "trials_per_minute")
FIGURES = {"history": paths.REPORTS / "tune_history.png",
           "importances": paths.REPORTS / "tune_importances.png",
           "slices": paths.REPORTS / "tune_slices.png"}

STAGE = Stage(
    name="tune",
    help="search the head's size, dropout and learning rate with Optuna on the cached "
         "features -> models/head_params.yaml",
    params=("base.seed", "head", "tune"),
    deps=(paths.FEATURES, paths.PREPARED_LABELS),
    outs=(paths.HEAD_PARAMS,),
    report=paths.REPORTS / "tune.json",
    plots=(TRIALS_CSV, *FIGURES.values()),
    datasets=("train", "validation"),
    options=(Option("workers", "processes running trials at once on the study's storage"),),
)


def run(cfg: Config, tracker: Tracker = UNTRACKED, workers: int = 1) -> dict:
    if workers < 1:
        raise ConfigError(f"tlearn tune: --workers must be >= 1 (got {workers})")
    if cfg.tune.n_trials == 0:
        log.info("tune: tune.n_trials is 0: train_head trains params.yaml's head")
        return _write(cfg, cfg.head, None, {"trials": 0, "ran": 0, "seconds": 0.0})

    from tlearn import tune

    started = time.time()
    data = _load_data()
    job = tune.Job(storage=cfg.tune.storage,
                   study=tune.study_name(tune.features_digest(data), cfg.tune.space, cfg.head,
                                         cfg.tune.metric, cfg.base.seed),
                   n_trials=cfg.tune.n_trials,
                   deadline=started + cfg.tune.timeout if cfg.tune.timeout else None,
                   metric=cfg.tune.metric, pruner=cfg.tune.pruner, space=cfg.tune.space,
                   head=cfg.head, seed=cfg.base.seed, tracker=tracker.for_worker())
    study = tune.create_study(job)
    earlier = {t.number for t in study.get_trials(deepcopy=False) if tune.finished(t)}
    log.info("tune: study %s in %s: %d of %d trials done, %d worker(s)", job.study,
             job.storage, len(earlier), job.n_trials, workers)
    others = [multiprocessing.get_context("spawn").Process(
        target=_work, args=(job, worker), name=f"tune worker {worker}")
        for worker in range(1, workers)]
    for process in others:
        process.start()
    processes = [tune.process()] + [tune.process(p.pid) for p in others]
    try:
        tune.run_worker(job, 0, data)  # this process is worker 0
    finally:
        for process in others:
            process.join()
            if process.exitcode:
                log.warning("tune: %s exited with %s; its trials are in the study",
                            process.name, process.exitcode)
    seconds = time.time() - started
    numbers = tune.summary(study)
    ran = tune.trained_by(study, processes, earlier)  # by this run (other machines may share it)
    numbers |= {"ran": ran, "seconds": round(seconds, 2),
                "trials_per_minute": round(ran / seconds * 60, 2)}
    best = tune.head_of(numbers["best_params"], cfg.tune.space, cfg.head)
    tracker.log_params({"study": job.study} | {f"best.{key}": getattr(best, key)
                                               for key in tune.searched_keys(cfg.tune.space)})
    log.info("tune: best %s %.4f (trial %d of %d); this run trained %d in %.0f s",
             cfg.tune.metric, numbers["best_value"], numbers["best_trial"], numbers["trials"],
             ran, seconds)
    return _write(cfg, best, study, numbers)


def _load_data() -> TuneData:
    from tlearn import features, tune
    from tlearn.io import read_json

    return tune.TuneData(features.load_training(), features.load("validation"),
                         len(read_json(paths.PREPARED_LABELS)))


def _work(job: Job, worker: int) -> None:
    """A process started by ``--workers``: logging as the CLI sets it, then trials."""
    from tlearn import tune

    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune.run_worker(job, worker, _load_data())


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------


def _write(cfg: Config, head: HeadParams, study: optuna.Study | None, numbers: dict) -> dict:
    """models/head_params.yaml, reports/tune.json, the trials CSV and the figures."""
    import yaml

    from tlearn.io import atomic_path, write_json

    if study is None:
        origin = "tune.n_trials is 0: params.yaml's head, unchanged"
    else:
        origin = (f"study {study.study_name}, trial {numbers['best_trial']}: "
                  f"{cfg.tune.metric} {numbers['best_value']:.4f}")
    with atomic_path(paths.HEAD_PARAMS) as tmp:
        tmp.write_text(f"# Written by the tune stage ({origin}).\n"
                       "# train_head trains this head; keys tuning does not search are "
                       "params.yaml's.\n"
                       + yaml.safe_dump({"head": dataclasses.asdict(head)}, sort_keys=False,
                                        default_flow_style=None))
    report = {"metric": cfg.tune.metric, "best_value": None, "best_trial": None,
              "best_params": {}, "n_trials": cfg.tune.n_trials, "complete": 0, "pruned": 0,
              "failed": 0, "trials_per_minute": 0.0,
              "study": study.study_name if study else None} | numbers
    # Timings go to MLflow (the returned figures), not to the report DVC tracks.
    write_json(STAGE.report, {k: v for k, v in report.items() if k not in TIMINGS})
    _write_trials(study)
    _draw(study)
    return {k: v for k, v in report.items() if k != "best_params"}


def _write_trials(study: optuna.Study | None) -> None:
    """One row per trial (Optuna's dataframe): state, value, params, a failed trial's
    error. Not its duration or worker process (in MLflow's trial runs and the study):
    DVC tracks this file, and a rerun that trains the same trials writes the same bytes."""
    from tlearn.io import atomic_path
    from tlearn.tune import WORKER

    with atomic_path(TRIALS_CSV) as tmp:
        if study is None:
            tmp.write_text("number,state,value\n")
            return
        frame = study.trials_dataframe(attrs=("number", "state", "value", "params",
                                              "user_attrs"))
        frame = frame.drop(columns=[f"user_attrs_{WORKER}"], errors="ignore")
        for column in frame.columns:  # a dict attribute, as JSON
            if frame[column].map(lambda v: isinstance(v, dict)).any():
                frame[column] = frame[column].map(
                    lambda v: json.dumps(v) if isinstance(v, dict) else v)
        frame.to_csv(tmp, index=False)


def _draw(study: optuna.Study | None) -> None:
    """Optimization history, parameter importances and slices (Optuna's matplotlib plots);
    a figure that cannot be drawn (too few trials) says why instead. The importances are
    given the parameters sorted: in the order of a set of names, tied ones swapped places
    from one process to the next."""
    import warnings

    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import NullFormatter

    from tlearn import plots

    if study is not None:
        import optuna.visualization.matplotlib as optuna_plots

        names = sorted({name for trial in study.trials for name in trial.params})
        drawers = {"history": optuna_plots.plot_optimization_history,
                   "importances": lambda s: optuna_plots.plot_param_importances(s, params=names),
                   "slices": optuna_plots.plot_slice}
    for name, path in FIGURES.items():
        reason = "tuning is off (tune.n_trials: 0)"
        if study is not None:
            try:
                with warnings.catch_warnings():  # the matplotlib backend is "experimental"
                    warnings.simplefilter("ignore")
                    axes = np.ravel(drawers[name](study))
                for ax in axes:  # log axes (units) label every minor tick: unreadable
                    ax.xaxis.set_minor_formatter(NullFormatter())
                plots.save(axes[0].figure, path)
                continue
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                reason = f"{name}: {exc}"
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, reason, ha="center", va="center", wrap=True)
        plots.save(fig, path)
