"""Seeded image augmentation with Keras preprocessing layers (the ``augment`` params)."""

from __future__ import annotations

import math

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


def augmented_copies(images: np.ndarray, cfg: AugmentParams, seed: int,
                     batch_size: int = 64) -> np.ndarray:
    """``cfg.copies`` augmented versions of every image, copy-major:
    result[c * N + i] is copy c of image i. Same seed and input give the same bytes."""
    if cfg.copies == 0 or len(images) == 0:
        return np.zeros((0, *images.shape[1:]), dtype=np.uint8)
    out = np.empty((cfg.copies * len(images), *images.shape[1:]), dtype=np.uint8)
    n_batches = math.ceil(len(images) / batch_size)
    for copy in range(cfg.copies):
        # A fresh augmenter per copy with its own seed keeps each copy reproducible on its own.
        augmenter = build_augmenter(cfg, seed=seed + 1000 * copy)
        for b in range(n_batches):
            batch = images[b * batch_size:(b + 1) * batch_size].astype("float32")
            if not augmenter.layers:  # every range 0 and no flips: copies are the originals
                result = batch
            else:
                result = keras.ops.convert_to_numpy(augmenter(batch, training=True))
            start = copy * len(images) + b * batch_size
            out[start:start + len(batch)] = np.clip(np.round(result), 0, 255).astype(np.uint8)
    return out
