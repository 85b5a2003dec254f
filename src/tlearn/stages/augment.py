"""augment stage: ``augment.copies`` seeded augmented copies of the training split
(data/augmented/train.npz) and a preview grid (reports/augment_preview.png)."""

from __future__ import annotations

import logging

import numpy as np

from tlearn import paths, plots
from tlearn.config import Config
from tlearn.data.augmentation import augmented_copies
from tlearn.data.store import Split, load_split, save_split
from tlearn.io import atomic_path

log = logging.getLogger(__name__)
PREVIEW = paths.REPORTS / "augment_preview.png"
PREVIEW_ROWS = 6


def run(cfg: Config) -> dict:
    train = load_split(paths.prepared_split("train"))
    copies = augmented_copies(train.images, cfg.augment, seed=cfg.base.seed)
    n = len(train)
    augmented = Split(
        images=copies,
        labels=np.tile(train.labels, cfg.augment.copies),
        files=np.array([f"{f}#{c}" for c in range(cfg.augment.copies) for f in train.files]))
    with atomic_path(paths.AUGMENTED) as tmp:
        tmp.mkdir()
        save_split(tmp / "train.npz", augmented)
    # Preview: one row per (evenly spaced) training image, the original then its copies.
    rows = np.linspace(0, n - 1, num=min(PREVIEW_ROWS, n)).astype(int)
    grid = [[train.images[i]] + [copies[c * n + i] for c in range(cfg.augment.copies)]
            for i in rows]
    titles = ["original"] + [f"copy {c + 1}" for c in range(cfg.augment.copies)]
    plots.image_grid(grid, PREVIEW, titles=[titles])
    log.info("augment: %d copies of %d training images -> %s", cfg.augment.copies, n,
             paths.AUGMENTED)
    return {"n_augmented": len(augmented)}
