"""features stage: run the frozen base once over train, the augmented copies, validation
and test -> data/features/{split}/ plus the extractor model that made them."""

from __future__ import annotations

import logging
import time

from tlearn import paths
from tlearn.config import Config
from tlearn.stages import Stage

log = logging.getLogger(__name__)

#: Feature file name -> the image split it is made from.
SOURCES = {"train": paths.prepared_split("train"), "augmented": paths.AUGMENTED_TRAIN,
           "validation": paths.prepared_split("validation"), "test": paths.prepared_split("test")}

STAGE = Stage(
    name="features",
    help="run the frozen base once over every split and cache the outputs",
    params=("base.seed", "prepare.image_size", "model", "features", "head.pooling", "preset",
            "presets"),
    deps=(paths.PREPARED, paths.AUGMENTED),
    outs=(paths.FEATURES,),
    report=paths.REPORTS / "features.json",
    datasets=("train", "validation", "test"),
)


def run(cfg: Config) -> dict:
    import keras

    from tlearn import features
    from tlearn.data.store import SplitReader, check_preprocess
    from tlearn.io import atomic_path, write_json
    from tlearn.models.saving import save_model
    from tlearn.models.head import build_extractor

    check_preprocess(paths.PREPARED_PREPROCESS, cfg.prepare.image_size, cfg.prepare.resize_mode)
    keras.utils.set_random_seed(cfg.base.seed)  # also makes `weights: none` bases repeatable
    extractor = build_extractor(cfg.model.backbone, cfg.prepare.image_size, cfg.model.weights,
                                cfg.head.pooling)
    started, n_images, shape = time.perf_counter(), 0, None
    with atomic_path(paths.FEATURES) as tmp:
        tmp.mkdir()
        save_model(extractor, tmp / paths.EXTRACTOR.name)
        for split, source in SOURCES.items():
            images = SplitReader(source)
            shape = features.extract(extractor, images, features.feature_folder(split, tmp),
                                     cfg.features.batch_size)
            n_images += len(images)
            log.info("features: %s %s", split, (len(images), *shape))
    seconds = time.perf_counter() - started
    write_json(STAGE.report, {"n_images": n_images, "backbone": cfg.model.backbone,
                              "feature_shape": list(shape)})
    # Timings go to MLflow (and `make bench`), not to the report: a rerun that changes
    # nothing must not change a file DVC and git track.
    return {"n_images": n_images, "seconds": round(seconds, 2),
            "images_per_second": round(n_images / seconds, 1)}
