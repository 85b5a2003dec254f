"""params.yaml -> Config: the repo file loads, and every kind of mistake is one line naming
the key path (library and `tlearn` command)."""

from __future__ import annotations

import pytest
import yaml

from conftest import PARAMS
from tlearn import cli, config
from tlearn.errors import ConfigError

BAD_CHOICE = "params.yaml: prepare.resize_mode must be one of crop, pad, warp (got 'zoom')"


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _error(path, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        config.load(path, overrides=overrides)
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


def test_repo_params_load_every_key_unchanged():
    raw = yaml.safe_load(PARAMS.read_text())
    cfg = config.load(PARAMS)
    flat = config.to_flat_dict(cfg)
    # every key known, none dropped, values as written; the chosen preset fills the rest
    assert cfg.preset == "small" and raw["preset"] == "auto"  # auto, for the digits
    chosen = _flatten(raw.pop("presets")["small"])
    assert flat == _flatten(raw) | chosen | {"preset": "small"}
    assert cfg.prepare.resize_mode in ("crop", "pad", "warp")
    assert isinstance(cfg.prepare.image_size, int) and 8 <= cfg.prepare.image_size <= 1024
    assert 0 < cfg.prepare.split.validation <= 0.5 and 0 < cfg.prepare.split.test <= 0.5
    with pytest.raises(AttributeError):  # frozen
        cfg.prepare.image_size = 1  # type: ignore[misc]


def test_presets_fill_the_keys_that_say_preset():
    photos = config.load(PARAMS, overrides={"data.source": "/my/photos"})
    assert photos.preset == "photos"  # auto: anything but the embedded digits
    assert (photos.prepare.image_size, photos.augment.horizontal_flip, photos.evaluate.tta) == (
        224, True, "flip")
    small = config.load(PARAMS, overrides={"data.source": "/my/photos", "preset": "small"})
    assert (small.prepare.image_size, small.augment.horizontal_flip) == (96, False)
    mine = config.load(PARAMS, overrides={"data.source": "/p", "prepare.image_size": 160})
    assert (mine.preset, mine.prepare.image_size, mine.finetune.unfreeze) == ("photos", 160, 49)
    assert _error(PARAMS, {"preset": "huge"}) == \
        "params.yaml: preset must be auto or one of photos, small (got 'huge')"
    assert _error(PARAMS, {"presets.small.prepare.imge_size": 9}) == \
        "params.yaml: presets.small.prepare.imge_size is not a key of the groups"
    assert _error(PARAMS, {"prepare.resize_mode": "preset"}) == \
        "params.yaml: prepare.resize_mode is 'preset' but preset small has no value for it"


def test_overrides_apply_and_are_typed():
    cfg = config.load(PARAMS, overrides={"prepare.image_size": 32, "augment.copies": 0,
                                         "prepare.split.test": 0.25, "data.sha256": "ab" * 32})
    assert cfg.prepare.image_size == 32
    assert cfg.augment.copies == 0
    assert cfg.prepare.split.test == 0.25
    assert cfg.data.sha256 == "ab" * 32
    # an int where a float is expected is accepted and becomes a float
    cfg = config.load(PARAMS, overrides={"augment.rotation": 0})
    assert cfg.augment.rotation == 0.0 and isinstance(cfg.augment.rotation, float)
    # finetune.unfreeze is a layer count (0: none) or the name of the first layer to train
    assert config.load(PARAMS, overrides={"finetune.unfreeze": 0}).finetune.unfreeze == 0
    assert config.load(PARAMS, overrides={"finetune.unfreeze": "top_conv"}).finetune.unfreeze \
        == "top_conv"


@pytest.mark.parametrize("overrides, expected", [
    ({"prepare.foo": 1}, "params.yaml: prepare.foo is not a known key"),
    ({"nonsense": 1}, "params.yaml: nonsense is not a known key"),
    ({"prepare.split.train": 0.5}, "params.yaml: prepare.split.train is not a known key"),
    ({"prepare.image_size": "big"},
     "params.yaml: prepare.image_size must be an integer (got 'big')"),
    ({"prepare.image_size": 32.5}, "params.yaml: prepare.image_size must be an integer (got 32.5)"),
    ({"prepare.image_size": True}, "params.yaml: prepare.image_size must be an integer (got True)"),
    ({"augment.horizontal_flip": "yes"}, "params.yaml: augment.horizontal_flip must be true or false"),
    ({"prepare.split.test": 0.7}, "params.yaml: prepare.split.test must be <= 0.5 (got 0.7)"),
    ({"prepare.split.validation": 0}, "params.yaml: prepare.split.validation must be > 0 (got 0.0)"),
    ({"augment.copies": -1}, "params.yaml: augment.copies must be >= 0 (got -1)"),
    ({"prepare.image_size": 4}, "params.yaml: prepare.image_size must be >= 8 (got 4)"),
    ({"augment.rotation": float("nan")}, "params.yaml: augment.rotation must be a number (got nan)"),
    ({"prepare.resize_mode": "zoom"}, BAD_CHOICE),
    ({"prepare": "big"}, "params.yaml: prepare must be a mapping (got 'big')"),
    ({"data.source": ""}, "params.yaml: data.source must be a non-empty string"),
    ({"finetune.unfreeze": -5}, "params.yaml: finetune.unfreeze must be >= 0 (got -5)"),
    ({"finetune.unfreeze": ""}, "params.yaml: finetune.unfreeze must be an integer or a "
                                "non-empty string (got '')"),
    ({"finetune.unfreeze": 2.5}, "params.yaml: finetune.unfreeze must be an integer or a "
                                 "non-empty string (got 2.5)"),
    ({"prepare.resize_mode.x": 1}, "params.yaml: cannot set prepare.resize_mode.x: "
                                   "prepare.resize_mode is not a mapping"),
])
def test_bad_values_name_the_key(overrides, expected):
    message = _error(PARAMS, overrides)
    assert message.startswith(expected), message


def test_bad_choice_message_is_exact():
    assert _error(PARAMS, {"prepare.resize_mode": "zoom"}) == BAD_CHOICE


@pytest.mark.parametrize("dotted", ["prepare.max_pixels", "prepare.split.test", "base.seed",
                                    "augment"])
def test_missing_key_is_named(tmp_path, dotted):
    raw = yaml.safe_load(PARAMS.read_text())
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    del node[leaf]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert _error(path) == f"params.yaml: {dotted} is missing"


def test_unreadable_params(tmp_path):
    assert "not found" in _error(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("prepare: [unclosed\n")
    assert f"{bad}: not valid YAML" in _error(bad)
    bad.write_text("- a list\n")
    assert _error(bad).startswith("params.yaml: top level must be a mapping")


# --- the command ----------------------------------------------------------------------

def test_cli_bad_choice_exits_2_with_one_line_and_writes_nothing(project, capsys):
    before = sorted(p.name for p in project.iterdir())
    assert cli.main(["prepare", "-S", "prepare.resize_mode=zoom"]) == 2
    err = capsys.readouterr().err
    assert err == BAD_CHOICE + "\n"
    assert sorted(p.name for p in project.iterdir()) == before
    assert not (project / "data").exists() and not (project / "reports").exists()


def test_cli_override_typing_and_bad_pairs(project, capsys):
    assert cli._parse_overrides(["augment.copies=3", "data.sha256=null", "augment.vertical_flip=true",
                                 "prepare.split.test=0.2", "data.source=a=b"]) == {
        "augment.copies": 3, "data.sha256": None, "augment.vertical_flip": True,
        "prepare.split.test": 0.2, "data.source": "a=b"}
    assert cli.main(["download", "-S", "data.source"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert cli.main(["augment", "-S", "augment.copies=-1"]) == 2
    assert capsys.readouterr().err == "params.yaml: augment.copies must be >= 0 (got -1)\n"
    assert cli.main(["finetune", "-S", "finetune.unfreeze=-5"]) == 2
    assert capsys.readouterr().err == "params.yaml: finetune.unfreeze must be >= 0 (got -5)\n"
    assert cli.main(["download", "--params", "nowhere.yaml"]) == 2
    assert "nowhere.yaml: not found" in capsys.readouterr().err
    assert not (project / "data").exists() and not (project / "reports").exists()
