"""train_head stage: the new head on the cached features of the frozen base, then the
base and head joined into one model taking raw RGB -> models/head.keras, with the class
names (labels.json) and the image preparation (preprocess.json) beside it."""

from __future__ import annotations

import logging

import keras

from tlearn import features, paths, train
from tlearn.config import Config
from tlearn.data.store import load_preprocess
from tlearn.io import atomic_path, read_json, write_csv, write_json
from tlearn.models.head import assemble, build_head, count_params

log = logging.getLogger(__name__)
REPORT = paths.REPORTS / "train_head.json"
HISTORY = paths.REPORTS / "head_history.csv"


def run(cfg: Config) -> dict:
    keras.utils.set_random_seed(cfg.base.seed)
    labels = read_json(paths.PREPARED_LABELS)
    n_classes = len(labels)
    training, validation = features.load_training(), features.load("validation")
    head = build_head(training.x.shape[1:], n_classes, cfg.head)
    train.compile_classifier(
        head, train.make_optimizer(cfg.head.optimizer, cfg.head.learning_rate, cfg.head.momentum),
        cfg.head.label_smoothing)
    head, history = train.fit_epochs(
        head,
        train.array_dataset(training.x, train.one_hot(training.y, n_classes),
                            cfg.head.batch_size, seed=cfg.base.seed),
        train.array_dataset(validation.x, train.one_hot(validation.y, n_classes),
                            cfg.head.batch_size),
        epochs=cfg.head.epochs, patience=cfg.head.patience,
        class_weight=train.class_weights(training.y, n_classes, cfg.head.class_weight))

    model = assemble(keras.saving.load_model(features.EXTRACTOR), head)
    params = count_params(model)
    log.info("head phase: %s trainable, %s non-trainable parameters",
             f"{params['trainable_params']:,}", f"{params['non_trainable_params']:,}")
    with atomic_path(paths.HEAD_MODEL) as tmp:
        model.save(tmp)
    write_json(paths.LABELS, labels)
    write_json(paths.PREPROCESS, load_preprocess(paths.PREPARED_PREPROCESS))
    write_csv(HISTORY, history)
    metrics = {**train.best_epoch_metrics(history), "epochs": len(history), **params}
    write_json(REPORT, metrics)
    return metrics
