"""A model logged by tlearn under the real `mlflow models serve --env-manager local` on
127.0.0.1: a raw JPEG sent as base64 gets exactly `tlearn predict`'s class and
probabilities (same decoding, square-ifying and resizing), in every JSON form the server
takes; the float-tensor payload gives the probabilities it always gave; a bad image is a
400 naming the row. Also the logged model through `mlflow.pyfunc.load_model`: image bytes
and file paths."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SHARED

keras = pytest.importorskip("keras")

from tlearn import predict  # noqa: E402
from tlearn.bench.serve import ModelServer, images_payload, tensor_payload  # noqa: E402
from tlearn.models.preprocess import Preprocess  # noqa: E402
from tlearn.tracking.store import Settings  # noqa: E402

SIZE, RESIZE_MODE = 32, "crop"
LABELS = ["blue", "green", "red"]
COLOURS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}
PHOTO = SHARED / "datasets" / "cats_and_dogs" / "test" / "cats" / "cat.4001.jpg"
URI = "models:/tlearn@champion"


def _colour_image(label: str, rng, shape=(SIZE, SIZE)) -> np.ndarray:
    noise = rng.integers(-40, 40, (*shape, 3))
    return np.clip(np.asarray(COLOURS[label]) + noise, 0, 255).astype(np.uint8)


def _tiny_model(path: Path) -> Path:
    """A small conv net behind tlearn's preprocessing layer, trained for a few epochs on
    noisy colour squares, saved as tlearn saves models (labels.json, preprocess.json)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(len(LABELS)), 16)
    x = np.stack([_colour_image(LABELS[i], rng) for i in y]).astype("float32")
    inputs = keras.Input((SIZE, SIZE, 3))
    h = Preprocess("tf")(inputs)
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(len(LABELS), activation="softmax")(h))
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=10, batch_size=16, verbose=0)
    path.parent.mkdir(parents=True)
    model.save(path)
    (path.parent / "labels.json").write_text(json.dumps(LABELS))
    (path.parent / "preprocess.json").write_text(
        json.dumps({"image_size": SIZE, "resize_mode": RESIZE_MODE}))
    return path


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The tiny model logged through tlearn.tracking.models into an embedded store,
    registered as tlearn@champion, and served."""
    import mlflow

    from tlearn.tracking.models import log_model

    root = tmp_path_factory.mktemp("serving")
    model_file = _tiny_model(root / "models" / "model.keras")
    store_uri = f"sqlite:///{root / 'mlflow.db'}"
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store_uri)
    try:
        rng = np.random.default_rng(1)
        example = np.stack([_colour_image(label, rng) for label in LABELS[:2]])
        with mlflow.start_run():
            info = log_model(model_file, "model", LABELS, RESIZE_MODE, example)
        client = mlflow.MlflowClient()
        client.create_registered_model("tlearn")
        version = client.create_model_version("tlearn", source=info.model_uri,
                                              model_id=info.model_id).version
        client.set_registered_model_alias("tlearn", "champion", version)
        pyfunc = mlflow.pyfunc.load_model(URI)
    finally:
        mlflow.set_tracking_uri(previous_uri)

    # Raw photos of odd sizes: a wide noisy red JPEG (the crop matters) and a real photo.
    files = {"red.jpg": _jpeg(_colour_image("red", np.random.default_rng(2), (40, 90)))}
    if PHOTO.is_file():
        files[PHOTO.name] = PHOTO.read_bytes()
    for name, data in files.items():
        (root / name).write_bytes(data)
    with ModelServer(URI, store_uri, root / "server.log") as server:
        yield SimpleNamespace(server=server, root=root, files=files, store_uri=store_uri,
                              model_file=model_file, pyfunc=pyfunc)


def _tlearn_predict(served) -> dict[str, dict[str, float]]:
    """``tlearn predict --model models:/tlearn@champion --format json`` on the files: the
    probability of every class, per file."""
    out, err = io.StringIO(), io.StringIO()
    paths = [str(served.root / name) for name in served.files]
    code = predict.run(paths, URI, top=len(LABELS), fmt="json", out=out, err=err,
                       settings=Settings(uri=served.store_uri))
    assert code == 0, err.getvalue()
    return {Path(r["path"]).name: {p["label"]: p["probability"] for p in r["predictions"]}
            for r in json.loads(out.getvalue())}


def _rows_by_file(served, rows: list[dict]) -> dict[str, dict]:
    assert len(rows) == len(served.files)
    return dict(zip(served.files, rows))


def test_a_raw_jpeg_gets_tlearn_predicts_class_and_probabilities(served):
    expected = _tlearn_predict(served)
    b64 = [base64.b64encode(data).decode("ascii") for data in served.files.values()]
    payloads = {"dataframe_split": images_payload(list(served.files.values())),
                "dataframe_records": {"dataframe_records": [{"image": text} for text in b64]},
                "inputs": {"inputs": {"image": b64}}}
    for form, payload in payloads.items():
        status, answer = served.server.invoke(payload)
        assert status == 200, (form, answer)
        for name, row in _rows_by_file(served, answer["predictions"]).items():
            probabilities = expected[name]
            top = max(probabilities, key=probabilities.get)
            assert row["label"] == top, (form, name)
            assert row["probability"] == pytest.approx(probabilities[top], abs=1e-5)
            for label in LABELS:
                assert row[label] == pytest.approx(probabilities[label], abs=1e-5)
    assert expected["red.jpg"]["red"] > 0.5  # the tiny model did learn its colours


def test_the_float_tensor_payload_gives_the_probabilities_it_always_gave(served):
    pixels = np.stack([predict.load_image(data, SIZE, RESIZE_MODE)
                       for data in served.files.values()])
    status, answer = served.server.invoke(tensor_payload(pixels))
    assert status == 200, answer
    # what the logged model computed before it took raw images: Model.predict on the tensor
    before = keras.saving.load_model(served.model_file).predict(pixels, verbose=0)
    np.testing.assert_allclose(np.asarray(answer["predictions"]), before, atol=1e-5)
    status, answer = served.server.invoke(tensor_payload(pixels[:, :16]))
    assert status == 400 and f"(N, {SIZE}, {SIZE}, 3)" in json.dumps(answer)


def test_an_unreadable_image_is_a_400_naming_the_row(served):
    payload = images_payload([served.files["red.jpg"], b"not an image"])
    status, answer = served.server.invoke(payload)
    assert status == 400
    assert "row 1 ('image'): not a readable image" in json.dumps(answer)


def test_the_logged_model_takes_bytes_and_paths_in_python(served):
    names = list(served.files)
    by_bytes = served.pyfunc.predict(pd.DataFrame({"image": list(served.files.values())}))
    by_path = served.pyfunc.predict(pd.DataFrame({"path": [str(served.root / n) for n in names]}))
    assert list(by_bytes.columns) == ["label", "probability", *LABELS]
    pd.testing.assert_frame_equal(by_bytes, by_path)
    metadata = served.pyfunc.metadata
    assert metadata.get_input_schema() is None  # both forms: checked by the model itself
    assert set(metadata.metadata["inputs"]) == {"images", "tensor"}
    assert (metadata.metadata["image_size"], metadata.metadata["resize_mode"]) == (SIZE, "crop")
