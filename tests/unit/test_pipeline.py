"""``tlearn run`` without running DVC: the command it builds and its checks up front."""

from __future__ import annotations

import pytest

from conftest import REPO
from tlearn import config, pipeline
from tlearn.cli import main
from tlearn.errors import TlearnError


def test_run_command_is_dvc_repro_or_an_experiment():
    assert pipeline.dvc_command([], False, [])[1:] == ["repro"]
    assert pipeline.dvc_command([], False, ["evaluate"])[1:] == ["repro", "evaluate"]
    sets = config.parse_sets(["head.dropout=0.2", "head.units=[64, 32]"])
    assert pipeline.dvc_command(sets, False, [])[1:] == [
        "exp", "run", "-S", "head.dropout=0.2", "-S", "head.units=[64, 32]"]
    assert pipeline.dvc_command([], True, [], name="try-1")[1:] == ["exp", "run", "-n", "try-1"]


def test_project_params_left_at_params_yaml_or_empty_keep_params_yaml():
    pairs = config.parse_sets(["data.source=", "model.backbone=efficientnet_lite0",
                               "head.epochs= ", "head.dropout=params.yaml"], mlproject=True)
    assert pairs == [("model.backbone", "efficientnet_lite0")]
    with pytest.raises(TlearnError, match="KEY=VALUE"):
        config.parse_sets(["head.dropout"])


def test_unset_mlproject_parameters_read_params_yaml_in_mlflow_and_change_nothing():
    """What `mlflow run .` logs for each parameter and the command it runs, computed by
    MLflow's own MLproject code."""
    import shlex

    from mlflow.projects import _project_spec

    from tlearn.cli import build_parser

    main_entry = _project_spec.load_project(str(REPO)).get_entry_point("main")
    logged, _ = main_entry.compute_parameters({}, storage_dir=None)
    assert set(logged.values()) == {"params.yaml"}  # not MLflow's quoted empty string ''

    def overrides(user_params: dict) -> list[tuple[str, str]]:
        argv = shlex.split(main_entry.compute_command(user_params, storage_dir=None))
        assert argv[:2] == ["tlearn", "run"]
        return config.parse_sets(build_parser().parse_args(argv[1:]).project_param,
                                 mlproject=True)

    assert overrides({}) == []
    assert overrides({"dropout": "0.2", "head_units": "[512, 128]"}) == [
        ("head.units", "[512, 128]"), ("head.dropout", "0.2")]


def test_run_rejects_a_bad_override_before_touching_dvc_or_mlflow(project, capsys,
                                                                  clean_tracking_env):
    assert main(["run", "-S", "head.dropout=2"]) == 2
    assert "head.dropout must be <= 0.95" in capsys.readouterr().err
    assert not (project / "mlflow.db").exists()
