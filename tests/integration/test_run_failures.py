"""A failed `tlearn run -S ...` leaves the workspace as it was: params.yaml byte-identical,
no output deleted, and tlearn's exit code (2 for bad input) even through DVC."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_project, image_folder

BIN = Path(sys.executable).parent


def tlearn(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "TF_CPP_MIN_LOG_LEVEL": "3", "TLEARN_TRACKING_OFF": "1"}
    return subprocess.run([str(BIN / "tlearn"), *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """download and prepare done on a small folder of 3 classes."""
    base = tmp_path_factory.mktemp("failures")
    image_folder(base / "images", {"a": 8, "b": 8, "c": 8}, size=(20, 20))
    root = copy_project(base / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["source"] = str(base / "images")
    params["prepare"]["image_size"] = 32
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], ["git", "add", "-A"],
                [*git, "commit", "-qm", "project"]):  # `dvc exp run` needs a commit
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    done = tlearn(root, "run", "prepare")
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def outputs(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns
            for p in sorted((root / "data").rglob("*")) if p.is_file()}


@pytest.mark.parametrize("sets, message", [
    (["head.units=[0]"], "head.units[0] must be >= 1"),
    (["model.backbone=resnet51"], "unknown backbone 'resnet51'"),
    (["head.units=[0]", "model.backbone=resnet51"], "head.units[0] must be >= 1"),
    (["data.source=/no/such/folder"], "'/no/such/folder' is not 'digits'"),
])
def test_bad_values_fail_before_dvc_and_change_nothing(project, sets, message):
    params, before = (project / "params.yaml").read_bytes(), outputs(project)
    result = tlearn(project, "run", *[arg for pair in sets for arg in ("-S", pair)])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Running stage" not in result.stdout
    assert (project / "params.yaml").read_bytes() == params
    assert outputs(project) == before


def test_a_one_class_folder_and_a_class_with_one_image(project, tmp_path):
    image_folder(tmp_path / "one", {"cats": 5}, size=(8, 8))
    image_folder(tmp_path / "thin", {"cats": 6, "dogs": 1}, size=(8, 8))
    params, before = (project / "params.yaml").read_bytes(), outputs(project)
    for source, message in ((tmp_path / "one", "has 1 class folder"),
                            (tmp_path / "thin", "class 'dogs' has 1 training image,")):
        result = tlearn(project, "run", "-S", f"data.source={source}")
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert (project / "params.yaml").read_bytes() == params and outputs(project) == before


def test_a_stage_failing_inside_dvc_keeps_its_exit_code_and_params_yaml(project, tmp_path):
    """An archive is only read by the download stage: DVC runs it, it fails with one line
    and exit 2; tlearn run exits 2 (not DVC's 255) and puts params.yaml back."""
    broken = tmp_path / "photos.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    params = (project / "params.yaml").read_bytes()
    result = tlearn(project, "run", "-S", f"data.source={broken}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "is corrupt or truncated" in result.stderr or "not a zip" in result.stderr
    assert (project / "params.yaml").read_bytes() == params
