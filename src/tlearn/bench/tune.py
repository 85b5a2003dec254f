"""Tuning: its speed and what it finds, printed as a table and returned as a dict.

On the cats-vs-dogs photos (EfficientNet-Lite0 features at 160 px, in a scratch project):

- the whole ``dvc repro tune`` of 30 trials, start-up included, in trials per minute;
- trials per minute of the cached-feature objective (the tune stage's own rate in that
  run) and of the same objective with the frozen base inside every epoch: one trial of
  that objective runs ``BASE_EPOCHS`` epochs on the images, and its rate is for a trial of
  the study's mean length in epochs (a whole study of it would take hours);
- the best validation and test accuracy after 50 trials (the study raised from 30 to 50,
  so ``dvc repro tune`` runs the 20 added ones) next to the untuned head of params.yaml;
  the same on the digits.

Speed depends on the machine and its load; these are measurements, not test thresholds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from tlearn import paths
from tlearn.bench.common import (BIN, CATS_AND_DOGS, environment, save, scratch_project,
                                 set_params)
from tlearn.io import read_json

#: The README's cats-vs-dogs overrides (the features stage reads the first two).
CATS_AND_DOGS_PARAMS = {"data.source": str(CATS_AND_DOGS), "prepare.image_size": 160,
                        "augment.horizontal_flip": True, "augment.rotation": 0.05}
BASE_EPOCHS = 1  # ~40 s each, traced beforehand: one is enough for a rate


def dvc(root: Path, *args: str) -> float:
    """Run ``dvc args`` in the project, tracked to its own mlflow.db (logging the trials is
    part of a trial's cost); returns its wall time in seconds."""
    env = environment()
    del env["TLEARN_TRACKING_OFF"]
    started = time.perf_counter()
    subprocess.run([str(BIN / "dvc"), *args], cwd=root, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def mean_epochs(root: Path) -> float:
    """Epochs a trial of the project's study trained, on average."""
    import optuna

    from tlearn import tune

    report = read_json(root / paths.REPORTS / "tune.json")
    storage = tune.open_storage(str(root / yaml.safe_load(
        (root / "params.yaml").read_text())["tune"]["storage"]))
    trials = [t for t in optuna.load_study(study_name=report["study"], storage=storage).trials
              if tune.finished(t) and t.last_step]
    return sum(t.last_step for t in trials) / len(trials)


def base_in_the_loop_seconds_per_epoch(root: Path) -> float:
    """One trial of params.yaml's head trained through the frozen base: the prepared and
    augmented training images and the validation images go through the base every epoch."""
    import dataclasses

    import keras
    import numpy as np

    from tlearn import config, train
    from tlearn.data.store import load_split
    from tlearn.models.head import assemble, build_head

    cfg = config.load(root / "params.yaml")
    splits = [load_split(root / paths.prepared_split("train")),
              load_split(root / paths.AUGMENTED_TRAIN)]
    images = np.concatenate([s.images for s in splits])
    labels = np.concatenate([s.labels for s in splits])
    validation = load_split(root / paths.prepared_split("validation"))
    n_classes = len(read_json(root / paths.PREPARED_LABELS))
    extractor = keras.saving.load_model(root / paths.EXTRACTOR)
    head = build_head(extractor.output.shape[1:], n_classes,
                      dataclasses.replace(cfg.head, epochs=BASE_EPOCHS))
    model = assemble(extractor, head)
    train.compile_classifier(model, train.make_optimizer(cfg.head.optimizer,
                                                         cfg.head.learning_rate))
    training = train.array_dataset(images, train.one_hot(labels, n_classes),
                                   cfg.head.batch_size, seed=cfg.base.seed)
    scoring = train.array_dataset(validation.images, train.one_hot(validation.labels, n_classes),
                                  cfg.head.batch_size)
    # Trace the train and evaluation functions first, so the epoch times the base alone
    # (conservative: a real trial of this objective would pay the tracing too).
    model.fit(training.take(1), verbose=0)
    model.evaluate(scoring.take(1), verbose=0)
    started = time.perf_counter()
    train.fit_epochs(model, training, scoring, epochs=BASE_EPOCHS, patience=BASE_EPOCHS)
    return (time.perf_counter() - started) / BASE_EPOCHS


def accuracies(root: Path, tuned: bool) -> dict[str, float]:
    """Validation (best epoch) and test accuracy of the head train_head would train:
    the tuned one (models/head_params.yaml) or params.yaml's."""
    import numpy as np

    from tlearn import config, features, train

    params_files = {root / paths.HEAD_PARAMS: ("head",)} if tuned else None
    cfg = config.load(root / "params.yaml", params_files=params_files)
    folder = root / paths.FEATURES
    n_classes = len(read_json(root / paths.PREPARED_LABELS))
    head, history = train.train_head(features.load_training(folder),
                                     features.load("validation", folder), n_classes,
                                     cfg.head, seed=cfg.base.seed)
    test = features.load("test", folder)
    predicted = np.argmax(head.predict(test.x, verbose=0), axis=1)
    return {"val_accuracy": train.best_epoch_metrics(history)["val_accuracy"],
            "test_accuracy": float(np.mean(predicted == test.y))}


def study(root: Path, n_trials: int) -> dict:
    """Raise the study to ``n_trials`` with ``dvc repro tune``: its time and report."""
    set_params(root, {"tune.n_trials": n_trials})
    seconds = dvc(root, "repro", "tune")
    report = read_json(root / paths.REPORTS / "tune.json")
    # The objective's own rate: the trials this repro added, by their durations (in the
    # study: tune_trials.csv, which DVC tracks, holds no timings).
    import optuna

    from tlearn.tune import open_storage

    trials = [t for t in optuna.load_study(
        study_name=report["study"], storage=open_storage(str(root / "optuna" / "journal.log")),
    ).trials if t.state.name in ("COMPLETE", "PRUNED")][-report["ran"]:]
    rate = len(trials) / sum(t.duration.total_seconds() for t in trials) * 60
    return report | {"repro_seconds": seconds, "trials_per_minute": rate}


def bench_cats_and_dogs() -> dict:
    root = scratch_project(CATS_AND_DOGS_PARAMS | {"tune.n_trials": 0}, dvc=True)
    try:
        features_seconds = dvc(root, "repro", "tune")  # download .. features, no trials
        thirty = study(root, 30)
        epochs = mean_epochs(root)
        base_epoch = base_in_the_loop_seconds_per_epoch(root)
        cached_rate = thirty["trials_per_minute"]
        base_rate = 60 / (epochs * base_epoch)
        fifty = study(root, 50)
        return {"features_seconds": features_seconds,
                "repro_30_seconds": thirty["repro_seconds"],
                "repro_30_trials_per_minute": 30 / thirty["repro_seconds"] * 60,
                "cached_trials_per_minute": cached_rate, "mean_epochs_per_trial": epochs,
                "base_seconds_per_epoch": base_epoch, "base_trials_per_minute": base_rate,
                "speedup": cached_rate / base_rate, "best_value_50": fifty["best_value"],
                "tuned": accuracies(root, tuned=True), "untuned": accuracies(root, tuned=False)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_digits() -> dict:
    root = scratch_project({"tune.n_trials": 0}, dvc=True)
    try:
        dvc(root, "repro", "tune")
        fifty = study(root, 50)
        return {"repro_50_seconds": fifty["repro_seconds"], "best_value_50": fifty["best_value"],
                "tuned": accuracies(root, tuned=True), "untuned": accuracies(root, tuned=False)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> dict:
    figures = {"digits": bench_digits()}
    if CATS_AND_DOGS.is_dir():
        figures["cats_and_dogs"] = bench_cats_and_dogs()
    print_table(figures)
    save("tune", figures)
    return figures


def print_table(figures: dict) -> None:
    cats = figures.get("cats_and_dogs")
    if cats:
        print(f"tune      cats vs dogs (Lite0, 160 px), {os.cpu_count()} cores")
        print(f"          dvc repro tune, 30 trials, start-up included: "
              f"{cats['repro_30_seconds']:.0f} s = {cats['repro_30_trials_per_minute']:.1f} "
              f"trials/min (target >= 30)")
        print(f"          cached-feature objective: {cats['cached_trials_per_minute']:.1f} "
              f"trials/min ({cats['mean_epochs_per_trial']:.1f} epochs per trial)")
        print(f"          frozen base in every epoch: {cats['base_seconds_per_epoch']:.0f} s per "
              f"epoch = {cats['base_trials_per_minute']:.3f} trials/min; cached is "
              f"{cats['speedup']:.0f}x faster (target >= 20x)")
    else:
        print(f"tune      cats vs dogs skipped: {CATS_AND_DOGS} not found")
    print(f"          {'data':<14}{'head':<9}{'val accuracy':>14}{'test accuracy':>15}")
    for name, result in figures.items():
        for kind in ("untuned", "tuned"):
            label = kind if kind == "untuned" else "50 trials"
            print(f"          {name:<14}{label:<9}{result[kind]['val_accuracy']:>14.4f}"
                  f"{result[kind]['test_accuracy']:>15.4f}")


if __name__ == "__main__":
    main()
