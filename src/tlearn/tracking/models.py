"""tlearn's Keras models in MLflow: logged as a pyfunc model that carries the ``.keras``
file, its class names and image preparation, and tlearn's own code, so
``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work where tlearn is not
installed; and loaded back as a Keras model for ``tlearn predict`` and the registry.

Why pyfunc and not MLflow's keras flavour: MLflow 3.17's keras saver crashes when given an
input example (mlflow/mlflow#16183), and a plain Keras flavour could not load tlearn's
preprocessing layer without tlearn on the path.
"""

from __future__ import annotations

import logging
import os
from contextlib import suppress
from importlib import metadata as dist_metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from tlearn.errors import TlearnError
from tlearn.io import file_digest
from tlearn.tracking.store import Settings, one_line, probe, quiet_mlflow

log = logging.getLogger(__name__)
MODEL_ARTIFACT = "model"  # key of the .keras file among the pyfunc model's artifacts
PACKAGE = Path(__file__).resolve().parents[1]  # src/tlearn, shipped with every model


class KerasClassifier(mlflow.pyfunc.PythonModel):
    """Raw RGB 0..255 float32 ``(N, size, size, 3)`` in, class probabilities out."""

    # MLflow would check predict's type hints; the signature is declared in log_model.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.model = load_keras_file(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input, params=None):
        return self.model.predict(np.asarray(model_input, dtype="float32"), verbose=0)


def load_keras_file(path: str | Path):
    import keras

    from tlearn.models import backbones  # noqa: F401  registers tlearn>Preprocess

    return keras.saving.load_model(path)


def _pip_requirements() -> list[str]:
    reqs = []
    for dist in ("keras", "tensorflow-cpu", "tensorflow", "numpy", "Pillow", "mlflow"):
        with suppress(dist_metadata.PackageNotFoundError):
            reqs.append(f"{dist}=={dist_metadata.version(dist)}")
    return reqs


def log_model(model_file: Path, name: str, labels: list[str], resize_mode: str,
              example: np.ndarray) -> Any:
    """Log a tlearn ``.keras`` file to the active run; returns MLflow's model info.

    The signature is declared from the sizes (nothing is loaded to infer it); ``example``
    (a few raw test images) is stored as the input example."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size = int(example.shape[1])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, size, size, 3))]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, len(labels)))]))
    md5 = file_digest(model_file, "md5")
    info = mlflow.pyfunc.log_model(
        name=name, python_model=KerasClassifier(),
        artifacts={MODEL_ARTIFACT: str(model_file)}, code_paths=[str(PACKAGE)],
        signature=signature, input_example=example.astype("float32"),
        pip_requirements=_pip_requirements(),
        metadata={"labels": list(labels), "image_size": size, "resize_mode": resize_mode,
                  "file": model_file.as_posix(), "md5": md5},
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
    from tlearn.data.store import load_split
    from tlearn.io import read_json

    example = load_split(paths.prepared_split("test")).images[:2]
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
