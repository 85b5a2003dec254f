"""The logged model's two kinds of input (tlearn.tracking.models.KerasClassifier): encoded
images (bytes, base64 text, file paths; a DataFrame or the dict the server makes of
``{"inputs": {"image": [...]}}``) and prepared float tensors, each checked with a message
that says what is expected. With MLflow itself: tests/integration/test_serving.py."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

keras = pytest.importorskip("keras")

from tlearn.models.preprocess import Preprocess  # noqa: E402
from tlearn.tracking import models  # noqa: E402

LABELS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> models.KerasClassifier:
    """Names the dominant colour of an 8 x 8 image, loaded as MLflow loads it."""
    inputs = keras.Input((8, 8, 3))
    dense = keras.layers.Dense(3, activation="softmax")
    outputs = dense(keras.layers.GlobalAveragePooling2D()(Preprocess("tf")(inputs)))
    dense.set_weights([5.0 * np.eye(3, dtype="float32"), np.zeros(3, "float32")])
    path = tmp_path_factory.mktemp("model") / "model.keras"
    keras.Model(inputs, outputs).save(path)
    model = models.KerasClassifier(LABELS, 8, "crop")
    model.load_context(SimpleNamespace(artifacts={models.MODEL_ARTIFACT: str(path)}))
    return model


def _png(rgb, size=(20, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, "PNG")
    return buffer.getvalue()


def test_encoded_image_takes_bytes_and_base64_text_with_line_breaks():
    data = _png((255, 0, 0))
    assert models.encoded_image(data) == models.encoded_image(bytearray(data)) == data
    assert models.encoded_image(base64.encodebytes(data).decode("ascii")) == data
    with pytest.raises(ValueError, match="expected image bytes or base64 text, got int"):
        models.encoded_image(3)


def test_probability_frame_names_the_top_class_first_on_ties():
    frame = models.probability_frame(np.array([[0.2, 0.7, 0.1], [0.4, 0.2, 0.4]], "float32"),
                                     LABELS)
    assert list(frame.columns) == ["label", "probability", *LABELS]
    assert list(frame["label"]) == ["green", "red"]
    np.testing.assert_allclose(frame["probability"], [0.7, 0.4])


def test_images_as_bytes_base64_or_dict_give_one_row_each(classifier):
    pngs = [_png((250, 10, 10)), _png((10, 10, 250), size=(7, 30))]
    by_bytes = classifier.predict(None, pd.DataFrame({"image": pngs}))
    assert list(by_bytes["label"]) == ["red", "blue"]
    as_text = [base64.b64encode(png).decode("ascii") for png in pngs]
    pd.testing.assert_frame_equal(classifier.predict(None, pd.DataFrame({"image": as_text})),
                                  by_bytes)
    # {"inputs": {"image": [...]}}: the server hands over a dict of arrays
    pd.testing.assert_frame_equal(classifier.predict(None, {"image": np.array(as_text)}),
                                  by_bytes)
    one = classifier.predict(None, {"image": np.array(as_text[0])})  # a single value
    assert list(one["label"]) == ["red"]


def test_a_tensor_gives_the_probability_array(classifier):
    pixels = np.zeros((2, 8, 8, 3), "float32")
    pixels[0, ..., 1] = 255
    probabilities = classifier.predict(None, pixels)
    assert isinstance(probabilities, np.ndarray) and probabilities.shape == (2, 3)
    assert probabilities[0].argmax() == 1
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize(("model_input", "message"), [
    (np.zeros((2, 16, 16, 3), "float32"), r"shape \(N, 8, 8, 3\).*got an array of float32"),
    (np.array(["aGVsbG8="]), r"a column 'image' or 'path'; got an array of <U8"),
    (pd.DataFrame({"pixels": [1]}), r"one column 'image' .* or 'path' .*; got \['pixels'\]"),
    (pd.DataFrame({"image": [], "path": []}), r"one column 'image'"),
    (pd.DataFrame({"image": []}), r"no images in the column 'image'"),
    (pd.DataFrame({"image": [_png((0, 0, 0)), b"GIF89a broken"]}),
     r"row 1 \('image'\): not a readable image \(.+\)"),
    (pd.DataFrame({"path": ["/no/such/photo.jpg"]}),
     r"row 0 \('path'\): not a readable image \(.*No such file"),
])
def test_bad_input_says_what_is_expected(classifier, model_input, message):
    with pytest.raises(ValueError, match=message):
        classifier.predict(None, model_input)
