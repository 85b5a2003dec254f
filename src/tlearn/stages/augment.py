"""augment stage: ``augment.copies`` seeded augmented copies of the training split
(data/augmented/train/) and a preview grid (reports/augment_preview.png)."""

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
    params=("base.seed", "augment", "preset", "presets"),
    deps=(paths.prepared_split("train"),),
    outs=(paths.AUGMENTED,),
    report=paths.REPORTS / "augment.json",
    plots=(paths.REPORTS / "augment_preview.png",),
    datasets=("train",),
)


def run(cfg: Config) -> dict:
    import numpy as np

    from tlearn import plots
    from tlearn.data.augmentation import augmented_copies
    from tlearn.data.store import ArrayReader, Split, SplitReader, SplitWriter
    from tlearn.io import atomic_path, write_json

    train = SplitReader(paths.prepared_split("train"))
    n, copies = len(train), cfg.augment.copies
    with atomic_path(paths.AUGMENTED) as tmp:
        tmp.mkdir()
        folder = tmp / paths.AUGMENTED_TRAIN.name
        with SplitWriter(folder, copies * n, train.image_shape) as writer:
            rows = augmented_copies(train.images.batches, cfg.augment, seed=cfg.base.seed)
            start = 0
            for images in rows:
                original = slice(start % n, start % n + len(images))
                copy = start // n
                writer.write(Split(images, train.labels[original],
                                   np.array([f"{f}#{copy}" for f in train.files[original]])))
                start += len(images)
        # Preview: one row per (evenly spaced) training image, the original then its copies.
        shown = np.linspace(0, n - 1, num=min(PREVIEW_ROWS, n)).astype(int)
        made = ArrayReader(folder / "images.npy")
        grid = [[train.images.take([i])[0]] + [made.take([c * n + i])[0] for c in range(copies)]
                for i in shown]
    titles = ["original"] + [f"copy {c + 1}" for c in range(copies)]
    plots.image_grid(grid, STAGE.plots[0], titles=[titles])
    log.info("augment: %d copies of %d training images -> %s", copies, n, paths.AUGMENTED)
    metrics = {"n_augmented": copies * n}
    write_json(STAGE.report, metrics)
    return metrics
