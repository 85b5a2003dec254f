"""Presets: the few params that differ between kinds of data (photos, small images),
chosen by one key. A params.yaml value ``preset`` takes the chosen preset's value; a value
written there, or set with ``-S``, wins. The keys stay in params.yaml, so DVC tracks them
and ``dvc exp run -S`` can set them."""

from __future__ import annotations

import copy
from typing import Any

from tlearn.errors import ConfigError


#: ``preset: auto`` picks by data.source: the small-image preset for the embedded digits and
#: CIFAR-10 (8x8 and 32x32 images), the photo preset for everything else.
AUTO_PRESET = {"digits": "small", "cifar10": "small"}
FROM_PRESET = "preset"  # a params.yaml value: take it from the chosen preset
DEFAULT_PRESET = "photos"


def apply_preset(raw: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """Replace each value ``preset`` in the groups by the chosen ``presets`` entry's value
    (a value written in its group, or set with ``-S``, wins); ``preset`` becomes the
    chosen name. The keys stay in params.yaml, so ``dvc exp run -S`` can set them."""
    if not isinstance(raw, dict):
        return raw  # reported as "top level must be a mapping"
    raw = copy.deepcopy(raw)
    presets = raw.pop("presets", None)
    name = raw.get("preset")
    if not isinstance(presets, dict) or not presets:
        raise ConfigError(f"{source}: presets must be a mapping of preset names to "
                          f"{{key: value}} (got {presets!r})")
    if name == "auto":
        data_source = (raw.get("data") or {}).get("source")
        name = AUTO_PRESET.get(data_source, DEFAULT_PRESET)
    if name not in presets:
        raise ConfigError(f"{source}: preset must be auto or one of {', '.join(presets)} "
                          f"(got {name!r})")
    for preset, values in presets.items():  # a typo in any preset, not only the chosen
        for key in _unknown(raw, values or {}):
            raise ConfigError(f"{source}: presets.{preset}.{key} is not a key of the groups")
    for key in _fill(raw, presets[name] or {}):
        raise ConfigError(f"{source}: {key} is 'preset' but preset {name} has no value for it")
    raw["preset"] = name
    return raw


def _unknown(target: dict, values: dict, prefix: str = "") -> list[str]:
    """The keys of ``values`` that ``target`` does not have (a whole missing group is
    left to the "is missing" message)."""
    return [key for name, value in values.items() for key in (
        ([prefix + name] if prefix else []) if name not in target else
        _unknown(target[name], value, f"{prefix}{name}.")
        if isinstance(value, dict) and isinstance(target[name], dict) else [])]


def _fill(target: dict, values: dict, prefix: str = "") -> list[str]:
    """Put each of ``values`` where ``target`` says ``preset``; return the keys still saying
    ``preset`` (the preset has no value for them)."""
    left = []
    for key, value in target.items():
        if isinstance(value, dict):
            group = values.get(key)
            left += _fill(value, group if isinstance(group, dict) else {}, f"{prefix}{key}.")
        elif value == FROM_PRESET:
            if key in values:
                target[key] = copy.deepcopy(values[key])
            else:
                left.append(prefix + key)
    return left
