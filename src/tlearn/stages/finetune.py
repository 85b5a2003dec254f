"""finetune stage: unfreeze the top of the base (BatchNorm stays in inference mode),
recompile with the lower ``finetune.learning_rate`` and train end to end on the images
with online augmentation -> models/model.keras. Checkpoints every epoch: rerunning a
killed stage resumes where it stopped."""

from __future__ import annotations

import logging

import keras

from tlearn import paths, train
from tlearn.config import Config
from tlearn.data.augmentation import build_augmenter
from tlearn.data.store import load_split
from tlearn.io import atomic_path, read_csv, write_csv, write_json
from tlearn.models.head import count_params, find_base, unfreeze_top
from tlearn.stages.train_head import HISTORY as HEAD_HISTORY

log = logging.getLogger(__name__)
REPORT = paths.REPORTS / "finetune.json"
HISTORY = paths.REPORTS / "finetune_history.csv"


def run(cfg: Config) -> dict:
    keras.utils.set_random_seed(cfg.base.seed)
    model = keras.saving.load_model(paths.HEAD_MODEL)
    base = find_base(model)
    trained_layers = unfreeze_top(base, cfg.finetune.unfreeze)
    train.compile_classifier(
        model, train.make_optimizer(cfg.head.optimizer, cfg.finetune.learning_rate,
                                    cfg.head.momentum), cfg.head.label_smoothing)
    params = count_params(model)
    log.info("fine-tune phase: unfreeze %s of the %d layers of %s, %d of them with weights "
             "that train (BatchNorm stays frozen); %s trainable, %s non-trainable parameters",
             cfg.finetune.unfreeze, len(base.layers), base.name, len(trained_layers),
             f"{params['trainable_params']:,}", f"{params['non_trainable_params']:,}")

    train_split, val_split = load_split(paths.prepared_split("train")), \
        load_split(paths.prepared_split("validation"))
    n_classes = model.output.shape[-1]
    augmenter = build_augmenter(cfg.augment, seed=cfg.base.seed)
    head_epochs = len(read_csv(HEAD_HISTORY))
    checkpoint = train.Checkpoint(
        paths.CHECKPOINTS / "finetune",
        train.fingerprint(paths.HEAD_MODEL, cfg.finetune, cfg.augment, cfg.head, cfg.base.seed))
    model, history = train.fit_epochs(
        model,
        train.array_dataset(train_split.images,
                            train.one_hot(train_split.labels, n_classes), cfg.finetune.batch_size,
                            seed=cfg.base.seed, transform=lambda x: augmenter(x, training=True)),
        train.array_dataset(val_split.images,
                            train.one_hot(val_split.labels, n_classes), cfg.finetune.batch_size),
        epochs=cfg.finetune.epochs, patience=cfg.finetune.patience,
        first_epoch=head_epochs + 1, checkpoint=checkpoint)

    with atomic_path(paths.MODEL) as tmp:
        model.save(tmp)
    write_csv(HISTORY, history)
    checkpoint.clear()
    metrics = {"epochs": len(history), "unfrozen_layers": len(trained_layers), **params,
               **train.best_epoch_metrics(history)}
    write_json(REPORT, metrics)
    return metrics
