"""evaluate stage: the head model and the fine-tuned model on the test split ->
reports/evaluate.json, the confusion matrix, the training curves and the worst mistakes."""

from __future__ import annotations

import logging
import sys

import keras

from tlearn import paths, plots
from tlearn.config import Config
from tlearn.data.store import load_split
from tlearn.evaluate import classification_report, worst_mistakes
from tlearn.io import read_csv, read_json, write_csv, write_json
from tlearn.models import backbones  # noqa: F401  registers tlearn's layers for loading
from tlearn.stages.finetune import HISTORY as FINETUNE_HISTORY
from tlearn.stages.train_head import HISTORY as HEAD_HISTORY

log = logging.getLogger(__name__)
REPORT = paths.REPORTS / "evaluate.json"
PREDICTIONS = paths.REPORTS / "predictions.csv"
CONFUSION_PNG = paths.REPORTS / "confusion_matrix.png"
CURVES_PNG = paths.REPORTS / "training_curves.png"
MISTAKES_PNG = paths.REPORTS / "misclassified.png"
BATCH_SIZE = 64


def run(cfg: Config) -> dict:
    labels = read_json(paths.LABELS)
    test = load_split(paths.prepared_split("test"))
    verbose = 1 if sys.stdout.isatty() else 0
    probs = {name: keras.saving.load_model(path).predict(test.images, batch_size=BATCH_SIZE,
                                                         verbose=verbose)
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
    write_json(REPORT, report)

    predicted = probs["model"].argmax(axis=1)
    write_csv(PREDICTIONS, [{"file": f, "actual": labels[t], "predicted": labels[p]}
                            for f, t, p in zip(test.files, test.labels, predicted)])
    plots.confusion_matrix(final["confusion_matrix"], labels, CONFUSION_PNG)
    head_history, finetune_history = read_csv(HEAD_HISTORY), read_csv(FINETUNE_HISTORY)
    plots.training_curves(head_history + finetune_history, CURVES_PNG,
                          phase_start=finetune_history[0]["epoch"] if finetune_history else None)
    mistakes = worst_mistakes(test.labels, probs["model"], cfg.evaluate.misclassified)
    if len(mistakes):
        plots.labelled_images(
            [test.images[i] for i in mistakes],
            [f"true {labels[test.labels[i]]}\npred {labels[predicted[i]]} "
             f"{probs['model'][i, predicted[i]]:.0%}" for i in mistakes], MISTAKES_PNG)
    else:
        plots.labelled_images([test.images[0]], ["no mistakes"], MISTAKES_PNG)
    log.info("evaluate: test accuracy %.4f (head %.4f), top-%d %.4f, loss %.4f on %d images",
             report["accuracy"], report["head_accuracy"], report["k"], report["top_k_accuracy"],
             report["loss"], report["n_test"])
    return {k: report[k] for k in ("accuracy", "top_k_accuracy", "loss", "head_accuracy",
                                   "n_test")}
