"""finetune stage: unfreeze the top of the base (BatchNorm stays in inference mode),
recompile with the lower ``finetune.learning_rate`` and train end to end on the images
with online augmentation -> models/model.keras. Checkpoints every epoch: rerunning a
killed stage resumes where it stopped.

The floor (``finetune.probe_floor``, on by default): when the linear probe (the baselines
stage's logistic regression on the frozen features) has a higher validation accuracy than
the fine-tuned model, models/model.keras is the probe instead (the frozen extractor and
the probe as its softmax head), so the pipeline never ships a model worse on validation
than that classical baseline."""

from __future__ import annotations

import logging

from tlearn import paths
from tlearn.config import Config
from tlearn.stages import Stage
from tlearn.stages.train_head import STAGE as TRAIN_HEAD

log = logging.getLogger(__name__)

STAGE = Stage(
    name="finetune",
    help="unfreeze the top of the base and retrain -> models/model.keras",
    params=("base.seed", "augment.rotation", "augment.translation", "augment.zoom",
            "augment.contrast", "augment.horizontal_flip", "augment.vertical_flip",
            "head.optimizer", "head.momentum", "head.label_smoothing", "head.class_weight",
            "finetune", "preset", "presets"),
    deps=(paths.HEAD_MODEL, paths.prepared_split("train"), paths.prepared_split("validation"),
          TRAIN_HEAD.history, paths.EXTRACTOR, paths.PROBE),
    outs=(paths.MODEL,),
    report=paths.REPORTS / "finetune.json",
    plots=(paths.REPORTS / "finetune_history.csv",),
    history=paths.REPORTS / "finetune_history.csv",
    history_prefix="finetune",
    model=paths.MODEL,
    artifacts=(paths.LABELS, paths.PREPROCESS),
    datasets=("train", "validation"),
)


def run(cfg: Config) -> dict:
    import keras
    import numpy as np

    from tlearn import train
    from tlearn.checkpoint import Checkpoint, fingerprint
    from tlearn.data.batches import ImageBatches
    from tlearn.data.store import SplitReader
    from tlearn.io import read_csv, write_csv, write_json
    from tlearn.models.saving import save_model
    from tlearn.models.head import count_params, find_base

    keras.utils.set_random_seed(cfg.base.seed)  # before loading: dropout seeds come from it
    model = keras.saving.load_model(paths.HEAD_MODEL)
    base = find_base(model)
    checkpoint = Checkpoint(
        paths.CHECKPOINTS / STAGE.name,
        fingerprint(paths.HEAD_MODEL, cfg.finetune, cfg.augment, cfg.head, cfg.base.seed))
    n_classes = model.output.shape[-1]
    batches = ImageBatches(SplitReader(paths.prepared_split("train")), n_classes,
                           cfg.finetune.batch_size, seed=cfg.base.seed, augment=cfg.augment)
    validation = ImageBatches(SplitReader(paths.prepared_split("validation")), n_classes,
                              cfg.finetune.batch_size)
    first_epoch = len(read_csv(TRAIN_HEAD.history)) + 1
    (model, history, best_epoch, start), trained_layers = train.finetune(
        model, base, batches, validation, cfg.finetune, cfg.head, seed=cfg.base.seed,
        first_epoch=first_epoch, checkpoint=checkpoint)
    params = count_params(model)
    log.info("fine-tune phase: unfroze %s of the %d layers of %s, %d of them with weights "
             "(BatchNorm stays frozen); %s trainable, %s non-trainable parameters",
             cfg.finetune.unfreeze, len(base.layers), base.name, len(trained_layers),
             f"{params['trainable_params']:,}", f"{params['non_trainable_params']:,}")
    metrics = {"epochs": len(history), "unfrozen_layers": len(trained_layers), **params,
               **train.best_epoch_metrics(history, start, start_epoch=first_epoch - 1),
               "kept_head": best_epoch == first_epoch - 1}
    if start:
        metrics |= {f"start_{k}": v for k, v in start.items()}
    with np.load(paths.PROBE) as probe:
        probe_val_accuracy = float(probe["val_accuracy"])
    probe_is_better = probe_val_accuracy > metrics["val_accuracy"]
    metrics |= {"probe_val_accuracy": probe_val_accuracy,
                "kept_probe": probe_is_better and cfg.finetune.probe_floor}
    if probe_is_better:
        log.warning("the linear probe (validation accuracy %.4f) beats the fine-tuned model "
                    "(%.4f): models/model.keras is %s", probe_val_accuracy,
                    metrics["val_accuracy"], "the probe on the frozen base"
                    if metrics["kept_probe"] else "the fine-tuned model (probe_floor: false)")
    if metrics["kept_probe"]:
        model = probe_model()
    save_model(model, paths.MODEL)
    write_csv(STAGE.history, history)
    checkpoint.clear()
    write_json(STAGE.report, metrics)
    return metrics


def probe_model():
    """The frozen extractor with the linear probe (models/probe.npz) as its head."""
    import keras
    import numpy as np

    from tlearn.models.head import assemble, linear_head

    extractor = keras.saving.load_model(paths.EXTRACTOR)
    with np.load(paths.PROBE) as probe:
        return assemble(extractor, linear_head(tuple(extractor.output.shape[1:]),
                                               probe["kernel"], probe["bias"]))
