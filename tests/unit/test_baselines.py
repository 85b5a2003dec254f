"""Classical classifiers on features (tlearn.baselines) and the baselines stage: each
classifier's search on validation, its test report under evaluate's names, one nested
MLflow run per classifier, and the comparison table evaluate and the README show."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_config
from tlearn import baselines, features, paths
from tlearn.features import FeatureSet
from tlearn.metrics import comparison, markdown_table
from tlearn.stages import baselines as stage

LABELS = ["ant", "bee", "cow"]


def blobs(per_class: int, seed: int, dims: int = 24, spread: float = 1.0) -> FeatureSet:
    """Three Gaussian clusters, one per class, that linear models separate well."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0, 3, (len(LABELS), dims))
    y = np.repeat(np.arange(len(LABELS)), per_class)
    return FeatureSet((centres[y] + rng.normal(0, spread, (len(y), dims))).astype("float32"), y)


@pytest.fixture(scope="module")
def splits():
    return blobs(60, 1), blobs(20, 2), blobs(30, 3)


@pytest.fixture(scope="module")
def params():
    return make_config({"baselines.gradient_boosting": [5, 10, 20],
                        "baselines.boosting_features": 0.5}).baselines


@pytest.mark.parametrize("name", list(baselines.CLASSIFIERS))
def test_each_classifier_searches_its_knob_on_validation_and_scores_on_test(name, splits,
                                                                           params):
    train, validation, test = splits
    found = baselines.CLASSIFIERS[name](train, validation, params, seed=0)
    candidates = {"logistic_regression": params.logistic_regression,
                  "linear_svm": params.linear_svm, "gradient_boosting": [5, 10, 20]}[name]
    assert [row["value"] for row in found.rows] == candidates
    best = max(row["val_accuracy"] for row in found.rows)
    # the chosen value is the first with the best validation accuracy
    assert found.value == next(r["value"] for r in found.rows if r["val_accuracy"] == best)
    probs = found.predict_proba(test.x)
    assert probs.shape == (len(test), 3) and np.allclose(probs.sum(axis=1), 1)
    report = baselines.evaluate(found, test, LABELS)
    assert report["accuracy"] >= 0.9 and report["top_k_accuracy"] == 1.0
    assert report["accuracy"] == pytest.approx(np.mean(probs.argmax(axis=1) == test.y))
    assert report["knob"] == {"gradient_boosting": "max_iter"}.get(name, "C")
    assert report["val_accuracy"] == best and report["seconds"] >= 0


def test_a_search_is_repeatable_with_the_same_seed(splits, params):
    train, validation, test = splits
    first, second = (baselines.gradient_boosting(train, validation, params, seed=7)
                     for _ in range(2))
    assert first.rows == second.rows
    assert np.array_equal(first.predict_proba(test.x), second.predict_proba(test.x))


def test_gradient_boosting_rounds_read_from_one_fit_match_separate_fits(splits, params):
    """The staged predictions stand for fits with fewer rounds."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    train, validation, _ = splits
    found = baselines.gradient_boosting(train, validation, params, seed=3)
    alone = HistGradientBoostingClassifier(
        learning_rate=params.boosting_learning_rate, max_iter=10,
        max_leaf_nodes=params.boosting_leaves, max_features=params.boosting_features,
        early_stopping=False, random_state=3).fit(train.x, train.y)
    assert found.rows[1]["val_accuracy"] == np.mean(alone.predict(validation.x) == validation.y)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_the_logistic_regression_is_one_softmax_layer_on_the_raw_features(n_classes, splits,
                                                                          params):
    from scipy.special import softmax

    train, validation, test = (FeatureSet(s.x[s.y < n_classes] * [[1000.0] + [1.0] * 23],
                                          s.y[s.y < n_classes]) for s in splits)
    search = baselines.logistic_regression(train, validation, params, seed=0)
    kernel, bias = search.linear
    assert kernel.shape == (24, n_classes) and bias.shape == (n_classes,)
    np.testing.assert_allclose(softmax(test.x @ kernel + bias, axis=1),
                               search.predict_proba(test.x), atol=1e-4)


def test_subsample_keeps_each_class_share():
    train = FeatureSet(np.zeros((100, 2)), np.array([0] * 80 + [1] * 20))
    sample = baselines.subsample(train, 50, seed=0)
    assert np.bincount(sample.y).tolist() == [40, 10]
    assert baselines.subsample(train, 500, seed=0) is train
    maps = FeatureSet(np.zeros((4, 2, 2, 3)), np.arange(4))
    assert baselines.flat(maps).x.shape == (4, 12)


@pytest.mark.parametrize("limit", [10, 37, 100, 299])
def test_sample_rows_honour_the_cap_and_each_class_share(limit):
    labels = np.repeat([0, 1, 2], [200, 70, 30])  # 300 rows, imbalanced
    rows = baselines.sample_rows(labels, limit, seed=1)
    assert len(rows) == limit and np.all(np.diff(rows) > 0)  # exactly the cap, ascending
    shares = np.bincount(labels[rows], minlength=3) / limit
    assert np.abs(shares - [2 / 3, 7 / 30, 1 / 10]).max() <= 1 / limit  # stratified
    assert np.array_equal(rows, baselines.sample_rows(labels, limit, seed=1))  # seeded
    assert not np.array_equal(rows, baselines.sample_rows(labels, limit, seed=2))


def test_sample_rows_keep_everything_under_the_cap_and_a_row_of_each_class():
    labels = np.repeat([0, 1, 2], [200, 98, 2])
    assert np.array_equal(baselines.sample_rows(labels, 300, seed=0), np.arange(300))
    assert np.bincount(labels[baselines.sample_rows(labels, 20, seed=0)]).tolist() == [13, 6, 1]
    rare = np.repeat([0, 1, 2], [1000, 1, 1])  # the minimums come out of the largest share
    assert np.bincount(rare[baselines.sample_rows(rare, 3, seed=0)]).tolist() == [1, 1, 1]


def test_comparison_puts_every_model_side_by_side_best_first():
    report = {"classifiers": {"logistic_regression": {"accuracy": 0.95, "top_k_accuracy": 1.0,
                                                      "loss": 0.2},
                              "linear_svm": {"accuracy": 0.9, "top_k_accuracy": 0.99,
                                             "loss": 0.4}}}
    evaluate = {"accuracy": 0.985, "top_k_accuracy": 1.0, "loss": 0.05,
                "head_accuracy": 0.94, "head_top_k_accuracy": 1.0, "head_loss": 0.2}
    rows = comparison(report, evaluate)
    assert [r["model"] for r in rows] == ["fine_tuned", "logistic_regression", "keras_head",
                                          "linear_svm"]
    assert rows[2] == {"model": "keras_head", "route": "features + Keras head",
                       "accuracy": 0.94, "top_k_accuracy": 1.0, "loss": 0.2}
    table = markdown_table(rows, k=5).splitlines()
    assert table[0] == "| model | route | test accuracy | top-5 accuracy | loss |"
    assert table[2] == "| fine_tuned | fine-tuned base + head | 0.9850 | 1.0000 | 0.0500 |"


# --- the stage --------------------------------------------------------------------------

class Recorder:
    """A Tracker that keeps what the stage logs to its child runs."""

    def __init__(self):
        self.children = []

    def child(self, name, params):
        run = {"name": name, "params": params, "metrics": [], "status": None}
        self.children.append(run)

        class Child:
            def log(self, metrics, step=0):
                run["metrics"] += [(k, v, step) for k, v in metrics.items()]

            def end(self, status="FINISHED", tags=None):
                run["status"] = status

        return Child()


@pytest.fixture
def feature_files(project):
    """Cached features of three classes in the project, as the features stage leaves them."""
    paths.FEATURES.mkdir(parents=True)
    for split, data in {"train": blobs(30, 1), "augmented": blobs(30, 4),
                        "validation": blobs(15, 2), "test": blobs(20, 3)}.items():
        features.save(features.feature_folder(split), data)
    paths.PREPARED.mkdir(parents=True)
    paths.PREPARED_LABELS.write_text(json.dumps(LABELS))
    return project


def small(overrides: dict | None = None):
    return make_config({"baselines.gradient_boosting": [5, 10], **(overrides or {})})


def test_stage_reports_every_classifier_and_logs_one_child_run_each(feature_files):
    tracker = Recorder()
    metrics = stage.run(small(), tracker=tracker)
    assert set(metrics) == {f"{name}_{key}" for name in baselines.CLASSIFIERS
                            for key in ("accuracy", "top_k_accuracy", "loss")}
    assert all(metrics[f"{name}_accuracy"] >= 0.9 for name in baselines.CLASSIFIERS)
    report = json.loads((paths.REPORTS / "baselines.json").read_text())
    assert {k: report[k] for k in metrics} == metrics
    assert report["split_sizes"] == {"train": 180, "validation": 45, "test": 60}
    assert list(report["classifiers"]) == list(baselines.CLASSIFIERS)
    assert report["classifiers"]["gradient_boosting"]["knob"] == "max_iter"
    with np.load(paths.PROBE) as probe:  # the probe as a softmax layer, for the fine-tune
        test = features.load("test")
        predicted = np.argmax(test.x @ probe["kernel"] + probe["bias"], axis=1)
    assert np.mean(predicted == test.y) == report["classifiers"]["logistic_regression"]["accuracy"]
    # in MLflow: test/logistic_regression_accuracy beside evaluate's test/accuracy
    assert stage.STAGE.metric_name("logistic_regression_accuracy") == \
        "test/logistic_regression_accuracy"

    assert [c["name"] for c in tracker.children] == list(baselines.CLASSIFIERS)
    for child in tracker.children:
        figures = report["classifiers"][child["name"]]
        assert child["status"] == "FINISHED"
        assert child["params"][figures["knob"]] == figures["value"]
        assert child["params"]["candidates"] == [r["value"] for r in figures["search"]]
        logged = {k: v for k, v, _ in child["metrics"]}
        assert logged["test/accuracy"] == figures["accuracy"]
        assert logged["test/loss"] == figures["loss"]
        assert logged["seconds"] > 0 and "seconds" not in figures  # MLflow only
        steps = [(s, v) for k, v, s in child["metrics"] if k == "search/val_accuracy"]
        assert steps == [(i, r["val_accuracy"]) for i, r in enumerate(figures["search"])]


def test_stage_fits_the_linear_models_on_at_most_max_train_rows(feature_files, monkeypatch):
    """180 training rows, max_train 90: a stratified sample of 90 (30 per class) is all
    the stage reads, the linear models fit on it, boosting on its own sample of that."""
    read = []
    load_training = features.load_training
    monkeypatch.setattr(features, "load_training",
                        lambda *a, **kw: read.append(kw.get("rows")) or load_training(*a, **kw))
    fitted = []
    for name in ("logistic_regression", "linear_svm", "gradient_boosting"):
        search = baselines.CLASSIFIERS[name]
        monkeypatch.setitem(baselines.CLASSIFIERS, name, lambda train, *a, search=search: (
            fitted.append(train) or search(train, *a)))
    stage.run(small({"baselines.max_train": 90, "baselines.boosting_max_train": 60}))
    report = json.loads((paths.REPORTS / "baselines.json").read_text())
    assert report["split_sizes"] == {"train": 180, "validation": 45, "test": 60}
    assert report["train_rows"] == 90 and len(read[0]) == 90
    assert [report["classifiers"][n]["train_rows"] for n in baselines.CLASSIFIERS] == [90, 90, 60]
    whole = features.load_training()
    for train in fitted:
        assert np.bincount(train.y).tolist() == [30, 30, 30]
        assert np.array_equal(train.x, whole.x[read[0]])
    assert all(report[f"{n}_accuracy"] >= 0.9 for n in baselines.CLASSIFIERS)


def test_chunked_scores_equal_whole_ones(splits, params, monkeypatch, tmp_path):
    train, validation, test = splits
    whole = {name: search(train, validation, params, seed=0).predict_proba(test.x)
             for name, search in baselines.CLASSIFIERS.items()}
    monkeypatch.setattr(baselines, "SCORE_CHUNK", 7)  # 90 test rows: 13 chunks
    features.save(tmp_path / "test", test)
    on_disk = features.open_split("test", tmp_path)  # read from disk a chunk at a time
    for name, search in baselines.CLASSIFIERS.items():
        found = search(train, validation, params, seed=0)
        assert np.allclose(found.predict_proba(test.x), whole[name], rtol=1e-6, atol=1e-9)
        assert np.allclose(found.predict_proba(on_disk.x), whole[name], rtol=1e-6, atol=1e-9)


def test_stage_logs_nested_mlflow_runs_named_after_the_classifiers(feature_files, embedded,
                                                                  monkeypatch):
    import mlflow

    from tlearn.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", embedded.uri)
    assert main(["baselines", "-S", "baselines.gradient_boosting=[5, 10]"]) == 0
    client = mlflow.MlflowClient(embedded.uri)
    (parent,) = client.search_runs(client.get_experiment_by_name("tlearn").experiment_id,
                                   filter_string="tags.stage = 'baselines' and "
                                                 "attributes.run_name = 'baselines'")
    assert parent.data.metrics["test/logistic_regression_accuracy"] >= 0.9
    children = client.search_runs(parent.info.experiment_id, filter_string=
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == sorted(baselines.CLASSIFIERS)
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test/accuracy"] == \
            parent.data.metrics[f"test/{run.info.run_name}_accuracy"]


def test_the_svm_temperature_is_the_one_with_the_least_log_loss():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    # margins that are right 80 % of the time and far too confident
    scores = 20 * (np.eye(3)[np.where(rng.random(300) < 0.8, y, (y + 1) % 3)] - 0.5)
    t = baselines.fit_temperature(scores, y)

    def loss(temperature):
        z = scores / temperature
        z -= z.max(axis=1, keepdims=True)
        return -np.mean(z[np.arange(300), y] - np.log(np.exp(z).sum(axis=1)))

    assert t > 1  # over-confident margins are softened
    assert loss(t) <= min(loss(t * 0.9), loss(t * 1.1), loss(1.0))


def test_a_validation_split_of_one_image_per_class_is_enough(splits, params):
    train, _, test = splits
    for search in baselines.CLASSIFIERS.values():
        found = search(train, blobs(1, 5), params, seed=0)
        assert found.predict_proba(test.x).shape == (len(test), 3)
