"""Decode, validate, square-ify and resize one image.

Three ways to make a photo square: ``crop`` takes the centred square of the
short side, ``pad`` letterboxes the long side with black bars, ``warp`` simply resizes
(changing the aspect ratio). All three end at ``size x size`` RGB uint8.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_MODES = ("crop", "pad", "warp")


class BadImage(Exception):
    """An image that cannot be used; the message is the reason shown in the report."""


def load_rgb(source: Path | bytes, size: int, mode: str, max_pixels: int,
             min_side: int = 1) -> np.ndarray:
    """Decode ``source`` (an image file, or its bytes) and return a ``(size, size, 3)``
    uint8 RGB array, or raise BadImage (also when its short side is under ``min_side``: an
    icon or a tracking pixel blown up to the training size teaches nothing)."""
    if (len(source) if isinstance(source, bytes) else source.stat().st_size) == 0:
        raise BadImage("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with open_image(source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise BadImage(f"too large: {width}x{height} pixels "
                                   f"(prepare.max_pixels is {max_pixels:,})")
                if min(width, height) < min_side:
                    raise BadImage(f"too small: {width}x{height} pixels "
                                   f"(prepare.min_side is {min_side})")
                # JPEG can decode straight to a smaller scale: a large speed-up, no quality
                # loss at the final size because draft never goes below the requested size.
                img.draft("RGB", _draft_size(width, height, size, mode))
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = to_rgb(img)
        except BadImage:
            raise
        except UnidentifiedImageError:
            raise BadImage("not an image (unrecognised format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadImage("too large (decompression bomb)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise BadImage(f"truncated or corrupt: {exc}") from None
    return np.asarray(squareify(rgb, size, mode), dtype=np.uint8)


def open_image(source: Path | bytes) -> Image.Image:
    """Pillow's lazy open of an image file or of its bytes."""
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, palette, CMYK and alpha images to RGB; transparency becomes white."""
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:  # PNG tRNS chunk
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if img.mode.startswith("I;16"):
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def squareify(img: Image.Image, size: int, mode: str) -> Image.Image:
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    width, height = img.size
    if mode == "warp":
        return img.resize((size, size), Image.Resampling.BICUBIC)
    if mode == "crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return img.resize((size, size), Image.Resampling.BICUBIC,
                          box=(left, top, left + side, top + side))
    # pad: fit the long side, centre on a black square
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(img.resize((new_w, new_h), Image.Resampling.BICUBIC),
                 ((size - new_w) // 2, (size - new_h) // 2))
    return canvas


def _draft_size(width: int, height: int, size: int, mode: str) -> tuple[int, int]:
    """The smallest decode size that still leaves ``size`` pixels where squareify needs them."""
    if mode == "warp":
        return size, size
    side = min(width, height) if mode == "crop" else max(width, height)
    scale = size / side
    return math.ceil(width * scale), math.ceil(height * scale)
