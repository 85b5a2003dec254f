"""``tlearn predict``: ImageNet backbones and tlearn models on image files, readable
output, bad files reported without stopping the rest, and the exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")

from tlearn import predict  # noqa: E402
from tlearn.data.images import load_rgb  # noqa: E402
from tlearn.errors import TlearnError  # noqa: E402
from tlearn.models.preprocess import Preprocess  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"
COLOURS = ["red", "green", "blue"]


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("TLEARN_CACHE", str(tmp_path / "tlearn_cache"))


@pytest.fixture
def photos(tmp_path) -> dict[str, Path]:
    """The reference coffee and chelsea photos as lossless 224 x 224 PNGs."""
    pixels = np.load(REFERENCE / "photos_rgb255_224.npy")
    paths = {}
    for index, name in enumerate(["coffee", "chelsea"]):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(pixels[index].round().astype(np.uint8)).save(paths[name])
    return paths


def _run(images, model, top=5, fmt="json"):
    out, err = io.StringIO(), io.StringIO()
    code = predict.run([str(p) for p in images], model, top, fmt, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --- ImageNet backbones ---------------------------------------------------------------

def test_lite0_predicts_espresso_and_tiger_cat(photos):
    code, out, err = _run([photos["coffee"], photos["chelsea"]], "imagenet:efficientnet_lite0")
    assert (code, err) == (0, "")
    results = json.loads(out)
    assert [r["path"] for r in results] == [str(photos["coffee"]), str(photos["chelsea"])]
    expected = _softmax(np.load(REFERENCE / "lite0_logits_photos_224.npy")[:2])
    for result, probabilities, (index, label) in zip(
            results, expected, [(967, "espresso"), (282, "tiger_cat")]):
        predictions = result["predictions"]
        assert len(predictions) == 5
        assert (predictions[0]["index"], predictions[0]["label"]) == (index, label)
        got = [p["probability"] for p in predictions]
        assert got == sorted(got, reverse=True)
        for p in predictions:
            assert p["probability"] == pytest.approx(probabilities[p["index"]], abs=0.01)
        # the top 5 are the reference's top 5
        assert {p["index"] for p in predictions} == set(np.argsort(-probabilities)[:5])


def test_unreadable_files_are_reported_and_the_rest_predicted(photos, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    code, out, err = _run([photos["coffee"], notes, broken, photos["chelsea"]],
                          "imagenet:efficientnet_lite0", top=1, fmt="table")
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{notes}: ") and lines[1].startswith(f"{broken}: ")
    table = out.splitlines()
    assert table[0].split() == ["path", "rank", "label", "probability"]
    assert len(table) == 3
    assert table[1].split()[:3] == [str(photos["coffee"]), "1", "espresso"]
    assert table[2].split()[:3] == [str(photos["chelsea"]), "1", "tiger_cat"]
    assert table[1].endswith("%") and len(table[1]) == len(table[2])  # aligned columns


def test_imagenet_labels_are_keras_style():
    labels = predict.imagenet_labels()
    assert len(labels) == 1000
    assert labels[504] == "coffee_mug"  # the teaching material's "coffee_mug 72.7%"
    assert labels[967] == "espresso" and labels[282] == "tiger_cat"


# --- models trained by tlearn ---------------------------------------------------------

def _tiny_colour_model(folder: Path, labels=COLOURS) -> Path:
    """A .keras model as tlearn saves them (raw RGB in, probabilities out) that names
    the dominant colour of an 8 x 8 image, with labels.json and preprocess.json beside it."""
    inputs = keras.Input((8, 8, 3))
    x = Preprocess("tf")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(3, activation="softmax")
    outputs = dense(x)
    dense.set_weights([5.0 * np.eye(3, dtype="float32"), np.zeros(3, "float32")])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.keras"
    keras.Model(inputs, outputs).save(path)
    (folder / "labels.json").write_text(json.dumps(labels))
    (folder / "preprocess.json").write_text(json.dumps({"image_size": 8, "resize_mode": "crop"}))
    return path


def _solid(path: Path, rgb: tuple[int, int, int], size=(16, 12)) -> Path:
    Image.new("RGB", size, rgb).save(path)
    return path


def test_keras_model_with_labels_json(tmp_path):
    model = _tiny_colour_model(tmp_path / "models")
    images = [_solid(tmp_path / "r.png", (250, 10, 10)),
              _solid(tmp_path / "b.jpg", (10, 10, 250), size=(40, 90))]
    code, out, err = _run(images, str(model), top=3)
    assert (code, err) == (0, "")
    results = json.loads(out)
    assert [r["predictions"][0]["label"] for r in results] == ["red", "blue"]
    assert [p["index"] for p in results[0]["predictions"]] == [0, 1, 2]
    assert sum(p["probability"] for p in results[1]["predictions"]) == pytest.approx(1.0)


def test_inputs_are_checked_before_any_model_is_loaded(tmp_path, monkeypatch):
    def no_loading(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(predict, "load_predictor", no_loading)
    code, out, err = _run([_solid(tmp_path / "r.png", (250, 0, 0)), tmp_path / "gone.jpg"],
                          "imagenet:efficientnet_lite0")
    assert (code, out) == (2, "") and err == f"{tmp_path / 'gone.jpg'}: no such file or folder\n"
    (tmp_path / "empty").mkdir()
    code, _, err = _run([tmp_path / "empty"], "imagenet:efficientnet_lite0")
    assert code == 2 and "a folder with no images" in err


def test_folders_are_searched_for_images_in_sorted_order(tmp_path):
    model = _tiny_colour_model(tmp_path / "models")
    folder = tmp_path / "photos"
    (folder / "b").mkdir(parents=True)
    _solid(folder / "b" / "blue.PNG", (10, 10, 250))
    _solid(folder / "a.jpg", (250, 10, 10))
    (folder / "notes.txt").write_text("skipped: not an image")
    _solid(folder / ".hidden.png", (10, 250, 10))
    code, out, err = _run([folder], str(model), top=1)
    assert (code, err) == (0, "")
    assert [(Path(r["path"]).name, r["predictions"][0]["label"]) for r in json.loads(out)] == [
        ("a.jpg", "red"), ("blue.PNG", "blue")]


def test_top_is_capped_by_the_number_of_classes(tmp_path):
    model = _tiny_colour_model(tmp_path / "models")
    code, out, _ = _run([_solid(tmp_path / "g.png", (0, 255, 0))], str(model), top=10)
    assert code == 0
    assert [p["label"] for p in json.loads(out)[0]["predictions"]][0] == "green"
    assert len(json.loads(out)[0]["predictions"]) == 3


@pytest.mark.parametrize("mode", ["crop", "pad", "warp"])
def test_trained_model_sees_images_as_prepare_made_them(tmp_path, mode):
    model = _tiny_colour_model(tmp_path / "models")
    (tmp_path / "models" / "preprocess.json").write_text(
        json.dumps({"image_size": 8, "resize_mode": mode}))
    image = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 30, 3), np.uint8)).save(image)
    predictor = predict.load_predictor(str(model))
    assert predictor.resize_mode == mode
    np.testing.assert_array_equal(predictor.load_image(image),
                                  load_rgb(image, 8, mode, max_pixels=10**6))


def test_predictor_gives_model_predicts_probabilities_for_any_number_of_images(tmp_path):
    predictor = predict.load_predictor(str(_tiny_colour_model(tmp_path / "models")))
    images = np.random.default_rng(0).uniform(0, 255, (predict.BATCH_SIZE + 8, 8, 8, 3))
    np.testing.assert_array_equal(predictor.predict(images.astype("float32")),
                                  predictor.model.predict(images.astype("float32"), verbose=0))


def test_keras_model_without_preprocess_json_is_a_bad_spec(tmp_path):
    model = _tiny_colour_model(tmp_path / "models")
    (tmp_path / "models" / "preprocess.json").write_text(json.dumps({"resize_mode": "zoom"}))
    code, out, err = _run([_solid(tmp_path / "r.png", (255, 0, 0))], str(model))
    assert code == 2 and out == ""
    assert "preprocess.json must give a resize_mode" in err and len(err.splitlines()) == 1
    (tmp_path / "models" / "preprocess.json").unlink()
    code, _, err = _run([_solid(tmp_path / "r.png", (255, 0, 0))], str(model))
    assert code == 2 and "preprocess.json not found" in err


@pytest.mark.parametrize("labels", [None, ["only", "two"]])
def test_keras_model_without_matching_labels_is_a_bad_spec(tmp_path, labels):
    model = _tiny_colour_model(tmp_path / "models")
    if labels is None:
        (tmp_path / "models" / "labels.json").unlink()
    else:
        (tmp_path / "models" / "labels.json").write_text(json.dumps(labels))
    code, out, err = _run([_solid(tmp_path / "r.png", (255, 0, 0))], str(model))
    assert code == 2 and out == ""
    assert "labels.json" in err and len(err.splitlines()) == 1


def test_registry_uri_is_delegated_to_tracking(tmp_path, monkeypatch):
    folder = tmp_path / "registry"
    model = keras.saving.load_model(_tiny_colour_model(folder))
    calls = []

    def load_model(settings, uri):
        calls.append(uri)
        return model, ["rot", "gruen", "blau"], "crop"

    from tlearn.tracking import models
    monkeypatch.setattr(models, "load_model", load_model)
    code, out, _ = _run([_solid(tmp_path / "b.png", (0, 0, 255))], "models:/flowers@champion")
    assert code == 0 and calls == ["models:/flowers@champion"]
    assert json.loads(out)[0]["predictions"][0]["label"] == "blau"


# --- bad arguments --------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["vgg16", "imagenet:vgg61", "imagenet:efficientnet_lite4",
                                  "missing/model.keras", "models:/no-alias"])
def test_bad_model_spec_exits_2_with_one_line(tmp_path, spec):
    code, out, err = _run([_solid(tmp_path / "r.png", (255, 0, 0))], spec)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1


def test_load_predictor_raises_tlearn_error():
    with pytest.raises(TlearnError, match="imagenet:<backbone>"):
        predict.load_predictor("resnet50")


@pytest.mark.parametrize(("top", "fmt"), [(0, "json"), (5, "xml")])
def test_bad_top_or_format_exits_2(tmp_path, top, fmt):
    code, _, err = _run([_solid(tmp_path / "r.png", (255, 0, 0))], "imagenet:vgg16", top, fmt)
    assert code == 2 and err


# --- image loading --------------------------------------------------------------------

def test_eval_resize_keeps_exact_size_and_centre_crops_others():
    exact = Image.new("RGB", (224, 224))
    assert predict.eval_resize(exact, 224) is exact
    # a 400 x 200 image: short side to 256, so 512 x 256, then the central 224 x 224
    wide = Image.new("RGB", (400, 200), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 100, 200))  # left quarter red: cropped away
    out = predict.eval_resize(wide, 224)
    assert out.size == (224, 224)
    pixels = np.asarray(out)
    assert (pixels[..., 2] > 250).all() and (pixels[..., 0] < 5).all()


def test_load_image_applies_exif_orientation_and_rgb(tmp_path):
    # Stored 16 wide x 8 high, top half white; EXIF orientation 6 = rotate 90 clockwise.
    img = Image.new("L", (16, 8), 0)
    img.paste(255, (0, 0, 16, 4))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    img.save(path, exif=exif, quality=100)
    pixels = predict.load_image(path, 8, predict.IMAGENET_RESIZE)  # 8 wide x 16 high, cropped
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.float32
    # after turning clockwise the white half is on the right
    assert pixels[:, :3].mean() < 30 and pixels[:, 5:].mean() > 225
    # the file's bytes (what a served model receives) give the same pixels
    np.testing.assert_array_equal(
        predict.load_image(path.read_bytes(), 8, predict.IMAGENET_RESIZE), pixels)
    np.testing.assert_array_equal(predict.load_image(path.read_bytes(), 8, "pad"),
                                  predict.load_image(path, 8, "pad"))


def test_offline_imagenet_backbone_exits_2_and_keeps_stdout_clean(tmp_path, monkeypatch):
    from keras.src.utils import file_utils  # where keras.applications fetch from

    def offline(fname, origin, **kwargs):
        print(f"Downloading data from {origin}")  # what Keras prints before trying
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service "
                        "not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    code, out, err = _run([_solid(tmp_path / "r.png", (255, 0, 0))], "imagenet:mobilenet")
    assert (code, out) == (2, "")
    assert "Downloading data from" in err
    assert "ImageNet weights for mobilenet" in err.splitlines()[-1]
