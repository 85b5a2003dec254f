"""tlearn.tracking.registry: the promotion rule, and promote on a real (embedded SQLite)
registry, including re-measuring a champion on the local test split."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tlearn import config, paths
from tlearn.data.store import Split, save_split, split_digest
from tlearn.errors import TlearnError
from tlearn.tracking import models, registry, store


@pytest.mark.parametrize("challenger, champion, margin, promoted", [
    (0.90, None, 0.0, True),     # no champion yet
    (0.91, 0.90, 0.0, True),     # better
    (0.90, 0.90, 0.0, False),    # a tie keeps the champion
    (0.89, 0.90, 0.0, False),    # worse
    (0.92, 0.90, 0.05, False),   # better, but not by the margin
    (0.95, 0.90, 0.05, True),    # exactly the margin (float noise included)
    (0.96, 0.90, 0.05, True),
])
def test_decide(challenger, champion, margin, promoted):
    decision = registry.decide("tlearn", "3", challenger, None if champion is None else "2",
                               champion, margin)
    assert decision.promote is promoted
    assert decision.line.startswith("promoted" if promoted else "kept")
    assert f"{challenger:.4f}" in decision.line
    assert "\n" not in decision.line


def test_decide_same_version_is_kept():
    decision = registry.decide("tlearn", "2", 0.9, "2", 0.9, 0.0)
    assert not decision.promote and "already the champion" in decision.line


@pytest.fixture
def versions(embedded):
    """``add`` registers a version the way evaluate does (tags test_accuracy and
    test_split_sha256, alias challenger)."""
    connected = store.connect(embedded, "tlearn")
    client = connected.client

    def add(accuracy: float, split: str) -> str:
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


def test_promote_follows_the_rule_on_one_test_split(versions):
    split = "a" * 64
    with pytest.raises(TlearnError, match="no registered model"):
        versions.promote()
    versions.add(0.80, split)
    assert versions.promote().line.startswith("promoted: tlearn v1")
    assert versions.aliases() == {"challenger": 1, "champion": 1}
    assert versions.promote().line.startswith("kept: tlearn v1 is already")

    versions.add(0.80, split)                               # a tie: kept
    decision = versions.promote()
    assert not decision.promote and versions.aliases() == {"challenger": 2, "champion": 1}
    versions.add(0.85, split)                               # better: promoted
    decision = versions.promote()
    assert decision.promote and "replaces v1" in decision.line
    assert versions.aliases() == {"challenger": 3, "champion": 3}

    margin = config.load("params.yaml", overrides={"tracking.promote_margin": 0.1})
    versions.add(0.90, split)                               # +0.05 < margin 0.1: kept
    assert not versions.promote(margin).promote
    assert versions.aliases()["champion"] == 3


def test_promote_refuses_to_compare_accuracies_from_different_test_splits(versions):
    versions.add(0.80, "a" * 64)
    versions.promote()
    versions.add(0.99, "b" * 64)
    with pytest.raises(TlearnError, match="another test split"):
        versions.promote()
    assert versions.aliases()["champion"] == 1
    # Once the champion has been measured on the challenger's split, the rule applies.
    versions.client.set_model_version_tag("tlearn", "1", f"test_accuracy.{'b' * 12}", "0.7")
    assert versions.promote().promote
    assert versions.aliases()["champion"] == 2


class HalfRight:
    """A champion that predicts class 0 for every 8 px image: 2 of the 4 below right."""
    input_shape = (None, 8, 8, 3)

    output_shape = (None, 2)

    def predict_on_batch(self, x):
        return np.tile([0.9, 0.1], (len(x), 1))


def _local_test_split() -> str:
    """A prepared 8 px crop test split of 4 images and 2 classes; returns its digest."""
    images = np.zeros((4, 8, 8, 3), np.uint8)
    labels = np.array([0, 1, 0, 1])
    save_split(paths.prepared_split("test"), Split(images, labels, np.array(["f"] * 4)))
    paths.PREPARED_PREPROCESS.write_text(json.dumps({"image_size": 8, "resize_mode": "crop"}))
    paths.MODELS.mkdir()
    paths.LABELS.write_text(json.dumps(["a", "b"]))
    return split_digest(paths.prepared_split("test"))


def test_promote_refuses_a_champion_made_for_other_images(versions, monkeypatch):
    split = _local_test_split()
    monkeypatch.setattr(models, "load_model",
                        lambda settings, uri: (HalfRight(), ["a", "b"], "pad"))
    versions.add(0.9, "c" * 64)
    versions.promote()
    versions.add(0.75, split)
    with pytest.raises(TlearnError, match="takes 8 px pad images, not the 8 px crop test split"):
        versions.promote()


def test_promote_measures_the_champion_on_the_local_test_split(versions, monkeypatch):
    split = _local_test_split()
    loaded = []
    monkeypatch.setattr(models, "load_model",
                        lambda settings, uri: loaded.append(uri) or (HalfRight(), ["a", "b"],
                                                                     "crop"))
    versions.add(0.9, "c" * 64)
    versions.promote()
    versions.add(0.75, split)                     # champion on this split: 0.5 -> promoted
    decision = versions.promote()
    assert loaded == ["models:/tlearn/1"]
    assert decision.promote and "(0.5000)" in decision.line
    tags = versions.client.get_model_version("tlearn", "1").tags
    assert float(tags[f"test_accuracy.{split[:12]}"]) == 0.5


def test_registering_twice_only_ignores_already_exists(embedded, monkeypatch):
    """create_registered_model may fail only because the model exists: any other error
    (here a permission error) is not swallowed."""
    from mlflow.exceptions import MlflowException

    connected = store.connect(embedded, "tlearn")
    connected.client.create_registered_model("tlearn")

    def denied(*args, **kwargs):
        raise MlflowException("no", error_code="PERMISSION_DENIED")

    monkeypatch.setattr(connected.client, "create_registered_model", denied)
    _local_test_split()
    paths.MODEL.write_bytes(b"model")
    monkeypatch.setattr(connected.client, "search_logged_models",
                        lambda **kwargs: [SimpleNamespace(model_id="m-1")])
    with pytest.raises(MlflowException, match="no"):
        registry.register(connected, config.load("params.yaml"), {"accuracy": 0.5},
                          run_id="r", pipeline_run_id=None)
