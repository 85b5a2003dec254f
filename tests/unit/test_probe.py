"""tlearn probe: the folder's splits, decoding ahead in bounded batches, features in the
folder's order with undecodable files skipped, and the whole command on a small folder
(a model predict takes, its figures in MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_config
from tlearn import probe
from tlearn.cli import main
from tlearn.errors import DataError


def colour_folder(root: Path, img, per_split: dict[str, int]) -> Path:
    """``root/<split>/{red,blue}/``: noisy red and blue images (the base tells them apart)."""
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            for i in range(n):
                pixels = np.clip(img.solid(40, 48, colour).astype(int)
                                 + rng.integers(-40, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
                img.save(root / split / label / f"{label}_{i}.png", pixels)
    return root


def test_given_splits_are_kept_and_val_means_validation(tmp_path, img):
    for split in ("train", "val", "test"):
        img.folder(tmp_path / split, {"cat": 3, "dog": 2}, seed=len(split))
    images = probe.list_images(tmp_path, make_config())
    classes, by_split = images.classes, images.splits
    assert classes == ["cat", "dog"]
    assert {s: [(i.path.relative_to(tmp_path).as_posix(), i.label) for i in images][:2]
            for s, images in by_split.items()} == {
        "train": [("train/cat/cat_000.png", 0), ("train/cat/cat_001.png", 0)],
        "validation": [("val/cat/cat_000.png", 0), ("val/cat/cat_001.png", 0)],
        "test": [("test/cat/cat_000.png", 0), ("test/cat/cat_001.png", 0)]}
    assert [len(by_split[s]) for s in ("train", "validation", "test")] == [5, 5, 5]


def test_a_folder_without_splits_is_carved_as_prepare_carves_it(tmp_path, img):
    img.folder(tmp_path, {"cat": 20, "dog": 20})
    cfg = make_config({"prepare.split": {"validation": 0.2, "test": 0.1}})
    by_split = probe.list_images(tmp_path, cfg).splits
    assert {s: len(images) for s, images in by_split.items()} == \
        {"train": 28, "validation": 8, "test": 4}
    assert sorted(i.path for images in by_split.values() for i in images) == \
        sorted(tmp_path.rglob("*.png"))
    assert probe.list_images(tmp_path, cfg).splits == by_split  # seeded
    other_seed = probe.list_images(tmp_path, make_config({"base.seed": 7})).splits
    assert other_seed["validation"] != by_split["validation"]


def test_an_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match="tlearn probe: no images in class folders under "):
        probe.list_images(tmp_path, make_config())
    with pytest.raises(DataError, match="is not a folder"):
        probe.list_images(tmp_path / "nowhere", make_config())


class MeanExtractor:
    def __init__(self):
        self.batch_sizes = []

    def predict_on_batch(self, pixels):
        self.batch_sizes.append(len(pixels))
        return pixels.mean(axis=(1, 2))


def test_features_follow_the_images_across_splits_and_skip_what_did_not_decode():
    images = [probe.LabelledFile(Path(f"/photos/{i}.png"), f"{i}.png", i % 2) for i in range(7)]
    decoded = iter([(np.full((2, 2, 3), i, np.uint8), None) if i != 3 else (None, "truncated")
                    for i in range(7)] + [(np.full((2, 2, 3), 50, np.uint8), None)])
    extractor = MeanExtractor()
    features, skipped = probe._extract(extractor, decoded, images, batch_size=4)
    assert features.x[:, 0].tolist() == [0, 1, 2, 4, 5, 6]
    assert features.y.tolist() == [0, 1, 0, 0, 1, 0]
    assert skipped == [{"file": "3.png", "reason": "truncated"}]
    assert extractor.batch_sizes == [4, 4]  # the short last batch padded: one trace
    # the next split continues where this one stopped
    following, _ = probe._extract(extractor, decoded,
                                  [probe.LabelledFile(Path("/photos/7.png"), "7.png", 1)], 4)
    assert following.x[:, 0].tolist() == [50] and following.y.tolist() == [1]


def test_probe_of_a_small_folder_gives_a_model_predict_takes_and_an_mlflow_run(
        project, embedded, monkeypatch, capsys, img):
    import mlflow

    from tlearn.predict import load_predictor

    folder = colour_folder(project / "photos", img, {"train": 8, "val": 4, "test": 4})
    (project / "photos" / "test" / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", embedded.uri)
    assert main(["probe", str(folder), "--image-size", "32", "--out", "probe"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2 classes, 16 training images at 32 px: validation accuracy "
                             "1.0000 (95%: 0.676-1.000) on 8 images (logistic regression, "
                             "C=0.1) after ")
    assert out[1].startswith("test accuracy 1.0000 on 8 images after ")
    assert out[2] == "1 file left out (duplicates, or not decodable): probe/probe.json"
    assert out[3] == "model: probe/model.keras (tlearn predict --model probe/model.keras IMAGE)"

    report = json.loads((project / "probe" / "probe.json").read_text())
    assert report["counts"] == {"train": 16, "validation": 8, "test": 8}
    assert report["left_out"] == [{"file": "test/red/broken.png",
                                   "reason": "not an image (unrecognised format)"}]
    assert report["folder"] == str(folder.resolve())
    assert report["val_accuracy"] == 1.0 and report["test"]["accuracy"] == 1.0
    assert [row["value"] for row in report["search"]] == [0.1, 1.0, 10.0] and report["c"] == 0.1
    assert (report["backbone"], report["image_size"], report["resize_mode"]) == \
        ("efficientnet_lite0", 32, "crop")
    assert 0 < report["seconds_to_validation"] <= report["seconds_to_test"]

    predictor = load_predictor("probe/model.keras")
    assert (predictor.labels, predictor.image_size) == (["blue", "red"], 32)
    pixels = np.stack([predictor.load_image(p) for p in sorted(
        (folder / "test" / "blue").glob("*.png"))])
    assert (predictor.predict(pixels).argmax(axis=1) == 0).all()

    client = mlflow.MlflowClient(embedded.uri)
    (run,) = client.search_runs(client.get_experiment_by_name("tlearn-probe").experiment_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "probe"
    assert run.data.metrics["val_accuracy"] == 1.0 and run.data.metrics["test/accuracy"] == 1.0
    assert run.data.metrics["n_left_out"] == 1 and run.data.params["image_size"] == "32"
    assert run.data.params["prepare.split.validation"] == "0.15"
    assert run.data.params["baselines.max_train"] == "6000"
    (logged,) = client.search_logged_models([run.info.experiment_id])
    assert logged.tags["tlearn.file"] == "probe/model.keras"


def test_a_folder_it_cannot_probe_fails_before_any_run_is_made(project, embedded, monkeypatch,
                                                               capsys):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", embedded.uri)
    assert main(["probe", "nowhere"]) == 2
    assert capsys.readouterr().err.strip() == "tlearn probe: nowhere is not a folder"
    assert mlflow.MlflowClient(embedded.uri).get_experiment_by_name("tlearn-probe") is None


def test_a_class_without_a_decodable_training_image_is_a_clear_error(project, img):
    folder = colour_folder(project / "photos", img, {"train": 2, "val": 2, "test": 1})
    for path in (folder / "train" / "red").iterdir():
        path.write_bytes(f"not an image: {path.name}".encode())
    cfg = make_config()
    with pytest.raises(DataError, match=r"no training image of red decoded \(2 of the training "
                                        r"files did not, e.g. .*red_0.png: not an image"), \
            probe.decoding(probe.list_images(folder, cfg), cfg, image_size=32) as decoding:
        probe.run(decoding, cfg)


def test_layouts_it_refuses_and_files_it_leaves_out(tmp_path, img):
    img.folder(tmp_path / "mixed" / "train", {"cat": 2, "dog": 2})
    img.folder(tmp_path / "mixed", {"samples": 2})
    with pytest.raises(DataError, match=r"^tlearn probe: .*mixed mixes split folders with "
                                        r"other folders: \['samples'\]"):
        probe.list_images(tmp_path / "mixed", make_config())

    made = {split: img.folder(tmp_path / "given" / split, {"cat": 3, "dog": 3}, seed=i)
            for i, split in enumerate(("train", "validation", "test"))}
    leaked = made["test"]["cat"][0]  # the same bytes in train: kept in test only
    (tmp_path / "given" / "train" / "cat" / "copy.png").write_bytes(leaked.read_bytes())
    (tmp_path / "given" / "train" / "dog" / "Thumbs.db").write_bytes(b"windows")
    images = probe.list_images(tmp_path / "given", make_config())
    assert [f.path.name for f in images.splits["train"]] == \
        [f"cat_00{i}.png" for i in range(3)] + [f"dog_00{i}.png" for i in range(3)]
    assert images.duplicates == [{"file": "train/cat/copy.png",
                                  "reason": "duplicate of test/cat/cat_000.png"}]
    img.folder(tmp_path / "one", {"cat": 5})
    with pytest.raises(DataError, match=r"^tlearn probe: found 1 class \(cat\)"):
        probe.list_images(tmp_path / "one", make_config())


def test_it_checks_before_any_run_is_made(project, embedded, monkeypatch, capsys, img):
    import mlflow

    folder = colour_folder(project / "photos", img, {"train": 2, "val": 1, "test": 1})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", embedded.uri)
    for args, error in (
            (["--image-size", "16"], "tlearn probe: --image-size 16 is below the minimum 32 "
                                     "of backbone efficientnet_lite0 (its default is 224)"),
            (["--out", "models"], "tlearn probe: --out models is the pipeline's models "
                                  "folder: choose another (default: models/folder_probe)"),
            (["-S", "model.backbone=efficientnet_lite9"], "params.yaml: model.backbone: ")):
        assert main(["probe", str(folder), *args]) == 2
        assert capsys.readouterr().err.startswith(error)
    with pytest.raises(SystemExit):
        main(["probe", str(folder), "--image-size", "0"])
    assert mlflow.MlflowClient(embedded.uri).get_experiment_by_name("tlearn-probe") is None


def test_validation_is_reported_before_test_and_training_is_sampled_to_max_train(project, img):
    folder = colour_folder(project / "photos", img, {"train": 8, "val": 2, "test": 2})
    cfg = make_config({"baselines.max_train": 10})
    heard = []
    with probe.decoding(probe.list_images(folder, cfg), cfg, image_size=32) as decoding:
        result, _ = probe.run(decoding, cfg, on_validation=lambda r: heard.append(
            (dict(r.test), probe.summary(r))))
    assert heard[0][0] == {}  # test not scored yet
    assert heard[0][1].startswith("2 classes, 10 of 16 training images at 32 px: ")
    assert result.counts == {"train": 10, "validation": 4, "test": 4}
    assert result.test["accuracy"] == 1.0
