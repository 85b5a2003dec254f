"""Images: bad files are quarantined with their reason (never fatal), EXIF orientation is
applied, every colour mode becomes RGB, and crop/pad/warp give the expected geometry."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import image_folder, make_config, noise, save_image, solid
from tlearn import paths
from tlearn.data.images import BadImage, load_rgb
from tlearn.data.store import load_split
from tlearn.io import read_json
from tlearn.stages import download, prepare

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
BIG = 10 ** 8  # max_pixels that never gets in the way


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR (+ empty IDAT, IEND) claiming ``width x height``."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) \
        + chunk(b"IEND", b"")


def truncated_jpeg(path: Path) -> Path:
    save_image(path, noise(64, 64, seed=99), quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def close(pixel, color, tol=6) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, dtype=int) - np.asarray(color)) <= tol))


# --- bad files ------------------------------------------------------------------------

def _bad_files(folder: Path) -> dict[str, str]:
    """Write one file of each bad kind into ``folder``; return name -> expected reason prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    truncated_jpeg(folder / "truncated.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "random.png").write_bytes(np.random.default_rng(7).bytes(4000))
    (folder / "notes.jpg").write_text("this is a text file, not a photo\n" * 20)
    (folder / "huge.png").write_bytes(png_header(100_000, 100_000))
    save_image(folder / "big.png", noise(100, 100, seed=5))
    save_image(folder / "pixel.png", noise(1, 1, seed=6))
    save_image(folder / "sliver.gif", noise(3, 40, seed=7))
    return {
        "truncated.jpg": "truncated or corrupt: image file is truncated",
        "empty.jpg": "empty file",
        "random.png": "not an image (unrecognised format)",
        "notes.jpg": "not an image (unrecognised format)",
        "huge.png": "too large",
        "big.png": "too large: 100x100 pixels (prepare.max_pixels is 5,000)",
        "pixel.png": "too small: 1x1 pixels (prepare.min_side is 8)",
        "sliver.gif": "too small: 40x3 pixels (prepare.min_side is 8)",
    }


def test_each_bad_kind_raises_bad_image_with_reason(tmp_path):
    expected = _bad_files(tmp_path)
    for name, reason in expected.items():
        with pytest.raises(BadImage) as info:
            load_rgb(tmp_path / name, 16, "crop", max_pixels=5000, min_side=8)
        assert str(info.value).startswith(reason), (name, str(info.value))


def test_bytes_decode_as_their_file_does(tmp_path):
    """A served model gets the file's bytes: the same pixels, or the same reason."""
    for name, reason in _bad_files(tmp_path).items():
        with pytest.raises(BadImage) as info:
            load_rgb((tmp_path / name).read_bytes(), 16, "crop", max_pixels=5000, min_side=8)
        assert str(info.value).startswith(reason), (name, str(info.value))
    photo = save_image(tmp_path / "wide.jpg", noise(30, 70, seed=3), quality=90)
    for mode in ("crop", "pad", "warp"):
        np.testing.assert_array_equal(load_rgb(photo.read_bytes(), 16, mode, BIG),
                                      load_rgb(photo, 16, mode, BIG))


def test_huge_header_is_refused_before_decoding(tmp_path):
    (tmp_path / "huge.png").write_bytes(png_header(12_000, 9_000))  # 108 Mpx: Pillow warns
    with pytest.raises(BadImage, match="^too large"):
        load_rgb(tmp_path / "huge.png", 16, "pad", max_pixels=BIG)
    (tmp_path / "wide.png").write_bytes(png_header(8_000, 5_000))  # 40 Mpx: our own limit
    with pytest.raises(BadImage, match=r"^too large: 8000x5000 pixels \(prepare.max_pixels is 1,000,000\)"):
        load_rgb(tmp_path / "wide.png", 16, "pad", max_pixels=1_000_000)


def test_prepare_quarantines_bad_files_and_keeps_every_good_one(project, tmp_path):
    src = tmp_path / "src"
    good = image_folder(src, {"a": 8}, suffix=".png", seed=1)
    good.update(image_folder(src, {"b": 8}, suffix=".jpg", seed=2))
    expected = {f"a/{name}": reason for name, reason in _bad_files(src / "a").items()}
    (src / "b" / "garbage.jpeg").write_bytes(np.random.default_rng(8).bytes(300))
    expected["b/garbage.jpeg"] = "not an image (unrecognised format)"

    cfg = make_config({"data.source": str(src), "prepare.image_size": 16,
                       "prepare.max_pixels": 5000})
    download.run(cfg)
    metrics = prepare.run(cfg)

    report = read_json(paths.REPORTS / "prepare.json")
    reasons = {q["file"]: q["reason"] for q in report["quarantined"]}
    assert sorted(reasons) == sorted(expected)
    for file, reason in expected.items():
        assert reasons[file].startswith(reason), (file, reasons[file])
    assert metrics["n_quarantined"] == report["n_quarantined"] == 9
    assert metrics["n_images"] == report["n_images"] == 16
    assert metrics["n_duplicates"] == 0

    kept = []
    for split in ("train", "validation", "test"):
        data = load_split(paths.prepared_split(split))
        assert data.images.shape[1:] == (16, 16, 3) and data.images.dtype == np.uint8
        kept += data.files.tolist()
    assert sorted(kept) == sorted(p.relative_to(src).as_posix() for ps in good.values() for p in ps)
    assert sum(sum(c.values()) for c in report["counts"].values()) == 16


# --- orientation and colour modes -----------------------------------------------------

def test_exif_orientation_is_applied(tmp_path):
    pixels = solid(20, 40, BLUE)      # stored landscape: 40 wide, 20 tall
    pixels[:, :10] = RED              # a red marker on the stored left side
    exif = Image.Exif()
    exif[0x0112] = 6                  # "rotate 90 clockwise to display"
    path = save_image(tmp_path / "rotated.jpg", pixels, exif=exif.tobytes(), quality=95)

    out = load_rgb(path, 40, "pad", BIG)  # pad keeps the whole picture visible
    # displayed portrait (20 wide, 40 tall) centred between black bars left and right
    assert close(out[20, 2], BLACK) and close(out[20, 37], BLACK)
    assert close(out[3, 20], RED, tol=30)       # the marker is now at the top
    assert close(out[36, 20], BLUE, tol=30)     # ... and the bottom is blue
    assert close(out[20, 15], BLUE, tol=30)
    # the same pixels without the EXIF tag stay landscape: bars top and bottom, red at left
    plain = load_rgb(save_image(tmp_path / "plain.jpg", pixels, quality=95), 40, "pad", BIG)
    assert close(plain[2, 20], BLACK) and close(plain[20, 3], RED, tol=30)


def _two_halves(mode: str, left, right, **info) -> Image.Image:
    img = Image.new(mode, (16, 16), left)
    img.paste(right, (8, 0, 16, 16))
    img.info.update(info)
    return img


def _palette(transparent: bool) -> Image.Image:
    index = np.zeros((16, 16), dtype=np.uint8)
    index[:, 8:] = 1
    img = Image.fromarray(index, mode="P")
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    return img


# (name, PIL image or builder, save kwargs, expected left-half colour, right-half colour)
MODES = [
    ("gray.png", lambda: _two_halves("L", 100, 200), {}, (100,) * 3, (200,) * 3),
    ("bilevel.png", lambda: _two_halves("1", 0, 1), {}, BLACK, WHITE),
    ("palette.png", lambda: _palette(False), {}, RED, BLUE),
    ("palette_alpha.png", lambda: _palette(True), {"transparency": 1}, RED, WHITE),
    ("palette_alpha.gif", lambda: _palette(True), {"transparency": 1}, RED, WHITE),
    ("cmyk.jpg", lambda: _two_halves("CMYK", (255, 0, 0, 0), (0, 0, 0, 0)), {"quality": 95},
     (0, 255, 255), WHITE),
    ("cmyk.tif", lambda: _two_halves("CMYK", (0, 255, 255, 0), (0, 0, 0, 255)), {}, RED, BLACK),
    ("rgba.png", lambda: _two_halves("RGBA", (255, 0, 0, 0), (0, 0, 255, 255)), {}, WHITE, BLUE),
    ("rgba_half.png", lambda: _two_halves("RGBA", (255, 0, 0, 128), (0, 255, 0, 255)), {},
     (255, 127, 127), GREEN),
    ("la.png", lambda: _two_halves("LA", (0, 0), (50, 255)), {}, WHITE, (50,) * 3),
    ("gray16.png", lambda: _two_halves("I;16", 0x8000, 0xFFFF), {}, (128,) * 3, (255,) * 3),
    # PNG tRNS on grayscale / truecolour: the transparent colour becomes white too
    ("gray_trns.png", lambda: _two_halves("L", 0, 90), {"transparency": 0}, WHITE, (90,) * 3),
    ("rgb_trns.png", lambda: _two_halves("RGB", BLACK, RED), {"transparency": BLACK}, WHITE, RED),
]


@pytest.mark.parametrize("name, build, save_kwargs, left, right", MODES,
                         ids=[m[0] for m in MODES])
def test_every_mode_becomes_rgb(tmp_path, name, build, save_kwargs, left, right):
    path = save_image(tmp_path / name, build(), **save_kwargs)
    out = load_rgb(path, 16, "warp", BIG)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    tol = 8 if name.endswith(".jpg") else 2
    assert close(out[8, 2], left, tol), (out[8, 2], left)
    assert close(out[8, 13], right, tol), (out[8, 13], right)


# --- square-ify and resize ------------------------------------------------------------

@pytest.fixture
def banner(tmp_path) -> Path:
    """200 wide x 100 tall: red left quarter, green centre half, blue right quarter."""
    pixels = solid(100, 200, GREEN)
    pixels[:, :50] = RED
    pixels[:, 150:] = BLUE
    return save_image(tmp_path / "banner.png", pixels)


def test_crop_keeps_the_centre_square(banner):
    out = load_rgb(banner, 32, "crop", BIG)
    # neither end survives; bicubic may only tint the outermost columns a little
    assert np.all(np.abs(out[:, 1:31].astype(int) - GREEN) <= 2)
    assert np.all(out[:, [0, 31], 1] >= 220) and np.all(out[:, [0, 31]][..., [0, 2]] <= 35)


def test_pad_adds_black_bars_top_and_bottom(banner):
    out = load_rgb(banner, 32, "pad", BIG)
    # 200x100 fits as 32x16, pasted at row 8: rows 0-7 and 24-31 are bars
    assert np.all(out[:8] == 0) and np.all(out[24:] == 0)
    middle = out[9:23]
    assert not np.any(np.all(middle == 0, axis=-1))  # no black inside the picture
    assert close(out[16, 2], RED) and close(out[16, 16], GREEN) and close(out[16, 29], BLUE)


def test_pad_of_a_tall_image_puts_bars_left_and_right(tmp_path):
    out = load_rgb(save_image(tmp_path / "tall.png", solid(100, 50, GREEN)), 32, "pad", BIG)
    assert np.all(out[:, :8] == 0) and np.all(out[:, 24:] == 0)
    assert np.all(np.abs(out[:, 9:23].astype(int) - GREEN) <= 2)


def test_warp_keeps_both_ends(banner):
    out = load_rgb(banner, 32, "warp", BIG)
    for row in (0, 16, 31):  # full height, no bars
        assert close(out[row, 2], RED) and close(out[row, 16], GREEN) and close(out[row, 29], BLUE)
    # proportions are kept horizontally: a quarter red, half green, a quarter blue
    reds = np.sum(np.all(np.abs(out[16].astype(int) - RED) <= 40, axis=-1))
    blues = np.sum(np.all(np.abs(out[16].astype(int) - BLUE) <= 40, axis=-1))
    assert 7 <= reds <= 9 and 7 <= blues <= 9


@pytest.mark.parametrize("mode", ["crop", "pad", "warp"])
@pytest.mark.parametrize("width, height, suffix", [
    (200, 100, ".png"), (100, 200, ".png"), (37, 37, ".png"), (1, 5, ".png"), (300, 7, ".png"),
    (400, 200, ".jpg"), (64, 480, ".jpg"),
])
@pytest.mark.parametrize("size", [8, 32])
def test_output_is_always_size_size_3_uint8(tmp_path, mode, width, height, suffix, size):
    path = save_image(tmp_path / f"img{suffix}", noise(height, width, seed=width * height))
    out = load_rgb(path, size, mode, BIG)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
