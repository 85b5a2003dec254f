"""Splits: stratified and seeded, given splits honoured, missing ones carved from train,
no image in two splits, and clear errors for classes that cannot be split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from conftest import image_folder, make_config, noise, save_image
from tlearn import paths
from tlearn.data import splits
from tlearn.data.splits import Item
from tlearn.data.store import load_split
from tlearn.errors import DataError
from tlearn.io import read_json
from tlearn.stages import download, prepare


def items(counts: dict[str, int], split: str | None = None, prefix: str = "") -> list[Item]:
    return [Item(path=f"{prefix}{label}/{i:03d}.png", label=label, split=split,
                 digest=f"{prefix}{label}-{i}")
            for label, n in counts.items() for i in range(n)]


def assignment(assigned: list[Item]) -> dict[str, str]:
    return {it.path: it.split for it in assigned}


UNEVEN = {"ant": 23, "bee": 57, "cow": 120}


def test_stratified_per_class_proportions():
    assigned = splits.assign(items(UNEVEN), validation=0.2, test=0.1, seed=0)
    assert len(assigned) == sum(UNEVEN.values())
    assert sorted(it.path for it in assigned) == sorted(it.path for it in items(UNEVEN))
    per = Counter((it.label, it.split) for it in assigned)
    for label, n in UNEVEN.items():
        assert abs(per[label, "validation"] - 0.2 * n) <= 1, (label, per)
        assert abs(per[label, "test"] - 0.1 * n) <= 1, (label, per)
        assert per[label, "train"] == n - per[label, "validation"] - per[label, "test"]
    assert {it.split for it in assigned} == {"train", "validation", "test"}


def test_same_seed_same_assignment_different_seed_different():
    first = assignment(splits.assign(items(UNEVEN), 0.15, 0.15, seed=42))
    assert first == assignment(splits.assign(items(UNEVEN), 0.15, 0.15, seed=42))
    # the input order does not matter either
    assert first == assignment(splits.assign(items(UNEVEN)[::-1], 0.15, 0.15, seed=42))
    other = assignment(splits.assign(items(UNEVEN), 0.15, 0.15, seed=43))
    assert other != first
    assert Counter(other.values()) == Counter(first.values())  # same sizes, other files


def test_given_splits_are_honoured():
    given = (items({"a": 10, "b": 8}, "train", "train/") + items({"a": 2, "b": 5}, "validation", "val/")
             + items({"a": 3, "b": 1}, "test", "test/"))
    assigned = splits.assign(given, 0.15, 0.15, seed=0)
    assert assignment(assigned) == {it.path: it.split for it in given}
    assert splits.check_classes(assigned) == ["a", "b"]


def test_missing_validation_is_carved_from_train_only():
    given = items({"a": 20, "b": 40}, "train", "train/") + items({"a": 4, "b": 4}, "test", "test/")
    assigned = assignment(splits.assign(given, validation=0.25, test=0.15, seed=1))
    assert all(assigned[it.path] == "test" for it in given if it.split == "test")
    carved = [p for p, s in assigned.items() if s == "validation"]
    assert all(p.startswith("train/") for p in carved)
    assert Counter(p.split("/")[1] for p in carved) == {"a": 5, "b": 10}
    assert sum(s == "train" for s in assigned.values()) == 60 - 15


def test_drop_duplicates_keeps_the_evaluation_copy():
    pool = items({"a": 3}, "train", "train/") + items({"a": 1}, "test", "test/")
    dup = Item(path="train/a/copy.png", label="a", split="train", digest="test/a-0")
    also = Item(path="validation/b/copy.png", label="b", split="validation", digest="test/a-0")
    kept, dropped = splits.drop_duplicates(pool + [dup, also])
    assert kept == pool
    assert dropped == [
        {"file": "validation/b/copy.png", "reason": "duplicate of test/a/000.png (labelled 'a' there)"},
        {"file": "train/a/copy.png", "reason": "duplicate of test/a/000.png"},
    ]


def test_duplicates_without_given_splits_keep_the_first_path():
    pool = items({"a": 2})
    dup = Item(path="a/zzz.png", label="a", split=None, digest=pool[1].digest)
    kept, dropped = splits.drop_duplicates([dup] + pool)
    assert kept == pool and dropped == [{"file": "a/zzz.png", "reason": "duplicate of a/001.png"}]


def test_too_few_images_names_the_class():
    with pytest.raises(DataError, match=r"^class 'bee' has 3 training images, too few to split"):
        splits.assign(items({"ant": 30, "bee": 3, "cow": 30}), 0.15, 0.15, seed=0)
    with pytest.raises(DataError, match=r"^class 'x' has 2 training images"):
        splits.assign(items({"x": 2, "y": 50}), 0.4, 0.4, seed=0)


def test_a_single_class_is_refused():
    assigned = splits.assign(items({"only": 40}), 0.15, 0.15, seed=0)
    with pytest.raises(DataError, match="found 1 class \\(only\\); classification needs at least 2"):
        splits.check_classes(assigned)


def test_a_class_missing_from_a_given_split_is_named():
    given = items({"a": 5, "b": 5}, "train", "train/") + items({"a": 2, "b": 2}, "validation", "v/") \
        + items({"a": 2}, "test", "t/")
    with pytest.raises(DataError, match="class 'b' has no images in the test split"):
        splits.check_classes(splits.assign(given, 0.15, 0.15, seed=0))


# --- through the prepare stage ----------------------------------------------------------

def test_cross_split_duplicate_is_kept_only_in_test(project, tmp_path):
    src = tmp_path / "src"
    image_folder(src / "train", {"a": 6, "b": 6}, seed=1)
    image_folder(src / "validation", {"a": 2, "b": 2}, seed=2)
    image_folder(src / "test", {"a": 2, "b": 2}, seed=3)
    leaked = (src / "test" / "a" / "a_000.png").read_bytes()
    (src / "train" / "a" / "leak.png").write_bytes(leaked)  # same bytes in train and test

    cfg = make_config({"data.source": str(src), "prepare.image_size": 16})
    download.run(cfg)
    metrics = prepare.run(cfg)

    report = read_json(paths.REPORTS / "prepare.json")
    assert report["duplicates"] == [{"file": "train/a/leak.png",
                                     "reason": "duplicate of test/a/a_000.png"}]
    assert metrics["n_duplicates"] == 1
    assert metrics["n_train"] == 12 and metrics["n_validation"] == 4 and metrics["n_test"] == 4
    train, test = load_split(paths.prepared_split("train")), load_split(paths.prepared_split("test"))
    assert "train/a/leak.png" not in train.files.tolist()
    assert "test/a/a_000.png" in test.files.tolist()
    assert report["given_splits"] == ["train", "validation", "test"]
    assert report["counts"] == {"train": {"a": 6, "b": 6}, "validation": {"a": 2, "b": 2},
                                "test": {"a": 2, "b": 2}}


def test_prepare_refuses_a_class_too_small_and_writes_nothing(project, tmp_path):
    src = tmp_path / "src"
    image_folder(src, {"big": 20, "tiny": 2})
    cfg = make_config({"data.source": str(src), "prepare.image_size": 16})
    download.run(cfg)
    with pytest.raises(DataError, match="class 'tiny' has 2 training images"):
        prepare.run(cfg)
    assert not paths.PREPARED.exists() and not (paths.REPORTS / "prepare.json").exists()


def test_prepare_refuses_a_single_class(project, tmp_path):
    src = tmp_path / "src"
    image_folder(src, {"only": 20})
    cfg = make_config({"data.source": str(src), "prepare.image_size": 16})
    download.run(cfg)
    with pytest.raises(DataError, match="found 1 class"):
        prepare.run(cfg)
    assert not paths.PREPARED.exists()


def test_duplicate_within_one_class_folder_counts_once(project, tmp_path):
    src = tmp_path / "src"
    image_folder(src, {"a": 10, "b": 10})
    save_image(src / "a" / "again.png", noise(24, 24, seed=1))  # the bytes of a/a_000.png
    assert (src / "a" / "again.png").read_bytes() == (src / "a" / "a_000.png").read_bytes()
    cfg = make_config({"data.source": str(src), "prepare.image_size": 16})
    download.run(cfg)
    metrics = prepare.run(cfg)
    assert metrics["n_images"] == 20 and metrics["n_duplicates"] == 1
    files = np.concatenate([load_split(paths.prepared_split(s)).files
                            for s in ("train", "validation", "test")]).tolist()
    assert "a/a_000.png" in files and "a/again.png" not in files
