"""Data stages and backbone forward speed, printed.

- prepare: wall time and peak memory for the cats-vs-dogs photos (4,000 JPEGs, 160 px crop);
- reading the prepared splits back (MB/s);
- EfficientNet-Lite0/1/2 forward throughput (images/s, batch 32) at 224, 160 and 128 px.

Speed depends on the machine and its load; these are measurements, not test thresholds.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tlearn import paths
from tlearn.io import read_json
from tlearn.stages import prepare

REPO = Path(__file__).resolve().parents[3]
CATS_AND_DOGS = REPO.parent / "shared" / "datasets" / "cats_and_dogs"
LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SIZES = (224, 160, 128)
BATCH = 32


def bench_prepare(source: Path = CATS_AND_DOGS, image_size: int = 160) -> Path:
    """Run download + prepare in a scratch project; print wall time and peak memory."""
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-"))
    shutil.copy2(REPO / "params.yaml", work / "params.yaml")
    tlearn = [sys.executable, "-m", "tlearn.cli"]
    overrides = ["-S", f"data.source={source}", "-S", f"prepare.image_size={image_size}"]
    subprocess.run([*tlearn, "download", *overrides], cwd=work, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.perf_counter()
    subprocess.run([*tlearn, "prepare", *overrides], cwd=work, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    n = read_json(work / prepare.STAGE.report)["n_images"]
    print(f"prepare   {n} images at {image_size} px: {seconds:.1f} s "
          f"({n / seconds:.0f} images/s, {os.cpu_count()} processes), "
          f"peak memory {peak_mb:.0f} MB (largest process)")
    return work


def bench_read(prepared: Path) -> None:
    from tlearn.data.store import load_split

    folders = sorted(p for p in prepared.iterdir() if p.is_dir())
    megabytes = sum(f.stat().st_size for d in folders for f in d.iterdir()) / 1e6
    started = time.perf_counter()
    for folder in folders:
        load_split(folder)
    seconds = time.perf_counter() - started
    print(f"read      prepared splits, {megabytes:.0f} MB: {seconds:.2f} s "
          f"({megabytes / seconds:.0f} MB/s)")


def bench_lite(repeats: int = 3) -> None:
    import keras

    from tlearn.models import lite

    print(f"forward   images/s, batch {BATCH}, best of {repeats} "
          f"(TensorFlow CPU, {os.cpu_count()} cores)")
    print(f"          {'backbone':<20}" + "".join(f"{s:>8} px" for s in SIZES))
    for variant in LITE:
        row = []
        for size in SIZES:
            model = lite.build(variant, input_shape=(size, size, 3), include_top=True)
            batch = np.random.default_rng(0).normal(size=(BATCH, size, size, 3)).astype("float32")
            model.predict_on_batch(batch)  # warm-up: graph tracing
            best = min(_timed(lambda: model.predict_on_batch(batch)) for _ in range(repeats))
            row.append(BATCH / best)
            keras.backend.clear_session()
        print(f"          {variant:<20}" + "".join(f"{r:>11.0f}" for r in row))


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    if CATS_AND_DOGS.is_dir():
        work = bench_prepare()
        bench_read(work / paths.PREPARED)
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"prepare   skipped: {CATS_AND_DOGS} not found")
    bench_lite()


if __name__ == "__main__":
    main()
