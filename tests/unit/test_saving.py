"""Keras model files that are the same bytes for the same model (DVC hashes them)."""

from __future__ import annotations

import zipfile

import numpy as np

from tlearn.models.saving import save_model


def test_the_same_model_built_and_saved_twice_is_the_same_bytes_and_loads(tmp_path):
    import keras

    from tlearn.models.head import build_extractor

    # Its layers share their dtype policy: the config names it by a Python object id.
    # Two builds are two sets of objects (other ids), saved at two times.
    for name in ("a", "b"):
        keras.utils.set_random_seed(0)
        save_model(build_extractor("efficientnet_lite0", 32, "none", "avg"),
                   tmp_path / f"{name}.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()

    with zipfile.ZipFile(tmp_path / "a.keras") as saved:
        assert {info.date_time for info in saved.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert b'"date_saved": ""' in saved.read("metadata.json")
        assert b'"shared_object_id": 0' in saved.read("config.json")
    keras.utils.set_random_seed(0)
    built = build_extractor("efficientnet_lite0", 32, "none", "avg")
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "a.keras").predict_on_batch(x),
                               built.predict_on_batch(x))
