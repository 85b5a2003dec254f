"""Classical classifiers on the cached features: the teaching material's first route
(features of the pretrained base fed to logistic regression, an SVM, gradient boosting).

Each classifier tries a few values of its main knob, keeps the one with the best
validation accuracy (the first on ties: list the candidates simplest model first), and is
scored on the test split with the report the Keras models get
(:func:`tlearn.metrics.classification_report`), so its figures sit beside the head's and
the fine-tuned model's (:func:`tlearn.metrics.comparison`). Arrays in (or readers of
them on disk, for scoring), figures out; no paths.

Memory stays bounded as the dataset grows: the linear models train on at most
``max_train`` rows (:func:`sample_rows`: the caller reads only those), gradient boosting on
``boosting_max_train``, and validation and test are scored :data:`SCORE_CHUNK` rows at a
time, straight from disk when given as :func:`tlearn.features.open_split` gives them, so
neither they nor their standardised copies are ever whole in memory.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from tlearn.config import BaselinesParams
from tlearn.data.store import ArrayReader
from tlearn.features import FeatureSet
from tlearn.metrics import SUMMARY_KEYS, classification_report

log = logging.getLogger(__name__)

Rows = np.ndarray | ArrayReader  # features in memory, or on disk (read a chunk at a time)
Probabilities = Callable[[Rows], np.ndarray]  # features (N, D) -> (N, classes)
#: Rows scored per call: each call makes standardised float copies of its rows.
SCORE_CHUNK = 4096


@dataclass(frozen=True)
class Search:
    """A classifier's search: every candidate's validation accuracy, the chosen value,
    the chosen model's probabilities for new rows, and the seconds the search took."""

    knob: str
    rows: list[dict]           # [{"value": v, "val_accuracy": a}, ...] in the order tried
    value: float
    predict_proba: Probabilities
    seconds: float
    train_rows: int            # the training rows the classifier was fitted on
    # A linear model as one softmax layer on the features, (kernel (D, C), bias (C,)):
    # how the linear probe becomes a Keras head (tlearn.models.head.linear_head).
    linear: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def val_accuracy(self) -> float:
        """The chosen value's validation accuracy."""
        return self.rows[_best(self.rows)]["val_accuracy"]


def _best(rows: list[dict]) -> int:
    """The best validation accuracy; on ties the first (candidates go simplest first)."""
    return max(range(len(rows)), key=lambda i: (rows[i]["val_accuracy"], -i))


def _accuracy(predicted: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predicted == y))


def chunks(x: Rows) -> Iterator[np.ndarray]:
    """The rows of ``x`` as (n, D) vectors (a flatten head's maps flattened),
    :data:`SCORE_CHUNK` at a time."""
    batches = (x.batches(SCORE_CHUNK) if isinstance(x, ArrayReader)
               else (x[i:i + SCORE_CHUNK] for i in range(0, len(x), SCORE_CHUNK)))
    for batch in batches:
        yield batch.reshape(len(batch), -1)


def in_chunks(fn: Callable[[np.ndarray], np.ndarray], x: Rows) -> np.ndarray:
    """``fn`` of every row of ``x``, computed :data:`SCORE_CHUNK` rows at a time."""
    return np.concatenate([fn(chunk) for chunk in chunks(x)])


def _fit_each(name: str, knob: str, candidates: Sequence[float], make: Callable[[float], object],
              train: FeatureSet, validation: FeatureSet) -> tuple[list[dict], object]:
    """One model per candidate value, fitted on train and scored on validation; returns
    the rows and the best model."""
    rows, models = [], []
    for value in candidates:
        started = time.perf_counter()
        model = make(value).fit(train.x, train.y)
        rows.append({"value": value, "val_accuracy": _accuracy(
            in_chunks(model.predict, validation.x), validation.y)})
        models.append(model)
        log.info("baselines: %s %s=%g: val_accuracy %.4f (%.1f s)", name, knob, value,
                 rows[-1]["val_accuracy"], time.perf_counter() - started)
    return rows, models[_best(rows)]


def logistic_regression(train: FeatureSet, validation: FeatureSet, params: BaselinesParams,
                        seed: int) -> Search:
    """Multinomial logistic regression on standardised features (the base's outputs differ
    in scale by orders of magnitude); the knob is the inverse regularisation C."""
    def make(c: float):
        return make_pipeline(StandardScaler(),
                             LogisticRegression(C=c, max_iter=params.max_iter, random_state=seed))

    started = time.perf_counter()
    rows, model = _fit_each("logistic_regression", "C", params.logistic_regression, make,
                            train, validation)
    return Search("C", rows, rows[_best(rows)]["value"],
                  lambda x: in_chunks(model.predict_proba, x),
                  round(time.perf_counter() - started, 2), len(train),
                  linear=softmax_layer(model))


def softmax_layer(model) -> tuple[np.ndarray, np.ndarray]:
    """A standardised logistic regression (``make_pipeline(StandardScaler(),
    LogisticRegression())``) as ``(kernel, bias)`` with ``softmax(x @ kernel + bias)`` equal
    to its ``predict_proba(x)``: the scaler is folded into the weights, and two classes'
    single logit z becomes the pair (0, z) (sigmoid(z) = softmax(0, z)[1])."""
    scaler, regression = model[0], model[-1]
    coef = regression.coef_ / scaler.scale_                      # (C, D), or (1, D)
    intercept = regression.intercept_ - coef @ scaler.mean_
    if len(coef) == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    return coef.T.astype(np.float32), intercept.astype(np.float32)


def linear_svm(train: FeatureSet, validation: FeatureSet, params: BaselinesParams,
               seed: int) -> Search:
    """A linear SVM (one-vs-rest, liblinear's dual solver: the fast one for a few thousand
    rows) on standardised features; the knob is C. An SVM gives margins, not
    probabilities: the test report's loss and top-k get softmax(margins / T), with the one
    temperature T fitted on the validation split (the SVM's predictions stay as they are)."""
    def make(c: float):
        return make_pipeline(StandardScaler(), LinearSVC(C=c, dual=True, max_iter=params.max_iter,
                                                         random_state=seed))

    started = time.perf_counter()
    rows, model = _fit_each("linear_svm", "C", params.linear_svm, make, train, validation)

    def margins(x: Rows) -> np.ndarray:
        # (N,) for two classes: the second class's margin
        scores = in_chunks(model.decision_function, x)
        return np.column_stack([np.zeros_like(scores), scores]) if scores.ndim == 1 else scores

    temperature = fit_temperature(margins(validation.x), validation.y)
    return Search("C", rows, rows[_best(rows)]["value"],
                  lambda x: softmax(margins(x) / temperature, axis=1),
                  round(time.perf_counter() - started, 2), len(train))


def fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """The temperature T for which softmax(scores / T) has the least log loss on ``y``."""
    def log_loss(log_t: float) -> float:
        return float(-log_softmax(scores / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    return float(np.exp(minimize_scalar(log_loss, bounds=(-7, 7), method="bounded").x))


def gradient_boosting(train: FeatureSet, validation: FeatureSet, params: BaselinesParams,
                      seed: int) -> Search:
    """scikit-learn's histogram gradient boosting; the knob is the number of boosting
    rounds, searched with one fit of the largest (staged predictions give every smaller
    one). Kept affordable on 1280-d features: a stratified subsample of
    ``boosting_max_train`` rows, ``boosting_features`` of the features per split, and one
    thread (OpenMP threads spin-waiting on a busy 2-core machine made it 5x slower)."""
    rounds = sorted(int(r) for r in params.gradient_boosting)
    sample = subsample(train, params.boosting_max_train, seed)
    model = HistGradientBoostingClassifier(
        learning_rate=params.boosting_learning_rate, max_iter=rounds[-1],
        max_leaf_nodes=params.boosting_leaves, max_features=params.boosting_features,
        early_stopping=False, random_state=seed)
    started = time.perf_counter()
    with threadpool_limits(1):
        model.fit(sample.x, sample.y)
        # One pass of the rounds over each chunk: the predictions after every round.
        staged = in_chunks(lambda x: np.stack(list(model.staged_predict(x)), axis=1),
                           validation.x)  # (N, rounds)
    rows = [{"value": r, "val_accuracy": _accuracy(staged[:, r - 1], validation.y)}
            for r in rounds]
    log.info("baselines: gradient_boosting rounds %s: val_accuracy %s (%.1f s, %d rows)", rounds,
             [round(row["val_accuracy"], 4) for row in rows], time.perf_counter() - started,
             len(sample))
    chosen = rows[_best(rows)]["value"]

    def chosen_proba(x: np.ndarray) -> np.ndarray:
        # The chosen round's probabilities, without keeping every round's.
        return next(itertools.islice(model.staged_predict_proba(x), chosen - 1, None))

    def predict_proba(x: Rows) -> np.ndarray:
        with threadpool_limits(1):
            return in_chunks(chosen_proba, x)

    return Search("max_iter", rows, chosen, predict_proba, round(time.perf_counter() - started, 2),
                  len(sample))


#: name -> search, in the order they run and are reported.
CLASSIFIERS: dict[str, Callable[[FeatureSet, FeatureSet, BaselinesParams, int], Search]] = {
    "logistic_regression": logistic_regression,
    "linear_svm": linear_svm,
    "gradient_boosting": gradient_boosting,
}


def evaluate(search: Search, test: FeatureSet, labels: Sequence[str]) -> dict:
    """The chosen model on the test split, with its search: the classifier's report."""
    report = classification_report(test.y, search.predict_proba(test.x), labels)
    return {"knob": search.knob, "value": search.value, "train_rows": search.train_rows,
            "val_accuracy": search.val_accuracy,
            "seconds": search.seconds, "search": search.rows,
            **{k: report[k] for k in SUMMARY_KEYS}}


def sample_rows(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Ascending indices of at most ``limit`` rows (all of them when there are no more),
    each class keeping its share (stratified, seeded): floor of its share, the rows left
    over to the largest remainders, and at least one row per class (taken from the
    largest shares; only a ``limit`` below the number of classes is exceeded)."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = limit * counts / len(labels)
    shares = np.maximum(np.floor(exact).astype(int), 1)
    left = limit - int(shares.sum())
    if left > 0:  # the largest remainders first, the first class on ties
        shares[np.argsort(-(exact - np.floor(exact)), kind="stable")[:left]] += 1
    for _ in range(-left):  # the one-row minimums overshot: the largest shares give back
        largest = int(np.argmax(shares))
        if shares[largest] == 1:
            break
        shares[largest] -= 1
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(labels == label), size=share, replace=False)
            for label, share in zip(classes, shares)]
    return np.sort(np.concatenate(keep))


def subsample(train: FeatureSet, limit: int, seed: int) -> FeatureSet:
    """At most ``limit`` rows of ``train`` (:func:`sample_rows`); ``train`` itself when it
    has no more."""
    if len(train) <= limit:
        return train
    chosen = sample_rows(train.y, limit, seed)
    return FeatureSet(train.x[chosen], train.y[chosen])


def flat(features: FeatureSet) -> FeatureSet:
    """(N, D) rows: a flatten head's feature maps become vectors."""
    return FeatureSet(features.x.reshape(len(features), -1), features.y)
