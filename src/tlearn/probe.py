"""``tlearn probe FOLDER``: how well transfer learning will do on a folder of images, in
seconds rather than minutes, before any pipeline runs.

One process, no DVC: worker processes decode and square-ify the images (as prepare does)
while the frozen base turns each batch into a pooled feature vector (as the features stage
does); the logistic regression of the baselines stage (the linear probe, the same search
over C) is fitted on the training vectors and scored on validation, then on test. What it
leaves is a model ``tlearn predict``, the GUI and serving take: the extractor with the
regression as its softmax head.

It is fast because each image goes through the base once, decoding starts before
TensorFlow is imported and then runs beside the base, and there is no augmentation, no
head training and no fine-tune: a baseline for the pipeline, which keeps the same kind of
probe, at its own image size, as its fine-tune's floor.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlearn import baselines, paths, preflight
from tlearn.config import Config
from tlearn.data import decode, splits
from tlearn.data.folders import IGNORED_NAMES
from tlearn.data.sources import SPLIT_ALIASES, split_folders
from tlearn.errors import ConfigError, DataError
from tlearn.features import FeatureSet
from tlearn.io import file_digest, write_json
from tlearn.models.saving import save_model
from tlearn.metrics import SUMMARY_KEYS
from tlearn.stats import wilson_interval

MODEL_FILE, REPORT_FILE = "model.keras", "probe.json"


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    name: str   # the path within the folder, as reports give it
    label: int  # index into the class names


@dataclass(frozen=True)
class FolderImages:
    folder: Path
    classes: list[str]
    splits: dict[str, list[LabelledFile]]  # train, validation, test
    duplicates: list[dict]                 # [{"file", "reason"}]: left out


@dataclass
class ProbeResult:
    folder: str                   # absolute
    backbone: str
    image_size: int
    resize_mode: str
    classes: list[str]
    counts: dict[str, int]        # the images each split gave the probe (decoded)
    n_train_listed: int           # training images in the folder (fitted: counts["train"])
    c: float                      # the logistic regression's chosen C
    search: list[dict]            # [{"value": C, "val_accuracy": a}, ...]
    val_accuracy: float
    seconds_to_validation: float  # from ``started`` (see run) to val_accuracy
    left_out: list[dict]          # [{"file", "reason"}]: duplicates, and files not decoded
    example: np.ndarray           # two prepared validation images (uint8), for MLflow
    test: dict = field(default_factory=dict)  # accuracy, top_k_accuracy, loss on test
    seconds_to_test: float = 0.0

    def metrics(self) -> dict[str, float]:
        """The run's figures, named as the pipeline names them."""
        return {"val_accuracy": self.val_accuracy, **{f"test/{k}": v for k, v in self.test.items()},
                "seconds_to_validation": self.seconds_to_validation,
                "seconds_to_test": self.seconds_to_test, "n_left_out": len(self.left_out),
                "n_train_listed": self.n_train_listed,
                **{f"n_{split}": n for split, n in self.counts.items()}}

    def report(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "example"}


def check(cfg: Config, image_size: int, out: Path) -> None:
    """What can be checked before any work (ConfigError): the backbone's name, the image
    size against its minimum, and that ``out`` is not the pipeline's ``models/`` itself
    (the probe's model would replace the pipeline's), nor a file."""
    entry = preflight.backbone(cfg)
    if image_size < entry.min_size:
        raise ConfigError(f"tlearn probe: --image-size {image_size} is below the minimum "
                          f"{entry.min_size} of backbone {entry.name} (its default is "
                          f"{entry.default_size})")
    if out.resolve() == paths.MODELS.resolve():
        raise ConfigError(f"tlearn probe: --out {out} is the pipeline's models folder: choose "
                          "another (default: models/folder_probe)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"tlearn probe: --out {out} is a file: give a folder")


def list_images(folder: Path, cfg: Config) -> FolderImages:
    """The class names and each split's images. Split folders (train, validation or val,
    test) are kept; exact duplicates are left out (the copy in test, then validation, is
    kept); missing validation and test are carved from train as prepare carves them
    (``prepare.split``, ``base.seed``). Unlike prepare, files that do not decode are left
    out after the split, not before (the probe decodes while it goes)."""
    if not folder.is_dir():
        raise DataError(f"tlearn probe: {folder} is not a folder")
    try:
        found = [f for f in decode.list_files(folder, has_splits=bool(split_folders(folder)))
                 if not IGNORED_NAMES & set(Path(f.path).parts)]
        if not found:
            raise DataError(f"no images in class folders under {folder} (expected "
                            "<class>/<images> or <split>/<class>/<images>)")
        items = [splits.Item(path=f.path, label=f.label, digest=file_digest(folder / f.path),
                             split=SPLIT_ALIASES[f.split.lower()] if f.split else None)
                 for f in found]
        items, duplicates = splits.drop_duplicates(items)
        items = sorted(splits.assign(items, cfg.prepare.split.validation,
                                     cfg.prepare.split.test, cfg.base.seed),
                       key=lambda it: it.path)
        classes = splits.check_classes(items)
    except DataError as exc:  # the data checks prepare shares name its params key
        raise DataError(f"tlearn probe: {str(exc).removeprefix('data.source: ')}") from None
    index = {name: i for i, name in enumerate(classes)}
    return FolderImages(folder, classes, {
        s: [LabelledFile(folder / it.path, it.path, index[it.label])
            for it in items if it.split == s]
        for s in splits.SPLITS}, duplicates)


@dataclass(frozen=True)
class Decoding:
    """A folder's images, in the order the probe takes them, being decoded
    (:func:`decoding`)."""

    images: FolderImages
    image_size: int
    order: dict[str, list[LabelledFile]]  # train (sampled to max_train), validation, test
    load: Callable[[Path], decode.Loaded]
    decoded: Iterator[decode.Loaded]


@contextlib.contextmanager
def decoding(images: FolderImages, cfg: Config, image_size: int) -> Iterator[Decoding]:
    """Start decoding ``images`` at ``image_size`` in worker processes, now: before
    TensorFlow is imported, which the decoding overlaps. At most
    ``baselines.max_train`` training images (a stratified sample, as the baselines stage
    fits on), so a large folder costs no more than that to fit."""
    listed = images.splits["train"]
    keep = baselines.sample_rows(np.array([f.label for f in listed]), cfg.baselines.max_train,
                                 cfg.base.seed)
    order = {"train": [listed[i] for i in keep], "validation": images.splits["validation"],
             "test": images.splits["test"]}
    load = functools.partial(decode.load, size=image_size, mode=cfg.prepare.resize_mode,
                             max_pixels=cfg.prepare.max_pixels, min_side=cfg.prepare.min_side)
    batch_size = cfg.features.batch_size
    with decode.worker_pool() as pool:
        yield Decoding(images, image_size, order, load, decode.decode_ahead(
            pool, load, [f.path for s in order for f in order[s]], batch_size,
            ahead=decode.batches_ahead(batch_size, image_size)))


def run(decoding: Decoding, cfg: Config,
        on_validation: Callable[[ProbeResult], None] | None = None,
        started: float | None = None) -> tuple[ProbeResult, object]:
    """Probe the images ``decoding`` decodes; ``on_validation`` hears the result as soon as
    validation is scored, before test. Returns the result and the model (extractor + linear
    softmax head). Its seconds count from ``started`` (a ``time.perf_counter()``; default:
    now)."""
    from tlearn.models.head import assemble, build_extractor, linear_head

    started = time.perf_counter() if started is None else started
    images, order, decoded = decoding.images, decoding.order, decoding.decoded
    batch_size = cfg.features.batch_size
    extractor = build_extractor(cfg.model.backbone, decoding.image_size, cfg.model.weights,
                                "avg")
    train, skipped = _extract(extractor, decoded, order["train"], batch_size)
    validation, skipped_validation = _extract(extractor, decoded, order["validation"],
                                              batch_size)
    # The regression learns only the classes it sees, and its softmax layer has a column
    # per class seen: every class needs a training image that decoded.
    seen = set(train.y.tolist())
    if missing := [name for i, name in enumerate(images.classes) if i not in seen]:
        raise DataError(f"tlearn probe: no training image of {', '.join(missing)} decoded "
                        f"({len(skipped)} of the training files did not, e.g. "
                        f"{skipped[0]['file']}: {skipped[0]['reason']})")
    search = baselines.logistic_regression(train, validation, cfg.baselines, cfg.base.seed)
    result = ProbeResult(
        str(images.folder.resolve()), cfg.model.backbone, decoding.image_size,
        cfg.prepare.resize_mode, images.classes,
        counts={"train": len(train), "validation": len(validation)},
        n_train_listed=len(images.splits["train"]), c=search.value, search=search.rows,
        val_accuracy=search.val_accuracy,
        seconds_to_validation=round(time.perf_counter() - started, 1),
        left_out=images.duplicates + skipped + skipped_validation,
        example=_example(decoding.load, order["validation"]))
    if on_validation:
        on_validation(result)
    test, skipped_test = _extract(extractor, decoded, order["test"], batch_size)
    report = baselines.evaluate(search, test, images.classes)
    result.test = {k: report[k] for k in SUMMARY_KEYS}
    result.counts["test"], result.left_out = len(test), result.left_out + skipped_test
    result.seconds_to_test = round(time.perf_counter() - started, 1)
    return result, assemble(extractor, linear_head(tuple(extractor.output.shape[1:]),
                                                   *search.linear))


def summary(result: ProbeResult) -> str:
    """The line to print as soon as validation is scored (with its 95% interval: a small
    validation split says little)."""
    fitted, listed = result.counts["train"], result.n_train_listed
    n = result.counts["validation"]
    low, high = wilson_interval(round(result.val_accuracy * n), n)
    return (f"{len(result.classes)} classes, {fitted}"
            f"{f' of {listed}' if fitted < listed else ''} training images at "
            f"{result.image_size} px: validation accuracy {result.val_accuracy:.4f} "
            f"(95%: {low:.3f}-{high:.3f}) on {n} images (logistic regression, C={result.c:g}) "
            f"after {result.seconds_to_validation:.1f} s")


def save(folder: Path, result: ProbeResult, model) -> list[Path]:
    """The model as ``tlearn predict --model`` takes it (``model.keras`` with
    ``labels.json`` and ``preprocess.json`` beside it) and ``probe.json``; returns the
    report files."""
    from tlearn.data.store import save_preprocess

    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, folder / MODEL_FILE)
    write_json(folder / "labels.json", result.classes)
    save_preprocess(folder / "preprocess.json", result.image_size, result.resize_mode)
    write_json(folder / REPORT_FILE, result.report())
    return [folder / REPORT_FILE]


def _extract(extractor, decoded: Iterator[decode.Loaded], files: list[LabelledFile],
             batch_size: int) -> tuple[FeatureSet, list[dict]]:
    """The next ``len(files)`` decoded images through ``extractor``, ``batch_size`` at a
    time: their features and labels, and the files that did not decode."""
    rows, labels, skipped, pending = [], [], [], []

    def flush() -> None:
        # A short last batch is padded to the full size: one traced function serves all.
        batch = np.zeros((batch_size, *pending[0].shape), "float32")
        batch[:len(pending)] = pending
        rows.append(np.asarray(extractor.predict_on_batch(batch))[:len(pending)])
        pending.clear()

    for file in files:
        pixels, error = next(decoded)
        if error is not None:
            skipped.append({"file": file.name, "reason": error})
            continue
        pending.append(pixels)
        labels.append(file.label)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not rows:
        raise DataError(f"tlearn probe: none of the {len(files)} images of a split decoded "
                        f"(e.g. {skipped[0]['file']}: {skipped[0]['reason']})")
    return FeatureSet(np.concatenate(rows), np.array(labels, np.int64)), skipped


def _example(load: Callable[[Path], decode.Loaded], files: list[LabelledFile]) -> np.ndarray:
    """Two images that decode, for the logged model's input example."""
    images = []
    for file in files:
        pixels, _ = load(file.path)
        if pixels is not None:
            images.append(pixels)
        if len(images) == 2:
            break
    return np.stack(images)
