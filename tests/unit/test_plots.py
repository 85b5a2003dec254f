"""tlearn.plots: what the report figures show."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn import plots

LABELS = ["cat", "dog"]


@pytest.fixture
def drawn(monkeypatch):
    """What the figures would draw: ("images", captions) or ("message", text)."""
    calls = []
    monkeypatch.setattr(plots, "labelled_images",
                        lambda images, titles, path: calls.append(("images", list(titles))))
    monkeypatch.setattr(plots, "message", lambda text, path: calls.append(("message", text)))
    return calls


def test_worst_mistakes_show_the_most_confident_errors_first(drawn, tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.6, 0.4], [0.1, 0.9]])
    assert plots.worst_mistakes(images.__getitem__, y, probs, LABELS, 5, tmp_path / "m.png") == 2
    assert drawn == [("images", ["true cat\npred dog 80%", "true dog\npred cat 60%"])]


def test_no_mistakes_or_none_asked_for_draw_a_sentence_not_an_image(drawn, tmp_path):
    """evaluate.misclassified: 0 used to draw test image 0 captioned "no mistakes"."""
    images = np.zeros((2, 8, 8, 3), np.uint8)
    wrong = np.array([[0.1, 0.9], [0.9, 0.1]])
    assert plots.worst_mistakes(images.__getitem__, np.array([0, 1]), wrong, LABELS, 0,
                                tmp_path / "m.png") == 0
    right = np.array([[0.9, 0.1], [0.1, 0.9]])
    plots.worst_mistakes(images.__getitem__, np.array([0, 1]), right, LABELS, 16, tmp_path / "m.png")
    assert drawn == [("message", "evaluate.misclassified is 0: no mistakes drawn"),
                     ("message", "no mistakes on the 2 test images")]


def test_message_figure_is_a_png(tmp_path):
    plots.message("nothing to show", tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
