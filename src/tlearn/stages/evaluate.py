"""evaluate stage: the head model and the fine-tuned model on the test split ->
reports/evaluate.json (with the comparison against the classical baselines), the
confusion matrix, the training curves and the worst mistakes."""

from __future__ import annotations

import logging

from tlearn import paths
from tlearn.config import Config
from tlearn.stages import Stage
from tlearn.stages.baselines import STAGE as BASELINES
from tlearn.stages.finetune import STAGE as FINETUNE
from tlearn.stages.train_head import STAGE as TRAIN_HEAD

log = logging.getLogger(__name__)

STAGE = Stage(
    name="evaluate",
    help="test-split metrics, confusion matrix, curves, worst mistakes",
    params=("evaluate",),
    deps=(paths.HEAD_MODEL, paths.MODEL, paths.LABELS, paths.prepared_split("test"),
          TRAIN_HEAD.history, FINETUNE.history, BASELINES.metrics[0]),
    metrics=(paths.REPORTS / "evaluate.json",),
    plots=(paths.REPORTS / "predictions.csv", paths.REPORTS / "confusion_matrix.png",
           paths.REPORTS / "training_curves.png", paths.REPORTS / "misclassified.png"),
    datasets=("test",),
    metric_prefix="test",
    registers_model=True,
)
REPORT, PREDICTIONS, CONFUSION_PNG, CURVES_PNG, MISTAKES_PNG = STAGE.reports


def run(cfg: Config) -> dict:
    import keras

    from tlearn import plots
    from tlearn.data.store import load_split
    from tlearn.io import read_csv, read_json, write_csv, write_json
    from tlearn.metrics import (classification_report, comparison, markdown_table,
                                predict_probabilities)
    from tlearn.models import backbones  # noqa: F401  registers tlearn's layers for loading

    labels = read_json(paths.LABELS)
    test = load_split(paths.prepared_split("test"))
    probs = {name: predict_probabilities(keras.saving.load_model(path), test.images)
             for name, path in (("head", paths.HEAD_MODEL), ("model", paths.MODEL))}
    head = classification_report(test.labels, probs["head"], labels)
    final = classification_report(test.labels, probs["model"], labels)
    report = {
        **{key: final[key] for key in ("accuracy", "top_k_accuracy", "loss", "n_test", "k")},
        "head_accuracy": head["accuracy"], "head_top_k_accuracy": head["top_k_accuracy"],
        "head_loss": head["loss"],
        "per_class": final["per_class"], "confusion_matrix": final["confusion_matrix"],
        "head_confusion_matrix": head["confusion_matrix"],
    }
    report["comparison"] = comparison(read_json(BASELINES.metrics[0]), report)
    write_json(REPORT, report)

    predicted = probs["model"].argmax(axis=1)
    write_csv(PREDICTIONS, [{"file": f, "actual": labels[t], "predicted": labels[p]}
                            for f, t, p in zip(test.files, test.labels, predicted)])
    plots.confusion_matrix(final["confusion_matrix"], labels, CONFUSION_PNG)
    head_history, finetune_history = read_csv(TRAIN_HEAD.history), read_csv(FINETUNE.history)
    plots.training_curves(head_history + finetune_history, CURVES_PNG,
                          phase_start=finetune_history[0]["epoch"] if finetune_history else None)
    plots.worst_mistakes(test.images, test.labels, probs["model"], labels,
                         cfg.evaluate.misclassified, MISTAKES_PNG)
    log.info("evaluate: test accuracy %.4f (head %.4f), top-%d %.4f, loss %.4f on %d images",
             report["accuracy"], report["head_accuracy"], report["k"],
             report["top_k_accuracy"], report["loss"], report["n_test"])
    log.info("evaluate: every model on the test split\n%s",
             markdown_table(report["comparison"], report["k"]))
    return {k: report[k] for k in ("accuracy", "top_k_accuracy", "loss", "head_accuracy",
                                    "n_test")}
