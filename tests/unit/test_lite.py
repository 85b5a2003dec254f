"""EfficientNet-Lite architecture: block plan, layer names, exact ImageNet logits, headless.

The reference arrays (``REFERENCE``) were produced by the PyTorch implementation with
the same weights; the port must match them to 1e-4. Models are built once per module
(building costs ~0.5 s each) and share one temporary weights cache.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REFERENCE, normalise, predict
from tlearn.errors import TlearnError, WeightsError
from tlearn.models import lite
from tlearn.models.lite_weights import package_weights_file
from tlearn.models.pth import load_state_dict

ESPRESSO, TABBY, TIGER_CAT = 967, 281, 282
PHOTO_TOP1 = [967, 282, 560, 657]  # coffee, chelsea, astronaut, rocket

pytestmark = pytest.mark.usefixtures("tmp_weights_cache")


@pytest.fixture(scope="module")
def lite0(tmp_weights_cache) -> keras.Model:
    return lite.build("efficientnet_lite0")


def top5(logits: np.ndarray) -> list[list[int]]:
    return np.argsort(-logits, axis=1)[:, :5].tolist()


# --------------------------------------------------------------------------------------
# architecture
# --------------------------------------------------------------------------------------


def test_block_counts_and_widths_follow_the_reference_scaling():
    # lite1/2 repeat the middle stages more; first and last stage stay at one block
    counts = {name: len(lite.block_plan(spec)) for name, spec in lite.VARIANTS.items()}
    assert counts == {"efficientnet_lite0": 16, "efficientnet_lite1": 21,
                      "efficientnet_lite2": 21, "efficientnet_lite3": 24,
                      "efficientnet_lite4": 30}
    lite2 = [b.filters_out for b in lite.block_plan(lite.VARIANTS["efficientnet_lite2"])]
    assert sorted(set(lite2)) == [16, 24, 48, 88, 120, 208, 352]
    assert [lite.VARIANTS[f"efficientnet_lite{i}"].resolution for i in range(5)] == \
        [224, 240, 260, 280, 300]


@pytest.mark.parametrize("variant, millions", [("efficientnet_lite3", 8.2),
                                               ("efficientnet_lite4", 13.0)])
def test_shape_only_variants_have_the_published_size(variant, millions):
    model = lite.build(variant, input_shape=(64, 64, 3), weights=None)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert round(trainable / 1e6, 1) == millions  # EfficientNet-Lite README table
    with pytest.raises(WeightsError, match="no ImageNet weights package"):
        lite.build(variant, input_shape=(64, 64, 3))


def test_layers_are_named_for_fine_tuning_and_bn_is_keras_bn(lite0):
    names = [layer.name for layer in lite0.layers]
    for name in ("stem_conv", "block1a_dwconv", "block6a_expand_conv", "block6d_add",
                 "top_conv", "top_bn", "top_activation", "predictions"):
        assert name in names
    assert lite0.name == "efficientnet_lite0"
    bns = [layer for layer in lite0.layers if "bn" in layer.name]
    assert bns and all(isinstance(layer, keras.layers.BatchNormalization) for layer in bns)
    assert {layer.epsilon for layer in bns} == {1e-3}


def test_bad_variant_and_input_shape_are_refused():
    with pytest.raises(TlearnError, match="efficientnet_lite9"):
        lite.build("efficientnet_lite9", weights=None)
    with pytest.raises(TlearnError, match="at least 32"):
        lite.build("efficientnet_lite0", input_shape=(16, 16, 3), weights=None)


# --------------------------------------------------------------------------------------
# exactness against the PyTorch reference
# --------------------------------------------------------------------------------------


def test_lite0_matches_reference_logits_on_random_input(lite0):
    x = np.load(REFERENCE / "lite0_input_normalized_224.npy")
    expected = np.load(REFERENCE / "lite0_logits_normalized_224.npy")
    logits = predict(lite0, x)
    assert np.abs(logits - expected).max() < 1e-4


def test_lite0_matches_reference_logits_on_photos(lite0, photos):
    expected = np.load(REFERENCE / "lite0_logits_photos_224.npy")
    logits = predict(lite0, normalise(photos))
    assert np.abs(logits - expected).max() < 1e-4
    assert logits.argmax(axis=1).tolist() == PHOTO_TOP1


@pytest.mark.parametrize("variant", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_lite2_load_every_tensor_and_recognise_the_photos(variant, photos):
    size = lite.VARIANTS[variant].resolution
    model = lite.build(variant, input_shape=(size, size, 3))
    state_dict = load_state_dict(package_weights_file(variant))
    tensors = [n for n in state_dict if not n.endswith(".num_batches_tracked")]
    assert len(tensors) == len(model.weights)
    np.testing.assert_array_equal(model.get_layer("top_conv").kernel.numpy(),
                                  state_dict["_conv_head.weight"].transpose(2, 3, 1, 0))

    resized = tf.image.resize(photos[:2], (size, size), method="bicubic").numpy()
    coffee, chelsea = top5(predict(model, normalise(resized)))
    assert ESPRESSO in coffee
    assert TIGER_CAT in chelsea or TABBY in chelsea


# --------------------------------------------------------------------------------------
# include_top=False
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, cells", [(96, 3), (160, 5)])
def test_headless_model_outputs_the_feature_map(size, cells):
    headless = lite.build("efficientnet_lite0", input_shape=(size, size, 3), include_top=False)
    assert headless.name == "efficientnet_lite0"
    assert headless.output.shape == (None, cells, cells, 1280)
    assert all(layer.name not in ("avg_pool", "predictions") for layer in headless.layers)


def test_headless_features_equal_the_full_models_pre_pooling_features(photos):
    headless = lite.build("efficientnet_lite0", input_shape=(96, 96, 3), include_top=False)
    full = lite.build("efficientnet_lite0", input_shape=(96, 96, 3))
    x = normalise(tf.image.resize(photos, (96, 96), method="bicubic").numpy())

    features = predict(headless, x)
    pre_pooling = keras.Model(full.input, full.get_layer("top_activation").output)
    np.testing.assert_array_equal(features, predict(pre_pooling, x))
    assert features.min() >= 0.0 and features.max() <= 6.0  # after ReLU6
    classifier = full.get_layer("predictions")  # pooling + dense on the features = logits
    pooled = features.mean(axis=(1, 2))
    logits = pooled @ classifier.kernel.numpy() + classifier.bias.numpy()
    np.testing.assert_allclose(predict(full, x), logits, atol=1e-4)
