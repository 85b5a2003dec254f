"""tlearn.preflight: what can be checked before anything runs, without TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import image_folder, make_config
from tlearn import preflight
from tlearn.errors import ConfigError, DataError


def test_an_unknown_backbone_is_named_without_importing_tensorflow():
    code = ("import sys\nfrom tlearn import config, preflight\n"
            "cfg = config.load('params.yaml', overrides={'model.backbone': 'resnet51'})\n"
            "try:\n    preflight.check(cfg)\nexcept Exception as exc:\n    print(exc)\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n")
    from conftest import REPO
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0].startswith("params.yaml: model.backbone: unknown backbone 'resnet51'; "
                             "did you mean resnet50")
    assert out[1] == "False False"


def test_image_size_below_the_backbones_minimum():
    with pytest.raises(ConfigError, match="prepare.image_size is 16, below the minimum 32"):
        preflight.check(make_config({"prepare.image_size": 16}))


@pytest.mark.parametrize("counts, message", [
    ({"cats": 5}, "has 1 class folder \\(cats\\); classification needs at least 2"),
    ({}, "has 0 class folders \\(none\\)"),
    ({"cats": 10, "dogs": 1}, "class 'dogs' has 1 training image, too few to split"),
])
def test_a_folder_source_needs_two_classes_with_enough_images(tmp_path, counts, message):
    source = tmp_path / "photos"
    source.mkdir()
    image_folder(source, counts, size=(4, 4))
    with pytest.raises(DataError, match=message):
        preflight.check(make_config({"data.source": str(source)}))


def test_given_splits_must_each_hold_every_class(tmp_path):
    for split, counts in {"train": {"a": 4, "b": 4}, "val": {"a": 2, "b": 2},
                          "test": {"a": 2}}.items():
        image_folder(tmp_path / "src" / split, counts, size=(4, 4), seed=len(split))
    with pytest.raises(DataError, match="class 'b' has no images in the test split"):
        preflight.check(make_config({"data.source": str(tmp_path / "src")}))
    image_folder(tmp_path / "src" / "test", {"b": 1}, size=(4, 4), seed=9)
    preflight.check(make_config({"data.source": str(tmp_path / "src")}))


def test_a_missing_source_and_good_sources(tmp_path):
    with pytest.raises(DataError, match="is not 'digits', 'cifar10', an http"):
        preflight.check(make_config({"data.source": str(tmp_path / "nothing")}))
    preflight.check(make_config())  # digits
    preflight.check(make_config({"data.source": "https://example.org/photos.tgz"}))


def test_list_elements_are_checked_like_any_value():
    with pytest.raises(ConfigError, match=r"head.units\[1\] must be >= 1 \(got 0\)"):
        make_config({"head.units": [64, 0]})


def test_a_stage_checks_only_its_own_params(tmp_path):
    cfg = make_config({"data.source": str(tmp_path / "nothing"), "model.backbone": "nope"})
    preflight.check(cfg, ("evaluate",))  # nothing of evaluate's is wrong
    with pytest.raises(ConfigError, match="model.backbone"):
        preflight.check(cfg, ("base.seed", "prepare.image_size", "model"))
    with pytest.raises(DataError, match="data.source"):
        preflight.check(cfg, ("data",))
