"""``tlearn regress``: the teaching material's Keras regression (Boston housing), on any
table of numbers.

A Dense 16-8-1 network (``regress.units``) learns one column (``regress.target``) from the
others with mean squared error and Adam, beside scikit-learn's linear regression on the
very same rows, so the network's figures have something to beat. The table is a CSV
(``regress.source``: a path or an http(s) URL, read by pandas) or, by default and offline,
scikit-learn's bundled diabetes data (442 patients, 10 measurements, disease progression a
year later).

Rows are split once, by ``base.seed``: a held-out test split for the figures, and of the
rest a validation split for early stopping. The inputs are standardised with statistics of
the training rows only (a Normalization layer inside the model), and so is the target
while training (the loss starts near 1 whatever the target's unit; the per-epoch loss is
in units of the target's variance); the saved model maps raw inputs to the target's units.
"""

from __future__ import annotations

import logging
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tlearn import paths
from tlearn.config import Config, RegressParams
from tlearn.errors import TlearnError

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "diabetes"
REPORT = paths.REPORTS / "regress.json"
PLOT = paths.REPORTS / "regress.png"
MODEL = paths.MODELS / "regress.keras"
FIRST_ROWS = 10   # rows of actual vs predicted printed, as the material prints them
MIN_ROWS = 10
HISTORY_PREFIX = "regress"  # MLflow curves: regress/loss, regress/val_loss (step = epoch)


@dataclass(frozen=True)
class Table:
    features: pd.DataFrame   # numeric columns only
    target: pd.Series
    source: str


@dataclass(frozen=True)
class Splits:
    columns: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Result:
    report: dict             # what reports/regress.json holds
    history: list[dict]      # one row per epoch: epoch, loss, val_loss
    metrics: dict[str, float]  # the MLflow figures: test/r2, test/linear_r2, ...
    example: pd.DataFrame    # a few raw test rows: the logged model's input example


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


def load_table(source: str, target: str) -> Table:
    """The table of ``source`` split into numeric features and the target column; a
    TlearnError naming the key to fix for anything unusable."""
    frame = _read(source)
    if target not in frame.columns:
        raise TlearnError(f"regress.target: no column {target!r} in {source} (columns: "
                          f"{', '.join(map(str, frame.columns))})")
    text = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise TlearnError(f"regress.source: {source} has non-numeric columns: "
                          f"{', '.join(text)} (encode them as numbers or drop them)")
    missing = [str(c) for c in frame.columns if frame[c].isna().any()]
    if missing:
        raise TlearnError(f"regress.source: {source} has missing values in columns: "
                          f"{', '.join(missing)}")
    if len(frame.columns) < 2:
        raise TlearnError(f"regress.source: {source} has no columns besides the target "
                          f"{target!r}")
    if len(frame) < MIN_ROWS:
        raise TlearnError(f"regress.source: {source} has {len(frame)} rows; at least "
                          f"{MIN_ROWS} are needed to split it")
    return Table(frame.drop(columns=[target]), frame[target], source)


def _read(source: str) -> pd.DataFrame:
    if source == DEFAULT_SOURCE:
        from sklearn.datasets import load_diabetes

        return load_diabetes(as_frame=True).frame
    if not source.startswith(("http://", "https://")) and not Path(source).is_file():
        raise TlearnError(f"regress.source: {source} is not a file, an http(s) URL or "
                          f"{DEFAULT_SOURCE!r}")
    try:
        return pd.read_csv(source)
    except (OSError, ValueError, urllib.error.URLError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:  # unreadable, not CSV, not UTF-8, HTTP error
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TlearnError(f"regress.source: cannot read {source} as CSV ({reason})") from None


def split(table: Table, params: RegressParams, seed: int) -> Splits:
    """Test rows held out, then validation rows from the rest; float32 arrays."""
    from sklearn.model_selection import train_test_split

    x = table.features.to_numpy(dtype="float32")
    y = table.target.to_numpy(dtype="float32")
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=params.test_size,
                                                      random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest,
                                                      test_size=params.validation,
                                                      random_state=seed)
    return Splits([str(c) for c in table.features.columns], x_train, y_train, x_val, y_val,
                  x_test, y_test)


# --------------------------------------------------------------------------------------
# The two models
# --------------------------------------------------------------------------------------


def build_network(x_train: np.ndarray, units: list[int]):
    """Normalization (adapted to the training rows) -> Dense(relu) per entry -> Dense(1)."""
    import keras

    normalise = keras.layers.Normalization(name="standardise")
    normalise.adapt(x_train)
    return keras.Sequential([keras.Input((x_train.shape[1],)), normalise,
                             *[keras.layers.Dense(n, activation="relu") for n in units],
                             keras.layers.Dense(1)], name="regression")


def fit_network(splits: Splits, params: RegressParams, seed: int):
    """The network trained on the standardised target with early stopping on validation
    loss (best weights restored); returns the model in the target's units and the
    per-epoch history."""
    import keras

    keras.utils.set_random_seed(seed)
    mean, std = float(splits.y_train.mean()), float(splits.y_train.std()) or 1.0
    core = build_network(splits.x_train, params.units)
    core.compile(optimizer=keras.optimizers.Adam(params.learning_rate), loss="mse")
    result = core.fit(
        splits.x_train, (splits.y_train - mean) / std, batch_size=params.batch_size,
        epochs=params.epochs, verbose=0,
        validation_data=(splits.x_validation, (splits.y_validation - mean) / std),
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=params.patience,
                                                 restore_best_weights=True)])
    history = [{"epoch": i + 1, "loss": float(loss), "val_loss": float(val)}
               for i, (loss, val) in enumerate(zip(result.history["loss"],
                                                   result.history["val_loss"]))]
    model = keras.Sequential([core, keras.layers.Rescaling(scale=std, offset=mean)],
                             name="regressor")
    return model, history


def fit_linear(splits: Splits):
    """scikit-learn's ordinary least squares on the same training rows."""
    from sklearn.linear_model import LinearRegression

    return LinearRegression().fit(splits.x_train, splits.y_train)


def scores(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {"rmse": float(np.sqrt(mean_squared_error(actual, predicted))),
            "mae": float(mean_absolute_error(actual, predicted)),
            "r2": float(r2_score(actual, predicted))}


def format_rows(rows: list[dict], target: str) -> str:
    """The material's printout: ``Real Price: 7.200, Predicted Price: 9.471``."""
    return "".join(f"Real {target}: {row['actual']:.3f}, Predicted {target}: "
                   f"{row['predicted']:.3f}\n" for row in rows)


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def run(cfg: Config, table: Table) -> Result:
    """Fit both models, write models/regress.keras, reports/regress.json and
    reports/regress.png; the figures are on the test split."""
    from tlearn import plots
    from tlearn.io import write_json
    from tlearn.models.saving import save_model

    params = cfg.regress
    splits = split(table, params, cfg.base.seed)
    started = time.perf_counter()
    network, history = fit_network(splits, params, cfg.base.seed)
    seconds = time.perf_counter() - started
    predicted = network.predict(splits.x_test, verbose=0).reshape(-1)
    linear = fit_linear(splits).predict(splits.x_test)
    best = min(history, key=lambda row: row["val_loss"])
    network_scores = scores(splits.y_test, predicted)
    linear_scores = scores(splits.y_test, linear)
    first = [{"actual": float(a), "predicted": float(p), "linear": float(b)}
             for a, p, b in zip(splits.y_test[:FIRST_ROWS], predicted, linear)]
    report = {
        "source": table.source, "target": str(table.target.name), "features": splits.columns,
        "n_train": len(splits.y_train), "n_validation": len(splits.y_validation),
        "n_test": len(splits.y_test),
        "network": {**network_scores, "epochs": len(history), "best_epoch": best["epoch"],
                    "seconds": round(seconds, 2)},
        "linear_regression": linear_scores,
        "first_rows": first,
    }
    save_model(network, MODEL)
    write_json(REPORT, report)
    plots.regression(splits.y_test, {"network": predicted, "linear regression": linear},
                     history, str(table.target.name), PLOT)
    log.info("regress: network R2 %.4f RMSE %.4f, linear regression R2 %.4f RMSE %.4f "
             "(%d epochs, best %d)", network_scores["r2"], network_scores["rmse"],
             linear_scores["r2"], linear_scores["rmse"], len(history), best["epoch"])
    metrics = {**{f"test/{k}": v for k, v in network_scores.items()},
               **{f"test/linear_{k}": v for k, v in linear_scores.items()},
               "epochs": len(history), "best_epoch": best["epoch"],
               "val_loss": best["val_loss"]}
    # float64, as pandas reads a CSV: the signature then accepts a table read the same way
    example = pd.DataFrame(splits.x_test[:5].astype("float64"), columns=splits.columns)
    return Result(report, history, metrics, example)
