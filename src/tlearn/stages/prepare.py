"""prepare stage: data/raw -> data/prepared/{train,validation,test}.npz, labels.json and
preprocess.json.

Every file is decoded and validated (bad ones are quarantined in reports/prepare.json
with the reason, never fatal), exact duplicates are dropped so no image sits in two
splits, missing splits are carved by a stratified seeded split, and every image is
square-ified and resized to ``prepare.image_size``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tlearn import paths
from tlearn.config import Config
from tlearn.data import splits
from tlearn.data.images import BadImage, load_rgb
from tlearn.data.store import Split, save_preprocess, save_split
from tlearn.errors import DataError
from tlearn.io import atomic_path, file_digest, read_json, write_json
from tlearn.stages import Stage

log = logging.getLogger(__name__)

STAGE = Stage(
    name="prepare",
    help="decode, validate, de-duplicate, split and resize into data/prepared",
    params=("base.seed", "prepare"),
    deps=(paths.RAW,),
    outs=(paths.PREPARED,),
    metrics=(paths.REPORTS / "prepare.json",),
)


def run(cfg: Config) -> dict:
    started = time.perf_counter()
    manifest = read_json(paths.MANIFEST)
    files = list_files(paths.RAW, has_splits=bool(manifest["splits"]))
    if not files:
        raise DataError(f"{paths.RAW}: no image files found (run `tlearn download`)")
    decode = functools.partial(_decode, size=cfg.prepare.image_size,
                               mode=cfg.prepare.resize_mode, max_pixels=cfg.prepare.max_pixels)
    items, pixels, quarantined = [], {}, []
    with Pool(min(os.cpu_count() or 1, 8)) as pool:
        results = pool.imap(decode, [paths.RAW / rel for rel, _, _ in files], chunksize=16)
        for (rel, label, split), (digest, image, error) in tqdm(
                zip(files, results), total=len(files), desc="prepare", unit="img", disable=None):
            if error:
                quarantined.append({"file": rel, "reason": error})
                continue
            items.append(splits.Item(path=rel, label=label, split=split, digest=digest))
            pixels[rel] = image
    items, duplicates = splits.drop_duplicates(items)
    items = splits.assign(items, cfg.prepare.split.validation, cfg.prepare.split.test,
                          cfg.base.seed)
    classes = splits.check_classes(items)

    counts = {}
    with atomic_path(paths.PREPARED) as tmp:
        tmp.mkdir()
        for split in splits.SPLITS:
            members = sorted((it for it in items if it.split == split), key=lambda it: it.path)
            save_split(tmp / f"{split}.npz", Split(
                images=np.stack([pixels[it.path] for it in members]),
                labels=np.array([classes.index(it.label) for it in members], dtype=np.int64),
                files=np.array([it.path for it in members])))
            per_class = Counter(it.label for it in members)
            counts[split] = {c: per_class[c] for c in classes}
        write_json(tmp / paths.PREPARED_LABELS.name, classes)
        save_preprocess(tmp / paths.PREPARED_PREPROCESS.name, cfg.prepare.image_size,
                        cfg.prepare.resize_mode)

    for q in quarantined:
        log.warning("quarantined %s: %s", q["file"], q["reason"])
    metrics = {
        "n_images": len(items),
        "n_quarantined": len(quarantined),
        "n_duplicates": len(duplicates),
        "n_classes": len(classes),
        **{f"n_{split}": sum(counts[split].values()) for split in splits.SPLITS},
    }
    write_json(STAGE.metrics[0], {
        **metrics,
        "image_size": cfg.prepare.image_size,
        "resize_mode": cfg.prepare.resize_mode,
        "given_splits": manifest["splits"],
        "seconds": round(time.perf_counter() - started, 2),
        "counts": counts,
        "quarantined": quarantined,
        "duplicates": duplicates,
    })
    log.info("prepare: %s images kept (%s), %d quarantined, %d duplicates dropped",
             metrics["n_images"], ", ".join(f"{s} {metrics['n_' + s]}" for s in splits.SPLITS),
             len(quarantined), len(duplicates))
    return metrics


def list_files(raw: Path, has_splits: bool) -> list[tuple[str, str, str | None]]:
    """``(path relative to raw, class, given split or None)`` for every file, sorted."""
    found = []
    for path in sorted(raw.rglob("*")):
        rel = path.relative_to(raw)
        if not path.is_file() or rel.as_posix() == "manifest.json" or any(p.startswith(".") for p in rel.parts):
            continue
        if has_splits:
            if len(rel.parts) < 3:
                continue
            found.append((rel.as_posix(), rel.parts[1], rel.parts[0]))
        elif len(rel.parts) >= 2:
            found.append((rel.as_posix(), rel.parts[0], None))
    return found


def _decode(path: Path, size: int, mode: str, max_pixels: int):
    """Worker: ``(sha256 of the bytes, image array or None, quarantine reason or None)``."""
    digest = file_digest(path)
    try:
        return digest, load_rgb(path, size, mode, max_pixels), None
    except BadImage as exc:
        return digest, None, str(exc)
