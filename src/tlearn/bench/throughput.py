"""How close the stages run to the model's own speed (EfficientNet-Lite0, 224 px):

- features: the features stage's code path (a prepared split read from disk in batches,
  through the extractor, written to disk) against the extractor on in-memory tensors;
- fine-tune: training images per second through ``model.fit`` on tlearn's batches from
  disk (shuffled, augmented) against a bare train step on in-memory tensors, with the
  `photos` preset's unfrozen layers. A fit pass is one ``model.fit`` call over an epoch
  of ``FIT_IMAGES``, as the fine-tune makes one per epoch: what a call costs besides its
  steps counts (32 batches, a small real epoch; cats vs dogs' fine-tune has 63 of 32).

Each ratio is the median of ``ROUNDS`` rounds' ratios, a round timing the model's own pass
and then the stage's back to back (the machine's speed drifts between minutes). Speed
depends on the machine and its load.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from tlearn.bench import common

SIZE, BATCH, N_IMAGES, FIT_IMAGES, FEATURE_BATCH = 224, 32, 256, 1024, 64
ROUNDS = 3  # each round: the model's own pass, then the stage's (the ratio: their median)


def _images(folder: Path, n: int) -> Path:
    from tlearn.data.store import Split, save_split

    rng = np.random.default_rng(0)
    save_split(folder, Split(rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
                             np.arange(n) % 2, np.array(["x"] * n)))
    return folder


def features_ratio(split: Path, work: Path) -> dict:
    import tensorflow as tf

    from tlearn import features
    from tlearn.data.store import SplitReader
    from tlearn.models.head import build_extractor

    extractor = build_extractor("efficientnet_lite0", SIZE, "imagenet", "avg")
    batch = tf.constant(SplitReader(split).images.read(0, FEATURE_BATCH).astype("float32"))
    extractor.predict_on_batch(batch)

    def model_only() -> float:
        started = time.perf_counter()
        for _ in range(N_IMAGES // FEATURE_BATCH):
            np.asarray(extractor.predict_on_batch(batch))
        return N_IMAGES / (time.perf_counter() - started)

    def stage_path() -> float:
        target = Path(tempfile.mkdtemp(dir=work)) / "x"
        started = time.perf_counter()
        features.extract(extractor, SplitReader(split), target, FEATURE_BATCH)
        return N_IMAGES / (time.perf_counter() - started)

    model_only(), stage_path()  # warm-up passes: oneDNN settles over the first batches
    rounds = common.paired(model_only, stage_path, ROUNDS)
    return {"model_images_per_second": rounds["first"],
            "stage_images_per_second": rounds["second"], "ratio": rounds["ratio"]}


def finetune_ratio(split: Path) -> dict:
    import keras
    import tensorflow as tf

    from tlearn import config, train
    from tlearn.data.batches import ImageBatches
    from tlearn.data.store import SplitReader
    from tlearn.models.head import assemble, build_extractor, build_head, find_base, unfreeze_top

    cfg = config.load(common.REPO / "params.yaml", overrides={"data.source": "photos"})
    model = assemble(build_extractor("efficientnet_lite0", SIZE, "imagenet", "avg"),
                     build_head((1280,), 2, cfg.head))
    unfreeze_top(find_base(model), cfg.finetune.unfreeze)
    train.compile_classifier(model, train.make_optimizer("adam", 1e-4))
    reader = SplitReader(split)
    x = tf.constant(reader.images.read(0, BATCH).astype("float32"))
    y = tf.constant(train.one_hot(reader.labels[:BATCH], 2))
    model.train_on_batch(x, y)

    def bare_step() -> float:
        started = time.perf_counter()
        for _ in range(N_IMAGES // BATCH):
            model.train_on_batch(x, y)
        return N_IMAGES / (time.perf_counter() - started)

    batches = ImageBatches(reader, 2, BATCH, seed=0, augment=cfg.augment)
    epoch = [0]

    def through_fit() -> float:
        batches.set_epoch(epoch[0])
        epoch[0] += 1
        started = time.perf_counter()
        model.fit(batches.dataset, epochs=1, shuffle=False, verbose=0)
        return len(reader) / (time.perf_counter() - started)

    through_fit()  # fit traces its own function once
    rounds = common.paired(bare_step, through_fit, ROUNDS)
    keras.backend.clear_session()
    return {"train_step_images_per_second": rounds["first"],
            "fit_images_per_second": rounds["second"], "ratio": rounds["ratio"],
            "unfreeze": cfg.finetune.unfreeze}


def main() -> dict:
    with tempfile.TemporaryDirectory(prefix="tlearn-bench-") as tmp:
        work = Path(tmp)
        figures = {"features": features_ratio(_images(work / "split", N_IMAGES), work),
                   "finetune": finetune_ratio(_images(work / "fit", FIT_IMAGES))}
    common.save("throughput", figures)
    f, t = figures["features"], figures["finetune"]
    title = (f"Model-limit ratios, Lite0 at {SIZE} px (median of {ROUNDS} rounds of {N_IMAGES} "
             f"images, fit: {FIT_IMAGES}; target >= 0.9)")
    print(common.table(title, ("", "images/s", "model's own", "ratio"), [
        ("features stage", f["stage_images_per_second"]["median"],
         f["model_images_per_second"]["median"], f["ratio"]),
        (f"fine-tune fit (unfreeze {t['unfreeze']})", t["fit_images_per_second"]["median"],
         t["train_step_images_per_second"]["median"], t["ratio"])]))
    return figures


if __name__ == "__main__":
    main()
