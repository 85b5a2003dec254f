"""Shared fixtures: a throw-away project folder, synthetic images, configs from params.yaml."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PARAMS = REPO / "params.yaml"


# --- configs ------------------------------------------------------------------------

def make_config(overrides: dict | None = None, params: Path = PARAMS):
    """The repo's params.yaml with ``{"prepare.image_size": 32, ...}`` overrides applied."""
    from tlearn import config

    return config.load(params, overrides=overrides or {})


@pytest.fixture
def cfg_factory():
    return make_config


# --- a project folder ---------------------------------------------------------------

@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A fresh project root (params.yaml + dvc.yaml copied from the repo) as the cwd."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy2(REPO / name, root / name)
    monkeypatch.chdir(root)
    return root


def copy_project(root: Path, files: tuple[str, ...] = ("params.yaml", "dvc.yaml")) -> Path:
    """``files`` and the package source (dvc.yaml lists it as code deps) copied to ``root``.
    The commands that run are still the installed tlearn's."""
    root.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "src" / "tlearn", root / "src" / "tlearn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root


# --- synthetic images ---------------------------------------------------------------

def noise(height: int, width: int, seed: int, channels: int = 3) -> np.ndarray:
    """Distinct random uint8 pixels: a different seed gives different bytes on disk."""
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def solid(height: int, width: int, color) -> np.ndarray:
    return np.broadcast_to(np.asarray(color, dtype=np.uint8), (height, width, len(color))).copy()


def save_image(path: Path, pixels: np.ndarray | Image.Image, **save_kwargs) -> Path:
    """Write an array (or PIL image) to ``path``; the format follows the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    img.save(path, **save_kwargs)
    return path


def image_folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (24, 24),
                 suffix: str = ".png", seed: int = 0) -> dict[str, list[Path]]:
    """``root/<class>/<class>_<i><suffix>``: distinct noise images, ``counts[class]`` each."""
    made: dict[str, list[Path]] = {}
    n = 0
    for label, count in counts.items():
        made[label] = []
        for i in range(count):
            n += 1
            made[label].append(save_image(root / label / f"{label}_{i:03d}{suffix}",
                                          noise(size[1], size[0], seed * 100_000 + n)))
    return made


@pytest.fixture
def img():
    """The image helpers as one object: ``img.noise``, ``img.solid``, ``img.save``, ``img.folder``."""
    return SimpleNamespace(noise=noise, solid=solid, save=save_image, folder=image_folder)


# --- tracking -----------------------------------------------------------------------

TRACKING_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
                      "MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME", "DVC_STAGE",
                      "TLEARN_INVOCATION", "TLEARN_TRACKING_OFF")


@pytest.fixture
def clean_tracking_env():
    """Tracking reads MLflow's and tlearn's variables: start without them, restore after."""
    saved = dict(os.environ)
    for key in TRACKING_VARIABLES:
        os.environ.pop(key, None)
    yield
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def embedded(project, clean_tracking_env):
    """Settings of an embedded SQLite store in the project folder."""
    from tlearn.tracking.store import Settings

    return Settings(uri=f"sqlite:///{project / 'mlflow.db'}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- EfficientNet-Lite ----------------------------------------------------------------

#: Arrays computed by the PyTorch EfficientNet-Lite0 with the same ImageNet weights.
REFERENCE = SHARED / "reference"


def normalise(rgb255: np.ndarray) -> np.ndarray:
    """The preprocessing the backbone registry applies in front of the model."""
    return ((rgb255 - 127.0) / 128.0).astype(np.float32)


def predict(model, x: np.ndarray) -> np.ndarray:
    """Inference without Model.predict's tracing overhead (a few images per call)."""
    import keras

    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.fixture(scope="module")
def tmp_weights_cache(tmp_path_factory) -> Path:
    """Keep the converted weights out of the user's real cache (one cache per module)."""
    cache = tmp_path_factory.mktemp("tlearn-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLEARN_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """coffee, chelsea, astronaut, rocket; RGB 0..255 at 224 px."""
    return np.load(REFERENCE / "photos_rgb255_224.npy")


@pytest.fixture(scope="module")
def lite0_state_dict() -> dict[str, np.ndarray]:
    """The PyTorch tensors of the efficientnet-lite0 weights package, by name."""
    from tlearn.models.lite_weights import package_weights_file
    from tlearn.models.pth import load_state_dict

    return load_state_dict(package_weights_file("efficientnet_lite0"))


# --- cached features for tuning -------------------------------------------------------

TUNE_CLASSES = ["a", "b", "c"]


def feature_blobs(n_per_class: int, seed: int, dim: int = 8):
    """Cached features of three well separated classes (Gaussian blobs)."""
    from tlearn.features import FeatureSet

    rng = np.random.default_rng(seed)
    centres = np.eye(len(TUNE_CLASSES), dim) * 6
    y = np.repeat(np.arange(len(TUNE_CLASSES)), n_per_class)
    return FeatureSet((centres[y] + rng.normal(size=(len(y), dim))).astype("float32"), y)


def tune_inputs(root: Path, head: dict | None = None, tune: dict | None = None) -> Path:
    """What the tune stage reads, in project ``root``: features of every split it trains
    on, the class names, and params.yaml with a small head and ``head``/``tune`` updates."""
    import json

    import yaml

    from tlearn import features, paths

    for split, (n, seed) in {"train": (10, 0), "augmented": (10, 1), "validation": (5, 2)}.items():
        (root / paths.FEATURES).mkdir(parents=True, exist_ok=True)
        features.save(features.feature_folder(split, root / paths.FEATURES), feature_blobs(n, seed))
    (root / paths.PREPARED).mkdir(parents=True, exist_ok=True)
    (root / paths.PREPARED_LABELS).write_text(json.dumps(TUNE_CLASSES))
    params = yaml.safe_load(PARAMS.read_text())
    params["head"] |= {"epochs": 6, "patience": 6, "batch_size": 16} | (head or {})
    for key, value in (tune or {}).items():
        params["tune"][key] = params["tune"][key] | value if key == "space" else value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


# --- deploy/ --------------------------------------------------------------------------

def crontab_command() -> str:
    """The command of deploy/crontab's one entry (after its five time fields)."""
    (line,) = [line for line in (REPO / "deploy" / "crontab").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    return line.split(maxsplit=5)[5]
