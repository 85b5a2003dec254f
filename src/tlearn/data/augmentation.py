"""Seeded image augmentation with Keras preprocessing layers (the ``augment`` params)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import keras
import numpy as np

from tlearn.config import AugmentParams


def build_augmenter(cfg: AugmentParams, seed: int) -> keras.Sequential:
    """Rotation, translation, zoom, contrast and flips as one Sequential, active only
    when called with ``training=True`` (Keras semantics). Ranges of 0 leave a layer out."""
    layers: list[keras.layers.Layer] = []
    flip = {(True, True): "horizontal_and_vertical", (True, False): "horizontal",
            (False, True): "vertical"}.get((cfg.horizontal_flip, cfg.vertical_flip))
    if flip:
        layers.append(keras.layers.RandomFlip(flip, seed=seed))
    if cfg.rotation:
        layers.append(keras.layers.RandomRotation(cfg.rotation, fill_mode="reflect", seed=seed + 1))
    if cfg.translation:
        layers.append(keras.layers.RandomTranslation(cfg.translation, cfg.translation,
                                                     fill_mode="reflect", seed=seed + 2))
    if cfg.zoom:
        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="reflect", seed=seed + 3))
    if cfg.contrast:
        layers.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed + 4))
    return keras.Sequential(layers, name="augmentation")


def augmented_copies(batches: Callable[[], Iterable[np.ndarray]], cfg: AugmentParams,
                     seed: int) -> Iterator[np.ndarray]:
    """``cfg.copies`` augmented versions of every image, copy-major: all of copy 0 batch by
    batch, then copy 1, ... (``batches()`` starts a new pass over the images each time).
    Same seed and input give the same bytes."""
    for copy in range(cfg.copies):
        # A fresh augmenter per copy with its own seed keeps each copy reproducible on its own.
        augmenter = build_augmenter(cfg, seed=seed + 1000 * copy)
        for images in batches():
            batch = images.astype("float32")
            if augmenter.layers:  # every range 0 and no flips: copies are the originals
                batch = keras.ops.convert_to_numpy(augmenter(batch, training=True))
            yield np.clip(np.round(batch), 0, 255).astype(np.uint8)
