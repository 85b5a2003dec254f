"""prepare stage: data/raw -> data/prepared/{train,validation,test}/, labels.json and
preprocess.json.

Every file is decoded and validated (bad ones are quarantined in reports/prepare.json
with the reason, never fatal), exact duplicates are dropped so no image sits in two
splits, missing splits are carved by a stratified seeded split, and every image is
square-ified and resized to ``prepare.image_size``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from tlearn import paths
from tlearn.config import Config
from tlearn.stages import Stage

log = logging.getLogger(__name__)

STAGE = Stage(
    name="prepare",
    help="decode, validate, de-duplicate, split and resize into data/prepared",
    params=("base.seed", "prepare", "preset", "presets"),
    deps=(paths.RAW,),
    outs=(paths.PREPARED,),
    report=paths.REPORTS / "prepare.json",
)


def run(cfg: Config) -> dict:
    import numpy as np

    from tlearn.data import decode, splits
    from tlearn.data.store import ArrayReader, Split, SplitWriter, save_preprocess
    from tlearn.errors import DataError
    from tlearn.io import atomic_path, read_json, write_json

    started = time.perf_counter()
    manifest = read_json(paths.MANIFEST)
    files = decode.list_files(paths.RAW, has_splits=bool(manifest["splits"]))
    if not files:
        raise DataError(f"{paths.RAW}: no image files found (run `tlearn download`)")
    size = cfg.prepare.image_size
    counts = {}
    with atomic_path(paths.PREPARED) as tmp:
        tmp.mkdir()
        scratch = tmp / "decoded.npy"
        decoded = decode.decode_all(paths.RAW, files, scratch, size, cfg.prepare.resize_mode,
                                    cfg.prepare.max_pixels, cfg.prepare.min_side)
        quarantined = [{"file": f.path, "reason": d.error}
                       for f, d in zip(files, decoded) if d.error]
        items = [splits.Item(path=f.path, label=f.label, split=f.split, digest=d.digest)
                 for f, d in zip(files, decoded) if not d.error]
        items, duplicates = splits.drop_duplicates(items)
        items = splits.assign(items, cfg.prepare.split.validation, cfg.prepare.split.test,
                              cfg.base.seed)
        classes = splits.check_classes(items)
        row = {f.path: i for i, f in enumerate(files)}
        pixels = ArrayReader(scratch)
        for split in splits.SPLITS:
            members = sorted((it for it in items if it.split == split), key=lambda it: it.path)
            with SplitWriter(tmp / split,
                             len(members), (size, size, 3)) as writer:
                for start in range(0, len(members), 256):
                    chunk = members[start:start + 256]
                    writer.write(Split(
                        images=pixels.take([row[it.path] for it in chunk]),
                        labels=np.array([classes.index(it.label) for it in chunk], np.int64),
                        files=np.array([it.path for it in chunk])))
            per_class = Counter(it.label for it in members)
            counts[split] = {c: per_class[c] for c in classes}
        scratch.unlink()
        write_json(tmp / paths.PREPARED_LABELS.name, classes)
        save_preprocess(tmp / paths.PREPARED_PREPROCESS.name, size, cfg.prepare.resize_mode)

    for q in quarantined:
        log.warning("quarantined %s: %s", q["file"], q["reason"])
    metrics = {
        "n_images": len(items),
        "n_quarantined": len(quarantined),
        "n_duplicates": len(duplicates),
        "n_classes": len(classes),
        **{f"n_{split}": sum(counts[split].values()) for split in splits.SPLITS},
    }
    write_json(STAGE.report, {
        **metrics,
        "image_size": size,
        "resize_mode": cfg.prepare.resize_mode,
        "given_splits": manifest["splits"],
        "counts": counts,
        "quarantined": quarantined,
        "duplicates": duplicates,
    })
    log.info("prepare: %s images kept (%s), %d quarantined, %d duplicates dropped",
             metrics["n_images"], ", ".join(f"{s} {metrics['n_' + s]}" for s in splits.SPLITS),
             len(quarantined), len(duplicates))
    return {**metrics, "seconds": round(time.perf_counter() - started, 2)}  # to MLflow only
