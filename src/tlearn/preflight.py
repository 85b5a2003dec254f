"""Checks that need no training and no TensorFlow, run before anything is written:
``tlearn run`` runs them all before DVC starts (a bad value then never costs an output),
and each stage runs those about its own params when it starts. Each failure is one line
naming the params key or the file, exit code 2."""

from __future__ import annotations

from pathlib import Path

from tlearn.config import Config
from tlearn.data import sources, splits
from tlearn.errors import ConfigError, DataError, TlearnError
from tlearn.models import backbones


def check(cfg: Config, groups: tuple[str, ...] | None = None) -> None:
    """Check the params (every group, or the ``groups`` a stage declares) against the
    backbone registry and the data source."""
    wanted = {key.split(".")[0] for key in groups} if groups is not None else None
    if wanted is None or wanted & {"model", "prepare"}:
        check_backbone(cfg)
    if wanted is None or wanted & {"data"}:
        check_source(cfg)


def backbone(cfg: Config) -> backbones.Backbone:
    """The entry of ``model.backbone``; a ConfigError naming the key (and the close names)."""
    try:
        return backbones.get(cfg.model.backbone)
    except TlearnError as exc:  # unknown name, with the close ones
        raise ConfigError(f"params.yaml: model.backbone: {exc}") from None


def check_backbone(cfg: Config) -> None:
    entry = backbone(cfg)
    if cfg.prepare.image_size < entry.min_size:
        raise ConfigError(f"params.yaml: prepare.image_size is {cfg.prepare.image_size}, below "
                          f"the minimum {entry.min_size} of backbone {entry.name} "
                          f"(its default is {entry.default_size})")


def check_source(cfg: Config) -> None:
    """The source exists; a local folder has at least two classes and enough images in
    each for the split. (Archives and URLs are checked when download reads them.)"""
    kind = sources.source_kind(cfg.data.source)  # DataError when it is nothing usable
    if kind != "folder":
        return
    layout = sources.folder_layout(Path(cfg.data.source))
    classes = sorted({c for counts in layout.values() for c in counts})
    if len(classes) < 2:
        raise DataError(f"data.source: {cfg.data.source} has {len(classes)} class folder"
                        f"{'s' if len(classes) != 1 else ''} ({', '.join(classes) or 'none'}); "
                        "classification needs at least 2")
    given = [split for split in layout if split]
    missing = [s for s in ("validation", "test") if s not in given]
    fractions = {"validation": cfg.prepare.split.validation, "test": cfg.prepare.split.test}
    training = layout.get("train", layout.get(None, {}))
    for label in classes:
        if missing:
            splits.carve_counts(label, training.get(label, 0), missing, fractions)
        for split in given:
            if not layout[split].get(label):
                raise DataError(f"data.source: class {label!r} has no images in the {split} "
                                "split")
