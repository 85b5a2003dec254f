"""``tlearn gui`` offscreen: an image loaded through the button's code path shows at 300 px
high with its aspect ratio and three result lines; bad files and models show a message;
a drop classifies; the real offline Lite0 calls the coffee photo espresso, and the window
renders to a PNG."""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt starts: no display needed

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from conftest import REFERENCE, save_image, solid  # noqa: E402
from tlearn import gui  # noqa: E402

COLOURS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def app():
    return QApplication.instance() or QApplication([])


def colour_model_file(folder: Path, labels: list[str]) -> Path:
    """A tlearn-style model file: 32 px RGB -> mean colour -> softmax(0.01 * RGB), with
    labels.json and preprocess.json beside it. A red image scores softmax(2.55, 0, 0)."""
    import keras

    inputs = keras.Input((32, 32, 3))
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([0.01 * np.eye(3, dtype="float32"), np.zeros(3, dtype="float32")])
    model.save(folder / "model.keras")
    (folder / "labels.json").write_text(json.dumps(labels))
    (folder / "preprocess.json").write_text(json.dumps({"image_size": 32, "resize_mode": "crop"}))
    return folder / "model.keras"


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory) -> Path:
    return colour_model_file(tmp_path_factory.mktemp("models"), COLOURS)


@pytest.fixture
def open_window(app):
    """Open windows on a model; each is closed (its worker thread stopped) after the test."""
    opened = []

    def open_on(model: str) -> gui.Window:
        opened.append(gui.Window(gui.Classifier(), model))
        opened[-1].show()
        return opened[-1]

    yield open_on
    for window in opened:
        window.close()
    

def finish(window: gui.Window, seconds: float = 120) -> None:
    """Let Qt run until the worker's results are shown (the window stays live meanwhile)."""
    deadline = time.monotonic() + seconds
    while window.pending and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.01)
    assert window.pending == 0


def shown(window: gui.Window) -> list[str]:
    return [label.text() for label in window.results]


# --- the pure functions ---------------------------------------------------------------

def test_top_lines_read_like_the_exercise():
    rows = [{"label": "espresso", "probability": 0.9512}, {"label": "cup", "probability": 0.031},
            {"label": "eggnog", "probability": 0.004}]
    assert gui.top_lines(rows) == ["1. espresso (0.95)", "2. cup (0.03)", "3. eggnog (0.00)"]


@pytest.mark.parametrize("size, expected", [
    ((640, 480), (400, 300)),     # larger: scaled down
    ((64, 48), (400, 300)),       # smaller: scaled up, same aspect ratio
    ((30, 120), (75, 300)),       # tall
    ((300, 300), (300, 300)),
    ((4000, 100), (1200, 30)),    # a panorama keeps within the width limit instead
])
def test_display_size_keeps_the_height_and_the_aspect_ratio(size, expected):
    assert gui.display_size(*size) == expected


def test_no_display_on_linux_is_told_not_crashed():
    assert not gui.has_display({}, "linux")
    assert gui.has_display({"DISPLAY": ":0"}, "linux")
    assert gui.has_display({"QT_QPA_PLATFORM": "offscreen"}, "linux")
    assert gui.has_display({}, "darwin")


# --- the window with a small model ----------------------------------------------------

def test_an_image_shows_at_300_px_with_its_aspect_ratio_and_the_top_3(open_window, colour_model,
                                                                      tmp_path):
    window = open_window(str(colour_model))
    assert window.windowTitle() == "tlearn: image classifier"
    assert window.load_button.text() == "Load image"
    window.load_image(str(save_image(tmp_path / "red.png", solid(48, 64, (255, 0, 0)))))
    finish(window)
    # softmax(2.55, 0, 0) = (0.865, 0.0675, 0.0675); ties keep the label order
    assert shown(window) == ["1. red (0.86)", "2. green (0.07)", "3. blue (0.07)"]
    pixmap = window.picture.pixmap()
    assert (pixmap.width(), pixmap.height()) == (400, 300)

    window.load_image(str(save_image(tmp_path / "tall.png", solid(120, 30, (0, 0, 255)))))
    finish(window)
    assert shown(window)[0] == "1. blue (0.86)"
    pixmap = window.picture.pixmap()
    assert pixmap.height() == 300 and pixmap.width() / pixmap.height() == pytest.approx(30 / 120)

    # choosing another model classifies the same image again
    french = colour_model_file(tmp_path, ["rouge", "vert", "bleu"])
    window.model.addItem(str(french))
    window.model.setCurrentIndex(window.model.count() - 1)
    window.model.activated.emit(window.model.count() - 1)
    finish(window)
    assert shown(window) == ["1. bleu (0.86)", "2. rouge (0.07)", "3. vert (0.07)"]


def test_a_bad_file_shows_a_message_and_the_window_goes_on(open_window, colour_model, tmp_path):
    window = open_window(str(colour_model))
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    window.load_image(str(notes))
    finish(window)
    assert "Cannot classify notes.png" in window.status.text()
    assert "notes.png: not a readable image (" in window.status.text()
    assert str(tmp_path) not in window.status.text()  # the file is named once, by name
    assert shown(window) == ["", "", ""] and window.picture.pixmap().isNull()

    window.load_image(str(save_image(tmp_path / "green.png", solid(40, 40, (0, 255, 0)))))
    finish(window)
    assert shown(window)[0] == "1. green (0.86)"


def test_a_bad_model_shows_a_message(open_window, tmp_path):
    window = open_window(str(tmp_path / "missing.keras"))
    window.load_image(str(save_image(tmp_path / "red.png", solid(40, 40, (255, 0, 0)))))
    finish(window)
    assert "model file not found" in window.status.text()
    assert shown(window) == ["", "", ""]


def test_a_dropped_file_is_classified(open_window, colour_model, tmp_path):
    window = open_window(str(colour_model))
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(save_image(tmp_path / "drop.png",
                                                    solid(50, 100, (255, 0, 0)))))])
    window.dropEvent(QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime,
                                Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))
    finish(window)
    assert shown(window)[0] == "1. red (0.86)"
    assert (window.picture.pixmap().width(), window.picture.pixmap().height()) == (600, 300)


# --- the real offline ImageNet classifier ---------------------------------------------

def test_lite0_calls_the_coffee_photo_espresso_and_the_window_renders(open_window, tmp_path,
                                                                      tmp_weights_cache):
    coffee = tmp_path / "coffee.png"
    Image.fromarray(np.load(REFERENCE / "photos_rgb255_224.npy")[0].round()
                    .astype(np.uint8)).save(coffee)
    window = open_window("imagenet:efficientnet_lite0")
    window.resize(560, 520)
    window.load_image(str(coffee))
    finish(window)
    lines = shown(window)
    assert lines[0].startswith("1. espresso (") and [line[:3] for line in lines] == \
        ["1. ", "2. ", "3. "]
    probabilities = [float(line.rsplit("(", 1)[1].rstrip(")")) for line in lines]
    assert probabilities == sorted(probabilities, reverse=True) and probabilities[0] > 0.5
    assert (window.picture.pixmap().width(), window.picture.pixmap().height()) == (300, 300)

    screenshot = Path(os.environ.get("TLEARN_GUI_SCREENSHOT", tmp_path / "gui.png"))
    assert window.grab().save(str(screenshot))
    with Image.open(screenshot) as png:
        assert png.size == (window.width(), window.height())
        pixels = np.asarray(png.convert("RGB"))
    # the photo is drawn (many colours in the image area), not a blank window
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000


def test_the_command_without_a_display_stops_in_one_line(monkeypatch, capsys):
    from tlearn.cli import main

    monkeypatch.setattr(gui.sys, "platform", "linux")
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(key, raising=False)
    assert main(["gui"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tlearn gui: no display")
