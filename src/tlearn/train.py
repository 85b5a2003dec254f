"""The training core: the head on cached features (:func:`train_head`) and the fine-tune
of the unfrozen top of the base (:func:`finetune`). Arrays and params in, a trained model
and its per-epoch history out; no file I/O, so tuning calls :func:`train_head` in-process
for every trial. Both phases are epoch loops with early stopping on validation loss and
the best weights restored; the fine-tune can carry a :class:`~tlearn.checkpoint.Checkpoint`
so a killed run resumes where it stopped."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from tlearn.config import FinetuneParams, HeadParams
from tlearn.data.feed import RowBatches, untuned
from tlearn.features import FeatureSet
from tlearn.models.head import build_head, unfreeze_top

if TYPE_CHECKING:
    from tlearn.checkpoint import Checkpoint
    from tlearn.data.batches import ImageBatches

log = logging.getLogger(__name__)
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
HEAD_STEPS_PER_CALL = 32


def make_optimizer(name: str, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
                   momentum: float = 0.9) -> keras.optimizers.Optimizer:
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    return keras.optimizers.Adam(learning_rate)


def compile_classifier(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                       label_smoothing: float = 0.0, steps_per_execution: int = 1) -> None:
    # One-hot targets: Keras' sparse loss has no label smoothing.
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                  steps_per_execution=steps_per_execution)


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    if mode != "balanced":
        return None
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)} | {
        c: 1.0 for c in range(n_classes) if c not in present}


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype="float32")[labels]


class Trained(NamedTuple):
    model: keras.Model
    history: list[dict]      # one row per epoch run
    best_epoch: int          # the epoch whose weights the model has (-1: no epoch)
    start: dict | None       # validation figures of the model before training (keep_start)


@dataclass
class EarlyStopping:
    """Early stopping on validation loss with Keras' semantics: stop once ``patience``
    epochs in a row did not improve on the best (patience 0: at the first that did not).
    Plain state, so a checkpoint can carry it."""

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
        return self.wait > 0 and self.wait >= self.patience


class InMemory(NamedTuple):
    """Validation data in memory (features, one-hot labels), scored by calling the model
    on it: tracing Keras' evaluation function costs a head's trial more than its epochs."""
    x: np.ndarray
    y: np.ndarray


def as_dataset(data: tf.data.Dataset | ImageBatches | RowBatches) -> tf.data.Dataset:
    """What ``model.fit`` and ``evaluate`` take: a batch source's pipeline (``.dataset``),
    or ``data`` itself. (Duck-typed: importing ImageBatches here would make the head's
    stages depend on the image batches' code.)"""
    return getattr(data, "dataset", data)


def validate(model: keras.Model, validation: tf.data.Dataset | ImageBatches | InMemory) -> dict:
    """Validation loss (the compiled loss; the models here have no regularisation losses)
    and accuracy of ``model``, as ``model.evaluate`` gives them."""
    if not isinstance(validation, InMemory):
        measured = model.evaluate(as_dataset(validation), verbose=0, return_dict=True)
        return {"val_loss": float(measured["loss"]), "val_accuracy": float(measured["accuracy"])}
    chunk, loss, correct, n = 4096, 0.0, 0, len(validation.x)  # chunks bound the activations
    for i in range(0, n, chunk):
        x, y = validation.x[i:i + chunk], validation.y[i:i + chunk]
        # The loss on the output tensor itself: Keras computes it from the softmax's logits
        # there, as evaluate does, not from probabilities clipped at 1e-7.
        probabilities = model(x, training=False)
        loss += float(model.loss(y, probabilities)) * len(x)
        correct += int(np.sum(np.argmax(probabilities, axis=1) == y.argmax(1)))
    return {"val_loss": loss / n, "val_accuracy": correct / n}


def fit_epochs(model: keras.Model, train: tf.data.Dataset | ImageBatches | RowBatches,
               validation: tf.data.Dataset | ImageBatches | InMemory,
               epochs: int, patience: int, first_epoch: int = 1,
               checkpoint: Checkpoint | None = None,
               class_weight: dict[int, float] | None = None,
               on_epoch: Callable[[dict], None] | None = None,
               keep_start: bool = False, seed: int | None = None) -> Trained:
    """Train one epoch at a time with early stopping; restore the best weights at the end.

    ``validation``: batches scored with ``model.evaluate``, or :class:`InMemory` arrays.
    Epoch numbers start at ``first_epoch`` (the fine-tune continues the head's count).
    ``keep_start``: measure the model on validation before training and keep it as it
    is when no epoch beats it (a fine-tune then never ends worse than its start there).
    ``seed``: the random layers (dropout) of each epoch draw from it and the epoch number
    alone, so a resumed run trains exactly as an uninterrupted one would.
    Returns the (possibly resumed) model, one history row per epoch run, and which epoch
    was kept (``first_epoch - 1``: the start).
    """
    stopper, history, done, before = EarlyStopping(patience), [], 0, None
    best_weights = start_weights = None
    resumed = checkpoint.load() if checkpoint else None
    if resumed:
        model, state = resumed
        stopper = EarlyStopping(**state["stopper"])
        history, done, before = state["history"], state["epochs_done"], state.get("start")
        log.info("resuming from the checkpoint after epoch %d", first_epoch + done - 1)
    elif keep_start:
        # The start competes with the epochs only at the end: early stopping counts from
        # the first epoch, as a fine-tune often gets worse before it gets better.
        before = validate(model, validation)
        log.info("start: val_loss %.4f val_accuracy %.4f", before["val_loss"],
                 before["val_accuracy"])
        if checkpoint:
            checkpoint.save_start(model)
        else:
            start_weights = model.get_weights()
    progress_bar = sys.stdout.isatty()  # Keras' bar on a terminal; else our line per epoch
    for i in range(done, epochs):
        if stopper.should_stop:
            break
        if hasattr(train, "set_epoch"):  # batches drawn from the seed and the epoch
            train.set_epoch(i)
        if seed is not None:
            reseed_layers(model, seed, i)
        result = model.fit(as_dataset(train), epochs=i + 1, initial_epoch=i,
                           class_weight=class_weight, shuffle=False, verbose=int(progress_bar))
        row = {"epoch": first_epoch + i, "loss": float(result.history["loss"][-1]),
               "accuracy": float(result.history["accuracy"][-1]), **validate(model, validation)}
        log.info("epoch %d (%d/%d): %s", row["epoch"], i + 1, epochs,
                 " ".join(f"{k} {row[k]:.4f}" for k in HISTORY_KEYS))
        history.append(row)
        improved = stopper.update(row["epoch"], row["val_loss"])
        if checkpoint:
            checkpoint.save(model, {"epochs_done": i + 1, "history": history, "start": before,
                                    "stopper": stopper.__dict__}, improved)
        elif improved:
            best_weights = model.get_weights()
        if on_epoch:
            on_epoch(row)
    best_epoch = stopper.best_epoch
    if before is not None and (best_epoch < 0 or stopper.best_loss >= before["val_loss"]):
        best_epoch = first_epoch - 1
        log.info("no epoch beat the start (val_loss %.4f): kept as it was", before["val_loss"])
        if checkpoint:
            checkpoint.restore_start(model)
        else:
            model.set_weights(start_weights)
    elif checkpoint and best_epoch >= 0:
        checkpoint.restore_best(model)
    elif best_weights is not None:
        model.set_weights(best_weights)
    if best_epoch >= first_epoch:
        log.info("best epoch %d (val_loss %.4f)", best_epoch, stopper.best_loss)
    return Trained(model, history, best_epoch, before)


def reseed_layers(model: keras.Model, seed: int, epoch: int) -> None:
    """Restart every random layer's generator (dropout) from ``seed`` and ``epoch``: a model
    loaded from a checkpoint draws its own seeds when it is built, not where it left off."""
    layers, index = list(model.layers), 0
    while layers:
        layer = layers.pop(0)
        layers += list(getattr(layer, "layers", []))  # nested models
        generator = getattr(layer, "seed_generator", None)
        if generator is not None:
            generator.state.assign(np.array([seed + 7919 * epoch + index, 0],
                                            dtype=generator.state.dtype))
            index += 1


def best_epoch_metrics(history: list[dict], start: dict | None = None,
                       start_epoch: int = 0) -> dict:
    """Validation figures of the epoch with the lowest validation loss, ``start`` (epoch
    ``start_epoch``: the model before training) included ({} when there is neither)."""
    rows = history + ([{**start, "epoch": start_epoch}] if start else [])
    if not rows:
        return {}
    best = min(rows, key=lambda row: row["val_loss"])
    return {"val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"],
            "best_epoch": best["epoch"]}


def array_dataset(x: np.ndarray, y: np.ndarray, batch_size: int,
                  seed: int | None = None) -> tf.data.Dataset:
    """Float32 batches of (x, y); shuffled each epoch when ``seed`` is given. Images stay
    uint8 in memory until batched. Holds ``x`` twice more when shuffled (a tensor and the
    shuffle buffer): fine for small arrays; the head trains on :class:`RowBatches`."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if seed is not None:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b))
    return untuned(ds.prefetch(1))


# --------------------------------------------------------------------------------------
# The two phases
# --------------------------------------------------------------------------------------


def train_head(train: FeatureSet, validation: FeatureSet, n_classes: int, params: HeadParams,
               seed: int, on_epoch: Callable[[dict], None] | None = None,
               ) -> tuple[keras.Model, list[dict]]:
    """The new head trained on cached features of the frozen base, best epoch restored."""
    keras.utils.set_random_seed(seed)
    head = build_head(train.x.shape[1:], n_classes, params)
    # A small head's step is shorter than TensorFlow's cost of starting one: running
    # HEAD_STEPS_PER_CALL steps per call halves an epoch (same batches, same weights), and
    # tuning trains dozens of heads.
    compile_classifier(head, make_optimizer(params.optimizer, params.learning_rate,
                                            params.momentum), params.label_smoothing,
                       steps_per_execution=HEAD_STEPS_PER_CALL)
    head, history, *_ = fit_epochs(
        head,
        RowBatches(train.x, train.y, n_classes, params.batch_size, seed=seed),
        InMemory(validation.x, one_hot(validation.y, n_classes)),
        epochs=params.epochs, patience=params.patience, on_epoch=on_epoch, seed=seed,
        class_weight=class_weights(train.y, n_classes, params.class_weight))
    return head, history


def finetune(model: keras.Model, base: keras.Model, train: ImageBatches,
             validation: ImageBatches, params: FinetuneParams, head: HeadParams,
             seed: int, first_epoch: int = 1, checkpoint: Checkpoint | None = None,
             ) -> tuple[Trained, list[str]]:
    """Unfreeze the top of ``base`` (inside ``model``), recompile with the lower
    ``params.learning_rate`` (warmed up over the first epoch, then cosine-decayed to zero
    when ``params.schedule`` is cosine) and train end to end on the (augmented) image
    batches. The model as it came (the head's) is measured on validation first and kept
    when no epoch beats it, so a fine-tune never ends worse than its start there.
    Returns what :func:`fit_epochs` returns and the layers whose weights trained.

    The caller seeds (``keras.utils.set_random_seed``) before loading ``model``: its
    dropout layers draw their seeds when they are built."""
    trained_layers = unfreeze_top(base, params.unfreeze)
    learning_rate = params.learning_rate
    if params.schedule == "cosine" and params.epochs:
        steps = len(train) * params.epochs
        warmup = min(len(train), steps // 10 or 1)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(steps - warmup, 1), warmup_target=params.learning_rate,
            warmup_steps=warmup)
    compile_classifier(model, make_optimizer(head.optimizer, learning_rate, head.momentum),
                       head.label_smoothing)
    trained = fit_epochs(
        model, train, validation, epochs=params.epochs, patience=params.patience,
        first_epoch=first_epoch, checkpoint=checkpoint, keep_start=True, seed=seed,
        class_weight=class_weights(train.split.labels, train.n_classes, head.class_weight))
    return trained, trained_layers
