"""Model behaviour of the two phases: the cached-feature head equals the assembled model,
unfreezing follows finetune.unfreeze, BatchNorm statistics stay put, heads learn."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tlearn import train
from tlearn.errors import ConfigError, TlearnError
from tlearn.models.head import (assemble, build_extractor, build_head, count_params,
                                find_base, linear_head, unfreeze_top)

SIZE = 32
BACKBONE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, SIZE, SIZE, 3)).astype("float32")


def small_head(cfg_factory, **head):
    return cfg_factory({f"head.{k}": v for k, v in {"units": [16], **head}.items()}).head


@pytest.mark.parametrize("pooling", ["avg", "max", "flatten"])
def test_head_on_cached_features_equals_assembled_model(pooling, images, cfg_factory, tmp_path):
    keras.utils.set_random_seed(1)
    extractor = build_extractor(BACKBONE, SIZE, "none", pooling)
    features = extractor.predict(images, verbose=0)
    assert features.ndim == (4 if pooling == "flatten" else 2)
    head = build_head(features.shape[1:], 3, small_head(cfg_factory, pooling=pooling))
    model = assemble(extractor, head)
    expected = head.predict(features, verbose=0)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)
    # ... and after a save/load round trip, which is how later stages receive it.
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("shape", [(5,), (2, 2, 3)])
def test_a_linear_head_is_the_softmax_of_its_weights(shape):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, *shape)).astype("float32")
    kernel = rng.normal(size=(int(np.prod(shape)), 3)).astype("float32")
    bias = rng.normal(size=3).astype("float32")
    logits = features.reshape(4, -1) @ kernel + bias
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(linear_head(shape, kernel, bias).predict(features, verbose=0),
                               expected, atol=1e-5)


@pytest.fixture
def assembled(cfg_factory) -> keras.Model:
    keras.utils.set_random_seed(2)
    extractor = build_extractor(BACKBONE, SIZE, "none", "avg")
    return assemble(extractor, build_head((1280,), 4, small_head(cfg_factory)))


@pytest.mark.parametrize("unfreeze", [0, 10, 40])
def test_trainable_layers_match_unfreeze_count(assembled, unfreeze):
    base = find_base(assembled)
    trained = unfreeze_top(base, unfreeze)
    top = base.layers[len(base.layers) - unfreeze:] if unfreeze else []
    expected = [layer.name for layer in top
                if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]
    assert trained == expected
    assert all(not layer.trainable for layer in base.layers
               if isinstance(layer, keras.layers.BatchNormalization))
    head_params = sum(int(np.prod(w.shape)) for w in assembled.get_layer("head").trainable_weights)
    base_params = sum(int(np.prod(w.shape)) for name in trained
                      for w in base.get_layer(name).trainable_weights)
    assert count_params(assembled)["trainable_params"] == head_params + base_params


def test_unfreeze_from_layer_name(assembled):
    base = find_base(assembled)
    start = [layer.name for layer in base.layers].index("top_conv")
    trained = unfreeze_top(base, "top_conv")
    assert trained[0] == "top_conv"
    assert not any(layer.trainable for layer in base.layers[:start])


def test_bad_unfreeze_values_name_the_key(assembled):
    base = find_base(assembled)
    with pytest.raises(ConfigError, match=r"finetune.unfreeze is 9999 but .* has only \d+ layers"):
        unfreeze_top(base, 9999)
    with pytest.raises(ConfigError, match=r"finetune.unfreeze names no layer .*'block99a'"):
        unfreeze_top(base, "block99a")


def test_image_size_below_backbone_minimum_is_refused():
    with pytest.raises(TlearnError, match="prepare.image_size"):
        build_extractor(BACKBONE, 8, "none", "avg")


def test_batchnorm_statistics_unchanged_by_a_finetune_epoch(assembled, tmp_path):
    # The stage fine-tunes a reloaded model: check the property survives saving.
    assembled.save(tmp_path / "head.keras")
    model = keras.saving.load_model(tmp_path / "head.keras")
    base = find_base(model)
    trained = unfreeze_top(base, 40)
    bn_layers = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    before_bn = [np.array(w) for layer in bn_layers for w in layer.weights]
    before_conv = np.array(base.get_layer(trained[0]).weights[0])
    frozen_conv = np.array(base.get_layer("stem_conv").weights[0])
    train.compile_classifier(model, train.make_optimizer("adam", 1e-3))
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (32, SIZE, SIZE, 3)).astype("float32")
    y = train.one_hot(rng.integers(0, 4, 32), 4)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    after_bn = [np.array(w) for layer in bn_layers for w in layer.weights]
    assert all(np.array_equal(b, a) for b, a in zip(before_bn, after_bn))
    assert not np.array_equal(before_conv, np.array(base.get_layer(trained[0]).weights[0]))
    np.testing.assert_array_equal(frozen_conv, np.array(base.get_layer("stem_conv").weights[0]))


def clusters(n_classes: int, n_per_class: int, dim: int = 32, seed: int = 0):
    """Gaussian blobs: linearly separable stand-ins for cached features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = (centres[y] + rng.normal(0, 1, (len(y), dim))).astype("float32")
    return x, y


@pytest.mark.parametrize("n_classes", [2, 10])
def test_head_learns_binary_and_multiclass(n_classes, cfg_factory):
    keras.utils.set_random_seed(0)
    x, y = clusters(n_classes, 80)
    val = np.arange(len(y)) % 4 == 0
    head = build_head((32,), n_classes, small_head(cfg_factory, dropout=0.1))
    train.compile_classifier(head, train.make_optimizer("adam", 1e-2), label_smoothing=0.05)
    head, history, *_ = train.fit_epochs(
        head, train.array_dataset(x[~val], train.one_hot(y[~val], n_classes), 32, seed=0),
        train.array_dataset(x[val], train.one_hot(y[val], n_classes), 32), epochs=15, patience=3)
    probs = head.predict(x[val], verbose=0)
    assert probs.shape == (val.sum(), n_classes)
    assert np.mean(probs.argmax(1) == y[val]) > 0.95
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop"])
def test_optimizers(name):
    opt = train.make_optimizer(name, 0.01, momentum=0.8)
    assert float(opt.learning_rate) == pytest.approx(0.01)
    if name == "sgd":
        assert opt.momentum == pytest.approx(0.8)
