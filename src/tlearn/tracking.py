"""MLflow tracking: the only module of tlearn that talks to MLflow.

Stages stay MLflow-free. The CLI wraps each stage in :func:`stage_run`; once the stage
has written its outputs, this module logs what it wrote (params, metrics, per-epoch
histories, reports, datasets, models, the registry version). ``tlearn run``
(:mod:`tlearn.pipeline`) opens one parent run per pipeline execution with
:func:`start_pipeline`; the stage processes DVC starts find it through
``TLEARN_PARENT_RUN_ID`` and nest under it.

Store: ``MLFLOW_TRACKING_URI`` when set, else the embedded ``sqlite:///mlflow.db`` at the
project root with artifacts in ``mlartifacts/``.

Names (stable across runs, so the compare view lines them up):

- params: every params.yaml key flattened, ``head.dropout``; a stage run gets the keys
  its dvc.yaml ``params:`` lists;
- per-epoch curves: ``head/<metric>`` and ``finetune/<metric>`` (loss, accuracy,
  val_loss, val_accuracy) with step = the global epoch (fine-tune continues the count);
- test metrics of the evaluate stage: ``test/accuracy``, ``test/top_k_accuracy``,
  ``test/loss``, ``test/head_accuracy``, ...; other stage reports: ``<stage>.<key>``,
  e.g. ``finetune.val_accuracy`` (best epoch), ``features.images_per_second``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tlearn import paths
from tlearn.config import Config, to_flat_dict
from tlearn.errors import TlearnError
from tlearn.io import file_digest

log = logging.getLogger(__name__)

#: The parent run of the pipeline execution (set by ``tlearn run`` for the stages).
ENV_PARENT = "TLEARN_PARENT_RUN_ID"
#: Set by ``tlearn run`` when tracking is down and not required: stages skip it quietly.
ENV_OFF = "TLEARN_TRACKING_OFF"
#: Seconds the connection check may take before giving up (default 15, at most 25).
ENV_CHECK_SECONDS = "TLEARN_TRACKING_CHECK_SECONDS"
DEFAULT_DB = Path("mlflow.db")
ARTIFACTS = Path("mlartifacts")
DVC_YAML, DVC_LOCK, PARAMS_YAML = Path("dvc.yaml"), Path("dvc.lock"), Path("params.yaml")

CHALLENGER, CHAMPION = "challenger", "champion"
#: Per-epoch histories: stage -> (metric prefix, CSV written by the stage). The CSV paths
#: mirror tlearn.stages.train_head.HISTORY / finetune.HISTORY (a unit test checks),
#: spelled out here so the parent process never imports TensorFlow.
HISTORIES = {"train_head": ("head", paths.REPORTS / "head_history.csv"),
             "finetune": ("finetune", paths.REPORTS / "finetune_history.csv")}
#: Models logged by a stage: stage -> (model name in MLflow, file).
MODELS = {"train_head": ("head", paths.HEAD_MODEL), "finetune": ("model", paths.MODEL)}
#: Files logged beside a stage's reports: stage -> [(file, artifact folder)].
EXTRA_ARTIFACTS = {"download": [(paths.MANIFEST, "data")],
                   "train_head": [(paths.LABELS, "models"), (paths.PREPROCESS, "models")],
                   "finetune": [(paths.LABELS, "models"), (paths.PREPROCESS, "models")]}
#: Prepared splits each stage reads, logged as MLflow dataset inputs.
DATASETS = {"augment": ("train",), "features": ("train", "validation", "test"),
            "train_head": ("train", "validation"), "finetune": ("train", "validation"),
            "evaluate": ("test",)}
INPUT_EXAMPLE_SIZE = 2
HTTP_DEFAULTS = {  # MLflow's own defaults retry for minutes; tighter, user values win
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


class TrackingUnavailable(TlearnError):
    """The tracking store does not answer (the message names its URI)."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(f"{message}; {hint}" if hint else message)
        self.short = message


# --------------------------------------------------------------------------------------
# Names and small pure helpers
# --------------------------------------------------------------------------------------


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or the embedded default, an absolute ``sqlite:///`` URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{DEFAULT_DB.resolve()}"


def is_embedded(uri: str) -> bool:
    """A database URI the client opens itself (no server): artifacts go to mlartifacts/."""
    return not uri.startswith(("http://", "https://", "databricks"))


def metric_name(stage: str, key: str) -> str:
    """``test/accuracy`` for the evaluate stage, ``<stage>.<key>`` for the others."""
    return f"test/{key}" if stage == "evaluate" else f"{stage}.{key}"


def numeric_items(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite int/float entries (bools, strings, lists and dicts are not metrics)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def param_value(value: Any) -> str:
    """How a params.yaml value reads as an MLflow param: ``[256]``, ``None``, ``0.3``."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def history_metrics(prefix: str, rows: list[dict]) -> list[tuple[str, float, int]]:
    """``(f"{prefix}/{column}", value, step=epoch)`` for every numeric column of every row."""
    out = []
    for row in rows:
        step = int(row["epoch"])
        for key, value in numeric_items({k: v for k, v in row.items() if k != "epoch"}).items():
            out.append((f"{prefix}/{key}", value, step))
    return out


def _dvc_stages(dvc_yaml: Path) -> dict:
    """dvc.yaml's ``stages`` mapping ({} when the file is missing or unreadable)."""
    try:
        return (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        return {}


def dvc_stage(stage: str, dvc_yaml: Path = DVC_YAML) -> dict:
    return _dvc_stages(dvc_yaml).get(stage) or {}


def stage_param_keys(stage: str, dvc_yaml: Path = DVC_YAML) -> list[str] | None:
    """The params.yaml keys (groups or dotted) a stage lists in dvc.yaml; None if unknown."""
    spec = dvc_stage(stage, dvc_yaml)
    if "params" not in spec:
        return None
    keys: list[str] = []
    for entry in spec["params"] or []:
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, dict):  # {"params.yaml": [keys]} form
            for file_keys in entry.values():
                keys += [k for k in file_keys or [] if isinstance(k, str)]
    return keys


def select_params(flat: Mapping[str, Any], keys: list[str] | None) -> dict[str, Any]:
    if keys is None:
        return dict(flat)
    return {k: v for k, v in flat.items() if any(k == key or k.startswith(key + ".") for key in keys)}


def stage_reports(stage: str, dvc_yaml: Path = DVC_YAML) -> list[Path]:
    """Files under reports/ that dvc.yaml lists as the stage's outs, metrics or plots."""
    spec, found = dvc_stage(stage, dvc_yaml), []
    for section in ("outs", "metrics", "plots"):
        for entry in spec.get(section) or []:
            for name in ([entry] if isinstance(entry, str) else list(entry)):
                path = Path(name)
                if path.parts[:1] == (paths.REPORTS.name,) and path not in found:
                    found.append(path)
    return found


def pipeline_stages(dvc_yaml: Path = DVC_YAML) -> list[str]:
    return list(_dvc_stages(dvc_yaml))


def lock_hashes(dvc_lock: Path = DVC_LOCK) -> dict[str, str]:
    """``{"data/raw": "<md5>.dir", "models/model.keras": "<md5>", ...}`` from dvc.lock outs
    (data and models only; reports are logged as artifacts)."""
    try:
        lock = yaml.safe_load(dvc_lock.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    hashes = {}
    for spec in (lock.get("stages") or {}).values():
        for out in spec.get("outs") or []:
            path, digest = out.get("path", ""), out.get("md5") or out.get("etag") or out.get("checksum")
            if digest and not path.startswith(paths.REPORTS.name + "/"):
                hashes[path] = str(digest)
    return hashes


def data_sha256() -> str | None:
    """The dataset's sha256: the archive's (from the manifest) or, for folders and digits,
    a sha256 over every raw file's path and sha256. The latter is cached in .dvc/tmp under
    a fingerprint of the files' names, sizes and mtimes, so each stage does not reread them."""
    try:
        manifest = json.loads(paths.MANIFEST.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("sha256"):
        return str(manifest["sha256"])
    files = sorted(p for p in paths.RAW.rglob("*") if p.is_file())
    stamp = hashlib.sha256()
    for path in files:
        info = path.stat()
        stamp.update(f"{path.relative_to(paths.RAW).as_posix()}\0{info.st_size}\0"
                     f"{info.st_mtime_ns}\n".encode())
    cache = Path(".dvc") / "tmp" / "tlearn-data-sha256.json"
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp.hexdigest():
            return cached["sha256"]
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.relative_to(paths.RAW).as_posix()}\0{file_digest(path)}\n".encode())
    digest = h.hexdigest()
    if cache.parent.is_dir():
        with contextlib.suppress(OSError):
            cache.write_text(json.dumps({"stamp": stamp.hexdigest(), "sha256": digest}))
    return digest


@functools.cache
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the project in the working directory; (None, None) without git.

    dvc.lock and reports/ do not count as dirty: the pipeline itself rewrites them.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".",
                         f":(exclude){DVC_LOCK}", f":(exclude){paths.REPORTS}"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def run_tags(cfg: Config, stage: str) -> dict[str, str]:
    """Tags on every run: git commit and dirty flag, stage, DVC_EXP_NAME, backbone, data."""
    commit, dirty = git_state()
    tags = {"stage": stage, "backbone": cfg.model.backbone, "data.source": cfg.data.source}
    if commit:
        tags |= {"git.commit": commit, "git.dirty": str(dirty).lower(),
                 "mlflow.source.git.commit": commit}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    if sha := data_sha256():
        tags["data.sha256"] = sha
    return tags


# --------------------------------------------------------------------------------------
# Promotion rule (pure)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    promote: bool
    line: str


def decide(name: str, challenger: str, challenger_acc: float, champion: str | None,
           champion_acc: float | None, margin: float) -> Decision:
    """Promote iff there is no champion, or the challenger's test accuracy beats the
    champion's (on the same test split) by more than zero and by at least ``margin``."""
    if champion is None or champion_acc is None:
        return Decision(True, f"promoted: {name} v{challenger} (test accuracy "
                              f"{challenger_acc:.4f}) is the first champion")
    gain = challenger_acc - champion_acc
    if champion == challenger:
        return Decision(False, f"kept: {name} v{champion} is already the champion "
                               f"(test accuracy {champion_acc:.4f})")
    if gain > 0 and gain >= margin - 1e-12:
        return Decision(True, f"promoted: {name} v{challenger} (test accuracy {challenger_acc:.4f}) "
                              f"replaces v{champion} ({champion_acc:.4f}); margin {margin:g}")
    return Decision(False, f"kept: {name} v{champion} (test accuracy {champion_acc:.4f}); "
                           f"challenger v{challenger} ({challenger_acc:.4f}) does not beat it by "
                           f"margin {margin:g}")


# --------------------------------------------------------------------------------------
# Connecting
# --------------------------------------------------------------------------------------

_warned = False


def _check_seconds() -> float:
    try:
        return min(max(float(os.environ.get(ENV_CHECK_SECONDS, 15)), 1.0), 25.0)
    except ValueError:
        return 15.0


def _probe_http(uri: str) -> None:
    """Does anything answer at ``uri``? Raises TrackingUnavailable within ~the budget."""
    import requests

    deadline = time.monotonic() + _check_seconds()
    attempt, last = 0, "no answer"
    while True:
        remaining = deadline - time.monotonic()
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=(min(3.0, remaining), min(8.0, remaining)))
            return  # any HTTP answer: the server is there (the API calls report real errors)
        except requests.RequestException as exc:
            last = _one_line(exc)
        attempt += 1
        pause = min(2.0 ** (attempt - 1), deadline - time.monotonic() - 1.0)
        if pause <= 0:
            break
        time.sleep(pause)
    raise TrackingUnavailable(
        f"tracking server {uri} does not answer ({last})",
        "start it, unset MLFLOW_TRACKING_URI for the embedded sqlite store, or set "
        "tracking.required: false")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    reason = text[-1] if text else type(exc).__name__
    for marker in ("Connection refused", "timed out", "Name or service not known"):
        if marker in str(exc):
            return marker.lower()
    return reason[:200]


@dataclass
class Store:
    """A connected tracking store: client, URI and the experiment id."""

    uri: str
    client: Any  # mlflow.MlflowClient
    experiment_id: str


def _quiet_mlflow() -> None:
    """MLflow's database set-up chatter ("Creating initial MLflow database tables...") would
    bury tlearn's one-line messages on stderr; warnings still show."""
    for name in ("mlflow.store.db.utils", "mlflow.store.db.db_types", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def connect(experiment: str) -> Store:
    """Check the store answers (fail fast, naming the URI), then get or create the
    experiment. Raises TrackingUnavailable."""
    uri = tracking_uri()
    if not is_embedded(uri):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        _probe_http(uri)
    import mlflow
    from mlflow.exceptions import MlflowException

    _quiet_mlflow()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            location = ARTIFACTS.resolve().as_uri() if is_embedded(uri) else None
            try:
                exp_id = client.create_experiment(experiment, artifact_location=location)
            except MlflowException:  # created meanwhile by a concurrent process
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        elif exp.lifecycle_stage == "deleted":
            raise TrackingUnavailable(
                f"{uri}: experiment {experiment!r} is deleted; restore it "
                f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or set "
                f"tracking.experiment")
        else:
            exp_id = exp.experiment_id
    except TrackingUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any store failure: one line naming the URI
        raise TrackingUnavailable(f"tracking store {uri} cannot be used: {_one_line(exc)}") from exc
    return Store(uri, client, exp_id)


def connect_or_warn(cfg: Config) -> Store | None:
    """:func:`connect`, or (``tracking.required: false``) one warning and None."""
    global _warned
    if os.environ.get(ENV_OFF):
        return None
    try:
        return connect(cfg.tracking.experiment)
    except TrackingUnavailable as exc:
        if cfg.tracking.required:
            raise
        if not _warned:
            log.warning("%s; going on without tracking (tracking.required: false)", exc.short)
            _warned = True
        os.environ[ENV_OFF] = "1"  # child processes skip tracking without warning again
        return None


def _drop_stray_run_id() -> None:
    """MLflow would resume whatever run MLFLOW_RUN_ID names: tlearn creates its own runs."""
    stray = os.environ.pop("MLFLOW_RUN_ID", None)
    if stray:
        log.info("ignoring MLFLOW_RUN_ID=%s: tlearn nests its runs under %s instead", stray,
                 ENV_PARENT)


# --------------------------------------------------------------------------------------
# Logging helpers shared by stage and parent runs
# --------------------------------------------------------------------------------------


def _log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, param_value(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def _log_metrics(client, run_id: str, metrics: list[tuple[str, float, int]],
                 model_id: str | None = None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(key, value, now, step, model_id=model_id) if model_id else
             Metric(key, value, now, step) for key, value, step in metrics]
    for start in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[start:start + 1000])


def _log_histories(client, run_id: str, stages: list[str]) -> None:
    from tlearn.io import read_csv

    rows = []
    for stage in stages:
        prefix, csv_path = HISTORIES[stage]
        if csv_path.is_file():
            rows += history_metrics(prefix, read_csv(csv_path))
    _log_metrics(client, run_id, rows)


def _log_files(client, run_id: str, files: list[Path], artifact_path: str | None = None) -> None:
    for path in files:
        if path.is_file():
            client.log_artifact(run_id, str(path), artifact_path)


def npz_header(path: Path, key: str) -> tuple[tuple[int, ...], Any]:
    """(shape, dtype) of one array in an .npz, read from its header: nothing is loaded."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
    return tuple(shape), dtype


def _dataset(cfg: Config, split: str):
    """An MLflow dataset for a prepared split: shape and dtype of images and labels (schema
    and profile), the source, and the sha256 of the split file as digest. The arrays are
    zero-copy views of the right shape, so a large split is never loaded for this."""
    import warnings

    import mlflow.data
    import numpy as np

    path = paths.prepared_split(split)
    images, labels = (np.broadcast_to(np.zeros((), dtype), shape)
                      for shape, dtype in (npz_header(path, "images"), npz_header(path, "labels")))
    src = cfg.data.source
    name = f"{Path(src.rstrip('/')).name or src}/{split}"
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local source
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_numpy(features=images, targets=labels, source=src,
                                      name=name[:500], digest=file_digest(path)[:16])


def _log_datasets(client, run_id: str, cfg: Config, splits: tuple[str, ...]) -> None:
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for split in splits:
        if paths.prepared_split(split).is_file():
            ds = _dataset(cfg, split)
            inputs.append(DatasetInput(ds._to_mlflow_entity(),
                                       tags=[InputTag("mlflow.data.context", split)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def _save_keras(path: str, mlflow_model, **kwargs) -> None:
    """mlflow.keras.save_model, plus two fixes:

    - the model folder exists before the input example is written (mlflow.keras writes
      it first and fails with FileNotFoundError: mlflow/mlflow#16183);
    - the pyfunc loader is this module's :func:`_load_pyfunc`, which registers tlearn's
      Keras layers first, so ``mlflow.pyfunc.load_model`` works in a fresh process.
    """
    import mlflow.keras

    os.makedirs(path, exist_ok=True)
    mlflow.keras.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
    mlflow_model.flavors["python_function"]["loader_module"] = __name__
    mlflow_model.save(os.path.join(path, "MLmodel"))


def _load_pyfunc(path: str):
    """pyfunc loader of tlearn's Keras models (see :func:`_save_keras`): mlflow.keras's,
    after registering tlearn's layers, and predicting without a progress bar."""
    from mlflow.keras.load import _load_pyfunc as load_keras_pyfunc

    from tlearn.models import backbones  # noqa: F401  registers tlearn>Preprocess

    wrapper = load_keras_pyfunc(path)
    if not wrapper.save_exported_model:
        wrapper.get_model_call_method = lambda: functools.partial(wrapper.model.predict, verbose=0)
    return wrapper


def _pip_requirements() -> list[str]:
    from importlib import metadata

    reqs = []
    for dist in ("keras", "tensorflow-cpu", "tensorflow", "numpy", "mlflow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            reqs.append(f"{dist}=={metadata.version(dist)}")
    return reqs


def log_keras_model(model_path: Path, name: str) -> Any:
    """Log a tlearn ``.keras`` file to the active run: signature and input example from the
    prepared test split (raw RGB 0..255 as float32); class names and the image preparation
    (resize mode) in the metadata, so the model can be used on new images on its own."""
    import keras
    from mlflow.models import Model, infer_signature

    from tlearn.data.store import load_split
    from tlearn.io import read_json
    from tlearn.models import backbones  # noqa: F401  registers tlearn>Preprocess

    model = keras.saving.load_model(model_path)
    labels = read_json(paths.LABELS)
    resize_mode = read_json(paths.PREPROCESS)["resize_mode"]
    example = load_split(paths.prepared_split("test")).images[:INPUT_EXAMPLE_SIZE].astype("float32")
    signature = infer_signature(example, model.predict(example, verbose=0))
    flavor = type("tlearn_keras", (), {"__name__": "mlflow.keras",
                                       "save_model": staticmethod(_save_keras)})
    md5 = file_digest(model_path, "md5")
    info = Model.log(
        artifact_path=None, name=name, flavor=flavor, flavor_name="keras", model=model,
        signature=signature, input_example=example, pip_requirements=_pip_requirements(),
        metadata={"labels": list(labels), "image_size": int(model.input_shape[1]),
                  "resize_mode": resize_mode, "file": model_path.as_posix(), "md5": md5},
        tags={"tlearn.md5": md5, "tlearn.file": model_path.as_posix()})
    log.info("tracking: logged %s as %s", model_path, info.model_uri)
    return info


def load_keras_model(uri: str):
    """``(keras.Model, labels, resize_mode)`` for a model URI such as
    ``models:/tlearn@champion``."""
    import mlflow
    import mlflow.keras
    from mlflow.models import Model

    from tlearn.models import backbones  # noqa: F401  registers tlearn>Preprocess

    target = tracking_uri()
    _quiet_mlflow()
    if not is_embedded(target):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        _probe_http(target)
    mlflow.set_tracking_uri(target)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
        metadata = Model.load(os.path.join(local, "MLmodel")).metadata or {}
        model = mlflow.keras.load_model(local)
    except Exception as exc:  # noqa: BLE001 - not found, no such alias, not a Keras model
        raise TlearnError(f"--model {uri}: cannot load it from {target} ({_one_line(exc)})") from exc
    for key in ("labels", "resize_mode"):
        if not metadata.get(key):
            raise TlearnError(f"--model {uri}: the model was logged without metadata {key!r}; "
                              "log it again with this version of tlearn")
    return model, list(metadata["labels"]), metadata["resize_mode"]


# --------------------------------------------------------------------------------------
# Stage runs
# --------------------------------------------------------------------------------------


class _NoRun:
    """Tracking switched off (``tracking.required: false`` and the store is down)."""

    def finish(self, metrics: Mapping[str, Any]) -> None:
        pass


class StageRun:
    """One stage's MLflow run, nested under the pipeline's parent run when there is one."""

    def __init__(self, store: Store, stage: str, cfg: Config):
        import mlflow

        self.store, self.stage, self.cfg, self.client = store, stage, cfg, store.client
        _drop_stray_run_id()
        self.parent_id = self._parent()
        experiment_id = (self.client.get_run(self.parent_id).info.experiment_id
                         if self.parent_id else store.experiment_id)
        tags = run_tags(cfg, stage) | {"mlflow.source.name": f"tlearn {stage}"}
        while mlflow.active_run():  # never nest under a run left active in this process
            mlflow.end_run()
        self.run = mlflow.start_run(experiment_id=experiment_id, run_name=stage,
                                    parent_run_id=self.parent_id, tags=tags)
        self.run_id = self.run.info.run_id
        _log_params(self.client, self.run_id,
                    select_params(to_flat_dict(cfg), stage_param_keys(stage)))
        if self.parent_id and os.environ.get("DVC_EXP_NAME"):
            self.client.set_tag(self.parent_id, "dvc.exp_name", os.environ["DVC_EXP_NAME"])
        log.info("tracking: %s run %s%s at %s", stage, self.run_id,
                 f" (parent {self.parent_id})" if self.parent_id else "", store.uri)

    def _parent(self) -> str | None:
        parent_id = os.environ.get(ENV_PARENT, "").strip()
        if not parent_id:
            return None
        try:
            parent = self.client.get_run(parent_id)
        except Exception:  # noqa: BLE001
            log.warning("tracking: %s=%s is not a run at %s; logging a top-level run",
                        ENV_PARENT, parent_id, self.store.uri)
            return None
        if parent.info.status != "RUNNING" or parent.info.lifecycle_stage != "active":
            log.warning("tracking: parent run %s is %s, not running; logging a top-level run",
                        parent_id, parent.info.status.lower())
            return None
        return parent_id

    def finish(self, metrics: Mapping[str, Any]) -> None:
        """Log what the completed stage wrote (``tracking.required`` decides whether a
        failure to log fails the stage or is a warning)."""
        try:
            self._finish(metrics)
        except TlearnError:
            raise
        except Exception as exc:  # noqa: BLE001
            _unavailable(self.cfg, self.store.uri, exc)

    def _finish(self, metrics: Mapping[str, Any]) -> None:
        client, run_id, stage = self.client, self.run_id, self.stage
        if stage in DATASETS:
            _log_datasets(client, run_id, self.cfg, DATASETS[stage])
        if stage in HISTORIES:
            _log_histories(client, run_id, [stage])
        _log_files(client, run_id, stage_reports(stage), "reports")
        for path, folder in EXTRA_ARTIFACTS.get(stage, []):
            _log_files(client, run_id, [path], folder)
        if stage in MODELS:
            name, path = MODELS[stage]
            log_keras_model(path, name)
        model_id = None
        if stage == "evaluate":
            model_id = self._register(metrics)
        _log_metrics(client, run_id, [(metric_name(stage, k), v, 0)
                                      for k, v in numeric_items(metrics).items()], model_id)
        # download may just have written the data: refresh its digest tag.
        if stage == "download" and (sha := data_sha256()):
            client.set_tag(run_id, "data.sha256", sha)

    def _register(self, metrics: Mapping[str, Any]) -> str | None:
        """A registry version of models/model.keras, alias challenger, tagged with its test
        accuracy and the identity of the test split it was measured on."""
        client, name = self.client, self.cfg.tracking.registered_model
        md5 = file_digest(paths.MODEL, "md5")
        found = client.search_logged_models(
            experiment_ids=[self.run.info.experiment_id],
            filter_string=f"tags.`tlearn.md5` = '{md5}'", max_results=1)
        model_id = found[0].model_id if found else log_keras_model(paths.MODEL, "model").model_id
        try:
            client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - does not exist yet
            with contextlib.suppress(Exception):
                client.create_registered_model(
                    name, description="tlearn's fine-tuned classifier (raw RGB in, "
                                      "probabilities out); aliases champion and challenger")
        commit, _ = git_state()
        tags = {"test_accuracy": repr(float(metrics["accuracy"])),
                "test_split_sha256": file_digest(paths.prepared_split("test")),
                "n_test": str(metrics.get("n_test", "")), "backbone": self.cfg.model.backbone,
                "data.source": self.cfg.data.source, "evaluate_run_id": self.run_id,
                "model_md5": md5}
        for key, value in (("git.commit", commit), ("pipeline_run_id", self.parent_id),
                           ("dvc.exp_name", os.environ.get("DVC_EXP_NAME"))):
            if value:
                tags[key] = value
        version = client.create_model_version(name, source=f"models:/{model_id}",
                                              run_id=self.run_id, tags=tags, model_id=model_id)
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        for run_id in filter(None, (self.run_id, self.parent_id)):
            client.set_tag(run_id, "registered_model_version", f"{name}/{version.version}")
        log.info("tracking: registered %s version %s (test accuracy %.4f) as @%s", name,
                 version.version, float(metrics["accuracy"]), CHALLENGER)
        return model_id

    def end(self, status: str, error: BaseException | None = None) -> None:
        import mlflow

        if error is not None:
            with contextlib.suppress(Exception):
                self.client.set_tag(self.run_id, "error", _one_line(error))
        mlflow.end_run(status)


@contextlib.contextmanager
def stage_run(stage: str, cfg: Config) -> Iterator[StageRun | _NoRun]:
    """Track one stage: connect first (before the stage does any work), yield the run for
    ``run.finish(metrics)`` once the stage completed, end it FINISHED, FAILED or KILLED."""
    store = connect_or_warn(cfg)
    if store is None:
        yield _NoRun()
        return
    try:
        run = StageRun(store, stage, cfg)
    except TlearnError:
        raise
    except Exception as exc:  # noqa: BLE001
        _unavailable(cfg, store.uri, exc)
        yield _NoRun()
        return
    try:
        yield run
    except BaseException as exc:
        with contextlib.suppress(Exception):  # the stage's own error is what matters
            run.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", exc)
        raise
    try:
        run.end("FINISHED")
    except Exception as exc:  # noqa: BLE001
        _unavailable(cfg, store.uri, exc)


def _unavailable(cfg: Config, uri: str, exc: BaseException) -> None:
    global _warned
    message = f"tracking store {uri} failed: {_one_line(exc)}"
    if cfg.tracking.required:
        raise TrackingUnavailable(message) from exc
    if not _warned:
        log.warning("%s; going on without tracking (tracking.required: false)", message)
        _warned = True


# --------------------------------------------------------------------------------------
# The pipeline's parent run
# --------------------------------------------------------------------------------------


class PipelineRun:
    """The parent run of one pipeline execution (``tlearn run``)."""

    def __init__(self, store: Store, cfg: Config, adopt: str | None = None):
        self.store, self.client, self.cfg = store, store.client, cfg
        self.adopted = adopt is not None
        tags = run_tags(cfg, "pipeline") | {"mlflow.source.name": "tlearn run",
                                            "mlflow.source.type": "PROJECT" if adopt else "LOCAL"}
        if adopt:
            self.run_id = adopt
            for key, value in tags.items():
                self.client.set_tag(adopt, key, value)
        else:
            run = self.client.create_run(store.experiment_id, tags=tags, run_name=_run_name(cfg))
            self.run_id = run.info.run_id
        _log_params(self.client, self.run_id, to_flat_dict(cfg))
        log.info("tracking: pipeline run %s in experiment %s at %s", self.run_id,
                 store.experiment_id, store.uri)

    def child_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The stages' environment: this run as their parent, the same store, no stray run."""
        out = {k: v for k, v in env.items()
               if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
        out[ENV_PARENT] = self.run_id
        out["MLFLOW_TRACKING_URI"] = self.store.uri
        return out

    def finish(self, returncode: int) -> None:
        """Log the complete picture (whatever DVC ran or skipped) and end the run
        (``tracking.required`` decides whether a failure to log is an error)."""
        try:
            self._finish(returncode)
        except TlearnError:
            raise
        except Exception as exc:  # noqa: BLE001
            _unavailable(self.cfg, self.store.uri, exc)

    def _finish(self, returncode: int) -> None:
        client, run_id = self.client, self.run_id
        try:
            # The first stage run tagged the parent with DVC's experiment name.
            if exp_name := client.get_run(run_id).data.tags.get("dvc.exp_name"):
                client.update_run(run_id, name=exp_name)  # the easiest handle in the UI
            # Not the cached value: `dvc exp run -S` has rewritten params.yaml since.
            commit, dirty = git_state.__wrapped__()
            if commit:
                client.set_tag(run_id, "git.dirty", str(dirty).lower())
            if sha := data_sha256():
                client.set_tag(run_id, "data.sha256", sha)
            for path, digest in lock_hashes().items():
                client.set_tag(run_id, f"dvc.{path}", digest)
            if returncode == 0:
                self._log_outputs()
                metrics = client.get_run(run_id).data.metrics
                log.info("tracking: pipeline run %s%s; compare runs with `make ui`", run_id,
                         f": test/accuracy {metrics['test/accuracy']:.4f}"
                         if "test/accuracy" in metrics else "")
        finally:
            status = "FINISHED" if returncode == 0 else ("KILLED" if returncode == 130 else "FAILED")
            if not self.adopted:  # `mlflow run` ends the run it created itself
                client.set_terminated(run_id, status)
            else:
                client.set_tag(run_id, "tlearn.status", status)

    def _log_outputs(self) -> None:
        client, run_id, stages = self.client, self.run_id, pipeline_stages()
        reports = {stage: stage_reports(stage) for stage in stages}
        metrics = []
        for stage in stages:
            for report in reports[stage]:
                if report.suffix == ".json" and report.is_file():
                    with contextlib.suppress(OSError, ValueError):
                        values = numeric_items(json.loads(report.read_text()))
                        metrics += [(metric_name(stage, k), v, 0) for k, v in values.items()]
        _log_metrics(client, run_id, metrics)
        _log_histories(client, run_id, [s for s in HISTORIES if s in stages])
        _log_datasets(client, run_id, self.cfg, ("train", "validation", "test"))
        _log_files(client, run_id, [r for stage in stages for r in reports[stage]], "reports")
        _log_files(client, run_id, [paths.LABELS, paths.PREPROCESS], "models")
        _log_files(client, run_id, [paths.MANIFEST], "data")
        _log_files(client, run_id, [PARAMS_YAML, DVC_LOCK])


def _run_name(cfg: Config) -> str:
    exp = os.environ.get("DVC_EXP_NAME")
    return f"pipeline {exp}" if exp else f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}"


def start_pipeline(cfg: Config, mlflow_project: bool = False) -> PipelineRun | None:
    """Open the parent run (None when tracking is off). With ``mlflow_project`` (the
    MLproject entry point), the run ``mlflow run`` created becomes the parent if it is in
    the ``tracking.experiment`` experiment; otherwise it only gets a pointer to ours."""
    store = connect_or_warn(cfg)
    if store is None:
        return None
    project_run = os.environ.pop("MLFLOW_RUN_ID", "").strip() if mlflow_project else ""
    _drop_stray_run_id()
    adopt = None
    if project_run:
        try:
            run = store.client.get_run(project_run)
            ok = (run.info.status == "RUNNING"
                  and run.data.tags.get("mlflow.source.type") == "PROJECT")
        except Exception:  # noqa: BLE001
            ok, run = False, None
        if ok and run.info.experiment_id == store.experiment_id:
            adopt = project_run
        elif ok:
            log.info("tracking: `mlflow run` put its run %s in another experiment; the pipeline "
                     "run goes to %r (pass --experiment-name %s to make them one)", project_run,
                     cfg.tracking.experiment, cfg.tracking.experiment)
        else:
            log.warning("tracking: MLFLOW_RUN_ID=%s is not a running `mlflow run` run; ignored",
                        project_run)
            project_run = ""
    try:
        pipeline = PipelineRun(store, cfg, adopt=adopt)
    except Exception as exc:  # noqa: BLE001
        _unavailable(cfg, store.uri, exc)
        return None
    if project_run and not adopt:
        store.client.set_tag(project_run, "tlearn.pipeline_run_id", pipeline.run_id)
        store.client.set_tag(pipeline.run_id, "tlearn.mlflow_project_run_id", project_run)
    return pipeline


# --------------------------------------------------------------------------------------
# Promotion
# --------------------------------------------------------------------------------------


def promote(cfg: Config) -> Decision:
    """Move the ``champion`` alias to the ``challenger`` version if it wins (see
    :func:`decide`); both accuracies must come from the same test split."""
    store = connect(cfg.tracking.experiment)
    client, name = store.client, cfg.tracking.registered_model
    try:
        aliases = dict(client.get_registered_model(name).aliases or {})
    except Exception as exc:  # noqa: BLE001
        raise TlearnError(f"promote: no registered model {name!r} at {store.uri} "
                          f"(run the pipeline first)") from exc
    if CHALLENGER not in aliases:
        raise TlearnError(f"promote: {name} has no @{CHALLENGER} version (run the pipeline first)")
    challenger = client.get_model_version(name, aliases[CHALLENGER])
    chal_acc = float(challenger.tags["test_accuracy"])
    split = challenger.tags.get("test_split_sha256", "")
    champion = client.get_model_version(name, aliases[CHAMPION]) if CHAMPION in aliases else None
    champ_acc = None
    if champion is not None and champion.version != challenger.version:
        champ_acc = _champion_accuracy(client, name, champion, split)
    elif champion is not None:
        champ_acc = chal_acc
    decision = decide(name, challenger.version, chal_acc,
                      champion.version if champion is not None else None, champ_acc,
                      cfg.tracking.promote_margin)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
    return decision


def _champion_accuracy(client, name: str, champion, split: str) -> float:
    """The champion's test accuracy on the challenger's test split: its own tag when it was
    evaluated on that split, else measured now on data/prepared/test.npz when that file is
    that split (the result is kept as a version tag), else refused."""
    if champion.tags.get("test_split_sha256") == split:
        return float(champion.tags["test_accuracy"])
    key = f"test_accuracy.{split[:12]}"
    if key in champion.tags:
        return float(champion.tags[key])
    test = paths.prepared_split("test")
    if not split or not test.is_file() or file_digest(test) != split:
        raise TlearnError(
            f"promote: champion v{champion.version} was evaluated on another test split and "
            f"the challenger's split is not in {test}; re-run evaluate on one split first")
    import numpy as np

    from tlearn.data.store import load_preprocess, load_split
    from tlearn.io import read_json

    model, labels, resize_mode = load_keras_model(f"models:/{name}/{champion.version}")
    if list(labels) != list(read_json(paths.LABELS)):
        raise TlearnError(f"promote: champion v{champion.version} has other classes than the "
                          f"challenger; they cannot be compared")
    prepared = load_preprocess(paths.PREPARED_PREPROCESS)
    if (int(model.input_shape[1]), resize_mode) != (prepared["image_size"], prepared["resize_mode"]):
        raise TlearnError(f"promote: champion v{champion.version} takes {model.input_shape[1]} px "
                          f"{resize_mode} images, not the {prepared['image_size']} px "
                          f"{prepared['resize_mode']} test split; they cannot be compared")
    data = load_split(test)
    predicted = model.predict(data.images.astype("float32"), verbose=0).argmax(axis=1)
    accuracy = float(np.mean(predicted == data.labels))
    client.set_model_version_tag(name, champion.version, key, repr(accuracy))
    log.info("promote: champion v%s measured on the challenger's test split: %.4f",
             champion.version, accuracy)
    return accuracy
