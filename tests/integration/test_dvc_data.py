"""`dvc repro augment` on a tiny synthetic folder: the data stages run, produce the right
shapes, a second repro runs nothing, and a change to augment.copies reruns only augment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import copy_project, image_folder
from tlearn.data.store import load_split
from tlearn.io import read_json

BIN = Path(sys.executable).parent
DVC = BIN / "dvc"
CLASSES = {"circle": 12, "square": 12, "star": 12}

pytestmark = pytest.mark.skipif(not DVC.exists() or shutil.which("git") is None,
                                reason="needs dvc in the virtualenv and git")


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # so dvc finds `tlearn`
    env.update(DVC_NO_ANALYTICS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _run(*cmd: str, cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}"
    return output


def _set_params(root: Path, **values) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in values.items():
        *parents, leaf = dotted.split("__")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _mtimes(root: Path, *folders: str) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns
            for folder in folders for p in sorted((root / folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("dvc")
    src = base / "shapes"
    image_folder(src, CLASSES, size=(40, 40))
    root = copy_project(base / "project")
    _set_params(root, data__source=str(src), prepare__image_size=32, augment__copies=2)
    _run("git", "init", "-q", cwd=root)
    _run(str(DVC), "init", "-q", cwd=root)
    _run(str(DVC), "config", "core.analytics", "false", cwd=root)
    return root


def test_repro_then_nothing_then_only_augment(repo):
    # 1. the first run executes the three data stages
    out = _run(str(DVC), "repro", "augment", cwd=repo)
    for stage in ("download", "prepare", "augment"):
        assert f"Running stage '{stage}'" in out, out

    manifest = read_json(repo / "data" / "raw" / "manifest.json")
    assert manifest["counts"] == CLASSES and manifest["kind"] == "folder"
    splits = {s: load_split(repo / "data" / "prepared" / s)
              for s in ("train", "validation", "test")}
    assert sum(len(s) for s in splits.values()) == 36
    for s in splits.values():
        assert s.images.shape[1:] == (32, 32, 3) and s.images.dtype == np.uint8
    # 12 per class at 0.15/0.15 -> 2 validation and 2 test images per class
    assert len(splits["validation"]) == 6 and len(splits["test"]) == 6 and len(splits["train"]) == 24
    assert read_json(repo / "data" / "prepared" / "labels.json") == sorted(CLASSES)
    augmented = load_split(repo / "data" / "augmented" / "train")
    assert augmented.images.shape == (48, 32, 32, 3) and augmented.images.dtype == np.uint8
    assert np.array_equal(augmented.labels, np.tile(splits["train"].labels, 2))
    report = read_json(repo / "reports" / "prepare.json")
    assert report["n_images"] == 36 and report["n_quarantined"] == 0
    assert (repo / "reports" / "augment_preview.png").read_bytes()[:4] == b"\x89PNG"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"download", "prepare", "augment"} <= set(lock["stages"])

    # 2. nothing changed: nothing runs, nothing is rewritten
    before = _mtimes(repo, "data", "reports")
    out = _run(str(DVC), "repro", "augment", cwd=repo)
    for stage in ("download", "prepare", "augment"):
        assert f"Stage '{stage}' didn't change" in out, out
    assert "Running stage" not in out, out
    assert "up to date" in out, out
    assert _mtimes(repo, "data", "reports") == before

    # 3. a new augment.copies reruns augment only
    _set_params(repo, augment__copies=1)
    out = _run(str(DVC), "repro", "augment", cwd=repo)
    assert "Running stage 'augment'" in out, out
    assert "Stage 'download' didn't change" in out and "Stage 'prepare' didn't change" in out, out
    after = _mtimes(repo, "data", "reports")
    unchanged = {k: v for k, v in after.items() if k.startswith(("data/raw/", "data/prepared/"))
                 or k == "reports/prepare.json"}
    assert unchanged == {k: v for k, v in before.items() if k in unchanged}
    assert len(unchanged) == 36 + 1 + 9 + 2 + 1  # images + manifest, 3 splits x 3 files,
    # labels.json and preprocess.json, the prepare report
    assert after["data/augmented/train/images.npy"] != before["data/augmented/train/images.npy"]
    augmented = load_split(repo / "data" / "augmented" / "train")
    assert augmented.images.shape == (24, 32, 32, 3)
