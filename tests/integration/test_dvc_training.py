"""`dvc repro` of the whole pipeline on tiny synthetic data in a temporary project:
outputs and metrics, nothing reruns the second time, without tuning train_head trains
params.yaml's head exactly, a finetune param reruns only finetune and evaluate, raising
only tune.n_trials reruns tune for the added trials, a finetune killed with SIGKILL
resumes when rerun, and a linear probe better on validation becomes the model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import copy_project, save_image

BIN = Path(sys.executable).parent
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_RUN_ID", None)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def set_params(root: Path, **updates) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in updates.items():
        group, key = dotted.split("__")
        params[group][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def colour_images(folder: Path, per_class: int = 16) -> None:
    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        for i in range(per_class):
            noise = rng.integers(-40, 40, (40, 40, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            save_image(folder / label / f"{label}_{i}.png", pixels)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    copy_project(root)
    colour_images(root / "images")
    set_params(root, data__source="images", prepare__image_size=32, augment__copies=1,
               head__epochs=30, head__batch_size=16, head__learning_rate=0.003, head__units=[16], finetune__epochs=2, finetune__unfreeze=10,
               finetune__learning_rate=0.0001, tune__n_trials=0)
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"],
                [str(BIN / "dvc"), "config", "core.analytics", "false"]):
        run(cmd, root)
    return root


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_repro_builds_every_output_with_good_metrics(project):
    result = run([str(BIN / "dvc"), "repro"], project)
    assert stages_run(result.stdout) == ["download", "prepare", "augment", "features", "baselines",
                                         "tune",
                                         "train_head", "finetune", "evaluate"]
    report = json.loads((project / "reports/evaluate.json").read_text())
    assert {"accuracy", "top_k_accuracy", "loss", "head_accuracy", "n_test",
            "per_class"} <= report.keys()
    assert report["n_test"] == 6 and report["k"] == 3
    assert report["accuracy"] >= 0.88 and report["head_accuracy"] >= 0.88
    assert set(report["per_class"]) == set(COLOURS)
    baselines = json.loads((project / "reports/baselines.json").read_text())
    assert list(baselines["classifiers"]) == ["logistic_regression", "linear_svm",
                                              "gradient_boosting"]
    assert baselines["logistic_regression_accuracy"] >= 0.8  # plain colours: easy
    assert {row["model"] for row in report["comparison"]} == {
        *baselines["classifiers"], "keras_head", "fine_tuned"}
    for name in ("confusion_matrix.png", "training_curves.png", "misclassified.png"):
        assert (project / "reports" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    head_rows = (project / "reports/head_history.csv").read_text().splitlines()
    ft_rows = (project / "reports/finetune_history.csv").read_text().splitlines()
    assert ft_rows[1].split(",")[0] == str(len(head_rows))  # epochs continue after the head


def test_dvc_compares_a_handful_of_headline_figures(project):
    """`dvc metrics show` (and so `dvc exp show`) lists reports/metrics.json only, a few
    columns; no report DVC or git track holds a timing, so reruns do not rewrite them."""
    out = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], project).stdout)
    files = next(iter(out.values()))["data"]  # the workspace
    assert list(files) == ["reports/metrics.json"]
    headline = files["reports/metrics.json"]["data"]
    assert set(headline) == {"accuracy", "loss", "top_k_accuracy", "head_accuracy",
                             "tta_accuracy", "val_accuracy", "head_val_accuracy"}
    for report in (project / "reports").glob("*.json"):
        text = report.read_text()
        assert "seconds" not in text and "per_second" not in text, report.name


def test_without_tuning_train_head_trains_params_yaml_s_head_exactly(project):
    """tune.n_trials 0 writes params.yaml's head through: the same weights and history as
    training that head directly, as before the tune stage existed."""
    import keras

    from tlearn import config, features, train
    from tlearn.io import read_csv
    from tlearn.models import preprocess  # noqa: F401  (registers the layer head.keras uses)

    params = yaml.safe_load((project / "params.yaml").read_text())
    assert yaml.safe_load((project / "models/head_params.yaml").read_text()) == \
        {"head": params["head"]}
    cfg = config.load(project / "params.yaml")
    folder = project / "data/features"
    head, history = train.train_head(features.load_training(folder),
                                     features.load("validation", folder), len(COLOURS),
                                     cfg.head, seed=cfg.base.seed)
    trained = keras.saving.load_model(project / "models/head.keras").get_layer("head")
    assert all(np.array_equal(a, b) for a, b in zip(trained.get_weights(), head.get_weights()))
    assert read_csv(project / "reports/head_history.csv") == history


def test_second_repro_runs_nothing(project):
    result = run([str(BIN / "dvc"), "repro"], project)
    assert stages_run(result.stdout) == []


def changed_stages(project: Path) -> dict[str, list[str]]:
    """``dvc status``: stage -> the deps it lists as modified."""
    out = json.loads(run([str(BIN / "dvc"), "status", "--json"], project).stdout or "{}")
    return {stage: sorted(path for entry in changes for change in entry.get("changed deps", [])
                          for path in ([change] if isinstance(change, str) else change))
            for stage, changes in out.items()}


def test_editing_library_code_marks_exactly_the_stages_that_use_it(project):
    train_py = project / "src/tlearn/train.py"
    original = train_py.read_text()
    train_py.write_text(original + "\n# an edit\n")
    try:
        assert changed_stages(project) == {"tune": ["src/tlearn/train.py"],
                                           "train_head": ["src/tlearn/train.py"],
                                           "finetune": ["src/tlearn/train.py"]}
    finally:
        train_py.write_text(original)
    assert changed_stages(project) == {}


def test_finetune_learning_rate_reruns_only_finetune_and_evaluate(project):
    set_params(project, finetune__learning_rate=0.0002)
    result = run([str(BIN / "dvc"), "repro"], project)
    assert stages_run(result.stdout) == ["finetune", "evaluate"]


def test_plain_repros_are_comparable_pipeline_runs_in_mlflow(project):
    """Each `dvc repro` is one pipeline run in MLflow grouping the stages it executed, with
    every params.yaml key and the final test metrics, like `tlearn run`."""
    import mlflow

    set_params(project, head__dropout=0.5)
    result = run([str(BIN / "dvc"), "repro"], project)
    assert stages_run(result.stdout) == ["tune", "train_head", "finetune", "evaluate"]
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("tlearn").experiment_id
    pipelines = client.search_runs([exp_id], filter_string="tags.stage = 'pipeline'",
                                   order_by=["attributes.start_time ASC"])
    assert len(pipelines) == 3  # the first repro, the learning-rate change, this one
    expected = [["augment", "baselines", "download", "evaluate", "features", "finetune", "prepare",
                 "train_head", "tune"], ["evaluate", "finetune"],
                ["evaluate", "finetune", "train_head", "tune"]]
    for pipeline, stages in zip(pipelines, expected):
        assert pipeline.info.status == "FINISHED"
        nested = client.search_runs(
            [exp_id], filter_string=f"tags.mlflow.parentRunId = '{pipeline.info.run_id}'")
        assert sorted(r.info.run_name for r in nested) == stages
        assert "test/accuracy" in pipeline.data.metrics and "head.dropout" in pipeline.data.params
    first, last = pipelines[0], pipelines[-1]
    assert (first.data.params["head.dropout"], last.data.params["head.dropout"]) == ("0.3", "0.5")
    report = json.loads((project / "reports/evaluate.json").read_text())
    assert last.data.metrics["test/accuracy"] == pytest.approx(report["accuracy"])
    assert set(first.data.params) == set(last.data.params)


def test_raising_only_n_trials_reruns_tune_which_runs_only_the_added_trials(project):
    def repro_tune() -> tuple[list[str], dict]:
        result = run([str(BIN / "dvc"), "repro", "tune"], project)
        return stages_run(result.stdout), json.loads((project / "reports/tune.json").read_text())

    set_params(project, tune__n_trials=2)
    ran, report = repro_tune()
    assert ran == ["tune"] and (report["ran"], report["trials"]) == (2, 2)
    # train_head sees the tuned head through its params file
    assert "models/head_params.yaml" in changed_stages(project)["train_head"]
    set_params(project, tune__n_trials=3)
    ran, resumed = repro_tune()
    assert ran == ["tune"] and (resumed["ran"], resumed["trials"]) == (1, 3)
    assert resumed["study"] == report["study"]
    ran, _ = repro_tune()
    assert ran == []  # twice: nothing runs


def test_killed_finetune_resumes_where_it_stopped(project):
    set_params(project, finetune__epochs=12, finetune__patience=20)
    state = project / "data/checkpoints/finetune/state.json"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([str(BIN / "tlearn"), "finetune"], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "finetune ended before it could be killed"
    done = json.loads(state.read_text())["epochs_done"]
    assert 1 <= done < 12
    result = run([str(BIN / "tlearn"), "finetune"], project)
    assert f"resuming from the checkpoint" in result.stderr
    rerun = [line for line in result.stderr.splitlines() if "tlearn.train: epoch" in line]
    assert len(rerun) == 12 - done  # finished epochs are not trained again
    head_epochs = len((project / "reports/head_history.csv").read_text().splitlines()) - 1
    rows = (project / "reports/finetune_history.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(head_epochs + 1, head_epochs + 13))
    metrics = json.loads((project / "reports/finetune.json").read_text())
    assert metrics["epochs"] == 12 and metrics["val_accuracy"] >= 0.88
    assert not state.parent.exists()  # a finished run clears its checkpoint


def test_a_linear_probe_better_on_validation_becomes_the_model(project):
    """The floor: when the linear probe's validation accuracy beats the fine-tuned model's,
    models/model.keras is the frozen extractor with the probe as its softmax head."""
    import keras

    from tlearn.data.store import SplitReader
    from tlearn.models import preprocess  # noqa: F401  registers tlearn's layer for loading

    set_params(project, finetune__epochs=1)
    probe_file = project / "models/probe.npz"
    with np.load(probe_file) as probe:
        weights = {"kernel": probe["kernel"], "bias": probe["bias"]}
    np.savez(probe_file, **weights, val_accuracy=1.5)  # beats any model (the last test:
    result = run([str(BIN / "tlearn"), "finetune"], project)  # it leaves the project so)
    assert json.loads((project / "reports/finetune.json").read_text())["kept_probe"]
    assert "the linear probe (validation accuracy 1.5000) beats" in result.stderr
    model = keras.saving.load_model(project / "models/model.keras")
    extractor = keras.saving.load_model(project / "data/features/extractor.keras")
    images = SplitReader(project / "data/prepared/test").images.read(0, 6).astype("float32")
    with np.load(project / "models/probe.npz") as probe:
        logits = extractor.predict(images, verbose=0) @ probe["kernel"] + probe["bias"]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    probe_probabilities = expected / expected.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(images, verbose=0), probe_probabilities, atol=1e-5)

    set_params(project, finetune__probe_floor=False)  # the floor off: the fine-tune ships
    result = run([str(BIN / "tlearn"), "finetune"], project)
    assert not json.loads((project / "reports/finetune.json").read_text())["kept_probe"]
    assert "models/model.keras is the fine-tuned model (probe_floor: false)" in result.stderr
    fine_tuned = keras.saving.load_model(project / "models/model.keras")
    assert not np.allclose(fine_tuned.predict(images, verbose=0), probe_probabilities, atol=1e-3)
    validation = SplitReader(project / "data/prepared/validation")
    predicted = fine_tuned.predict(validation.images.read().astype("float32"),
                                   verbose=0).argmax(1)
    assert np.mean(predicted == validation.labels) == pytest.approx(
        json.loads((project / "reports/finetune.json").read_text())["val_accuracy"])
