"""The race: tlearn against the plain Keras recipe on the cats-vs-dogs photos, same
backbone (EfficientNet-Lite0) and data; the same image size as the pipeline (the `photos`
preset's 224 px), while ``tlearn probe`` runs at its own 192 px.

The plain recipe, as tutorials write it with current Keras: images decoded and augmented
on the fly (``image_dataset_from_directory``; random rotation, shift, zoom and flip
layers), the frozen base run inside every training step, a Flatten-Dense(256)-Dropout(0.5)
-sigmoid head, RMSprop at 2e-5, 30 epochs of 100 steps of 20 images, validation after
each epoch. tlearn's side is the ``dvc repro`` of tlearn.bench.pipeline and the ``tlearn
probe`` of tlearn.bench.probe (``make bench`` runs both; the race runs what is missing).

Reported for each: wall time, test accuracy, seconds until validation accuracy first
reached 0.975, and the speed-up: the plain recipe's time to its final test accuracy over
tlearn's time to a model at least as accurate on the test split.
"""

from __future__ import annotations

import importlib
import json
import time

from tlearn.bench import common

SIZE, EPOCHS, STEPS, BATCH, TARGET = 224, 30, 100, 20, 0.975


def plain_recipe(size: int = SIZE, epochs: int = EPOCHS) -> dict:
    import keras

    from tlearn.models import backbones
    from tlearn.models.preprocess import Preprocess

    def folder(split: str, shuffle: bool):
        return keras.utils.image_dataset_from_directory(
            common.CATS_AND_DOGS / split, image_size=(size, size), batch_size=BATCH,
            label_mode="binary", shuffle=shuffle, seed=0, verbose=False)

    started = time.perf_counter()
    keras.utils.set_random_seed(0)
    augment = keras.Sequential([keras.layers.RandomRotation(40 / 360),
                                keras.layers.RandomTranslation(0.2, 0.2),
                                keras.layers.RandomZoom(0.2),
                                keras.layers.RandomFlip("horizontal")])
    base = backbones.build_base("efficientnet_lite0", size, "imagenet")
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = Preprocess("lite")(augment(inputs))
    x = keras.layers.Flatten()(base(x, training=False))
    x = keras.layers.Dropout(0.5)(keras.layers.Dense(256, activation="relu")(x))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(optimizer=keras.optimizers.RMSprop(2e-5), loss="binary_crossentropy",
                  metrics=["accuracy"])
    curve: list[tuple[float, float]] = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: curve.append(
        (time.perf_counter() - started, float(logs["val_accuracy"]))))
    model.fit(folder("train", True).repeat(), steps_per_epoch=STEPS, epochs=epochs,
              validation_data=folder("validation", False), callbacks=[record], verbose=0)
    trained = time.perf_counter() - started
    test_accuracy = float(model.evaluate(folder("test", False), verbose=0)[1])
    return {"size": size, "epochs": epochs, "train_seconds": round(trained, 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "test_accuracy": round(test_accuracy, 4),
            "seconds_to_val_accuracy_0975": next(
                (round(t, 1) for t, acc in curve if acc >= TARGET), None),
            "val_accuracy_per_epoch": [round(acc, 4) for _, acc in curve]}


def speed_up(plain: dict, tlearn: dict) -> dict:
    """tlearn's time to a model at least as accurate on the test split as the plain
    recipe's final one: the trained head if it is, else the fine-tuned model."""
    target = plain["test_accuracy"]
    if tlearn["head_test_accuracy"] >= target:
        seconds, by = tlearn["seconds_to_head"], "head"
    elif tlearn["test_accuracy"] >= target:
        stages = tlearn["stages"]
        seconds, by = sum(stages[s]["seconds"] for s in list(stages)[:list(stages).index(
            "finetune") + 1]), "fine-tuned"
    else:
        return {"target": target, "reached": False}
    return {"target": target, "reached": True, "by": by, "tlearn_seconds": round(seconds, 1),
            "ratio": round(plain["train_seconds"] / seconds, 1)}


def probe_speed_up(plain: dict, probe: dict) -> dict:
    """The same for ``tlearn probe``: its whole run (test scored, model saved) against the
    plain recipe's training time."""
    target = plain["test_accuracy"]
    if probe["test_accuracy"]["median"] < target:
        return {"target": target, "reached": False}
    seconds = probe["wall_seconds"]["median"]
    return {"target": target, "reached": True, "by": "probe", "tlearn_seconds": seconds,
            "ratio": round(plain["train_seconds"] / seconds, 1)}


def _measured(section: str) -> dict:
    """``make bench``'s figures of ``section`` from reports/bench.json, measured now when
    the file has none."""
    report = json.loads(common.BENCH_JSON.read_text()) if common.BENCH_JSON.is_file() else {}
    if section not in report:
        importlib.import_module(f"tlearn.bench.{section}").main()
        report = json.loads(common.BENCH_JSON.read_text())
    return report[section]


def main() -> dict:
    if not common.CATS_AND_DOGS.is_dir():
        print(f"race      skipped: {common.CATS_AND_DOGS} not found")
        return {}
    tlearn, probe = _measured("pipeline"), _measured("probe")
    plain = plain_recipe()
    figures = {"plain": plain, "tlearn": {k: tlearn[k] for k in (
        "wall_seconds", "seconds_to_head", "seconds_to_val_accuracy_0975", "test_accuracy",
        "head_test_accuracy", "tta_test_accuracy")},
        "probe": {k: probe[k] for k in ("wall_seconds", "seconds_to_val_accuracy_0975",
                                        "val_accuracy", "test_accuracy", "image_size")},
        "speed_up": speed_up(plain, tlearn), "probe_speed_up": probe_speed_up(plain, probe)}
    common.save("race", figures)
    print(common.table("The race, cats vs dogs (Lite0)", (
        "", "px", "wall s", "test accuracy", f"s to val acc {TARGET}"), [
        ("plain Keras recipe", SIZE, plain["wall_seconds"], plain["test_accuracy"],
         plain["seconds_to_val_accuracy_0975"]),
        ("tlearn probe (one process)", probe["image_size"], probe["wall_seconds"]["median"],
         probe["test_accuracy"]["median"], probe["seconds_to_val_accuracy_0975"]),
        ("tlearn (dvc repro, photos)", SIZE, tlearn["wall_seconds"], tlearn["test_accuracy"],
         tlearn["seconds_to_val_accuracy_0975"])]))
    for name, up in (("tlearn probe", figures["probe_speed_up"]),
                     ("tlearn dvc repro", figures["speed_up"])):
        print(f"{name}: speed-up to the plain recipe's test accuracy {up['target']:.4f}: " +
              (f"{up['ratio']}x (its {up['by']} model after {up['tlearn_seconds']} s; target "
               ">= 10x)" if up["reached"] else "not reached"))
    print()
    return figures


if __name__ == "__main__":
    main()
