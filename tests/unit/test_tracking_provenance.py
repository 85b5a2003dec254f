"""tlearn.tracking.provenance: DVC's hashes, the data's hash, git state, datasets, and
which `dvc repro` started a stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tlearn import config, paths
from tlearn.data.store import Split, save_split, split_digest
from tlearn.tracking import provenance


def test_lock_hashes_are_the_data_and_model_outs(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text("""schema: '2.0'
stages:
  download:
    outs:
    - path: data/raw
      hash: md5
      md5: aaa.dir
  train_head:
    outs:
    - path: models/head.keras
      md5: bbb
    - path: reports/head_history.csv
      md5: ccc
""")
    assert provenance.lock_hashes(lock) == {"data/raw": "aaa.dir", "models/head.keras": "bbb"}
    assert provenance.lock_hashes(tmp_path / "missing.lock") == {}


def test_data_sha256_is_the_archives_or_a_digest_of_every_raw_file(project):
    raw = project / "data" / "raw"
    (raw / "a").mkdir(parents=True)
    (project / ".dvc" / "tmp").mkdir(parents=True)
    (raw / "a" / "1.png").write_bytes(b"one")
    (raw / "a" / "2.png").write_bytes(b"two")
    (raw / "manifest.json").write_text(json.dumps({"source": "folder", "sha256": None}))
    first = provenance.data_sha256()
    assert len(first) == 64 and provenance.data_sha256() == first      # cached, same answer
    assert (project / ".dvc" / "tmp" / "tlearn-data-sha256.json").is_file()
    (raw / "a" / "2.png").write_bytes(b"TWO")                          # same size, new bytes
    os.utime(raw / "a" / "2.png", ns=(1, 1))
    second = provenance.data_sha256()
    assert second != first
    (raw / "a" / "2.png").write_bytes(b"two")
    os.utime(raw / "a" / "2.png", ns=(2, 2))
    assert provenance.data_sha256() == first                           # content, not mtime
    (raw / "manifest.json").write_text(json.dumps({"sha256": "f" * 64}))
    assert provenance.data_sha256() == "f" * 64                        # an archive's own


def test_git_dirty_ignores_what_the_pipeline_itself_rewrites(project):
    def git(*args):
        subprocess.run(["git", *args], check=True, capture_output=True)
    git("init", "-q")
    for name in ("dvc.lock", "reports/evaluate.json", "src.py"):
        Path(name).parent.mkdir(exist_ok=True)
        Path(name).write_text("v1")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    Path("dvc.lock").write_text("v2")
    Path("reports/evaluate.json").write_text("v2")
    assert provenance.read_git_state()[1] is False
    Path("src.py").write_text("v2")
    assert provenance.read_git_state()[1] is True


def test_datasets_come_from_npy_headers_with_the_split_digest(project):
    images = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    save_split(paths.prepared_split("test"), Split(images, np.arange(5), np.array(["f"] * 5)))
    cfg = config.load("params.yaml", overrides={"data.source": "https://host/cats.tgz"})
    ds = provenance.split_dataset(cfg, "test")
    assert ds.name == "cats.tgz/test"
    assert ds.digest == split_digest(paths.prepared_split("test"))[:16]
    assert ds.profile["features_shape"] == (5, 4, 4, 3) and ds.profile["targets_shape"] == (5,)
    assert "uint8" in str(ds.schema) and ds.source.to_dict() == {"url": "https://host/cats.tgz"}


def test_dvc_invocation_names_the_dvc_process_and_no_other(tmp_path):
    """A fake `dvc` (a shell script) starts two processes: both see the same invocation;
    a second `dvc` command gives another one; outside dvc there is none."""
    script = ("import sys; sys.path[:0] = %r; from tlearn.tracking.provenance import "
              "dvc_invocation; print(dvc_invocation())" % sys.path)
    dvc = tmp_path / "dvc"
    dvc.write_text(f"#!/bin/sh\n{sys.executable} -c \"$1\"\n{sys.executable} -c \"$1\"\n")
    dvc.chmod(0o755)

    def run() -> list[str]:
        return subprocess.run([str(dvc), script], capture_output=True, text=True,
                              check=True).stdout.split()

    first, second = run(), run()
    assert first[0] == first[1] and first[0].startswith("dvc-")
    assert second[0] == second[1] and second[0] != first[0]
    assert provenance.dvc_invocation() is None
