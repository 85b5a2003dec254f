"""Where a run's inputs came from: the git commit, the data's hash, DVC's output hashes,
the prepared splits as MLflow datasets, and which ``dvc repro`` started a stage."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import subprocess
import warnings
from pathlib import Path

import yaml

from tlearn import paths
from tlearn.config import Config
from tlearn.io import file_digest

DVC_LOCK = Path("dvc.lock")
DATA_HASH_CACHE = Path(".dvc") / "tmp" / "tlearn-data-sha256.json"


@functools.cache
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the project in the working directory; (None, None) without git.
    dvc.lock and reports/ do not count as dirty: the pipeline itself rewrites them."""
    return read_git_state()


def read_git_state() -> tuple[str | None, bool | None]:
    """:func:`git_state` read now (``dvc exp run -S`` rewrites params.yaml meanwhile)."""
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
            path = out.get("path", "")
            digest = out.get("md5") or out.get("etag") or out.get("checksum")
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
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(DATA_HASH_CACHE.read_text())
        if cached.get("stamp") == stamp.hexdigest():
            return cached["sha256"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(paths.RAW).as_posix()}\0{file_digest(path)}\n".encode())
    if DATA_HASH_CACHE.parent.is_dir():
        with contextlib.suppress(OSError):
            DATA_HASH_CACHE.write_text(json.dumps({"stamp": stamp.hexdigest(),
                                                   "sha256": digest.hexdigest()}))
    return digest.hexdigest()


def run_tags(cfg: Config, stage: str, dvc_exp_name: str | None) -> dict[str, str]:
    """Tags on every run: git commit and dirty flag, stage, DVC experiment, backbone, data."""
    commit, dirty = git_state()
    tags = {"stage": stage, "backbone": cfg.model.backbone, "data.source": cfg.data.source}
    if commit:
        tags |= {"git.commit": commit, "git.dirty": str(dirty).lower(),
                 "mlflow.source.git.commit": commit}
    if dvc_exp_name:
        tags["dvc.exp_name"] = dvc_exp_name
    if sha := data_sha256():
        tags["data.sha256"] = sha
    return tags


def dvc_invocation() -> str | None:
    """Which ``dvc repro`` (or ``dvc exp run``) process started this stage: its PID and
    start time, shared by every stage that one command runs and by no other command."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for process in psutil.Process().parents():
            if any(Path(arg).name == "dvc" for arg in process.cmdline()[:3]):
                return f"dvc-{process.pid}-{process.create_time():.3f}"
    return None


# --------------------------------------------------------------------------------------
# Prepared splits as MLflow datasets
# --------------------------------------------------------------------------------------


def split_dataset(cfg: Config, split: str):
    """An MLflow dataset for a prepared split: shape and dtype of images and labels (schema
    and profile, read from the .npy headers), the source, and the split's sha256 as
    digest. The arrays are zero-copy views of the right shape: nothing is loaded."""
    import mlflow.data
    import numpy as np

    from tlearn.data.store import IMAGES, LABELS, ArrayReader, split_digest

    folder = paths.prepared_split(split)
    images, labels = (np.broadcast_to(np.zeros((), reader.dtype), reader.shape)
                      for reader in (ArrayReader(folder / IMAGES), ArrayReader(folder / LABELS)))
    source = cfg.data.source
    name = f"{Path(source.rstrip('/')).name or source}/{split}"
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local source
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_numpy(features=images, targets=labels, source=source,
                                      name=name[:500], digest=split_digest(folder)[:16])
