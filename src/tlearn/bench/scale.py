"""Memory must not grow with the dataset. A synthetic folder of photos the size of cats vs
dogs (4,000 JPEGs, given splits 1000/500/500 per class) and one ten times larger go
through every stage (64 px, one fine-tune epoch: the measure is memory and linearity, not
accuracy); each stage's peak memory and wall time at 1x and 10x.

Targets: at 10x the data, peak memory at most 1.5x that at 1x, wall time at most 11x.
"""

from __future__ import annotations

import shutil
import tempfile
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from tlearn import stages
from tlearn.bench import common

SPLITS = {"train": 1000, "validation": 500, "test": 500}  # per class, as cats vs dogs
CLASSES = ("circles", "stripes")
STAGES = tuple(stages.all_stages())  # every stage, in pipeline order
# tune with no trials writes params.yaml's head for train_head as it is
PARAMS = {"prepare.image_size": 64, "augment.copies": 1, "finetune.epochs": 1,
          "tune.n_trials": 0}


HEIGHT, WIDTH = 240, 320
#: One block of noise per process, twice the photo's size; each photo takes a window of it
#: at a random place (drawing fresh noise for every photo tripled the folder's making).
_NOISE: list[np.ndarray] = []


def _photo(job: tuple[Path, str, int]) -> None:
    """A 320x240 JPEG: noise plus a class pattern (circles or stripes), like a small photo."""
    from PIL import Image

    path, label, seed = job
    if not _NOISE:
        _NOISE.append(np.random.default_rng(0).normal(0, 25, (2 * HEIGHT, 2 * WIDTH, 3))
                      .astype(np.float32))
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    phase, scale = rng.uniform(0, 6.3), rng.uniform(8, 24)
    pattern = (np.sin(np.hypot(x - WIDTH / 2, y - HEIGHT / 2) / scale + phase)
               if label == "circles" else np.sin(x / scale + phase))
    top, left = rng.integers(0, HEIGHT), rng.integers(0, WIDTH)
    noise = _NOISE[0][top:top + HEIGHT, left:left + WIDTH]
    pixels = 128 + 60 * pattern[..., None] + noise
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def synthetic_folder(root: Path, factor: int) -> Path:
    jobs = []
    for split, per_class in SPLITS.items():
        for label in CLASSES:
            folder = root / split / label
            folder.mkdir(parents=True)
            jobs += [(folder / f"{i:06d}.jpg", label, len(jobs) + i)
                     for i in range(per_class * factor)]
    with Pool() as pool:
        pool.map(_photo, jobs, chunksize=64)
    return root


def run_stages(source: Path) -> dict:
    project = common.scratch_project({"data.source": str(source), **PARAMS})
    try:
        return {stage: {k: v for k, v in common.measured(["tlearn", stage], project).items()
                        if k != "stderr"} for stage in STAGES}
    finally:
        shutil.rmtree(project, ignore_errors=True)


def main() -> dict:
    runs = {}
    for factor in (1, 10):
        with tempfile.TemporaryDirectory(prefix="tlearn-scale-") as work:
            source = synthetic_folder(Path(work) / "photos", factor)
            runs[factor] = run_stages(source)
    rows, figures = [], {"params": PARAMS, "stages": {}}
    for stage in STAGES:
        one, ten = runs[1][stage], runs[10][stage]
        memory = round(ten["peak_rss_mb"] / one["peak_rss_mb"], 2)
        time_ratio = round(ten["seconds"] / one["seconds"], 2)
        figures["stages"][stage] = {"1x": one, "10x": ten, "memory_ratio": memory,
                                    "time_ratio": time_ratio}
        rows.append((stage, f"{one['peak_rss_mb']:.0f}", f"{ten['peak_rss_mb']:.0f}", memory,
                     f"{one['seconds']:.1f}", f"{ten['seconds']:.1f}", time_ratio))
    common.save("scale", figures)
    print(common.table("Scale: 4,000 vs 40,000 synthetic photos, 64 px (targets: memory "
                       "<= 1.5x, time <= 11x)", ("stage", "MB 1x", "MB 10x", "ratio",
                                                 "s 1x", "s 10x", "ratio"), rows))
    return figures


if __name__ == "__main__":
    main()
