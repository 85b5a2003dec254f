"""``tlearn probe`` on the cats-vs-dogs photos (4,000 in train/validation/test folders) as
a new user runs it: a new process in an empty folder with the project's params.yaml,
tracking on (MLflow's SQLite store). Timed from the process' launch to the line giving
the validation accuracy, and to its end (test scored, model saved and logged to MLflow);
the median of ``RUNS`` runs, with min and max. The race (tlearn.bench.race) reads its figures.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tlearn.bench import common
from tlearn.io import read_json

RUNS, TARGET = 3, 0.975
VALIDATION_LINE = re.compile(r"validation accuracy ([0-9.]+)")


def probe_once() -> dict:
    folder = Path(tempfile.mkdtemp(prefix="tlearn-bench-probe-"))
    try:
        shutil.copy2(common.REPO / "params.yaml", folder / "params.yaml")
        env = {k: v for k, v in common.environment().items() if k != "TLEARN_TRACKING_OFF"}
        with open(folder / "stderr.log", "w+") as stderr:  # a file: a full pipe would block
            started = time.perf_counter()
            proc = subprocess.Popen(common.measuring([str(common.BIN / "tlearn"), "probe",
                                                      str(common.CATS_AND_DOGS)]),
                                    cwd=folder, env=env, stdout=subprocess.PIPE, stderr=stderr,
                                    text=True)
            to_validation, lines = None, []
            for line in proc.stdout:
                lines.append(line)
                if to_validation is None and VALIDATION_LINE.search(line):
                    to_validation = time.perf_counter() - started
            if proc.wait():
                stderr.seek(0)
                raise RuntimeError(f"tlearn probe failed:\n{stderr.read()[-3000:]}")
        wall = time.perf_counter() - started
        report = read_json(folder / "models" / "folder_probe" / "probe.json")
    finally:
        shutil.rmtree(folder)
    return {"seconds_to_validation": round(to_validation, 1), "wall_seconds": round(wall, 1),
            "peak_rss_mb": common.marks("".join(lines))[-1]["peak_rss_mb"],
            "val_accuracy": report["val_accuracy"], "test_accuracy": report["test"]["accuracy"],
            "image_size": report["image_size"], "backbone": report["backbone"]}


def main() -> dict:
    if not common.CATS_AND_DOGS.is_dir():
        print(f"probe     skipped: {common.CATS_AND_DOGS} not found")
        return {}
    runs = [probe_once() for _ in range(RUNS)]
    figures = {key: common.figure([run[key] for run in runs]) for key in (
        "seconds_to_validation", "wall_seconds", "val_accuracy", "test_accuracy")}
    figures.update(image_size=runs[0]["image_size"], backbone=runs[0]["backbone"],
                   peak_rss_mb=max(run["peak_rss_mb"] for run in runs),
                   seconds_to_val_accuracy_0975=figures["seconds_to_validation"]["median"]
        if figures["val_accuracy"]["min"] >= TARGET else None)
    common.save("probe", figures)
    rows = [(key, f["median"], f["min"], f["max"]) for key, f in figures.items()
            if isinstance(f, dict)]
    print(common.table(f"tlearn probe, cats vs dogs (4,000 photos), {figures['backbone']} at "
                       f"{figures['image_size']} px, {os.cpu_count()} cores, {RUNS} runs",
                       ("", "median", "min", "max"), rows))
    print(f"raw folder -> validation accuracy {figures['val_accuracy']['median']:.4f} in "
          f"{figures['seconds_to_validation']['median']} s (target: >= {TARGET} in <= 30 s); "
          f"peak {figures['peak_rss_mb']:.0f} MB\n")
    return figures


if __name__ == "__main__":
    main()
