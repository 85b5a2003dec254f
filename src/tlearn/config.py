"""params.yaml -> frozen dataclasses.

params.yaml is the one place defaults live: every key is required here, so a key that
DVC tracks can never silently differ from what the code uses. Any problem (unknown key,
missing key, wrong type, out-of-range value) raises ConfigError with a one-line message
that names the key path, e.g.
``params.yaml: prepare.resize_mode must be one of crop, pad, warp (got 'zoom')``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tlearn.errors import ConfigError
from tlearn.presets import apply_preset

PARAMS_FILE = Path("params.yaml")
#: The default of every MLproject parameter: keep params.yaml's value. `mlflow ui` shows
#: it as the parameter's value (an empty default would read as MLflow's quoted '').
KEEP_PARAMS_YAML = "params.yaml"


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


def _pair(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    """A ``[low, high]`` list (a search range): both ends in the range, low <= high."""
    return {**_range(lo, hi, lo_open=lo_open), "pair": True}


class _OutOfRange(ConfigError):
    """The value has the right type but not the range: in a union, this is the message."""


@dataclass(frozen=True)
class BaseParams:
    seed: int = field(metadata=_range(0))


@dataclass(frozen=True)
class DataParams:
    source: str
    sha256: str | None
    max_expansion: float = field(metadata=_range(1))
    max_extracted_mb: int = field(metadata=_range(1))


@dataclass(frozen=True)
class SplitFractions:
    validation: float = field(metadata=_range(0, 0.5, lo_open=True))
    test: float = field(metadata=_range(0, 0.5, lo_open=True))


@dataclass(frozen=True)
class PrepareParams:
    image_size: int = field(metadata=_range(8, 1024))
    resize_mode: Literal["crop", "pad", "warp"]
    split: SplitFractions
    max_pixels: int = field(metadata=_range(1))
    min_side: int = field(metadata=_range(1))


@dataclass(frozen=True)
class AugmentParams:
    copies: int = field(metadata=_range(0, 100))
    rotation: float = field(metadata=_range(0, 0.5))
    translation: float = field(metadata=_range(0, 0.5))
    zoom: float = field(metadata=_range(0, 0.9))
    contrast: float = field(metadata=_range(0, 1))
    horizontal_flip: bool
    vertical_flip: bool


@dataclass(frozen=True)
class ModelParams:
    backbone: str
    weights: str


@dataclass(frozen=True)
class FeaturesParams:
    batch_size: int = field(metadata=_range(1))


@dataclass(frozen=True)
class HeadParams:
    pooling: Literal["avg", "max", "flatten"]
    units: list[int] = field(metadata={**_range(1), "empty": True})  # []: no hidden layer
    dropout: float = field(metadata=_range(0, 0.95))
    activation: Literal["relu", "gelu", "swish", "elu", "tanh"]
    learning_rate: float = field(metadata=_range(0, 1, lo_open=True))
    optimizer: Literal["adam", "sgd", "rmsprop"]
    momentum: float = field(metadata=_range(0, 1))
    epochs: int = field(metadata=_range(1))
    batch_size: int = field(metadata=_range(1))
    label_smoothing: float = field(metadata=_range(0, 0.5))
    class_weight: Literal["none", "balanced"]
    patience: int = field(metadata=_range(0))


@dataclass(frozen=True)
class FinetuneParams:
    unfreeze: int | str = field(metadata=_range(0))  # a layer count, or a layer name
    learning_rate: float = field(metadata=_range(0, 1, lo_open=True))
    schedule: Literal["cosine", "constant"]
    epochs: int = field(metadata=_range(0))
    batch_size: int = field(metadata=_range(1))
    patience: int = field(metadata=_range(0))
    probe_floor: bool  # the linear probe replaces a fine-tuned model worse on validation


#: Test-time augmentation (tlearn.metrics.tta_views), as EvaluateParams.tta spells it.
TTA_MODES = ("none", "flip", "flip_crops")


@dataclass(frozen=True)
class EvaluateParams:
    misclassified: int = field(metadata=_range(0, 100))
    tta: Literal["none", "flip", "flip_crops"]


@dataclass(frozen=True)
class BaselinesParams:
    # The values each classifier's search tries on the validation split.
    logistic_regression: list[float] = field(metadata=_range(0, lo_open=True))  # C
    linear_svm: list[float] = field(metadata=_range(0, lo_open=True))           # C
    gradient_boosting: list[int] = field(metadata=_range(1))                    # rounds
    max_iter: int = field(metadata=_range(1))
    boosting_learning_rate: float = field(metadata=_range(0, 1, lo_open=True))
    boosting_leaves: int = field(metadata=_range(2))
    boosting_features: float = field(metadata=_range(0, 1, lo_open=True))
    boosting_max_train: int = field(metadata=_range(10))
    # Training rows of the linear models (a stratified sample when there are more): their
    # memory grows with it (the SVM: a float64 copy and liblinear's 16 bytes per value).
    max_train: int = field(metadata=_range(10))


@dataclass(frozen=True)
class RegressParams:
    source: str
    target: str
    experiment: str
    test_size: float = field(metadata=_range(0, 0.5, lo_open=True))
    validation: float = field(metadata=_range(0, 0.5, lo_open=True))
    units: list[int] = field(metadata=_range(1))
    learning_rate: float = field(metadata=_range(0, 1, lo_open=True))
    epochs: int = field(metadata=_range(1))
    batch_size: int = field(metadata=_range(1))
    patience: int = field(metadata=_range(0))


@dataclass(frozen=True)
class TrackingParams:
    experiment: str
    registered_model: str
    promote_margin: float = field(metadata=_range(0, 1))
    required: bool


@dataclass(frozen=True)
class RetrainParams:
    min_per_class: int = field(metadata=_range(1))         # the data gate, per class
    max_quarantined: float = field(metadata=_range(0, 1))  # the data gate, fraction of files
    alpha: float = field(metadata=_range(0, 1, lo_open=True))  # McNemar's test
    require_significance: bool
    min_accuracy: float = field(metadata=_range(0, 1))     # for the first champion


@dataclass(frozen=True)
class SearchSpace:
    """What tuning searches; a null key keeps params.yaml's ``head`` value."""

    layers: list[int] | None = field(metadata=_pair(0, 8))          # Dense layers
    units: list[int] | None = field(metadata=_pair(1))              # per layer, log scale
    dropout: list[float] | None = field(metadata=_pair(0, 0.95))
    learning_rate: list[float] | None = field(metadata=_pair(0, 1, lo_open=True))  # log scale
    label_smoothing: list[float] | None = field(metadata=_pair(0, 0.5))
    batch_size: list[int] | None = field(metadata=_range(1))        # choices
    optimizer: list[Literal["adam", "sgd", "rmsprop"]] | None        # choices

    def problem(self) -> str | None:
        if self.layers is not None and self.units is None:
            return "layers is set but units is null: give the units of a layer, e.g. [32, 1024]"
        return None


@dataclass(frozen=True)
class TuneParams:
    n_trials: int = field(metadata=_range(0))
    timeout: float | None = field(metadata=_range(0, lo_open=True))
    metric: Literal["val_accuracy", "val_loss"]
    pruner: Literal["median", "hyperband", "none"]
    storage: str
    space: SearchSpace


@dataclass(frozen=True)
class Config:
    preset: str  # the preset that filled in the keys whose value is `preset`
    base: BaseParams
    data: DataParams
    prepare: PrepareParams
    augment: AugmentParams
    model: ModelParams
    features: FeaturesParams
    head: HeadParams
    tune: TuneParams
    finetune: FinetuneParams
    evaluate: EvaluateParams
    tracking: TrackingParams
    retrain: RetrainParams
    baselines: BaselinesParams
    regress: RegressParams


def load(path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None,
         params_files: Mapping[Path, Sequence[str]] | None = None) -> Config:
    """Read params.yaml (plus optional ``{"head.dropout": 0.2}`` overrides) into a Config.

    ``params_files`` (``{Path("models/head_params.yaml"): ("head",)}``): groups another stage
    wrote, e.g. the tuned head; they replace params.yaml's before the overrides apply."""
    path = Path(path)
    raw = _read(path, "run from the project root or pass --params")
    for file, groups in (params_files or {}).items():
        written = _read(file, "a stage writes it: run `dvc repro` first")
        for group in groups:
            if group not in written:
                raise ConfigError(f"{file}: {group} is missing")
            _check(typing.get_type_hints(Config)[group], written[group], group, {}, str(file))
            raw[group] = written[group]
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value, source=path.name)
    return from_dict(raw, source=path.name)


def _read(path: Path, hint: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found ({hint})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return raw or {}


def parse_sets(pairs: list[str], mlproject: bool = False) -> list[tuple[str, str]]:
    """``["head.dropout=0.2"]`` -> ``[("head.dropout", "0.2")]``. For MLproject parameters
    (``mlproject=True``) a value KEEP_PARAMS_YAML (their default) or empty is dropped:
    params.yaml's value stays."""
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"-S {pair!r}: expected KEY=VALUE, e.g. -S head.dropout=0.2")
        if not (mlproject and value.strip() in ("", KEEP_PARAMS_YAML)):
            out.append((key, value))
    return out


def typed_overrides(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Values typed as YAML, as params.yaml and ``dvc exp run -S`` type them."""
    return {key: yaml.safe_load(value) for key, value in pairs}


def from_dict(raw: dict[str, Any], source: str = "params.yaml") -> Config:
    return _build(Config, apply_preset(raw, source), prefix="", source=source)


def to_flat_dict(cfg: Config) -> dict[str, Any]:
    """``{"head.dropout": 0.3, ...}``: the shape MLflow params and ``dvc exp run -S`` use."""
    flat: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                flat[f"{prefix}{f.name}"] = value

    walk(cfg, "")
    return flat


def _set_dotted(raw: dict, dotted: str, value: Any, source: str = "params.yaml") -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for depth in range(len(parents) + 1):
        if not isinstance(node, dict):  # e.g. -S prepare.image_size.x=1
            where = ".".join(parents[:depth]) or "top level"
            raise ConfigError(f"{source}: cannot set {dotted}: {where} is not a mapping")
        if depth < len(parents):
            node = node.setdefault(parents[depth], {})
    node[leaf] = value


def _build(cls: type, raw: Any, prefix: str, source: str):
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping (got {raw!r})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(
                f"{source}: {prefix}{key} is not a known key (known: {', '.join(fields)})"
            )
    values = {}
    for name, f in fields.items():
        path = f"{prefix}{name}"
        if name not in raw:
            raise ConfigError(f"{source}: {path} is missing")
        values[name] = _check(hints[name], raw[name], path, f.metadata, source)
    built = cls(**values)
    if hasattr(built, "problem") and (problem := built.problem()):  # rules across keys
        raise ConfigError(f"{source}: {prefix}{problem}")
    return built


def _check(hint: Any, value: Any, path: str, meta: typing.Mapping, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{path}.", source)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(str(a) for a in args)
            raise ConfigError(f"{source}: {path} must be one of {choices} (got {value!r})")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:  # ``X | None``: X's own message is the precise one
            return _check(candidates[0], value, path, meta, source)
        for arg in candidates:
            try:
                return _check(arg, value, path, meta, source)
            except _OutOfRange:
                raise
            except ConfigError:
                continue
        names = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{source}: {path} must be {names} (got {value!r})")
    if origin is list:
        if not isinstance(value, list) or (not value and not meta.get("empty")):
            raise ConfigError(f"{source}: {path} must be a non-empty list (got {value!r})")
        items = [_check(args[0], v, f"{path}[{i}]", meta, source) for i, v in enumerate(value)]
        if meta.get("pair") and (len(items) != 2 or items[0] > items[1]):
            raise _OutOfRange(f"{source}: {path} must be [low, high] with low <= high "
                              f"(got {value!r})")
        return items
    return _check_scalar(hint, value, path, meta, source)


def _check_scalar(hint: type, value: Any, path: str, meta: typing.Mapping, source: str) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str) and value != "",
    }[hint]
    if not ok:
        raise ConfigError(f"{source}: {path} must be {_type_name(hint)} (got {value!r})")
    value = hint(value)
    if value != value:  # NaN compares false with every bound: it would pass any range
        raise ConfigError(f"{source}: {path} must be {_type_name(hint)} (got {value!r})")
    if hint not in (int, float):  # a range bounds numbers (of an int | str, the int)
        return value
    lo, hi, lo_open = meta.get("lo"), meta.get("hi"), meta.get("lo_open", False)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        bound = f"> {lo}" if lo_open else f">= {lo}"
        raise _OutOfRange(f"{source}: {path} must be {bound} (got {value!r})")
    if hi is not None and value > hi:
        raise _OutOfRange(f"{source}: {path} must be <= {hi} (got {value!r})")
    return value


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is list:
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))
