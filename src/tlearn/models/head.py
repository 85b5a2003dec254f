"""The frozen-base feature extractor, the new classification head, and the model that
joins them (raw RGB 0..255 in, class probabilities out), as in Keras' transfer-learning
guide: preprocessing inside the model, the base called with ``training=False``."""

from __future__ import annotations

import keras
import numpy as np

from tlearn.config import HeadParams
from tlearn.errors import ConfigError
from tlearn.models import backbones
from tlearn.models.preprocess import Preprocess

POOLING = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}
HEAD_NAME = "head"


def build_extractor(backbone: str, image_size: int, weights: str, pooling: str) -> keras.Model:
    """Raw RGB -> preprocessing -> frozen base -> pooled vector (or spatial map for flatten).

    Its output is what the features stage caches; train_head reuses its layers so the
    assembled model computes exactly the features the head was trained on.
    """
    entry = backbones.get(backbone)
    base = backbones.build_base(backbone, image_size, weights)
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess(entry.preprocessing, name="preprocess")(inputs)
    x = base(x, training=False)  # BatchNorm in inference mode, also when unfrozen later
    if pooling in POOLING:
        x = POOLING[pooling](name=f"{pooling}_pool")(x)
    return keras.Model(inputs, x, name="extractor")


def build_head(feature_shape: tuple[int, ...], n_classes: int,
               cfg: HeadParams | None = None) -> keras.Model:
    """Dense layers (``head.units``) with dropout, then a softmax over the classes; without
    ``cfg``, the softmax layer alone (a linear head)."""
    inputs = keras.Input(feature_shape, name="features")
    x = keras.layers.Flatten(name="flatten")(inputs) if len(feature_shape) > 1 else inputs
    for i, units in enumerate(cfg.units if cfg else ()):
        x = keras.layers.Dense(units, activation=cfg.activation, name=f"dense_{i}")(x)
        x = keras.layers.Dropout(cfg.dropout, name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=HEAD_NAME)


def linear_head(feature_shape: tuple[int, ...], kernel: np.ndarray, bias: np.ndarray) -> keras.Model:
    """The head ``softmax(features @ kernel + bias)``: a linear model fitted elsewhere (the
    linear probe, tlearn.baselines.softmax_layer) as a Keras head."""
    head = build_head(feature_shape, kernel.shape[1])
    head.get_layer("predictions").set_weights([kernel, bias])
    return head


def assemble(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """One model: the extractor's layers followed by the head (raw RGB in, probabilities out)."""
    return keras.Model(extractor.input, head(extractor.output), name="classifier")


def find_base(model: keras.Model) -> keras.Model:
    """The backbone inside an assembled model: the one nested model that is not the head."""
    nested = [layer for layer in model.layers
              if isinstance(layer, keras.Model) and layer.name != HEAD_NAME]
    if len(nested) != 1:
        raise ValueError(f"expected one backbone in {model.name}, found {[m.name for m in nested]}")
    return nested[0]


def unfreeze_top(base: keras.Model, unfreeze: int | str) -> list[str]:
    """Make the top of ``base`` trainable: the last ``unfreeze`` layers, or every layer from
    the one named ``unfreeze``. BatchNormalization layers stay frozen (inference mode), as
    the Keras guide advises: updating their statistics on a small dataset wrecks the base.
    Returns the names of the layers that now train."""
    layers = base.layers
    if isinstance(unfreeze, str):
        names = [layer.name for layer in layers]
        if unfreeze not in names:
            close = [n for n in names if unfreeze in n][:5]
            hint = f" (similar: {', '.join(close)})" if close else ""
            raise ConfigError(f"params.yaml: finetune.unfreeze names no layer of "
                              f"{base.name}: {unfreeze!r}{hint}")
        start = names.index(unfreeze)
    else:
        if unfreeze > len(layers):
            raise ConfigError(f"params.yaml: finetune.unfreeze is {unfreeze} but {base.name} "
                              f"has only {len(layers)} layers")
        start = len(layers) - unfreeze
    base.trainable = True
    trained = []
    for i, layer in enumerate(layers):
        layer.trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)
        if layer.trainable and layer.weights:
            trained.append(layer.name)
    return trained


def count_params(model: keras.Model) -> dict[str, int]:
    count = lambda weights: int(sum(keras.ops.size(w) for w in weights))  # noqa: E731
    return {"trainable_params": count(model.trainable_weights),
            "non_trainable_params": count(model.non_trainable_weights)}
