"""PyTorch state dict -> Keras EfficientNet-Lite: strict mapping, weight files and the cache."""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import normalise, predict
from tlearn.errors import WeightsError
from tlearn.models import lite, lite_weights
from torch_files import write_state_dict_zip

pytestmark = pytest.mark.usefixtures("tmp_weights_cache")


@pytest.fixture(scope="module")
def untrained_lite0() -> keras.Model:
    return lite.build("efficientnet_lite0", input_shape=(64, 64, 3), weights=None)


# --------------------------------------------------------------------------------------
# strict mapping
# --------------------------------------------------------------------------------------


def test_missing_tensor_is_named_and_nothing_is_assigned(untrained_lite0, lite0_state_dict):
    state_dict = dict(lite0_state_dict)
    del state_dict["_blocks.3._bn1.running_var"]
    before = untrained_lite0.get_layer("stem_conv").kernel.numpy()
    with pytest.raises(WeightsError, match=r"missing tensors.*_blocks\.3\._bn1\.running_var"):
        lite_weights.assign_state_dict(untrained_lite0, state_dict)
    np.testing.assert_array_equal(untrained_lite0.get_layer("stem_conv").kernel.numpy(), before)


def test_extra_tensor_is_named(untrained_lite0, lite0_state_dict):
    state_dict = dict(lite0_state_dict)
    state_dict["_blocks.16._bn0.weight"] = np.ones(1152, dtype=np.float32)
    with pytest.raises(WeightsError, match=r"unused tensors.*_blocks\.16\._bn0\.weight"):
        lite_weights.assign_state_dict(untrained_lite0, state_dict)


def test_wrong_shape_is_named(untrained_lite0, lite0_state_dict):
    state_dict = dict(lite0_state_dict)
    state_dict["_fc.bias"] = np.zeros(10, dtype=np.float32)
    with pytest.raises(WeightsError, match=r"_fc\.bias.*predictions"):
        lite_weights.assign_state_dict(untrained_lite0, state_dict)


def test_every_tensor_but_num_batches_tracked_is_assigned(untrained_lite0, lite0_state_dict):
    count = lite_weights.assign_state_dict(untrained_lite0, lite0_state_dict)
    assert count == len(untrained_lite0.weights) == 296 - 49  # 49 BatchNorms' counters


def test_weights_from_a_zip_pth_path_equal_the_package_weights(tmp_path, lite0_state_dict):
    path = write_state_dict_zip(tmp_path / "lite0-copy.pth", lite0_state_dict)
    from_file = lite.build("efficientnet_lite0", input_shape=(64, 64, 3), weights=path)
    from_package = lite.build("efficientnet_lite0", input_shape=(64, 64, 3))
    for a, b in zip(from_file.weights, from_package.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# --------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------


def test_second_build_loads_the_cached_weights_h5(tmp_path, monkeypatch, photos):
    monkeypatch.setenv("TLEARN_CACHE", str(tmp_path))
    pth = lite_weights.package_weights_file("efficientnet_lite0")
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()[:16]
    expected = tmp_path / f"efficientnet_lite0-{digest}.weights.h5"
    x = normalise(tf.image.resize(photos, (128, 128), method="bicubic").numpy())

    first = predict(lite.build("efficientnet_lite0", input_shape=(128, 128, 3)), x)
    assert sorted(p.name for p in tmp_path.iterdir()) == [expected.name]  # no temp files left

    def must_not_convert(path):
        raise AssertionError(f"converted {path} again instead of using the cache")

    monkeypatch.setattr(lite_weights, "load_state_dict", must_not_convert)
    second = predict(lite.build("efficientnet_lite0", input_shape=(128, 128, 3)), x)
    np.testing.assert_array_equal(first, second)
    headless = lite.build("efficientnet_lite0", input_shape=(128, 128, 3), include_top=False)
    assert headless.output.shape == (None, 4, 4, 1280)


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TLEARN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert lite_weights.cache_dir() == tmp_path / "tlearn"
    monkeypatch.setenv("TLEARN_CACHE", str(tmp_path / "mine"))
    assert lite_weights.cache_dir() == tmp_path / "mine"


def test_damaged_cache_is_rebuilt_and_keras_weight_files_load(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE", str(tmp_path / "cache"))
    cached = lite_weights.cached_weights_path(
        "efficientnet_lite0", lite_weights.package_weights_file("efficientnet_lite0"))
    cached.parent.mkdir()
    cached.write_bytes(b"half-written by a killed process")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)

    rebuilt = lite.build("efficientnet_lite0", input_shape=(64, 64, 3), include_top=False)
    assert cached.stat().st_size > 1_000_000  # replaced by the real conversion
    headless_file = tmp_path / "headless.weights.h5"
    rebuilt.save_weights(headless_file)
    for weights in (cached, headless_file):  # full-model and headless Keras weight files
        model = lite.build("efficientnet_lite0", input_shape=(64, 64, 3), include_top=False,
                           weights=weights)
        np.testing.assert_array_equal(predict(model, x), predict(rebuilt, x))
    with pytest.raises(WeightsError, match="headless.weights.h5"):
        lite.build("efficientnet_lite0", input_shape=(64, 64, 3), weights=headless_file)
