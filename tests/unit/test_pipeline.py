"""``tlearn run`` without running DVC: the command it builds and its checks up front."""

from __future__ import annotations

import pytest

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


def test_project_params_with_empty_values_keep_params_yaml():
    pairs = config.parse_sets(["data.source=", "model.backbone=efficientnet_lite0",
                               "head.epochs= "], keep_empty=False)
    assert pairs == [("model.backbone", "efficientnet_lite0")]
    with pytest.raises(TlearnError, match="KEY=VALUE"):
        config.parse_sets(["head.dropout"])


def test_run_rejects_a_bad_override_before_touching_dvc_or_mlflow(project, capsys,
                                                                  clean_tracking_env):
    assert main(["run", "-S", "head.dropout=2"]) == 2
    assert "head.dropout must be <= 0.95" in capsys.readouterr().err
    assert not (project / "mlflow.db").exists()
