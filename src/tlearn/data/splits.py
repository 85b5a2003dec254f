"""Split assignment: honour given splits, carve missing ones by stratified seeded sampling,
and keep every distinct image in exactly one split."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np

from tlearn.errors import DataError

SPLITS = ("train", "validation", "test")
# When a duplicate sits in two splits, keep the copy in the split listed first: the
# evaluation splits stay as the source gave them and the training split loses the leak.
KEEP_ORDER = ("test", "validation", "train")


@dataclass(frozen=True)
class Item:
    path: str        # relative to data/raw
    label: str       # class name
    split: str | None  # given split, or None when the source has none
    digest: str      # content hash of the file


def drop_duplicates(items: list[Item]) -> tuple[list[Item], list[dict]]:
    """Keep one item per content hash; report the dropped ones and why."""
    order = {s: i for i, s in enumerate(KEEP_ORDER)}
    ranked = sorted(items, key=lambda it: (order.get(it.split, len(order)), it.path))
    kept: dict[str, Item] = {}
    dropped = []
    for item in ranked:
        first = kept.get(item.digest)
        if first is None:
            kept[item.digest] = item
            continue
        reason = f"duplicate of {first.path}"
        if first.label != item.label:
            reason += f" (labelled {first.label!r} there)"
        dropped.append({"file": item.path, "reason": reason})
    survivors = set(id(it) for it in kept.values())
    return [it for it in items if id(it) in survivors], dropped


def assign(items: list[Item], validation: float, test: float, seed: int) -> list[Item]:
    """Give every item a split. Given splits stay; missing ones are carved from train,
    stratified per class, with ``seed`` deciding which files go where."""
    given = {it.split for it in items if it.split}
    missing = [s for s in ("validation", "test") if s not in given]
    pool = [it for it in items if it.split in (None, "train")]
    if not pool and missing:
        raise DataError(f"data.source: no training images to carve {', '.join(missing)} from")
    fractions = {"validation": validation, "test": test}
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Item]] = defaultdict(list)
    for it in sorted(pool, key=lambda it: it.path):
        by_class[it.label].append(it)
    out = [it for it in items if it.split not in (None, "train")]
    for label in sorted(by_class):
        members = by_class[label]
        order = rng.permutation(len(members))
        counts = carve_counts(label, len(members), missing, fractions)
        start = 0
        for split in missing:
            for i in order[start:start + counts[split]]:
                out.append(replace(members[i], split=split))
            start += counts[split]
        out.extend(replace(members[i], split="train") for i in order[start:])
    return out


def carve_counts(label: str, n: int, missing: list[str], fractions: dict[str, float],
                 ) -> dict[str, int]:
    """How many of a class' ``n`` training images go to each missing split; a DataError
    when that leaves a split (train included) without an image of the class."""
    counts = {s: round(n * fractions[s]) for s in missing}
    if n < len(missing) + 1 or any(c == 0 for c in counts.values()) \
            or n - sum(counts.values()) < 1:
        raise DataError(f"class {label!r} has {n} training image{'' if n == 1 else 's'}, too "
                        f"few to split into train/{'/'.join(missing)} with prepare.split "
                        f"{fractions} (needs at least one image per split)")
    return counts


def check_classes(items: list[Item]) -> list[str]:
    """Class names in a stable order; every class must reach every split."""
    classes = sorted({it.label for it in items})
    if len(classes) < 2:
        raise DataError(f"data.source: found {len(classes)} class ({', '.join(classes) or 'none'}); "
                        "classification needs at least 2 class folders")
    for split in SPLITS:
        present = {it.label for it in items if it.split == split}
        absent = [c for c in classes if c not in present]
        if absent:
            raise DataError(f"class {absent[0]!r} has no images in the {split} split")
    return classes
