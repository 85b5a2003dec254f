"""The whole pipeline on the cats-vs-dogs photos with the `photos` preset: ``dvc repro``
from the raw folder to evaluate, each stage's wall time and peak memory, when validation
accuracy first reached 0.975, the accuracies, and ``tlearn predict``'s latency (a cold
process, a warm predictor, a batch). The race (tlearn.bench.race) reads its figures.

Speed depends on the machine and its load; these are measurements, not test thresholds.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np

from tlearn.bench import common
from tlearn.io import read_json

TARGET = 0.975
EPOCH_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d) INFO tlearn\.train: epoch (\d+) .*"
                        r"val_accuracy ([0-9.]+)")


def run_pipeline(project: Path) -> dict:
    """``dvc repro`` with each stage's command measured; the figures of the run."""
    dvc_yaml = project / "dvc.yaml"
    text = dvc_yaml.read_text()
    dvc_yaml.write_text(re.sub(r"cmd: (tlearn \w+)",
                               lambda m: f"cmd: {' '.join(common.measuring(m.group(1).split()))}",
                               text))
    started_clock, started = time.time(), time.perf_counter()
    proc = subprocess.run([str(common.BIN / "dvc"), "repro"], cwd=project,
                          env=common.environment(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"dvc repro failed:\n{proc.stderr[-4000:]}")
    stages = {m["cmd"].split()[-1]: {"seconds": m["seconds"], "peak_rss_mb": m["peak_rss_mb"]}
              for m in common.marks(proc.stdout)}
    first = reached(proc.stderr, started_clock)
    report, finetune = (read_json(project / "reports" / f"{name}.json")
                        for name in ("evaluate", "finetune"))
    done_head = sum(stages[s]["seconds"] for s in list(stages)[:list(stages).index("train_head") + 1])
    return {"wall_seconds": round(wall, 1), "stages": stages,
            "seconds_to_head": round(done_head, 1),
            "seconds_to_val_accuracy_0975": first,
            "test_accuracy": report["accuracy"], "head_test_accuracy": report["head_accuracy"],
            "tta_test_accuracy": report.get("tta_accuracy"),
            "finetune_kept_head": finetune["kept_head"],
            "finetune_kept_probe": finetune["kept_probe"],
            "margin_over_probe": report["margin_over_probe"],
            "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values())}


def reached(log: str, started_clock: float, target: float = TARGET) -> float | None:
    """Seconds from ``started_clock`` to the first epoch (head or fine-tune) whose
    validation accuracy reached ``target``, from the stages' log lines."""
    day = time.localtime(started_clock)
    midnight = started_clock - (day.tm_hour * 3600 + day.tm_min * 60 + day.tm_sec)
    for line in log.splitlines():
        if (found := EPOCH_LINE.match(line)) and float(found.group(5)) >= target:
            hours, minutes, seconds = map(int, found.group(1, 2, 3))
            at = midnight + hours * 3600 + minutes * 60 + seconds
            return round((at - started_clock) % 86400, 1)
    return None


def predict_latency(project: Path, images: list[Path]) -> dict:
    """``tlearn predict`` of one photo in a new process (model loading included), one photo
    with the model loaded (median of 10), and a batch of 32 (images per second)."""
    cold = common.repeat(lambda: common.measured(
        ["tlearn", "predict", str(images[0]), "--model", "models/model.keras"],
        project)["seconds"], times=3)
    from tlearn.predict import load_predictor

    predictor = load_predictor(str(project / "models" / "model.keras"))
    one = predictor.load_image(images[0])[None]
    predictor.predict(one)  # the first call traces the graph

    def timed(batch: np.ndarray) -> float:
        started = time.perf_counter()
        predictor.predict(batch)
        return time.perf_counter() - started

    batch = np.stack([predictor.load_image(p) for p in images[:32]])
    warm = common.repeat(lambda: timed(one), times=10)
    per_batch = common.repeat(lambda: timed(batch), times=3)
    return {"cold_seconds": cold, "warm_ms": {k: round(v * 1000, 1) if k != "n" else v
                                              for k, v in warm.items()},
            "batch_images_per_second": round(32 / per_batch["median"], 1)}


def main() -> dict:
    if not common.CATS_AND_DOGS.is_dir():
        print(f"pipeline  skipped: {common.CATS_AND_DOGS} not found")
        return {}
    project = common.scratch_project({"data.source": str(common.CATS_AND_DOGS)}, dvc=True)
    figures = run_pipeline(project)
    photos = sorted((common.CATS_AND_DOGS / "test" / "cats").glob("*.jpg"))[:32]
    figures["predict"] = predict_latency(project, photos)
    common.save("pipeline", {**figures, "project": str(project)})  # the serve bench's model
    rows = [(name, f"{s['seconds']:.0f}", f"{s['peak_rss_mb']:.0f}")
            for name, s in figures["stages"].items()]
    print(common.table("Whole pipeline, cats vs dogs (4,000 photos), preset photos "
                       "(Lite0, 224 px), dvc repro", ("stage", "seconds", "peak MB"), rows))
    print(f"total {figures['wall_seconds']:.0f} s (target < 600), peak {figures['peak_rss_mb']:.0f}"
          f" MB (target < 4096); raw folder -> head {figures['seconds_to_head']:.0f} s; "
          f"validation accuracy >= {TARGET} after {figures['seconds_to_val_accuracy_0975']} s")
    print(f"test accuracy {figures['test_accuracy']:.4f} (head {figures['head_test_accuracy']:.4f}"
          f", with flip TTA {figures['tta_test_accuracy']}); the model is "
          f"{'the linear probe' if figures['finetune_kept_probe'] else 'the fine-tuned one'}, "
          f"{figures['margin_over_probe']:+.4f} over the probe")
    latency = figures["predict"]
    print(f"predict: cold process {latency['cold_seconds']['median']:.1f} s, warm "
          f"{latency['warm_ms']['median']:.0f} ms per image, batch of 32 "
          f"{latency['batch_images_per_second']:.0f} images/s\n")
    return figures


if __name__ == "__main__":
    main()
