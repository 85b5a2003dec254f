"""``tlearn gui``: the teaching material's desktop exercise. A window with a "Load image"
button (or drop a file on it) shows the image at a fixed height, aspect ratio kept, and
below it the model's top 3 classes, ``1. espresso (0.95)``.

The model is any ``tlearn predict`` accepts (an ImageNet backbone as is, a trained
``.keras`` file, a registry alias), loaded with :func:`tlearn.predict.load_predictor`, so
an image is decoded and square-ified exactly as ``tlearn predict`` does it. Loading a model
and classifying run on a worker thread: the window never freezes, and a bad file or model
shows a message in it instead of a crash. The logic (what the labels say, how big the
image is drawn) is in small pure functions; the Qt classes only wire it up.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QApplication, QComboBox, QFileDialog, QHBoxLayout, QLabel,
                               QPushButton, QVBoxLayout, QWidget)

from tlearn.data import images
from tlearn.predict import load_predictor, predict_files
from tlearn.tracking.store import Settings

log = logging.getLogger(__name__)

TITLE = "tlearn: image classifier"
IMAGE_HEIGHT = 300      # px: every image is drawn this high, aspect ratio kept ...
MAX_IMAGE_WIDTH = 1200  # ... unless that would make it wider than this (panoramas)
TOP = 3
#: The chooser's entries: the offline ImageNet classifier, the pipeline's model, the champion.
MODELS = ("imagenet:efficientnet_lite0", "models/model.keras", "models:/tlearn@champion")
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.gif *.tif *.tiff *.webp);;All files (*)"


# --------------------------------------------------------------------------------------
# The logic: pure functions
# --------------------------------------------------------------------------------------


def top_lines(predictions: list[dict]) -> list[str]:
    """``["1. espresso (0.95)", ...]`` for ``tlearn.predict.top_k``'s rows."""
    return [f"{rank}. {p['label']} ({p['probability']:.2f})"
            for rank, p in enumerate(predictions, start=1)]


def display_size(width: int, height: int, target_height: int = IMAGE_HEIGHT,
                 max_width: int = MAX_IMAGE_WIDTH) -> tuple[int, int]:
    """The size to draw a ``width`` x ``height`` image at: ``target_height`` high with its
    aspect ratio kept, smaller or larger alike; scaled down to ``max_width`` if wider."""
    scale = target_height / height
    if width * scale > max_width:
        scale = max_width / width
    return max(1, round(width * scale)), max(1, round(height * scale))


def display_image(path: str | Path) -> np.ndarray:
    """The image as a person sees it (EXIF orientation applied, RGB), at its display size."""
    with Image.open(path) as img:
        rgb = images.to_rgb(ImageOps.exif_transpose(img))
    return np.asarray(rgb.resize(display_size(*rgb.size), Image.Resampling.LANCZOS))


@dataclass(frozen=True)
class Outcome:
    """What a classification gives the window: the lines and the picture, or a message."""

    path: str
    model: str
    lines: list[str]
    picture: np.ndarray | None = None  # (h, w, 3) uint8 at display size
    error: str | None = None


class Classifier:
    """Loads models on first use and keeps them; classifies one file. Not thread-safe:
    the window runs it on a pool of one thread."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings
        self.predictors: dict[str, object] = {}

    def classify(self, path: str, model: str) -> Outcome:
        try:
            if model not in self.predictors:
                self.predictors[model] = load_predictor(model, self.settings)
            problems = io.StringIO()
            results, failed = predict_files(self.predictors[model], [path], TOP, problems)
            if failed:  # predict's line names the file; the window says which already
                reason = problems.getvalue().strip().removeprefix(f"{path}: ")
                return Outcome(path, model, [], error=reason)
            return Outcome(path, model, top_lines(results[0]["predictions"]),
                           picture=display_image(path))
        except Exception as exc:  # noqa: BLE001 - whatever fails is shown, never a crash
            return Outcome(path, model, [], error=_one_line(exc))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------
# The window
# --------------------------------------------------------------------------------------


class _Worker(QObject):
    """Lives on the window's worker thread: classifies what the window asks for, in order."""

    done = Signal(int, object)  # job number, Outcome

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    @Slot(int, str, str)
    def classify(self, number: int, path: str, model: str) -> None:
        self.done.emit(number, self.classifier.classify(path, model))


class Window(QWidget):
    requested = Signal(int, str, str)  # job number, image path, model

    def __init__(self, classifier: Classifier, model: str = MODELS[0]):
        super().__init__()
        # One worker thread: jobs run one at a time, so the Classifier's cache is safe.
        self.worker_thread = QThread(self)
        self.worker = _Worker(classifier)
        self.worker.moveToThread(self.worker_thread)
        self.requested.connect(self.worker.classify)
        self.worker.done.connect(self._show)
        self.worker_thread.start()
        self.latest = 0    # number of the latest job: older results are ignored
        self.pending = 0   # jobs asked for and not yet shown
        self.path: str | None = None

        self.setWindowTitle(TITLE)
        self.setAcceptDrops(True)
        self.model = QComboBox()
        self.model.setEditable(True)  # any spec `tlearn predict --model` takes
        self.model.addItems(list(dict.fromkeys([model, *MODELS])))
        self.model.setMinimumContentsLength(28)
        self.model.activated.connect(self._model_chosen)
        self.load_button = QPushButton("Load image")
        self.load_button.clicked.connect(self.choose_file)
        self.picture = QLabel("Load an image, or drop one here")
        self.picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.picture.setMinimumHeight(IMAGE_HEIGHT)
        self.results = [QLabel("") for _ in range(TOP)]
        self.status = QLabel("")
        self.status.setWordWrap(True)

        controls = QHBoxLayout()
        controls.addWidget(QLabel("Model:"))
        controls.addWidget(self.model, stretch=1)
        controls.addWidget(self.load_button)
        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(self.picture)
        heading = QLabel("Classification result")
        heading.setStyleSheet("font-weight: bold")
        layout.addWidget(heading)
        for label in self.results:
            label.setStyleSheet("font-size: 15px")
            layout.addWidget(label)
        layout.addWidget(self.status)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.worker_thread.quit()  # after the job it is on, if any
        self.worker_thread.wait()
        super().closeEvent(event)

    # --- what the user does ---

    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load image", "", IMAGE_FILTER)
        if path:
            self.load_image(path)

    def load_image(self, path: str) -> None:
        """Classify ``path`` with the chosen model (the button and a drop end here)."""
        self.path = path
        self._submit()

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt's name
        files = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if files:
            self.load_image(files[0])

    def _model_chosen(self, _index: int) -> None:
        if self.path:
            self._submit()

    # --- the worker and its results ---

    def _submit(self) -> None:
        self.latest += 1
        self.pending += 1
        model = self.model.currentText().strip()
        self.status.setText(f"Classifying {Path(self.path).name} with {model} ...")
        self.requested.emit(self.latest, self.path, model)

    def _show(self, number: int, outcome: Outcome) -> None:
        self.pending -= 1
        if number != self.latest:  # a newer image or model was asked for meanwhile
            return
        if outcome.error:
            self.status.setText(f"Cannot classify {Path(outcome.path).name}: {outcome.error}")
            for label in self.results:
                label.setText("")
            self.picture.setPixmap(QPixmap())
            self.picture.setText("")
            return
        self.picture.setPixmap(to_pixmap(outcome.picture))
        for label, line in zip(self.results, outcome.lines + [""] * TOP):
            label.setText(line)
        self.status.setText(f"{Path(outcome.path).name}, {outcome.model}")


def to_pixmap(rgb: np.ndarray) -> QPixmap:
    rgb = np.ascontiguousarray(rgb)
    height, width, _ = rgb.shape
    image = QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())  # copy: the QImage must not outlive the array


def has_display(environ=os.environ, platform: str | None = None) -> bool:
    """Whether Qt can open a window (on Linux it aborts the process when it cannot)."""
    return not (platform or sys.platform).startswith("linux") or any(
        environ.get(key) for key in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def main(model: str, image: str | None, settings: Settings | None) -> int:
    """``tlearn gui``: run the window until it is closed (exit 2 without a display)."""
    if not has_display():
        print("tlearn gui: no display (DISPLAY and WAYLAND_DISPLAY are unset); run it in a "
              "desktop session, or set QT_QPA_PLATFORM=offscreen", file=sys.stderr)
        return 2
    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = Window(Classifier(settings), model)
    window.show()
    if image:
        window.load_image(image)
    return app.exec()
