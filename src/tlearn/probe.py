"""``tlearn probe FOLDER``: how well transfer learning will do on a folder of images, in
seconds rather than minutes, before any pipeline runs.

One process, no DVC: worker processes decode and square-ify the images (as prepare does)
while the frozen base turns each batch into a pooled feature vector (as the features stage
does); the logistic regression of the baselines stage (the linear probe, the same search
over C) is fitted on the training vectors and scored on validation, then on test when the
folder has one. What it leaves is a model ``tlearn predict``, the GUI and serving take:
the extractor with the regression as its softmax head.

It is fast because each image goes through the base once, decoding overlaps the base (and
TensorFlow's import), and there is no augmentation, no head training and no fine-tune: a
baseline for the pipeline, which keeps the same kind of probe at its own image size as its
fine-tune's floor. Its image size is its own (``--image-size``, 192 by default: on the
cats-vs-dogs photos 1.4x faster than 224 px at about the same validation accuracy).
"""

from __future__ import annotations

import functools
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from tlearn import baselines
from tlearn.config import Config
from tlearn.data import decode, splits
from tlearn.data.images import BadImage, load_rgb
from tlearn.data.sources import SPLIT_ALIASES, folder_layout
from tlearn.errors import DataError
from tlearn.features import FeatureSet
from tlearn.io import atomic_path, write_json
from tlearn.metrics import SUMMARY_KEYS

MODEL_FILE, REPORT_FILE = "model.keras", "probe.json"
#: Decoded images waiting for the base at most (bytes): decoding runs ahead while
#: TensorFlow imports and the base is built, but a large folder never sits in memory.
DECODED_AHEAD_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Image:
    path: Path
    label: int  # index into the class names


@dataclass(frozen=True)
class FolderImages:
    classes: list[str]
    splits: dict[str, list[Image]]  # train, validation, test


@dataclass
class ProbeResult:
    classes: list[str]
    image_size: int
    resize_mode: str
    counts: dict[str, int]                # images per split the probe used
    search: list[dict]                    # [{"value": C, "val_accuracy": a}, ...]
    val_accuracy: float
    seconds_to_validation: float          # from ``started`` to val_accuracy
    test: dict | None = None              # the classification report on test, if any
    skipped: list[dict] = field(default_factory=list)  # [{"file", "reason"}] not decodable
    seconds: float = 0.0
    example: np.ndarray | None = None     # two prepared validation images (uint8)

    def metrics(self) -> dict[str, float]:
        """The run's figures, named as the pipeline names them."""
        test = {f"test/{k}": self.test[k] for k in SUMMARY_KEYS} if self.test else {}
        return {"val_accuracy": self.val_accuracy,
                "seconds_to_validation": self.seconds_to_validation, "seconds": self.seconds,
                "n_skipped": len(self.skipped),
                **{f"n_{split}": n for split, n in self.counts.items()}, **test}

    def report(self) -> dict:
        return {"classes": self.classes, "image_size": self.image_size, "counts": self.counts,
                "val_accuracy": self.val_accuracy, "logistic_regression": self.search,
                "seconds_to_validation": self.seconds_to_validation, "seconds": self.seconds,
                "test": self.test, "skipped": self.skipped}


def list_images(folder: Path, cfg: Config) -> FolderImages:
    """The class names and each split's images: split folders (train, validation or val,
    test) as the folder gives them, the missing validation and test carved from train as
    prepare carves them (``prepare.split``, ``base.seed``; no de-duplication here)."""
    if not folder.is_dir():
        raise DataError(f"tlearn probe: {folder} is not a folder")
    layout = folder_layout(folder)
    has_splits = None not in layout
    found = decode.list_files(folder, has_splits)
    items = [splits.Item(path=f.path, label=f.label, digest=f.path,
                         split=SPLIT_ALIASES[f.split.lower()] if f.split else None)
             for f in found]
    if not items:
        raise DataError(f"tlearn probe: no image files in {folder} (expected <class>/<images> "
                        "or <split>/<class>/<images>)")
    items = splits.assign(items, cfg.prepare.split.validation, cfg.prepare.split.test,
                          cfg.base.seed)
    classes = splits.check_classes(items)
    return FolderImages(classes, {
        s: [Image(folder / it.path, classes.index(it.label))
            for it in sorted(items, key=lambda it: it.path) if it.split == s]
        for s in splits.SPLITS})


def run(images: FolderImages, cfg: Config, image_size: int,
        on_validation: Callable[[ProbeResult], None] | None = None,
        started: float | None = None) -> tuple[ProbeResult, object]:
    """Probe a folder's ``images`` (:func:`list_images`) at ``image_size``; ``on_validation``
    hears the result as soon as validation is scored (before test). Returns the result and
    the model (extractor + linear softmax head). Its seconds count from ``started`` (a
    ``time.perf_counter()``; default: now)."""
    started = time.perf_counter() if started is None else started
    classes, by_split = images.classes, images.splits
    order = [image for s in splits.SPLITS for image in by_split[s]]
    load = functools.partial(_load, size=image_size, mode=cfg.prepare.resize_mode,
                             max_pixels=cfg.prepare.max_pixels, min_side=cfg.prepare.min_side)
    batch_size = cfg.features.batch_size
    # The pool forks before TensorFlow is imported (forking after it is unsafe), and starts
    # decoding at once: TensorFlow's import and the base's building overlap it.
    with Pool(decode.worker_count()) as pool:
        ahead = max(1, DECODED_AHEAD_BYTES // (batch_size * image_size * image_size * 3))
        decoded = itertools.chain.from_iterable(decoded_batches(
            pool, load, [image.path for image in order], batch_size, ahead))
        from tlearn.models.head import assemble, build_extractor, linear_head

        extractor = build_extractor(cfg.model.backbone, image_size, cfg.model.weights, "avg")
        features = {s: _extract(extractor, decoded, by_split[s], batch_size)
                    for s in ("train", "validation")}
        search = baselines.logistic_regression(
            baselines.subsample(features["train"][0], cfg.baselines.max_train, cfg.base.seed),
            features["validation"][0], cfg.baselines, cfg.base.seed)
        result = ProbeResult(
            classes, image_size, cfg.prepare.resize_mode,
            counts={s: len(f[0]) for s, f in features.items()}, search=search.rows,
            val_accuracy=max(row["val_accuracy"] for row in search.rows),
            seconds_to_validation=round(time.perf_counter() - started, 1),
            skipped=[bad for s in features for bad in features[s][1]])
        decodable = (p for p in (load(i.path) for i in by_split["validation"])
                     if not isinstance(p, str))
        result.example = np.stack(list(itertools.islice(decodable, 2)))
        if on_validation:
            on_validation(result)
        if by_split["test"]:
            test, skipped = _extract(extractor, decoded, by_split["test"], batch_size)
            result.counts["test"], result.skipped = len(test), result.skipped + skipped
            result.test = baselines.evaluate(search, test, classes)
    model = assemble(extractor, linear_head(tuple(extractor.output.shape[1:]), *search.linear))
    result.seconds = round(time.perf_counter() - started, 1)
    return result, model


def summary(result: ProbeResult) -> str:
    """The line to print as soon as validation is scored."""
    best = max(result.search, key=lambda row: row["val_accuracy"])
    return (f"{len(result.classes)} classes, {result.counts['train']} training images at "
            f"{result.image_size} px: validation accuracy {result.val_accuracy:.4f} on "
            f"{result.counts['validation']} images (logistic regression, C={best['value']}) "
            f"after {result.seconds_to_validation:.1f} s")


def save(folder: Path, result: ProbeResult, model) -> list[Path]:
    """The model as ``tlearn predict --model`` takes it (``model.keras`` with
    ``labels.json`` and ``preprocess.json`` beside it) and ``probe.json``; returns the
    report files."""
    from tlearn.data.store import save_preprocess

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / MODEL_FILE) as tmp:
        model.save(tmp)
    write_json(folder / "labels.json", result.classes)
    save_preprocess(folder / "preprocess.json", result.image_size, result.resize_mode)
    write_json(folder / REPORT_FILE, result.report())
    return [folder / REPORT_FILE]


def decoded_batches(pool, load: Callable[[Path], np.ndarray | str], paths: Sequence[Path],
                    batch_size: int, ahead: int) -> Iterator[list[np.ndarray | str]]:
    """``load`` of each path in ``pool``, a batch at a time in order, with up to ``ahead``
    batches decoding while the caller works on the current one."""
    starts = iter(range(0, len(paths), batch_size))
    pending: deque = deque()

    def submit() -> None:
        start = next(starts, None)
        if start is not None:
            pending.append(pool.map_async(load, paths[start:start + batch_size]))

    for _ in range(ahead):
        submit()
    while pending:
        batch = pending.popleft().get()
        submit()
        yield batch


def _extract(extractor, decoded: Iterator[np.ndarray | str], images: list[Image],
             batch_size: int) -> tuple[FeatureSet, list[dict]]:
    """The next ``len(images)`` decoded images through ``extractor``, ``batch_size`` at a
    time: their features and labels, and the images that did not decode."""
    rows, labels, skipped, pending = [], [], [], []

    def flush() -> None:
        rows.append(np.asarray(extractor.predict_on_batch(np.stack(pending).astype("float32"))))
        pending.clear()

    for image in images:
        pixels = next(decoded)
        if isinstance(pixels, str):
            skipped.append({"file": str(image.path), "reason": pixels})
            continue
        pending.append(pixels)
        labels.append(image.label)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not rows:
        raise DataError(f"tlearn probe: none of the {len(images)} images of a split decoded "
                        f"(first: {skipped[0]['file']}: {skipped[0]['reason']})")
    return FeatureSet(np.concatenate(rows), np.array(labels, np.int64)), skipped


def _load(path: Path, size: int, mode: str, max_pixels: int, min_side: int) -> np.ndarray | str:
    """Worker: the image as prepare makes it, or why it cannot be used."""
    try:
        return load_rgb(path, size, mode, max_pixels, min_side)
    except BadImage as exc:
        return str(exc)
