"""Classification metrics on a test split: loss, accuracy, top-k, per-class precision /
recall / F1, the confusion matrix, and the worst mistakes."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def predict_probabilities(model, batches: Iterable[np.ndarray]) -> np.ndarray:
    """Class probabilities of a Keras model taking raw RGB, batch by batch (uint8 or float)."""
    out = [np.asarray(model.predict_on_batch(np.asarray(b, dtype="float32"))) for b in batches]
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
