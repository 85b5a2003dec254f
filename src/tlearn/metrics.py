"""Classification metrics on a test split: loss, accuracy, top-k, per-class precision /
recall / F1, the confusion matrix, the worst mistakes, and every model side by side."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from tlearn.stats import wilson_interval


ZOOM = 0.9  # flip_crops: the centre 90% of the image, scaled back up
#: The figures that compare models on one test split (as :func:`classification_report`).
SUMMARY_KEYS = ("accuracy", "top_k_accuracy", "loss")


def tta_views(images: np.ndarray, tta: str) -> list[np.ndarray]:
    """``images`` (N, H, W, 3) as the model sees them under ``tta``: as they are; and
    mirrored (flip); and the centre crop of both, scaled back to size (flip_crops)."""
    views = [images]
    if tta in ("flip", "flip_crops"):
        views.append(images[:, :, ::-1])
    if tta == "flip_crops":
        views += [zoom_centre(v, ZOOM) for v in views]
    return views


def zoom_centre(images: np.ndarray, fraction: float) -> np.ndarray:
    import keras

    height, width = images.shape[1:3]
    top, left = round(height * (1 - fraction) / 2), round(width * (1 - fraction) / 2)
    crop = np.asarray(images, dtype="float32")[:, top:height - top, left:width - left]
    return keras.ops.convert_to_numpy(keras.ops.image.resize(crop, (height, width),
                                                             interpolation="bilinear"))


def predict_probabilities(model, batches: Iterable[np.ndarray], tta: str = "none") -> np.ndarray:
    """Class probabilities of a Keras model taking raw RGB, batch by batch (uint8 or float),
    averaged over the ``tta`` views of each image."""
    out = [np.mean([np.asarray(model.predict_on_batch(np.asarray(v, dtype="float32")))
                    for v in tta_views(batch, tta)], axis=0) for batch in batches]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), "float32")


def classification_report(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Metrics of ``probs`` (N, classes) against integer ``y_true``; k = min(5, classes)."""
    n_classes = len(labels)
    k = min(5, n_classes)
    predicted = probs.argmax(axis=1)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))))
    top_k = np.argsort(-probs, axis=1)[:, :k]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=range(n_classes), zero_division=0)
    return {
        "accuracy": float(np.mean(predicted == y_true)),
        "top_k_accuracy": float(np.mean((top_k == y_true[:, None]).any(axis=1))),
        "k": k,
        "loss": loss,
        "n_test": int(len(y_true)),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)},
        "confusion_matrix": confusion_matrix(y_true, predicted, labels=range(n_classes)).tolist(),
    }


def worst_mistakes(y_true: np.ndarray, probs: np.ndarray, count: int) -> np.ndarray:
    """Indices of misclassified examples, most confidently wrong first."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y_true)
    confidence = probs[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def evaluation_report(reports: dict[str, dict], tta: str) -> dict:
    """evaluate's report from the classification reports of ``model`` and ``head`` (and
    ``model_tta``, ``head_tta`` under test-time augmentation): the fine-tuned model's
    figures plain, the head's and the TTA ones prefixed, per class and confusion last."""
    final, head = reports["model"], reports["head"]
    out = {key: final[key] for key in ("accuracy", "top_k_accuracy", "loss", "n_test", "k")}
    out["accuracy_ci95"] = list(wilson_interval(round(final["accuracy"] * final["n_test"]),
                                                final["n_test"]))
    out |= {f"head_{key}": head[key] for key in ("accuracy", "top_k_accuracy", "loss")}
    if tta != "none":
        out |= {"tta": tta,
                **{f"tta_{key}": reports["model_tta"][key] for key in ("accuracy", "loss")},
                **{f"head_tta_{key}": reports["head_tta"][key] for key in ("accuracy", "loss")}}
    return out | {"per_class": final["per_class"], "confusion_matrix": final["confusion_matrix"],
                  "head_confusion_matrix": head["confusion_matrix"]}


#: The columns of ``dvc exp show`` and ``dvc metrics diff``: a handful, in this order.
HEADLINE = ("accuracy", "loss", "top_k_accuracy", "head_accuracy", "tta_accuracy")


def headline(report: dict, head_training: dict, finetune_training: dict,
             tuning: dict | None = None) -> dict:
    """The pipeline's headline figures (reports/metrics.json): test accuracy, loss, top-k,
    the head's test accuracy, the TTA accuracy, the best validation accuracy of each
    phase, and the tuned head's best value (``tune_best_val_accuracy`` or ``..._val_loss``)
    when tuning ran."""
    figures = {key: report[key] for key in HEADLINE if key in report}
    figures["val_accuracy"] = finetune_training.get(
        "probe_val_accuracy" if finetune_training.get("kept_probe") else "val_accuracy")
    figures["head_val_accuracy"] = head_training.get("val_accuracy")
    if tuning and tuning.get("best_value") is not None:
        figures[f"tune_best_{tuning['metric']}"] = tuning["best_value"]
    return {key: value for key, value in figures.items() if value is not None}


def comparison(baselines: dict, evaluate: dict) -> list[dict]:
    """Every model on the same test split, best accuracy first: the classical classifiers
    of ``reports/baselines.json`` (its ``classifiers``), then the Keras head and the
    final model (fine-tuned, or the probe when it was kept) from the evaluate report."""
    rows = [{"model": name, "route": "features + classical",
             **{k: figures[k] for k in SUMMARY_KEYS}}
            for name, figures in baselines["classifiers"].items()]
    rows.append({"model": "keras_head", "route": "features + Keras head",
                 **{k: evaluate[f"head_{k}"] for k in SUMMARY_KEYS}})
    rows.append({"model": "linear_probe", "route": "frozen base + the probe, kept over the "
                 "fine-tune (better on validation)"} if evaluate.get("kept_probe") else
                {"model": "fine_tuned", "route": "fine-tuned base + head"})
    rows[-1] |= {k: evaluate[k] for k in SUMMARY_KEYS}
    return sorted(rows, key=lambda row: -row["accuracy"])


def probe_margin(evaluate: dict, baselines: dict) -> float:
    """The fine-tuned model's test accuracy minus the linear probe's (a logistic regression
    on the same frozen features): the floor transfer learning must clear on any dataset."""
    return evaluate["accuracy"] - baselines["logistic_regression_accuracy"]


def markdown_table(rows: list[dict], k: int) -> str:
    """:func:`comparison` as a Markdown table (the log's and the README's)."""
    lines = [f"| model | route | test accuracy | top-{k} accuracy | loss |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['route']} | {r['accuracy']:.4f} | "
              f"{r['top_k_accuracy']:.4f} | {r['loss']:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"
