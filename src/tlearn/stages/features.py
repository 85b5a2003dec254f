"""features stage: run the frozen base once over train, the augmented copies, validation
and test -> data/features/{split}.npz plus the extractor model that made them."""

from __future__ import annotations

import logging
import time

import keras

from tlearn import features, paths
from tlearn.config import Config
from tlearn.data.store import check_preprocess, load_split
from tlearn.io import atomic_path, write_json
from tlearn.models.head import build_extractor

log = logging.getLogger(__name__)
REPORT = paths.REPORTS / "features.json"
SOURCES = {"train": paths.prepared_split("train"), "augmented": paths.AUGMENTED / "train.npz",
           "validation": paths.prepared_split("validation"), "test": paths.prepared_split("test")}


def run(cfg: Config) -> dict:
    check_preprocess(paths.PREPARED_PREPROCESS, cfg.prepare.image_size, cfg.prepare.resize_mode)
    keras.utils.set_random_seed(cfg.base.seed)  # also makes `weights: none` bases repeatable
    extractor = build_extractor(cfg.model.backbone, cfg.prepare.image_size, cfg.model.weights,
                                cfg.head.pooling)
    started, n_images, shape = time.perf_counter(), 0, None
    with atomic_path(paths.FEATURES) as tmp:
        tmp.mkdir()
        extractor.save(tmp / features.EXTRACTOR.name)
        for split, source in SOURCES.items():
            images = load_split(source)
            x = features.extract(extractor, images.images, cfg.features.batch_size)
            features.save(features.feature_file(split, tmp), features.Features(x, images.labels))
            n_images, shape = n_images + len(x), x.shape[1:]
            log.info("features: %s %s", split, x.shape)
    seconds = time.perf_counter() - started
    metrics = {"n_images": n_images, "seconds": round(seconds, 2),
               "images_per_second": round(n_images / seconds, 1)}
    write_json(REPORT, {**metrics, "backbone": cfg.model.backbone, "feature_shape": list(shape)})
    return metrics
