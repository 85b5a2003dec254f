"""augment stage: ``augment.copies`` seeded augmented copies of the training split
(data/augmented/train.npz) and a preview grid (reports/augment_preview.png)."""

from __future__ import annotations

import logging

from tlearn import paths
from tlearn.config import Config
from tlearn.stages import Stage

log = logging.getLogger(__name__)
PREVIEW_ROWS = 6

STAGE = Stage(
    name="augment",
    help="seeded augmented copies of the training split",
    params=("base.seed", "augment"),
    deps=(paths.prepared_split("train"),),
    outs=(paths.AUGMENTED,),
    metrics=(paths.REPORTS / "augment.json",),
    plots=(paths.REPORTS / "augment_preview.png",),
    datasets=("train",),
)


def run(cfg: Config) -> dict:
    import numpy as np

    from tlearn import plots
    from tlearn.data.augmentation import augmented_copies
    from tlearn.data.store import Split, load_split, save_split
    from tlearn.io import atomic_path, write_json

    train = load_split(paths.prepared_split("train"))
    copies = augmented_copies(train.images, cfg.augment, seed=cfg.base.seed)
    n = len(train)
    augmented = Split(
        images=copies,
        labels=np.tile(train.labels, cfg.augment.copies),
        files=np.array([f"{f}#{c}" for c in range(cfg.augment.copies) for f in train.files]))
    with atomic_path(paths.AUGMENTED) as tmp:
        tmp.mkdir()
        save_split(tmp / paths.AUGMENTED_TRAIN.name, augmented)
    # Preview: one row per (evenly spaced) training image, the original then its copies.
    rows = np.linspace(0, n - 1, num=min(PREVIEW_ROWS, n)).astype(int)
    grid = [[train.images[i]] + [copies[c * n + i] for c in range(cfg.augment.copies)]
            for i in rows]
    titles = ["original"] + [f"copy {c + 1}" for c in range(cfg.augment.copies)]
    plots.image_grid(grid, STAGE.plots[0], titles=[titles])
    log.info("augment: %d copies of %d training images -> %s", cfg.augment.copies, n,
             paths.AUGMENTED)
    metrics = {"n_augmented": len(augmented)}
    write_json(STAGE.metrics[0], metrics)
    return metrics
