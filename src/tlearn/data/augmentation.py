"""Seeded image augmentation (the ``augment`` params): flips, rotation, translation and
zoom as one affine transform per image, then contrast.

One resampling of the batch instead of one per Keras preprocessing layer (RandomRotation,
RandomTranslation and RandomZoom each resample the whole batch): at 224 px a fine-tune
batch's augmentation costs a quarter. The ranges mean what they mean for those layers;
each flip is drawn on its own (RandomFlip("horizontal_and_vertical") draws one for both).
Images stay uint8 and are sampled at the nearest pixel, as torchvision's RandomAffine does
by default: values stay exact (bilinear on uint8 truncates, darkening by half a level on
average) at half bilinear's cost. Every random draw comes from a numpy generator the
caller passes, so a batch's augmentation depends on its seed alone, not on which thread
made it or what came before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import keras
import numpy as np

from tlearn.config import AugmentParams

#: The first number after the seed in every generator's seed, one per use, so no two
#: uses draw the same stream (numpy pads a shorter seed with zeros).
ORDER, BATCH, COPY = 1, 2, 3


class Augmenter:
    """``augmenter(images, rng)``: uint8 images (N, H, W, 3) augmented, still uint8.

    In two parts, so tf.data can run the pixel work as graph ops: :meth:`draw` makes a
    batch's random draws (numpy), :meth:`apply` transforms the pixels with them (Keras ops,
    on arrays or on tensors inside a tf.data map)."""

    def __init__(self, cfg: AugmentParams):
        self.cfg = cfg

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not (self.moves or self.cfg.contrast):
            return images
        transforms, factors = self.draw(len(images), images.shape[1], images.shape[2], rng)
        return keras.ops.convert_to_numpy(self.apply(images, transforms, factors))

    def draw(self, n: int, height: int, width: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The random draws for ``n`` images: affine transforms (float32 (n, 8)) and
        contrast factors (float32 (n, 1, 1, 1)). Without geometry or contrast in the params
        they are the identity and ones, and draw nothing from ``rng``."""
        transforms = self.transforms(n, height, width, rng)
        if transforms is None:
            transforms = np.tile(np.array([1, 0, 0, 0, 1, 0, 0, 0], "float32"), (n, 1))
        c = self.cfg.contrast
        factors = (rng.uniform(1 - c, 1 + c, (n, 1, 1, 1)).astype("float32") if c
                   else np.ones((n, 1, 1, 1), "float32"))
        return transforms, factors

    def apply(self, images, transforms, factors):
        """``images`` (uint8) transformed with :meth:`draw`'s draws, still uint8; a step
        the params leave out is skipped."""
        if self.moves:
            images = keras.ops.image.affine_transform(
                images, transforms, interpolation="nearest", fill_mode="reflect")
        if self.cfg.contrast:
            # As keras.layers.RandomContrast: (x - mean) * factor + mean, per image and channel.
            pixels = keras.ops.cast(images, "float32")
            mean = keras.ops.mean(pixels, axis=(1, 2), keepdims=True)
            pixels = (pixels - mean) * factors + mean
            images = keras.ops.cast(keras.ops.clip(keras.ops.round(pixels), 0, 255), "uint8")
        return images

    @property
    def moves(self) -> bool:
        """Whether the geometry changes (the images are resampled)."""
        cfg = self.cfg
        return bool(cfg.horizontal_flip or cfg.vertical_flip or cfg.rotation or cfg.translation
                    or cfg.zoom)

    def transforms(self, n: int, height: int, width: int,
                   rng: np.random.Generator) -> np.ndarray | None:
        """Rows ``[a0, a1, a2, b0, b1, b2, 0, 0]``, one per image, giving for each output
        pixel (x, y) the input point it samples (``keras.ops.image.affine_transform``):
        the pixel relative to the image centre, flipped, zoomed, rotated, then shifted.
        None when there is no geometry to change (the images are not resampled)."""
        cfg = self.cfg
        if not self.moves:
            return None
        # Every draw is made even when its range is 0, so the stream's layout is fixed.
        flip_x = np.where(cfg.horizontal_flip & (rng.random(n) < 0.5), -1.0, 1.0)
        flip_y = np.where(cfg.vertical_flip & (rng.random(n) < 0.5), -1.0, 1.0)
        angle = rng.uniform(-cfg.rotation, cfg.rotation, n) * 2 * np.pi  # fraction of a turn
        zoom = 1 + rng.uniform(-cfg.zoom, cfg.zoom, n)                    # > 1 zooms out
        shift_x = rng.uniform(-cfg.translation, cfg.translation, n) * width
        shift_y = rng.uniform(-cfg.translation, cfg.translation, n) * height
        # The 2x2 part: rotation(angle) @ zoom @ flip.
        zoom_cos, zoom_sin = zoom * np.cos(angle), zoom * np.sin(angle)
        a0, a1 = zoom_cos * flip_x, -zoom_sin * flip_y
        b0, b1 = zoom_sin * flip_x, zoom_cos * flip_y
        cx, cy = (width - 1) / 2, (height - 1) / 2
        a2 = cx - a0 * cx - a1 * cy + shift_x
        b2 = cy - b0 * cx - b1 * cy + shift_y
        zeros = np.zeros(n)
        return np.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1).astype("float32")


def augmented_copies(batches: Callable[[], Iterable[np.ndarray]], cfg: AugmentParams,
                     seed: int) -> Iterator[np.ndarray]:
    """``cfg.copies`` augmented versions of every uint8 image, copy-major: all of copy 0
    batch by batch, then copy 1, ... (``batches()`` starts a new pass over the images each
    time). Same seed, images and batch size give the same bytes."""
    augmenter = Augmenter(cfg)
    for copy in range(cfg.copies):
        rng = np.random.default_rng([seed, COPY, copy])  # each copy reproducible on its own
        for images in batches():
            yield augmenter(images, rng)
