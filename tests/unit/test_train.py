"""The epoch loop (early stopping, resumable checkpoints), class weights and the metrics."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest

from tlearn import checkpoint as checkpoint_module
from tlearn import train
from tlearn.checkpoint import Checkpoint


def test_early_stopping_waits_patience_epochs_after_the_best():
    stopper = train.EarlyStopping(patience=2)
    losses = [1.0, 0.5, 0.6, 0.7, 0.4, 0.45, 0.5, 0.55]
    stopped_at = None
    for epoch, loss in enumerate(losses, start=1):
        stopper.update(epoch, loss)
        if stopper.should_stop:
            stopped_at = epoch
            break
    # Epochs 3 and 4 do not beat epoch 2: stop after epoch 4, as Keras does (the old rule
    # ran a third epoch, found 0.4 at epoch 5 and stopped after 8).
    assert (stopper.best_epoch, stopper.best_loss, stopped_at) == (2, 0.5, 4)


def _keras_stop_epoch(losses: list[float], patience: int) -> int:
    """The epoch (1-based) after which keras.callbacks.EarlyStopping stops training."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    callback = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience)
    callback.set_model(model)
    model.stop_training = False
    callback.on_train_begin()
    for epoch, loss in enumerate(losses):
        callback.on_epoch_end(epoch, {"val_loss": loss})
        if model.stop_training:
            return epoch + 1
    return len(losses)


@pytest.mark.parametrize("patience", [0, 1, 2, 3])
@pytest.mark.parametrize("losses", [[1.0, 0.5, 0.6, 0.7, 0.4, 0.45, 0.5, 0.55, 0.6],
                                    [1.0, 0.9, 0.8, 0.7, 0.6],
                                    [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]])
def test_early_stopping_stops_where_keras_does(losses, patience):
    stopper, stopped_at = train.EarlyStopping(patience), len(losses)
    for epoch, loss in enumerate(losses, start=1):
        stopper.update(epoch, loss)
        if stopper.should_stop:
            stopped_at = epoch
            break
    assert stopped_at == _keras_stop_epoch(losses, patience)


def test_balanced_class_weights_undo_imbalance():
    labels = np.array([0] * 90 + [1] * 10)
    weights = train.class_weights(labels, 3, "balanced")
    assert weights[1] / weights[0] == pytest.approx(9.0)
    assert weights[2] == 1.0  # absent class: neutral
    assert train.class_weights(labels, 3, "none") is None


class Killed(Exception):
    pass


def tiny_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = train.one_hot((x[:, 0] > 0).astype(int), 2)
    return train.array_dataset(x, y, 16, seed=0), train.array_dataset(x, y, 16)


def tiny_model() -> keras.Model:
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    train.compile_classifier(model, train.make_optimizer("adam", 0.05))
    return model


def test_in_memory_validation_scores_as_keras_evaluate():
    """A head's validation is one call of the model on the arrays (no traced evaluation
    function): the same loss, label smoothing included, and accuracy as model.evaluate."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8)).astype("float32")
    y = train.one_hot(rng.integers(0, 2, 300), 2)
    model = tiny_model()
    for smoothing in (0.0, 0.1):
        train.compile_classifier(model, train.make_optimizer("adam", 0.05),
                                 label_smoothing=smoothing)
        in_memory = train.validate(model, train.InMemory(x, y))
        evaluated = train.validate(model, train.array_dataset(x, y, 64))
        assert in_memory == pytest.approx(evaluated, rel=1e-5)
    # Confidently wrong: the loss comes from the logits, not from clipped probabilities.
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel * 200, bias])
    in_memory = train.validate(model, train.InMemory(x, y))
    assert in_memory == pytest.approx(train.validate(model, train.array_dataset(x, y, 64)),
                                      rel=1e-5)
    assert in_memory["val_loss"] > 20  # clipped at 1e-7 it could not pass 16.2


def test_checkpoint_resumes_after_a_crash(tmp_path):
    keras.utils.set_random_seed(0)
    data, val = tiny_problem()
    checkpoint = Checkpoint(tmp_path / "ckpt", fingerprint="abc")

    def crash_after_epoch_12(row):
        if row["epoch"] == 12:
            raise Killed

    with pytest.raises(Killed):
        train.fit_epochs(tiny_model(), data, val, epochs=5, patience=10, first_epoch=10,
                         checkpoint=checkpoint, on_epoch=crash_after_epoch_12)
    epochs_run = []
    model, history, *_ = train.fit_epochs(tiny_model(), data, val, epochs=5, patience=10,
                                      first_epoch=10, checkpoint=checkpoint,
                                      on_epoch=lambda row: epochs_run.append(row["epoch"]))
    assert epochs_run == [13, 14]  # 10..12 came from the checkpoint, not rerun
    assert [row["epoch"] for row in history] == [10, 11, 12, 13, 14]
    best = min(history, key=lambda row: row["val_loss"])
    assert model.evaluate(val, verbose=0)[0] == pytest.approx(best["val_loss"], rel=1e-4)


def test_checkpoint_killed_between_model_and_state_resumes_the_last_complete_epoch(
        tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    data, val = tiny_problem()
    checkpoint = Checkpoint(tmp_path / "ckpt", fingerprint="abc")
    real_atomic_path, state_writes = checkpoint_module.atomic_path, []

    @contextlib.contextmanager
    def killed_before_the_third_state(target):
        if target.name == "state.json":
            state_writes.append(target)
            if len(state_writes) == 3:  # epoch 3's files are written, its state is not
                raise Killed
        with real_atomic_path(target) as tmp:
            yield tmp

    monkeypatch.setattr(checkpoint_module, "atomic_path", killed_before_the_third_state)
    with pytest.raises(Killed):
        train.fit_epochs(tiny_model(), data, val, epochs=5, patience=10, checkpoint=checkpoint)
    monkeypatch.undo()
    for newer in ("last-3.keras", "best-3.weights.h5"):  # what the old layout tore on
        assert (checkpoint.folder / newer).exists()

    model, state = checkpoint.load()
    assert (state["epochs_done"], state["last"]) == (2, "last-2.keras")
    epoch_2, epoch_3 = (model.evaluate(val, verbose=0)[0],
                        keras.saving.load_model(checkpoint.folder / "last-3.keras")
                        .evaluate(val, verbose=0)[0])
    assert epoch_2 == pytest.approx(state["history"][-1]["val_loss"], rel=1e-4)
    assert epoch_3 != pytest.approx(epoch_2, rel=1e-4)
    checkpoint.restore_best(model)
    assert model.evaluate(val, verbose=0)[0] == pytest.approx(
        min(row["val_loss"] for row in state["history"]), rel=1e-4)

    epochs_run = []
    model, history, *_ = train.fit_epochs(tiny_model(), data, val, epochs=5, patience=10,
                                      checkpoint=checkpoint,
                                      on_epoch=lambda row: epochs_run.append(row["epoch"]))
    assert epochs_run == [3, 4, 5]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]
    best = min(history, key=lambda row: row["val_loss"])
    assert model.evaluate(val, verbose=0)[0] == pytest.approx(best["val_loss"], rel=1e-4)
    state = checkpoint.load()[1]
    assert sorted(p.name for p in checkpoint.folder.iterdir()) == sorted(
        {"state.json", state["last"], state["best"]})  # superseded and stray files are gone


def test_checkpoint_from_other_inputs_is_ignored(tmp_path):
    data, val = tiny_problem()
    train.fit_epochs(tiny_model(), data, val, epochs=2, patience=5,
                     checkpoint=Checkpoint(tmp_path / "ckpt", fingerprint="old"))
    _, history, *_ = train.fit_epochs(tiny_model(), data, val, epochs=2, patience=5,
                                  checkpoint=Checkpoint(tmp_path / "ckpt", fingerprint="new"))
    assert len(history) == 2


def test_finetune_weighs_classes_when_the_head_does(monkeypatch, cfg_factory, tmp_path):
    """head.class_weight: balanced reaches the fine-tune's fit as it reaches the head's."""
    from tlearn.data.batches import ImageBatches
    from tlearn.data.store import Split, SplitReader, save_split

    base = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="conv")],
                            name="base")
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(base(inputs, training=False)))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (20, 8, 8, 3), dtype=np.uint8)
    save_split(tmp_path / "train", Split(images, np.array([0] * 16 + [1] * 4),
                                         np.array(["f"] * 20)))
    split = SplitReader(tmp_path / "train")
    seen = []
    real_fit_epochs = train.fit_epochs
    monkeypatch.setattr(train, "fit_epochs", lambda *a, **kw: seen.append(kw["class_weight"])
                        or real_fit_epochs(*a, **kw))
    for mode in ("balanced", "none"):
        cfg = cfg_factory({"head.class_weight": mode, "finetune.unfreeze": 1,
                           "finetune.epochs": 1, "finetune.batch_size": 10})
        batches = ImageBatches(split, 2, 10, seed=0, augment=cfg.augment)
        train.finetune(model, base, batches, ImageBatches(split, 2, 10), cfg.finetune, cfg.head,
                       seed=0)
    assert seen[0] == pytest.approx({0: 20 / 32, 1: 20 / 8}) and seen[1] is None


def test_keep_start_keeps_the_model_when_no_epoch_beats_it(tmp_path):
    """A fine-tune measures its starting model first: if training only makes it worse on
    validation, the starting weights come back (here: a learning rate too high to help)."""
    keras.utils.set_random_seed(0)
    data, val = tiny_problem()
    model = tiny_model()
    model.fit(data, epochs=20, verbose=0)  # a good start
    start_weights = [w.copy() for w in model.get_weights()]
    train.compile_classifier(model, train.make_optimizer("sgd", 50.0))  # ruins it
    model, history, best_epoch, start = train.fit_epochs(
        model, data, val, epochs=2, patience=5, first_epoch=7, keep_start=True,
        checkpoint=Checkpoint(tmp_path / "ckpt", fingerprint="k"))
    assert [row["epoch"] for row in history] == [7, 8]
    assert best_epoch == 6 and start["val_loss"] < min(r["val_loss"] for r in history)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), start_weights))
    assert train.best_epoch_metrics(history, start, start_epoch=6) == {
        "val_accuracy": start["val_accuracy"], "val_loss": start["val_loss"], "best_epoch": 6}


def test_keep_start_lets_a_better_epoch_win():
    keras.utils.set_random_seed(0)
    data, val = tiny_problem()
    model, history, best_epoch, start = train.fit_epochs(
        tiny_model(), data, val, epochs=3, patience=5, keep_start=True)
    assert best_epoch in (1, 2, 3) and start["val_loss"] > min(r["val_loss"] for r in history)


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path, cfg_factory):
    """Batches, augmentation and dropout are drawn from the seed and the epoch: a run
    killed after epoch 2 and resumed gives the same weights as one never interrupted."""
    from tlearn.data.batches import ImageBatches
    from tlearn.data.store import Split, SplitReader, save_split

    rng = np.random.default_rng(0)
    save_split(tmp_path / "train", Split(rng.integers(0, 255, (24, 8, 8, 3), dtype=np.uint8),
                                         np.arange(24) % 2, np.array(["f"] * 24)))
    split = SplitReader(tmp_path / "train")
    augment = cfg_factory({"augment.horizontal_flip": True}).augment

    def model_and_data():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Dropout(0.5)(keras.layers.Flatten()(inputs))
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
        train.compile_classifier(model, train.make_optimizer("adam", 0.01))
        return model, ImageBatches(split, 2, 8, seed=3, augment=augment), ImageBatches(split, 2, 8)

    model, data, val = model_and_data()
    straight = train.fit_epochs(model, data, val, epochs=4, patience=10,
                                seed=3).model.get_weights()

    def crash_after_epoch_2(row):
        if row["epoch"] == 2:
            raise Killed

    checkpoint = Checkpoint(tmp_path / "ckpt", fingerprint="r")
    model, data, val = model_and_data()
    with pytest.raises(Killed):
        train.fit_epochs(model, data, val, epochs=4, patience=10, checkpoint=checkpoint,
                         on_epoch=crash_after_epoch_2, seed=3)
    model, data, val = model_and_data()
    resumed = train.fit_epochs(model, data, val, epochs=4, patience=10,
                               checkpoint=checkpoint, seed=3).model.get_weights()
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(straight, resumed))


def test_train_head_repeats_exactly_with_its_seed(cfg_factory):
    from tlearn.features import FeatureSet

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    x = (rng.normal(size=(300, 12)) + 4 * np.eye(3, 12)[y]).astype("float32")
    data, validation = FeatureSet(x[:240], y[:240]), FeatureSet(x[240:], y[240:])
    head = cfg_factory({"head.units": [8], "head.epochs": 4, "head.patience": 4,
                        "head.learning_rate": 0.01,
                        "head.batch_size": 16, "head.class_weight": "balanced"}).head
    runs = [train.train_head(data, validation, 3, head, seed=1) for _ in range(2)]
    assert runs[0][1] == runs[1][1] and len(runs[0][1]) == 4
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][0].get_weights(),
                                                    runs[1][0].get_weights()))
    assert runs[0][1][-1]["val_accuracy"] > 0.8  # it learns
