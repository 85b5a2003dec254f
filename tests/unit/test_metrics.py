"""tlearn.metrics: the test-split figures, test-time augmentation and the headline."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn import metrics
from tlearn.metrics import classification_report, worst_mistakes


def test_classification_report_numbers():
    labels = ["cat", "dog", "fox"]
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.8, .1, .1], [.3, .6, .1], [.1, .8, .1],
                      [.2, .7, .1], [.1, .2, .7], [.5, .1, .4]])
    report = classification_report(y, probs, labels)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["k"] == 3 and report["top_k_accuracy"] == 1.0
    assert report["loss"] == pytest.approx(-np.mean(np.log([.8, .3, .8, .7, .7, .4])))
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["per_class"]["dog"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert list(worst_mistakes(y, probs, 5)) == [1, 5]  # 0.6 wrong before 0.5 wrong


def test_tta_views_are_the_image_its_mirror_and_their_centre_crops():
    images = np.arange(2 * 10 * 10 * 3, dtype=np.uint8).reshape(2, 10, 10, 3)
    assert len(metrics.tta_views(images, "none")) == 1
    plain, mirror = metrics.tta_views(images, "flip")
    assert np.array_equal(mirror, images[:, :, ::-1])
    views = metrics.tta_views(images, "flip_crops")
    assert len(views) == 4 and all(v.shape == images.shape for v in views)
    assert np.allclose(views[2][:, 5, 5], images[:, 5, 5], atol=12)  # the centre stays put


class Mirror:
    """A "model" that is right on original images and wrong on mirrored ones."""
    output_shape = (None, 2)

    def predict_on_batch(self, x):
        right = x[:, 0, 0, 0] < x[:, 0, -1, 0]
        return np.stack([np.where(right, 0.9, 0.1), np.where(right, 0.1, 0.9)], axis=1)


def test_tta_averages_the_views():
    images = np.tile(np.arange(4, dtype=np.uint8)[None, None, :, None], (3, 4, 1, 3))
    plain = metrics.predict_probabilities(Mirror(), [images[:2], images[2:]])
    assert plain.shape == (3, 2) and np.allclose(plain[:, 0], 0.9)
    flip = metrics.predict_probabilities(Mirror(), [images], tta="flip")
    assert np.allclose(flip, 0.5)


def test_evaluation_report_and_the_headline():
    labels = ["a", "b"]
    y = np.array([0, 1, 1])
    good, bad = np.array([[.9, .1], [.2, .8], [.3, .7]]), np.array([[.9, .1], [.8, .2], [.3, .7]])
    reports = {"model": classification_report(y, good, labels),
               "head": classification_report(y, bad, labels),
               "model_tta": classification_report(y, bad, labels),
               "head_tta": classification_report(y, bad, labels)}
    report = metrics.evaluation_report(reports, "flip")
    assert report["accuracy"] == 1.0 and report["head_accuracy"] == pytest.approx(2 / 3)
    assert report["tta"] == "flip" and report["tta_accuracy"] == pytest.approx(2 / 3)
    assert list(report)[-3:] == ["per_class", "confusion_matrix", "head_confusion_matrix"]
    assert "tta_accuracy" not in metrics.evaluation_report(reports, "none")
    headline = metrics.headline(report, {"val_accuracy": 0.8}, {"val_accuracy": 0.9})
    assert headline == {"accuracy": 1.0, "loss": report["loss"],
                        "top_k_accuracy": 1.0, "head_accuracy": pytest.approx(2 / 3),
                        "tta_accuracy": pytest.approx(2 / 3), "val_accuracy": 0.9,
                        "head_val_accuracy": 0.8}
    tuned = metrics.headline(report, {}, {}, {"metric": "val_loss", "best_value": 0.05})
    assert tuned["tune_best_val_loss"] == 0.05  # when tuning ran; n_trials 0: best_value null
    assert "tune_best_val_loss" not in metrics.headline(report, {}, {}, {"metric": "val_loss",
                                                                       "best_value": None})


def test_the_margin_over_the_linear_probe():
    assert metrics.probe_margin({"accuracy": 0.99}, {"logistic_regression_accuracy": 0.986}) \
        == pytest.approx(0.004)
    assert metrics.probe_margin({"accuracy": 0.9}, {"logistic_regression_accuracy": 0.95}) < 0
