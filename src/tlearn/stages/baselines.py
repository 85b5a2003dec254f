"""baselines stage: logistic regression, a linear SVM and gradient boosting on the cached
features (train + augmented copies to fit, at most ``baselines.max_train`` rows of them;
validation to choose each one's knob, test to score) -> reports/baselines.json. Each
classifier is a run of its own nested under the stage's run, with the test metrics under
the names evaluate uses (``test/accuracy``). The logistic regression, the linear probe, is
also kept as a softmax layer -> models/probe.npz: the fine-tune's floor
(tlearn.stages.finetune)."""

from __future__ import annotations

import logging

from tlearn import paths
from tlearn.config import Config
from tlearn.stages import UNTRACKED, Stage, Tracker

log = logging.getLogger(__name__)

#: The linear probe: the floor the fine-tuned model must clear (tlearn.stages.finetune).
PROBE = "logistic_regression"

STAGE = Stage(
    name="baselines",
    help="classical classifiers on the cached features (the knob of each chosen on validation)",
    params=("base.seed", "baselines"),
    deps=(paths.FEATURES, paths.PREPARED_LABELS),
    outs=(paths.PROBE,),
    report=paths.REPORTS / "baselines.json",
    datasets=("train", "validation", "test"),
    # test/logistic_regression_accuracy ... beside evaluate's test/accuracy and
    # test/head_accuracy in the pipeline run
    metric_prefix="test",
)


def run(cfg: Config, tracker: Tracker = UNTRACKED) -> dict:
    import numpy as np

    from tlearn import baselines, features
    from tlearn.io import atomic_path, read_json, write_json
    from tlearn.metrics import SUMMARY_KEYS

    labels = read_json(paths.PREPARED_LABELS)
    available = features.training_labels()
    # Only the sampled rows are read: the whole training set never sits in memory.
    train = baselines.flat(features.load_training(rows=baselines.sample_rows(
        available, cfg.baselines.max_train, cfg.base.seed)))
    log.info("baselines: %d of %d training rows", len(train), len(available))
    # Scored a chunk at a time from disk: their size does not count either.
    validation, test = (features.open_split(s) for s in ("validation", "test"))
    results = {}
    for name, search in baselines.CLASSIFIERS.items():
        found = search(train, validation, cfg.baselines, cfg.base.seed)
        results[name] = report = baselines.evaluate(found, test, labels)
        if name == PROBE:  # with its validation accuracy: all the fine-tune's floor reads
            kernel, bias = found.linear
            with atomic_path(paths.PROBE) as tmp:
                np.savez(tmp, kernel=kernel, bias=bias, val_accuracy=report["val_accuracy"])
        child = tracker.child(name, {"classifier": name, found.knob: found.value,
                                     "candidates": [row["value"] for row in found.rows],
                                     "train_rows": found.train_rows,
                                     "base.seed": cfg.base.seed})
        for step, row in enumerate(found.rows):  # step: the candidate's place in the search
            child.log({"search/val_accuracy": row["val_accuracy"]}, step=step)
        child.log({**{f"test/{k}": report[k] for k in SUMMARY_KEYS},
                   "val_accuracy": report["val_accuracy"], "seconds": report["seconds"]})
        child.end()
    metrics = {f"{name}_{key}": results[name][key]
               for name in results for key in SUMMARY_KEYS}
    # Timings go to MLflow (each classifier's run), not to the report DVC tracks.
    classifiers = {name: {k: v for k, v in result.items() if k != "seconds"}
                   for name, result in results.items()}
    # split_sizes: the rows there are; train_rows: those the linear models fitted on
    # (each classifier's own count is in its entry).
    write_json(STAGE.report, {**metrics, "classifiers": classifiers, "split_sizes": {
        "train": len(available), "validation": len(validation), "test": len(test)},
        "train_rows": len(train)})
    log.info("baselines: test accuracy %s", ", ".join(
        f"{name} {results[name]['accuracy']:.4f}" for name in results))
    return metrics
