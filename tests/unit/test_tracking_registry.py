"""tlearn.tracking.registry: promote on a real (embedded SQLite) registry: both models
measured on the local test split, paired, and decided by tlearn.stats.Rule."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tlearn import config, paths
from tlearn.data.store import Split, save_split, split_digest
from tlearn.errors import TlearnError
from tlearn.tracking import models, registry, store


@pytest.fixture
def versions(embedded):
    """``add`` registers a version the way evaluate does (tags test_accuracy and
    test_split_sha256, alias challenger)."""
    connected = store.connect(embedded, "tlearn")
    client = connected.client

    def add(accuracy: float, split: str | None = None) -> str:
        split = split or split_digest(paths.prepared_split("test"))
        logged = client.create_logged_model(connected.experiment_id, name="model")
        if not client.search_registered_models("name = 'tlearn'"):
            client.create_registered_model("tlearn")
        version = client.create_model_version(
            "tlearn", source=f"models:/{logged.model_id}", model_id=logged.model_id,
            tags={"test_accuracy": repr(accuracy), "test_split_sha256": split}).version
        client.set_registered_model_alias("tlearn", registry.CHALLENGER, version)
        return version

    def aliases() -> dict:
        return {k: int(v) for k, v in client.get_registered_model("tlearn").aliases.items()}

    def promote(cfg=None):
        return registry.promote(embedded, cfg or config.load("params.yaml"))

    return SimpleNamespace(add=add, aliases=aliases, promote=promote, client=client)


N_TEST = 40
LABELS = np.arange(N_TEST) % 2


class Fixed:
    """A model giving fixed answers for the local test split's 8 px images, in order."""

    input_shape = (None, 8, 8, 3)

    def __init__(self, predicted: np.ndarray):
        self.predicted, self.at = predicted, 0

    def predict_on_batch(self, x):
        out = np.eye(2)[self.predicted[self.at:self.at + len(x)]]
        self.at += len(x)
        return out


def answers(right: int) -> np.ndarray:
    """Predictions with the first ``right`` images right and the rest wrong."""
    return np.where(np.arange(N_TEST) < right, LABELS, 1 - LABELS)


@pytest.fixture
def models_by_version(monkeypatch):
    """data/prepared/test (40 images, 2 classes, 8 px crop), and models.load_model
    answering with the predictions registered here per version."""
    save_split(paths.prepared_split("test"),
               Split(np.zeros((N_TEST, 8, 8, 3), np.uint8), LABELS, np.array(["f"] * N_TEST)))
    paths.PREPARED_PREPROCESS.write_text(json.dumps({"image_size": 8, "resize_mode": "crop"}))
    paths.PREPARED_LABELS.write_text(json.dumps(["a", "b"]))
    predictions: dict[int, tuple[np.ndarray, str]] = {}

    def load_model(settings, uri):
        predicted, resize_mode = predictions[int(uri.rsplit("/", 1)[1])]
        return Fixed(predicted), ["a", "b"], resize_mode

    monkeypatch.setattr(models, "load_model", load_model)
    return predictions


def test_promote_measures_both_models_on_the_same_images(versions, models_by_version):
    with pytest.raises(TlearnError, match="no registered model"):
        versions.promote()
    models_by_version[versions.add(0.75)] = answers(30), "crop"
    first = versions.promote()
    assert first.promoted and first.line == ("promoted: tlearn v1 (test accuracy 0.7500): "
                                             "the first champion")
    assert versions.aliases() == {"challenger": 1, "champion": 1}
    assert versions.promote().reason == "it is already the champion"

    models_by_version[versions.add(0.725)] = answers(29), "crop"          # worse
    worse = versions.promote()
    assert not worse.promoted and worse.line == (
        "kept: tlearn v1 (0.7500); challenger tlearn v2 (test accuracy 0.7250): not better: "
        "-0.0250 on the same 40 test images")
    tags = versions.client.get_model_version("tlearn", "2").tags
    assert tags["tlearn.decision"] == worse.line

    models_by_version[versions.add(0.775)] = answers(31), "crop"          # one image more
    lucky = versions.promote()
    assert not lucky.promoted and "not significant: McNemar p = 1" in lucky.reason
    assert versions.aliases()["champion"] == 1

    models_by_version[versions.add(1.0)] = answers(40), "crop"            # ten more
    better = versions.promote()
    figures = better.figures()
    assert better.promoted and versions.aliases() == {"challenger": 4, "champion": 4}
    assert (figures["challenger_only"], figures["champion_only"], figures["n_test"]) == (10, 0, 40)
    assert figures["p_value"] == pytest.approx(2 / 2 ** 10)
    assert figures["difference"] == pytest.approx(0.25)
    assert figures["difference_low"] < 0.25 < figures["difference_high"]

    models_by_version[versions.add(0.775)] = answers(31), "crop"          # worse than v4
    assert not versions.promote().promoted


def test_promote_refuses_what_cannot_be_compared(versions, models_by_version):
    models_by_version[versions.add(0.75)] = answers(30), "crop"
    versions.promote()
    models_by_version[1] = answers(30), "pad"      # as if made for other images
    versions.add(0.99, "b" * 64)                   # evaluated on other images
    with pytest.raises(TlearnError, match="another test split"):
        versions.promote()
    models_by_version[versions.add(0.9)] = answers(36), "crop"
    with pytest.raises(TlearnError, match="v1 takes 8 px pad images, not the 8 px crop"):
        versions.promote()
    assert versions.aliases()["champion"] == 1


def test_registering_twice_only_ignores_already_exists(embedded, monkeypatch):
    """create_registered_model may fail only because the model exists: any other error
    (here a permission error) is not swallowed."""
    from mlflow.exceptions import MlflowException

    connected = store.connect(embedded, "tlearn")
    connected.client.create_registered_model("tlearn")

    def denied(*args, **kwargs):
        raise MlflowException("no", error_code="PERMISSION_DENIED")

    monkeypatch.setattr(connected.client, "create_registered_model", denied)
    save_split(paths.prepared_split("test"),
               Split(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), np.array(["f"] * 2)))
    paths.MODELS.mkdir()
    paths.LABELS.write_text(json.dumps(["a", "b"]))
    paths.MODEL.write_bytes(b"model")
    monkeypatch.setattr(connected.client, "search_logged_models",
                        lambda **kwargs: [SimpleNamespace(model_id="m-1")])
    with pytest.raises(MlflowException, match="no"):
        registry.register(connected, config.load("params.yaml"), {"accuracy": 0.5},
                          run_id="r", pipeline_run_id=None)


def test_the_same_model_on_the_same_test_split_is_registered_once(embedded, monkeypatch):
    """Evaluate reruns on an unchanged model (e.g. another TTA setting): its version is
    the challenger again, not a duplicate; another model file is a new version."""
    connected = store.connect(embedded, "tlearn")
    client = connected.client
    save_split(paths.prepared_split("test"),
               Split(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), np.array(["f"] * 2)))
    paths.MODELS.mkdir()
    paths.MODEL.write_bytes(b"model")
    logged = client.create_logged_model(connected.experiment_id, name="model")
    monkeypatch.setattr(client, "search_logged_models", lambda **kwargs: [logged])
    run_id = client.create_run(connected.experiment_id).info.run_id

    cfg = config.load("params.yaml")

    def register() -> str:
        return registry.register(connected, cfg, {"accuracy": 0.5}, run_id=run_id,
                                 pipeline_run_id=None)

    def challenger() -> dict[str, int]:
        aliases = client.get_registered_model("tlearn").aliases
        return {alias: int(version) for alias, version in aliases.items()}

    assert not registry.sync_challenger(connected, cfg)  # `tlearn run` then evaluates again
    assert register() == register() == "1"
    assert registry.sync_challenger(connected, cfg)
    paths.MODEL.write_bytes(b"another model")
    assert not registry.sync_challenger(connected, cfg)
    assert register() == "2"
    assert len(client.search_model_versions("name = 'tlearn'")) == 2
    assert challenger() == {registry.CHALLENGER: 2}
    paths.MODEL.write_bytes(b"model")  # DVC restored the first model from its run cache
    assert registry.sync_challenger(connected, cfg) and challenger() == {registry.CHALLENGER: 1}
