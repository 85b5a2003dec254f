"""tlearn's Keras models in MLflow: logged as a pyfunc model that carries the ``.keras``
file, its class names and image preparation, and tlearn's own code, so
``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work where tlearn is not
installed; and loaded back as a Keras model for ``tlearn predict`` and the registry.

Why pyfunc and not MLflow's keras flavour: MLflow 3.17's keras saver crashes when given an
input example (mlflow/mlflow#16183), and a plain Keras flavour could not load tlearn's
preprocessing layer without tlearn on the path.

Why the signature declares no inputs: MLflow enforces one input schema per model, and a
tensor schema rejects a column of images while a column schema rejects a 4-D tensor. The
model takes both (see :class:`KerasClassifier`) and checks its input itself; the accepted
forms are written in the model's metadata (``inputs``).
"""

from __future__ import annotations

import base64
import io
import logging
import os
from contextlib import suppress
from importlib import metadata as dist_metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from tlearn.errors import TlearnError
from tlearn.io import file_digest
from tlearn.tracking.store import Settings, one_line, probe, quiet_mlflow

log = logging.getLogger(__name__)
MODEL_ARTIFACT = "model"  # key of the .keras file among the pyfunc model's artifacts
PACKAGE = Path(__file__).resolve().parents[1]  # src/tlearn, shipped with every model
#: The DataFrame columns a logged model reads raw images from.
IMAGE_COLUMN, PATH_COLUMN = "image", "path"


def input_forms(image_size: int) -> dict[str, str]:
    """What a logged model accepts, as written in its metadata (``inputs``)."""
    return {
        "images": f"a DataFrame column '{IMAGE_COLUMN}' of encoded image files (JPEG, PNG, "
                  "...; base64 text in JSON: dataframe_split or dataframe_records), or "
                  f"'{PATH_COLUMN}' of image files on the machine that runs the model. Each "
                  "is decoded, square-ified by resize_mode and resized to image_size exactly "
                  "as `tlearn predict` does. Returns a DataFrame: label, probability (the top "
                  "class), one probability column per class.",
        "tensor": f"float32 RGB 0..255 of shape (N, {image_size}, {image_size}, 3), images "
                  "already prepared (JSON: inputs). Returns the probabilities, shape "
                  "(N, classes), in the order of labels.",
    }


class KerasClassifier(mlflow.pyfunc.PythonModel):
    """A tlearn classifier as MLflow loads and serves it; two kinds of input
    (:func:`input_forms`): raw encoded images, prepared here by tlearn predict's own code,
    or a float tensor of images already prepared."""

    # MLflow would check predict's type hints; the inputs are checked in predict.
    _skip_type_hint_validation = True

    def __init__(self, labels: list[str], image_size: int, resize_mode: str):
        self.labels, self.image_size, self.resize_mode = list(labels), image_size, resize_mode

    def load_context(self, context) -> None:
        from tlearn.predict import Predictor

        self.predictor = Predictor(load_keras_file(context.artifacts[MODEL_ARTIFACT]),
                                   self.labels, self.image_size, self.resize_mode, "mlflow")

    def predict(self, context, model_input, params=None):
        if isinstance(model_input, dict):  # {"inputs": {"image": [...]}} from the server
            model_input = pd.DataFrame({k: np.atleast_1d(v) for k, v in model_input.items()})
        if isinstance(model_input, pd.DataFrame):
            return self._predict_images(model_input)
        pixels = np.asarray(model_input)
        size = self.image_size
        if pixels.dtype.kind not in "fiu" or pixels.shape[1:] != (size, size, 3):
            raise ValueError(f"expected float32 RGB 0..255 of shape (N, {size}, {size}, 3) or "
                             f"a DataFrame with a column '{IMAGE_COLUMN}' or '{PATH_COLUMN}'; "
                             f"got an array of {pixels.dtype} {pixels.shape}")
        return self.predictor.predict(pixels.astype("float32"))

    def _predict_images(self, frame: pd.DataFrame) -> pd.DataFrame:
        from tlearn.predict import IMAGE_ERRORS

        columns = [c for c in (IMAGE_COLUMN, PATH_COLUMN) if c in frame.columns]
        if len(columns) != 1:
            raise ValueError(f"expected one column '{IMAGE_COLUMN}' (encoded image files, "
                             f"base64 in JSON) or '{PATH_COLUMN}' (image files); got "
                             f"{list(frame.columns)}")
        column, pixels = columns[0], []
        if frame.empty:
            raise ValueError(f"no images in the column '{column}'")
        for row, value in enumerate(frame[column]):
            try:
                source = value if column == PATH_COLUMN else encoded_image(value)
                pixels.append(self.predictor.load_image(source))
            except IMAGE_ERRORS as exc:
                raise ValueError(f"row {row} ('{column}'): not a readable image "
                                 f"({one_line(exc)})") from None
        probabilities = self.predictor.predict(np.stack(pixels))
        return probability_frame(probabilities, self.labels)


def encoded_image(value: Any) -> bytes:
    """The bytes of an encoded image file: as given, or from base64 text (how JSON carries
    bytes; MLflow's own examples break the text into lines)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return base64.b64decode(value)
    raise ValueError(f"expected image bytes or base64 text, got {type(value).__name__}")


def probability_frame(probabilities: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """One row per image: ``label`` and ``probability`` of the top class (ties: the first
    class, as ``tlearn predict`` orders them), then one column per class."""
    frame = pd.DataFrame(probabilities, columns=labels)
    frame.insert(0, "label", [labels[i] for i in probabilities.argmax(axis=1)])
    frame.insert(1, "probability", probabilities.max(axis=1))
    return frame


def load_keras_file(path: str | Path):
    import keras

    from tlearn.models import preprocess  # noqa: F401  registers tlearn>Preprocess

    return keras.saving.load_model(path)


def _pip_requirements() -> list[str]:
    reqs = []
    for dist in ("keras", "tensorflow-cpu", "tensorflow", "numpy", "pandas", "Pillow", "mlflow"):
        with suppress(dist_metadata.PackageNotFoundError):
            reqs.append(f"{dist}=={dist_metadata.version(dist)}")
    return reqs


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def log_model(model_file: Path, name: str, labels: list[str], resize_mode: str,
              example: np.ndarray) -> Any:
    """Log a tlearn ``.keras`` file to the active run; returns MLflow's model info.

    ``example`` (a few prepared test images, uint8) is stored as the input example, as PNG
    files in an ``image`` column: what a client sends. The signature declares the outputs
    of that form only (see the module docstring), which also stops MLflow from inferring a
    one-form input schema from the example."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    size = int(example.shape[1])
    signature = ModelSignature(outputs=Schema(
        [ColSpec("string", "label"), ColSpec("float", "probability")]
        + [ColSpec("float", label) for label in labels]))
    md5 = file_digest(model_file, "md5")
    info = mlflow.pyfunc.log_model(
        name=name, python_model=KerasClassifier(labels, size, resize_mode),
        artifacts={MODEL_ARTIFACT: str(model_file)}, code_paths=[str(PACKAGE)],
        signature=signature,
        input_example=pd.DataFrame({IMAGE_COLUMN: [_png(image) for image in example]}),
        pip_requirements=_pip_requirements(),
        metadata={"labels": list(labels), "image_size": size, "resize_mode": resize_mode,
                  "inputs": input_forms(size), "file": model_file.as_posix(), "md5": md5},
        tags={"tlearn.md5": md5, "tlearn.file": model_file.as_posix()})
    log.info("tracking: logged %s as %s", model_file, info.model_uri)
    return info


def load_model(settings: Settings, uri: str) -> tuple[Any, list[str], str]:
    """``(keras.Model, labels, resize_mode)`` for a model URI such as
    ``models:/tlearn@champion`` (TrackingUnavailable when the store does not answer)."""
    from mlflow.models import Model

    if not settings.embedded:
        probe(settings.uri, settings.check_seconds)
    quiet_mlflow()
    mlflow.set_tracking_uri(settings.uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
        mlmodel = Model.load(os.path.join(local, "MLmodel"))
    except Exception as exc:  # noqa: BLE001 - not found, no such alias
        raise TlearnError(f"--model {uri}: cannot load it from {settings.uri} "
                          f"({_missing_alias_hint(uri) or one_line(exc)})") from exc
    meta = mlmodel.metadata or {}
    artifacts = mlmodel.flavors.get("python_function", {}).get("artifacts", {})
    if MODEL_ARTIFACT not in artifacts or not meta.get("labels") or not meta.get("resize_mode"):
        raise TlearnError(f"--model {uri}: not a model logged by this version of tlearn "
                          "(no Keras file, labels or resize_mode); run the pipeline again")
    model = load_keras_file(os.path.join(local, artifacts[MODEL_ARTIFACT]["path"]))
    return model, list(meta["labels"]), meta["resize_mode"]


def _missing_alias_hint(uri: str) -> str | None:
    """For ``models:/<name>@<alias>`` with no such alias: the aliases there are, and how
    to make one."""
    name, _, alias = uri.removeprefix("models:/").partition("@")
    if not alias:
        return None
    try:
        existing = sorted(mlflow.MlflowClient().get_registered_model(name).aliases)
    except Exception:  # noqa: BLE001 - no such registered model either
        return (f"no registered model {name!r} yet: run the pipeline, which registers "
                "@challenger, then `tlearn promote`")
    if alias in existing:
        return None
    return (f"{name} has no alias {alias!r}; it has {', '.join(existing) or 'none'} "
            f"(`tlearn promote` points champion at the challenger)")


def log_project_model(model_file: Path) -> Any:
    """Log one of the pipeline's models (models/*.keras) with the class names and image
    preparation train_head wrote beside it, and two test images as the input example."""
    from tlearn import paths
    from tlearn.data.store import SplitReader
    from tlearn.io import read_json

    example = SplitReader(paths.prepared_split("test")).images.read(0, 2)
    return log_model(model_file, model_file.stem, read_json(paths.LABELS),
                     read_json(paths.PREPROCESS)["resize_mode"], example)


class KerasRegressor(mlflow.pyfunc.PythonModel):
    """A table of the feature columns in, one prediction per row out (``tlearn regress``:
    standard Keras layers only, so no tlearn code travels with it)."""

    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input, params=None):
        return self.model.predict(np.asarray(model_input, dtype="float32"), verbose=0).reshape(-1)


def log_regressor(model_file: Path, example) -> Any:
    """Log ``tlearn regress``'s model to the active run, its signature inferred from
    ``example`` (a few rows of the feature columns, also stored as the input example)."""
    from mlflow.models import infer_signature

    model = load_keras_file(model_file)
    signature = infer_signature(example, model.predict(example.to_numpy("float32"),
                                                       verbose=0).reshape(-1))
    info = mlflow.pyfunc.log_model(
        name=model_file.stem, python_model=KerasRegressor(),
        artifacts={MODEL_ARTIFACT: str(model_file)}, signature=signature,
        input_example=example, pip_requirements=_pip_requirements(),
        tags={"tlearn.md5": file_digest(model_file, "md5"), "tlearn.file": model_file.as_posix()})
    log.info("tracking: logged %s as %s", model_file, info.model_uri)
    return info
