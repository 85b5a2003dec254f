"""The two training phases: the head on cached features, then the fine-tune of the
unfrozen top of the base. Both are epoch loops with early stopping on validation loss
and the best weights restored; the fine-tune checkpoints every epoch so a killed run
resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from tlearn.io import atomic_path, read_json

log = logging.getLogger(__name__)
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def make_optimizer(name: str, learning_rate: float, momentum: float = 0.9) -> keras.optimizers.Optimizer:
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    return keras.optimizers.Adam(learning_rate)


def compile_classifier(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                       label_smoothing: float = 0.0) -> None:
    # One-hot targets: Keras' sparse loss has no label smoothing.
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    if mode != "balanced":
        return None
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)} | {
        c: 1.0 for c in range(n_classes) if c not in present}


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype="float32")[labels]


@dataclass
class EarlyStopping:
    """Early stopping on validation loss, as plain state so a checkpoint can carry it."""

    patience: int
    best_loss: float = float("inf")
    best_epoch: int = -1
    wait: int = 0

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record an epoch; True when it is the best so far."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.wait = val_loss, epoch, 0
            return True
        self.wait += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.wait > self.patience


@dataclass
class Checkpoint:
    """Resume state of an epoch loop in ``folder``: the model (with optimizer state) after
    the last finished epoch, the best weights so far, and the loop state. ``fingerprint``
    ties it to its inputs, so a changed config never resumes a stale run.

    Each save writes new files under new names and only then replaces ``state.json``,
    which names them: a kill at any instant leaves a state whose files all belong to it.
    """

    folder: Path
    fingerprint: str
    state_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.state_file = self.folder / "state.json"

    def _state(self) -> dict | None:
        """The saved state if it is ours; a state of other inputs (or of an older tlearn,
        which named no files) is not."""
        if not self.state_file.exists():
            return None
        state = read_json(self.state_file)
        if state.get("fingerprint") != self.fingerprint or "last" not in state:
            log.info("ignoring checkpoint in %s: made with other inputs", self.folder)
            return None
        return state

    def load(self) -> tuple[keras.Model, dict] | None:
        state = self._state()
        if state is None:
            return None
        return keras.saving.load_model(self.folder / state["last"]), state

    def save(self, model: keras.Model, state: dict, best_improved: bool) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        done = state["epochs_done"]
        last = f"last-{done}.keras"
        with atomic_path(self.folder / last) as tmp:
            model.save(tmp)
        if best_improved:
            best = f"best-{done}.weights.h5"
            with atomic_path(self.folder / best) as tmp:
                model.save_weights(tmp)
        else:
            best = (self._state() or {}).get("best")
        with atomic_path(self.state_file) as tmp:  # the commit point of this epoch
            tmp.write_text(json.dumps({**state, "fingerprint": self.fingerprint,
                                       "last": last, "best": best}))
        # Only now may the previous epoch's files go (and strays of a killed save).
        for path in self.folder.iterdir():
            if path.name not in {self.state_file.name, last, best} and path.is_file():
                path.unlink()

    def restore_best(self, model: keras.Model) -> None:
        model.load_weights(self.folder / self._state()["best"])

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def fingerprint(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.read_bytes() if isinstance(part, Path) else repr(part).encode())
    return digest.hexdigest()[:16]


def fit_epochs(model: keras.Model, train: tf.data.Dataset, validation: tf.data.Dataset,
               epochs: int, patience: int, first_epoch: int = 1,
               checkpoint: Checkpoint | None = None,
               class_weight: dict[int, float] | None = None,
               on_epoch: Callable[[dict], None] | None = None) -> tuple[keras.Model, list[dict]]:
    """Train one epoch at a time with early stopping; restore the best weights at the end.

    Epoch numbers start at ``first_epoch`` (the fine-tune continues the head's count).
    Returns the (possibly resumed) model and one history row per epoch run.
    """
    stopper, history, start = EarlyStopping(patience), [], 0
    best_weights = None
    resumed = checkpoint.load() if checkpoint else None
    if resumed:
        model, state = resumed
        stopper = EarlyStopping(**state["stopper"])
        history, start = state["history"], state["epochs_done"]
        log.info("resuming from the checkpoint after epoch %d", history[-1]["epoch"])
    progress_bar = sys.stdout.isatty()  # Keras' bar on a terminal; else our line per epoch
    for i in range(start, epochs):
        if stopper.should_stop:
            break
        result = model.fit(train, validation_data=validation, epochs=i + 1, initial_epoch=i,
                           class_weight=class_weight, shuffle=False, verbose=int(progress_bar))
        row = {"epoch": first_epoch + i,
               **{k: float(result.history[k][-1]) for k in HISTORY_KEYS}}
        log.info("epoch %d (%d/%d): %s", row["epoch"], i + 1, epochs,
                 " ".join(f"{k} {row[k]:.4f}" for k in HISTORY_KEYS))
        history.append(row)
        improved = stopper.update(row["epoch"], row["val_loss"])
        if checkpoint:
            checkpoint.save(model, {"epochs_done": i + 1, "history": history,
                                    "stopper": stopper.__dict__}, improved)
        elif improved:
            best_weights = model.get_weights()
        if on_epoch:
            on_epoch(row)
    if checkpoint and stopper.best_epoch >= 0:
        checkpoint.restore_best(model)
    elif best_weights is not None:
        model.set_weights(best_weights)
    if stopper.best_epoch >= 0:
        log.info("best epoch %d (val_loss %.4f)", stopper.best_epoch, stopper.best_loss)
    return model, history


def best_epoch_metrics(history: list[dict]) -> dict:
    """Validation figures of the epoch with the lowest validation loss ({} for no epochs)."""
    if not history:
        return {}
    best = min(history, key=lambda row: row["val_loss"])
    return {"val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"],
            "best_epoch": best["epoch"]}


def array_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None = None,
                  transform: Callable | None = None) -> tf.data.Dataset:
    """Float32 batches of (x, y); shuffled each epoch when ``seed`` is given; ``transform``
    maps each batch of x (online augmentation). Images stay uint8 in memory until batched."""
    transform = transform or (lambda batch: batch)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if seed is not None:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    # Sequential map: random augmentation drawn in a fixed order keeps runs repeatable.
    ds = ds.batch(batch_size).map(lambda a, b: (transform(tf.cast(a, tf.float32)), b))
    return ds.prefetch(tf.data.AUTOTUNE)
