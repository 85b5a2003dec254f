"""Model behaviour (as in Made-With-ML's tests/model): a digits model trained here on the
embedded data keeps its answers when nothing that matters changes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_config
from tlearn import paths, stages
from tlearn.predict import load_predictor

STAGES = ("download", "prepare", "augment", "features", "train_head")


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """models/head.keras trained on the digits with the default params, without the
    augmented copies (the head on the frozen base: a minute, not the fine-tune's three)."""
    import os

    root = tmp_path_factory.mktemp("digits")
    cfg = make_config({"augment.copies": 0})
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for name in STAGES:
            stages.get(name).run(cfg)
    finally:
        os.chdir(cwd)
    return root


def test_png_and_jpeg_of_the_same_digit_get_the_same_class(digits_model, tmp_path):
    predictor = load_predictor(str(digits_model / paths.HEAD_MODEL))
    pngs = sorted((digits_model / paths.RAW).rglob("*.png"))[::7]  # 257 of the 1,797
    jpegs = []
    for png in pngs:
        jpeg = tmp_path / f"{png.parent.name}_{png.stem}.jpg"
        with Image.open(png) as img:
            img.convert("RGB").save(jpeg, quality=95)
        jpegs.append(jpeg)
    as_png = predictor.predict(np.stack([predictor.load_image(p) for p in pngs]))
    as_jpeg = predictor.predict(np.stack([predictor.load_image(p) for p in jpegs]))
    truth = np.array([int(p.parent.name) for p in pngs])
    assert np.mean(as_png.argmax(1) == truth) >= 0.9  # the model has learnt something
    confident = as_png.max(1) >= 0.9  # a confident answer must survive JPEG compression
    assert confident.mean() >= 0.7
    agree = as_png.argmax(1) == as_jpeg.argmax(1)
    assert agree[confident].mean() >= 0.99  # 8x8 digits upscaled: JPEG may flip one in ~250
    print(f"png vs jpeg: {agree.mean():.3f} agree, "
          f"max |p diff| {np.abs(as_png - as_jpeg).max():.3f}")
    assert agree.mean() >= 0.98
