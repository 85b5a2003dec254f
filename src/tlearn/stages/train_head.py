"""train_head stage: the new head on the cached features of the frozen base, then the
base and head joined into one model taking raw RGB -> models/head.keras, with the class
names (labels.json) and the image preparation (preprocess.json) beside it. The head's
params come from models/head_params.yaml, which the tune stage writes (params.yaml's
``head`` with the tuned keys replaced)."""

from __future__ import annotations

import logging

from tlearn import paths
from tlearn.config import Config
from tlearn.stages import Stage

log = logging.getLogger(__name__)

STAGE = Stage(
    name="train_head",
    help="train the new head on the cached features -> models/head.keras",
    params=("base.seed",),
    params_files={paths.HEAD_PARAMS: ("head",)},
    deps=(paths.FEATURES, paths.PREPARED_LABELS, paths.PREPARED_PREPROCESS),
    outs=(paths.HEAD_MODEL, paths.LABELS, paths.PREPROCESS),
    report=paths.REPORTS / "train_head.json",
    plots=(paths.REPORTS / "head_history.csv",),
    history=paths.REPORTS / "head_history.csv",
    history_prefix="head",
    model=paths.HEAD_MODEL,
    artifacts=(paths.LABELS, paths.PREPROCESS),
    datasets=("train", "validation"),
)


def run(cfg: Config) -> dict:
    import keras

    from tlearn import features, train
    from tlearn.data.store import load_preprocess
    from tlearn.io import read_json, write_csv, write_json
    from tlearn.models.head import assemble, count_params
    from tlearn.models.saving import save_model

    labels = read_json(paths.PREPARED_LABELS)
    head, history = train.train_head(features.load_training(), features.load("validation"),
                                     len(labels), cfg.head, seed=cfg.base.seed)
    model = assemble(keras.saving.load_model(paths.EXTRACTOR), head)
    params = count_params(model)
    log.info("head phase: %s trainable, %s non-trainable parameters",
             f"{params['trainable_params']:,}", f"{params['non_trainable_params']:,}")
    save_model(model, paths.HEAD_MODEL)
    write_json(paths.LABELS, labels)
    write_json(paths.PREPROCESS, load_preprocess(paths.PREPARED_PREPROCESS))
    write_csv(STAGE.history, history)
    metrics = {**train.best_epoch_metrics(history), "epochs": len(history), **params}
    write_json(STAGE.report, metrics)
    return metrics
