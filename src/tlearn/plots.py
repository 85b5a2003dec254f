"""PNG figures for reports/ (matplotlib, headless): they open anywhere, with no network."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tlearn.io import atomic_path  # noqa: E402


def save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def image_grid(rows: Sequence[Sequence[np.ndarray]], path: Path,
               titles: Sequence[Sequence[str]] = ()) -> None:
    """A grid of uint8 RGB images: ``rows[r][c]`` at row r, column c, titled ``titles[r][c]``."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.8 * n_cols, 2.2 * n_rows), squeeze=False)
    for r, ax_row in enumerate(axes):
        for c, ax in enumerate(ax_row):
            ax.axis("off")
            if c < len(rows[r]):
                ax.imshow(rows[r][c])
            if r < len(titles) and c < len(titles[r]):
                ax.set_title(titles[r][c], fontsize=8)
    save(fig, path)


def labelled_images(images: Sequence[np.ndarray], titles: Sequence[str], path: Path,
                    per_row: int = 4) -> None:
    """Images with a title each, ``per_row`` to a row (the worst mistakes of evaluate)."""
    starts = range(0, len(images), per_row)
    image_grid([images[s:s + per_row] for s in starts], path,
               titles=[titles[s:s + per_row] for s in starts])


def message(text: str, path: Path) -> None:
    """A figure that only says ``text`` (a report that has nothing to show)."""
    fig, ax = plt.subplots(figsize=(4, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10)
    save(fig, path)


def worst_mistakes(take_images: Callable[[Sequence[int]], np.ndarray], y_true: np.ndarray,
                   probs: np.ndarray, labels: Sequence[str], count: int, path: Path) -> int:
    """The ``count`` most confidently wrong predictions (images fetched by index with
    ``take_images``), captioned true / predicted / confidence; a line of text instead when
    there is nothing to show. Returns how many."""
    from tlearn.metrics import worst_mistakes as select

    chosen = select(y_true, probs, count)
    if len(chosen):
        predicted = probs.argmax(axis=1)
        labelled_images(list(take_images(chosen)),
                        [f"true {labels[y_true[i]]}\npred {labels[predicted[i]]} "
                         f"{probs[i, predicted[i]]:.0%}" for i in chosen], path)
    elif count == 0:
        message("evaluate.misclassified is 0: no mistakes drawn", path)
    else:
        message(f"no mistakes on the {len(y_true)} test images", path)
    return len(chosen)


def confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path) -> None:
    matrix = np.asarray(matrix)
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test)")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (r, c), value in np.ndenumerate(matrix):
        ax.text(c, r, str(value), ha="center", va="center", fontsize=8,
                color="white" if value > threshold else "black")
    save(fig, path)


def training_curves(history: Sequence[dict], path: Path, phase_start: int | None = None) -> None:
    """Accuracy and loss per epoch across both phases, training beside validation; a line
    marks where fine-tuning starts."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.plot(epochs, [row[metric] for row in history], "o-", ms=3, label=f"training {metric}")
        ax.plot(epochs, [row[f"val_{metric}"] for row in history], "o-", ms=3,
                label=f"validation {metric}")
        if phase_start is not None:
            ax.axvline(phase_start - 0.5, color="gray", ls="--", lw=1)
            ax.text(phase_start - 0.4, ax.get_ylim()[1], "fine-tune", va="top", fontsize=8,
                    color="gray")
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    save(fig, path)


def regression(actual: np.ndarray, predictions: dict[str, np.ndarray], history: Sequence[dict],
               target: str, path: Path) -> None:
    """Predicted against actual on the test split, one colour per model, with the line a
    perfect model would sit on; beside it the network's loss per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    low, high = float(np.min(actual)), float(np.max(actual))
    for name, predicted in predictions.items():
        left.scatter(actual, predicted, s=14, alpha=0.7, label=name)
        low, high = min(low, float(np.min(predicted))), max(high, float(np.max(predicted)))
    left.plot([low, high], [low, high], color="gray", ls="--", lw=1, label="predicted = actual")
    left.set_xlabel(f"actual {target}")
    left.set_ylabel(f"predicted {target}")
    left.set_title("Test split: predicted vs actual")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    epochs = [row["epoch"] for row in history]
    right.plot(epochs, [row["loss"] for row in history], label="training loss")
    right.plot(epochs, [row["val_loss"] for row in history], label="validation loss")
    right.set_xlabel("epoch")
    right.set_ylabel("MSE (standardised target)")
    right.set_title("Network training")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    save(fig, path)
