"""End to end on the real photos: Kaggle cats vs dogs (1000/500/500 per class) with
EfficientNet-Lite0. In `make test`: at 160 px, the teaching material's setup (a logistic
regression on frozen Lite0 features already reaches ~0.978 there, so the thresholds are
tight). Marked slow (`make test-slow`, ~5 min here): the product's default, the photos
preset at 224 px, measured at 0.994 test accuracy (head 0.991, 0.991 with flip TTA)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED
from tlearn import stages

CATS_AND_DOGS = SHARED / "datasets" / "cats_and_dogs"
BIN = Path(sys.executable).parent
OVERRIDES = {
    "data.source": str(CATS_AND_DOGS),
    "prepare.image_size": 160,
    "augment.copies": 0,      # no cached copies: the fine-tune still flips on the fly
    "augment.horizontal_flip": "true",
    "augment.rotation": 0.05,
    "finetune.unfreeze": 30,
    "finetune.learning_rate": 0.0001,
    "finetune.epochs": 3,
    "tune.n_trials": 5,
    "evaluate.tta": "none",  # the slow test below measures TTA
}
PHOTOS_PRESET = {"data.source": str(CATS_AND_DOGS)}  # everything else from params.yaml
STAGES = tuple(stages.all_stages())  # every stage, in pipeline order

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CATS_AND_DOGS.is_dir(), reason=f"{CATS_AND_DOGS} not found"),
]


def run_pipeline(root: Path, overrides: dict) -> Path:
    """Every stage run on the photos in the project folder ``root``."""
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    sets = [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TLEARN_TRACKING_OFF": "1"}
    for stage in STAGES:
        result = subprocess.run([str(BIN / "tlearn"), stage, *sets], cwd=root, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{stage} failed:\n{result.stderr[-3000:]}"
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return run_pipeline(tmp_path_factory.mktemp("cats_and_dogs"), OVERRIDES)


def test_lite0_transfer_learning_on_cats_and_dogs(trained):
    tmp_path = trained

    prepared = json.loads((tmp_path / "reports/prepare.json").read_text())
    assert prepared["counts"] == {split: {"cats": n, "dogs": n}
                                  for split, n in (("train", 1000), ("validation", 500),
                                                   ("test", 500))}
    report = json.loads((tmp_path / "reports/evaluate.json").read_text())
    assert report["n_test"] == 1000
    # About 0.98 measured (0.978 on this machine, above 0.98 on the one before: the
    # features differ in their last bits between CPUs, and the fine-tune follows); 1,000
    # test photos give a 95% interval of about +-0.009, so the bar sits below that noise.
    assert report["head_accuracy"] >= 0.97
    assert report["accuracy"] >= 0.975
    finetune = json.loads((tmp_path / "reports/finetune.json").read_text())
    assert finetune["unfrozen_layers"] > 0
    # the classical route on the same features: close behind the head
    baselines = json.loads((tmp_path / "reports/baselines.json").read_text())
    assert baselines["logistic_regression_accuracy"] >= 0.96
    assert baselines["linear_svm_accuracy"] >= 0.96
    assert baselines["gradient_boosting_accuracy"] >= 0.93


def test_a_flipped_cat_is_still_a_cat(trained):
    """Model behaviour: a mirror image is the same animal."""
    import numpy as np

    from tlearn.data.store import load_split
    from tlearn.predict import load_predictor

    predictor = load_predictor(str(trained / "models" / "model.keras"))
    test = load_split(trained / "data" / "prepared" / "test")
    as_is = predictor.predict(test.images.astype("float32")).argmax(1)
    flipped = predictor.predict(test.images[:, :, ::-1].astype("float32")).argmax(1)
    assert np.mean(flipped == test.labels) >= 0.97
    assert np.mean(flipped == as_is) >= 0.98


@pytest.mark.slow
def test_the_photos_preset_reaches_0_99_on_cats_and_dogs(tmp_path):
    """The default params on photos: 224 px, a flip copy, 49 layers fine-tuned, flip TTA,
    the linear probe as the floor. Measured 0.991-0.994 (head 0.990-0.991, TTA 0.991): the
    issue's thresholds, 0.99 and a head of 0.985."""
    run_pipeline(tmp_path, PHOTOS_PRESET)
    report = json.loads((tmp_path / "reports/evaluate.json").read_text())
    print(f"photos preset: test {report['accuracy']:.4f}, head {report['head_accuracy']:.4f}, "
          f"TTA {report['tta_accuracy']:.4f}")
    assert report["tta"] == "flip"
    assert report["head_accuracy"] >= 0.985
    assert report["accuracy"] >= 0.99 and report["tta_accuracy"] >= 0.985
