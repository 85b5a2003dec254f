"""The prepare and augment stages end to end on small synthetic data: shapes, numbers,
determinism, and the seeded augmented copies."""

from __future__ import annotations

import dataclasses
import importlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from conftest import image_folder, make_config
from tlearn import paths
from tlearn.data.images import load_rgb
from tlearn.data.store import Split, check_preprocess, load_split, save_split
from tlearn.errors import DataError
from tlearn.io import read_json
from tlearn.stages import download, prepare

SPLITS = ("train", "validation", "test")
UNEVEN = {"ant": 14, "bee": 21, "cow": 33}


@pytest.fixture
def prepared(project, tmp_path):
    """download + prepare of 3 uneven classes of 40x30 PNGs at 16 px, crop."""
    src = tmp_path / "src"
    image_folder(src, UNEVEN, size=(40, 30))
    cfg = make_config({"data.source": str(src), "prepare.image_size": 16,
                       "prepare.resize_mode": "crop", "prepare.split.validation": 0.2,
                       "prepare.split.test": 0.1})
    download.run(cfg)
    metrics = prepare.run(cfg)
    return cfg, metrics, src


def _load_all() -> dict[str, Split]:
    return {s: load_split(paths.prepared_split(s)) for s in SPLITS}


def test_prepare_outputs(prepared):
    cfg, metrics, src = prepared
    classes = sorted(UNEVEN)
    assert read_json(paths.PREPARED / "labels.json") == classes
    assert sorted(p.name for p in paths.PREPARED.iterdir()) == [
        "labels.json", "preprocess.json", "test", "train", "validation"]
    # later stages check the prepared images against params.yaml before using them
    check_preprocess(paths.PREPARED_PREPROCESS, 16, "crop")
    with pytest.raises(DataError, match=r"^data/prepared holds 16 px crop images but "
                                        r"params.yaml asks for 32 px crop: run `tlearn prepare`"):
        check_preprocess(paths.PREPARED_PREPROCESS, 32, "crop")
    paths.PREPARED_PREPROCESS.unlink()  # data prepared by an older tlearn
    with pytest.raises(DataError, match=r"preprocess.json not found: run `tlearn prepare`"):
        check_preprocess(paths.PREPARED_PREPROCESS, 16, "crop")
    data = _load_all()
    total = sum(UNEVEN.values())
    assert metrics.pop("seconds") > 0  # for MLflow; the report has no timings
    assert metrics == {"n_images": total, "n_quarantined": 0, "n_duplicates": 0, "n_classes": 3,
                       "n_train": len(data["train"]), "n_validation": len(data["validation"]),
                       "n_test": len(data["test"])}
    assert sum(len(d) for d in data.values()) == total
    for split, d in data.items():
        assert d.images.shape == (len(d), 16, 16, 3) and d.images.dtype == np.uint8
        assert d.labels.dtype == np.int64 and d.files.dtype.kind == "U"
        assert list(d.files) == sorted(d.files)
        # labels index labels.json and match the class folder of each file
        assert [classes[i] for i in d.labels] == [f.split("/")[0] for f in d.files]
        # the stored pixels are exactly what load_rgb makes of the raw file
        for i in (0, len(d) - 1):
            assert np.array_equal(d.images[i], load_rgb(paths.RAW / d.files[i], 16, "crop", 10 ** 8))
    # stratified: each class within one image of the fractions
    for label, n in UNEVEN.items():
        per = {s: sum(f.startswith(f"{label}/") for f in data[s].files) for s in SPLITS}
        assert abs(per["validation"] - 0.2 * n) <= 1 and abs(per["test"] - 0.1 * n) <= 1
    report = read_json(paths.REPORTS / "prepare.json")
    assert "seconds" not in report
    assert report["image_size"] == 16 and report["resize_mode"] == "crop"
    assert report["given_splits"] is None
    assert report["counts"]["train"] == {c: int(Counter(data["train"].labels)[i])
                                         for i, c in enumerate(classes)}
    assert report["quarantined"] == [] and report["duplicates"] == []


def test_prepare_is_deterministic_and_follows_the_seed(prepared):
    cfg, _, _ = prepared
    first = _load_all()
    prepare.run(cfg)
    again = _load_all()
    for s in SPLITS:
        assert np.array_equal(first[s].images, again[s].images)
        assert list(first[s].files) == list(again[s].files)
    prepare.run(dataclasses.replace(cfg, base=dataclasses.replace(cfg.base, seed=cfg.base.seed + 1)))
    other = _load_all()
    assert list(other["test"].files) != list(first["test"].files)
    assert len(other["test"]) == len(first["test"])


def test_prepare_without_raw_data_is_a_clear_error(project):
    (project / "data" / "raw").mkdir(parents=True)
    (project / "data" / "raw" / "manifest.json").write_text('{"splits": null}')
    from tlearn.errors import DataError
    with pytest.raises(DataError, match="no image files found"):
        prepare.run(make_config())


# --- augmentation ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def augmentation():
    return importlib.import_module("tlearn.data.augmentation")  # imports keras: only here


def _augment_cfg(**changes):
    return dataclasses.replace(make_config().augment, **changes)


def copies_of(augmentation, pictures, cfg, seed, batch_size=64):
    """Every copy of ``pictures`` as one array, ``batch_size`` images at a time."""
    def batches():
        return (pictures[i:i + batch_size] for i in range(0, len(pictures), batch_size))

    made = list(augmentation.augmented_copies(batches, cfg, seed=seed))
    return np.concatenate(made) if made else np.zeros((0, *pictures.shape[1:]), np.uint8)


@pytest.fixture(scope="module")
def pictures():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(5, 24, 24, 3), dtype=np.uint8)


def test_augmented_copies_are_deterministic(augmentation, pictures):
    cfg = _augment_cfg(copies=3, rotation=0.1, translation=0.1, zoom=0.1, contrast=0.2,
                       horizontal_flip=True)
    a = copies_of(augmentation, pictures, cfg, seed=7)
    b = copies_of(augmentation, pictures, cfg, seed=7)
    c = copies_of(augmentation, pictures, cfg, seed=8)
    assert a.shape == (15, 24, 24, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)
    # every copy is changed, and the copies of one image differ from each other
    n = len(pictures)
    for c_ in range(3):
        assert not np.array_equal(a[c_ * n:(c_ + 1) * n], pictures)
    assert not np.array_equal(a[0], a[n])
    # a batch size that does not divide N still fills every slot, reproducibly
    small = copies_of(augmentation, pictures, cfg, seed=7, batch_size=2)
    assert small.shape == a.shape
    assert small.tobytes() == copies_of(augmentation, pictures, cfg, seed=7, batch_size=2).tobytes()


def test_copies_are_copy_major(augmentation, pictures):
    """With flips only, copy c of image i is image i or its mirror, at index c * N + i."""
    cfg = _augment_cfg(copies=4, rotation=0.0, translation=0.0, zoom=0.0, contrast=0.0,
                       horizontal_flip=True, vertical_flip=False)
    out = copies_of(augmentation, pictures, cfg, seed=3)
    n = len(pictures)
    mirrored = 0
    for c in range(4):
        for i in range(n):
            copy = out[c * n + i]
            if np.array_equal(copy, pictures[i][:, ::-1]):
                mirrored += 1
            else:
                assert np.array_equal(copy, pictures[i]), (c, i)
    assert 0 < mirrored < 4 * n  # random per image, not all or nothing


def test_zero_copies_and_no_op_augmentation(augmentation, pictures):
    empty = copies_of(augmentation, pictures, _augment_cfg(copies=0), seed=1)
    assert empty.shape == (0, 24, 24, 3) and empty.dtype == np.uint8
    # every range 0 and no flips (valid params): the copies are the originals
    still = _augment_cfg(copies=2, rotation=0.0, translation=0.0, zoom=0.0, contrast=0.0,
                         horizontal_flip=False, vertical_flip=False)
    out = copies_of(augmentation, pictures, still, seed=1)
    assert np.array_equal(out, np.concatenate([pictures, pictures]))


def test_one_affine_transform_does_what_each_range_says(augmentation):
    """Flips, rotation, zoom and shift compose into one transform per image, drawn from
    the generator passed in: the same generator state gives the same transforms."""
    def rows(rng_seed=0, **ranges):
        none = dict(rotation=0.0, translation=0.0, zoom=0.0, contrast=0.0,
                    horizontal_flip=False, vertical_flip=False)
        augmenter = augmentation.Augmenter(_augment_cfg(**(none | ranges)))
        return augmenter.transforms(400, 20, 30, np.random.default_rng(rng_seed))

    assert rows() is None  # no geometry: the images are not resampled
    shift = rows(translation=0.1)
    assert np.allclose(shift[:, [0, 1, 3, 4]], [1, 0, 0, 1])  # a pure shift
    assert np.abs(shift[:, 2]).max() <= 3 and np.abs(shift[:, 5]).max() <= 2  # 10% of 30 x 20
    assert np.abs(shift[:, 2]).max() > 2.5  # the range is used
    flips = rows(horizontal_flip=True)
    assert set(np.round(flips[:, 0], 6)) == {-1.0, 1.0}
    mirrored = flips[flips[:, 0] < 0]
    assert np.allclose(mirrored[:, 2], 29)  # x -> 29 - x
    turned = rows(rotation=0.05, zoom=0.1)
    scale = np.hypot(turned[:, 0], turned[:, 3])
    angle = np.arctan2(turned[:, 3], turned[:, 0])
    assert 0.9 <= scale.min() and scale.max() <= 1.1 and scale.max() - scale.min() > 0.15
    assert np.abs(angle).max() <= 0.05 * 2 * np.pi + 1e-6
    # the centre (14.5, 9.5) maps to itself under rotation and zoom about it
    centre = turned[:, 0] * 14.5 + turned[:, 1] * 9.5 + turned[:, 2]
    assert np.allclose(centre, 14.5, atol=1e-4)
    assert np.array_equal(rows(rotation=0.05, zoom=0.1), turned)
    assert not np.array_equal(rows(1, rotation=0.05, zoom=0.1), turned)


def test_contrast_keeps_each_channels_mean(augmentation):
    rng = np.random.default_rng(0)
    images = rng.integers(64, 192, (6, 8, 8, 3), dtype=np.uint8)
    augmenter = augmentation.Augmenter(_augment_cfg(
        rotation=0.0, translation=0.0, zoom=0.0, contrast=0.3, horizontal_flip=False,
        vertical_flip=False))
    out = augmenter(images, np.random.default_rng(1))
    assert out.dtype == np.uint8
    assert np.allclose(out.mean(axis=(1, 2)), images.mean(axis=(1, 2)), atol=0.5)  # rounding
    spread = out.std(axis=(1, 2)) / images.std(axis=(1, 2))
    assert 0.7 <= spread.min() and spread.max() <= 1.3 and spread.max() - spread.min() > 0.05


def _write_prepared_train(n: int = 10, size: int = 16) -> Split:
    rng = np.random.default_rng(1)
    train = Split(images=rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8),
                  labels=np.arange(n, dtype=np.int64) % 3,
                  files=np.array([f"{'abc'[i % 3]}/{i:02d}.png" for i in range(n)]))
    paths.PREPARED.mkdir(parents=True)
    save_split(paths.prepared_split("train"), train)
    return train


def test_augment_stage_writes_copies_and_preview(project, augmentation):
    from tlearn.stages import augment

    train = _write_prepared_train()
    cfg = make_config({"augment.copies": 3})
    metrics = augment.run(cfg)
    assert metrics == {"n_augmented": 30}
    assert sorted(p.name for p in paths.AUGMENTED.iterdir()) == ["train"]
    out = load_split(paths.AUGMENTED / "train")
    assert out.images.shape == (30, 16, 16, 3) and out.images.dtype == np.uint8
    assert np.array_equal(out.labels, np.tile(train.labels, 3))
    assert out.files[0] == "a/00.png#0" and out.files[10 + 4] == "b/04.png#1"
    assert list(out.files) == [f"{f}#{c}" for c in range(3) for f in train.files]
    expected = copies_of(augmentation, train.images, cfg.augment, seed=cfg.base.seed)
    assert np.array_equal(out.images, expected)

    preview = paths.REPORTS / "augment_preview.png"
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(preview) as png:
        png.verify()
    with Image.open(preview) as png:
        assert png.format == "PNG" and png.width > 100 and png.height > 100
    assert sorted(p.name for p in paths.REPORTS.iterdir()) == ["augment.json",
                                                               "augment_preview.png"]


def test_augment_stage_with_zero_copies(project, augmentation):
    from tlearn.stages import augment

    _write_prepared_train(n=4)
    assert augment.run(make_config({"augment.copies": 0})) == {"n_augmented": 0}
    out = load_split(paths.AUGMENTED / "train")
    assert out.images.shape == (0, 16, 16, 3) and len(out.labels) == 0
    assert (paths.REPORTS / "augment_preview.png").stat().st_size > 0
