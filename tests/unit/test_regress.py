"""``tlearn regress``: the Dense 16-8-1 network beside a linear regression on a table.
The default (scikit-learn's diabetes data) end to end with its MLflow run; a CSV from a
path and from a local server; bad tables fail in one line with exit code 2."""

from __future__ import annotations

import functools
import http.server
import json
import threading

import numpy as np
import pandas as pd
import pytest

from conftest import make_config
from tlearn import regress
from tlearn.cli import main
from tlearn.errors import TlearnError


def linear_table(path, rows: int = 200, seed: int = 0):
    """price = 3 a - 2 b + 0.5 c + noise: both models should explain nearly all of it."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(10, 2, rows), rng.normal(0, 5, rows), rng.uniform(0, 100, rows)
    frame = pd.DataFrame({"a": a, "b": b, "c": c,
                          "price": 3 * a - 2 * b + 0.5 * c + rng.normal(0, 1, rows)})
    frame.to_csv(path, index=False)
    return path


def test_the_default_table_is_the_bundled_diabetes_data():
    table = regress.load_table("diabetes", "target")
    assert table.features.shape == (442, 10) and table.target.name == "target"
    assert list(table.features.columns)[:3] == ["age", "sex", "bmi"]


def test_rows_print_as_the_material_prints_them():
    rows = [{"actual": 7.2, "predicted": 9.4712}, {"actual": 18.8, "predicted": 21.751}]
    assert regress.format_rows(rows, "Price") == (
        "Real Price: 7.200, Predicted Price: 9.471\nReal Price: 18.800, Predicted Price: 21.751\n")


def test_splits_hold_out_test_rows_then_validation_rows():
    table = regress.load_table("diabetes", "target")
    splits = regress.split(table, make_config().regress, seed=42)
    assert (len(splits.y_train), len(splits.y_validation), len(splits.y_test)) == (282, 71, 89)
    together = np.concatenate([splits.y_train, splits.y_validation, splits.y_test])
    assert sorted(together) == sorted(table.target.to_numpy(dtype="float32"))


@pytest.mark.parametrize("content, target, message", [
    (None, "price", r"regress.source: .*missing.csv is not a file, an http\(s\) URL or "
                    r"'diabetes'"),
    ("a,b,price\n1,2,3\n" * 20, "cost", r"regress.target: no column 'cost' in .*\(columns: "
                                        r"a, b, price\)"),
    ("a,town,price\n" + "1,Oslo,3\n" * 20, "price",
     r"regress.source: .* has non-numeric columns: town \(encode them"),
    ("a,b,price\n" + "1,,3\n" * 20, "price", r"regress.source: .* has missing values in "
                                             r"columns: b"),
    ("a,price\n1,2\n", "price", r"regress.source: .* has 1 rows; at least 10"),
    ("", "price", r"regress.source: cannot read .* as CSV"),
])
def test_bad_tables_fail_in_one_line_with_exit_2(project, capsys, content, target, message):
    csv = project / ("missing.csv" if content is None else "table.csv")
    if content is not None:
        csv.write_text(content)
    code = main(["regress", "-S", f"regress.source={csv}", "-S", f"regress.target={target}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    import re

    assert re.search(message, err), err
    assert not (project / "reports").exists() and not (project / "mlflow.db").exists()


def test_a_csv_file_is_fitted_and_a_csv_url_reads_the_same_table(project, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    csv = linear_table(project / "houses.csv")
    cfg = make_config({"regress.source": str(csv), "regress.target": "price",
                       "regress.epochs": 40, "regress.learning_rate": 0.01})
    table = regress.load_table(str(csv), "price")
    result = regress.run(cfg, table)
    assert result.report["network"]["r2"] > 0.9
    assert result.report["linear_regression"]["r2"] > 0.99
    assert result.report["features"] == ["a", "b", "c"] and result.report["n_test"] == 40
    assert result.metrics["test/r2"] == result.report["network"]["r2"]
    assert [row["epoch"] for row in result.history] == list(range(1, len(result.history) + 1))
    assert list(result.example.columns) == ["a", "b", "c"]

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(project))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        served = regress.load_table(f"http://127.0.0.1:{httpd.server_port}/houses.csv", "price")
        with pytest.raises(TlearnError, match="regress.source: cannot read .*nothing.csv as CSV"):
            regress.load_table(f"http://127.0.0.1:{httpd.server_port}/nothing.csv", "price")
    finally:
        httpd.shutdown()
        httpd.server_close()
    pd.testing.assert_frame_equal(served.features, table.features)
    pd.testing.assert_series_equal(served.target, table.target)


def test_regress_on_the_default_data_is_tracked_in_mlflow(project, embedded, monkeypatch,
                                                         capsys):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", embedded.uri)
    assert main(["regress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 12 and all(line.startswith("Real target: ") for line in out[:10])
    assert out[10].startswith("network: R2 ") and out[11].startswith("linear_regression: R2 ")

    report = json.loads((project / "reports/regress.json").read_text())
    network, linear = report["network"], report["linear_regression"]
    assert network["r2"] > 0.35 and linear["r2"] > 0.35  # diabetes: ~0.45-0.55 both
    assert network["rmse"] < 65 and report["n_test"] == 89
    assert (project / "reports/regress.png").read_bytes()[:4] == b"\x89PNG"

    client = mlflow.MlflowClient(embedded.uri)
    (run,) = client.search_runs(client.get_experiment_by_name("tlearn-regress").experiment_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "regress"
    metrics = run.data.metrics
    assert metrics["test/r2"] == pytest.approx(network["r2"])
    assert metrics["test/rmse"] == pytest.approx(network["rmse"])
    assert metrics["test/mae"] == pytest.approx(network["mae"])
    assert metrics["test/linear_r2"] == pytest.approx(linear["r2"])
    assert run.data.params["regress.units"] == "[16, 8]"
    assert run.data.params["regress.source"] == "diabetes"
    loss = client.get_metric_history(run.info.run_id, "regress/loss")
    assert [m.step for m in loss] == list(range(1, network["epochs"] + 1))
    assert {a.path for a in client.list_artifacts(run.info.run_id, "reports")} == \
        {"reports/regress.json", "reports/regress.png"}

    # the logged model has a signature and predicts in the target's units from raw rows
    (logged,) = client.search_logged_models([run.info.experiment_id])
    model = mlflow.pyfunc.load_model(logged.model_uri)
    assert [c.name for c in model.metadata.get_input_schema().inputs][:3] == \
        ["age", "sex", "bmi"]
    table = regress.load_table("diabetes", "target")
    predictions = model.predict(table.features.head(5))
    assert predictions.shape == (5,) and 25 < predictions.mean() < 350
