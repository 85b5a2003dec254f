"""Classification metrics on a test split: loss, accuracy, top-k, per-class precision /
recall / F1, the confusion matrix, the worst mistakes, and every model side by side."""

from __future__ import annotations

import sys

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


BATCH_SIZE = 64
#: The figures that compare models on one test split (as :func:`classification_report`).
SUMMARY_KEYS = ("accuracy", "top_k_accuracy", "loss")


def predict_probabilities(model, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Class probabilities of a Keras model taking raw RGB; a progress bar on a terminal."""
    return model.predict(images, batch_size=batch_size, verbose=1 if sys.stdout.isatty() else 0)


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


def comparison(baselines: dict, evaluate: dict) -> list[dict]:
    """Every model on the same test split, best accuracy first: the classical classifiers
    of ``reports/baselines.json`` (its ``classifiers``), then the Keras head and the
    fine-tuned model from the evaluate report's figures."""
    rows = [{"model": name, "route": "features + classical",
             **{k: figures[k] for k in SUMMARY_KEYS}}
            for name, figures in baselines["classifiers"].items()]
    rows.append({"model": "keras_head", "route": "features + Keras head",
                 **{k: evaluate[f"head_{k}"] for k in SUMMARY_KEYS}})
    rows.append({"model": "fine_tuned", "route": "fine-tuned base + head",
                 **{k: evaluate[k] for k in SUMMARY_KEYS}})
    return sorted(rows, key=lambda row: -row["accuracy"])


def markdown_table(rows: list[dict], k: int) -> str:
    """:func:`comparison` as a Markdown table (the log's and the README's)."""
    lines = [f"| model | route | test accuracy | top-{k} accuracy | loss |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['route']} | {r['accuracy']:.4f} | "
              f"{r['top_k_accuracy']:.4f} | {r['loss']:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"
