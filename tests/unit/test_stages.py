"""The stage declarations (tlearn.stages) and dvc.yaml agree: the same stages, deps
(data and code), outs, params and reports, so the two can never drift apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO
from tlearn import cli, stages
from tlearn.stages import code_deps

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def entries(spec: dict, section: str) -> list[str]:
    """Paths of a dvc.yaml section, whether listed plainly or with options."""
    return [name for entry in spec.get(section) or []
            for name in ([entry] if isinstance(entry, str) else list(entry))]


def test_dvc_yaml_has_exactly_the_declared_stages_in_pipeline_order():
    assert list(DVC_YAML) == list(stages.all_stages())
    assert list(stages.all_stages())[:3] == ["download", "prepare", "augment"]
    assert list(stages.all_stages())[-1] == "evaluate"


@pytest.mark.parametrize("name", list(stages.all_stages()))
def test_dvc_yaml_entry_matches_the_declaration(name):
    stage, spec = stages.get(name), DVC_YAML[name]
    assert spec["cmd"] == f"tlearn {name}"
    assert entries(spec, "deps") == [str(p) for p in (*stage.deps, *code_deps(name))]
    # params.yaml keys, then each params file another stage writes with its keys
    assert spec["params"] == [*stage.params, *({str(path): list(keys)}
                                               for path, keys in stage.params_files.items())]
    report = [str(stage.report)] if stage.report else []
    uncached = [str(p) for p in stage.uncached]
    assert entries(spec, "outs") == [str(p) for p in stage.outs] + uncached + report
    assert entries(spec, "metrics") == [str(p) for p in stage.metrics]
    assert entries(spec, "plots") == [str(p) for p in stage.plots]
    reports = [entry for section in ("outs", "metrics", "plots")
               for entry in spec.get(section) or [] if isinstance(entry, dict)]
    assert [name for entry in reports for name in entry] == uncached + report + \
        entries(spec, "metrics") + entries(spec, "plots")  # git keeps reports, not DVC's cache
    assert all(options.get("cache") is False for entry in reports for options in entry.values())


def test_every_stage_keeps_its_figures_in_a_json_report():
    """The pipeline run of a later execution reads the figures of stages it skipped."""
    for stage in stages.all_stages().values():
        assert stage.report.suffix == ".json" and stage.report.parent.name == "reports"


def test_dvc_metrics_are_a_handful_of_headline_figures():
    """`dvc exp show` and `dvc metrics diff` get one small file, not every report."""
    metrics = [str(p) for stage in stages.all_stages().values() for p in stage.metrics]
    assert metrics == ["reports/metrics.json"]


def test_every_stage_is_a_subcommand_with_its_help():
    parser = cli.build_parser()
    choices = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    for name, stage in stages.all_stages().items():
        assert choices[name].description == stage.help
        assert choices[name].get_default("stage") == name


def test_code_deps_follow_imports_and_leave_out_what_never_changes_outputs():
    assert Path("src/tlearn/train.py") in code_deps("train_head")
    assert Path("src/tlearn/train.py") in code_deps("finetune")
    assert Path("src/tlearn/train.py") not in code_deps("prepare")
    assert Path("src/tlearn/checkpoint.py") in code_deps("finetune")
    assert Path("src/tlearn/checkpoint.py") not in code_deps("train_head")  # type hints only
    for name in stages.all_stages():
        deps = {str(p) for p in code_deps(name)}
        assert f"src/tlearn/stages/{name}.py" in deps
        assert not deps & {"src/tlearn/config.py", "src/tlearn/cli.py",
                           "src/tlearn/stages/__init__.py"}
        assert not any(d.startswith("src/tlearn/tracking/") for d in deps)
        # a stage imported for its declaration brings none of its code
        others = {f"src/tlearn/stages/{o}.py" for o in stages.all_stages() if o != name}
        assert not deps & others


def test_upstream_follows_reads_and_writes():
    assert stages.upstream_of("download") == set()
    assert stages.upstream_of("tune") == {"download", "prepare", "augment", "features"}
    # train_head reads tune's output as a params file: the tuned head
    assert stages.upstream_of("train_head") == {"download", "prepare", "augment", "features",
                                                "tune"}
    assert stages.upstream_of("evaluate") == set(stages.all_stages()) - {"evaluate"}


def test_a_params_file_of_another_stage_is_read_in_place_of_params_yaml(tmp_path):
    """train_head's head comes from tune's models/head_params.yaml; -S still wins."""
    import yaml

    from conftest import PARAMS
    from tlearn import config

    stage = stages.get("train_head")
    assert stage.params_files == {Path("models/head_params.yaml"): ("head",)}
    assert "head" not in stage.params and "head" in stage.param_keys
    tuned = yaml.safe_load(PARAMS.read_text())["head"] | {"units": [], "dropout": 0.1}
    written = tmp_path / "head_params.yaml"
    written.write_text(yaml.safe_dump({"head": tuned}))
    cfg = config.load(PARAMS, {"head.epochs": 3}, {written: ("head",)})
    assert (cfg.head.units, cfg.head.dropout, cfg.head.epochs) == ([], 0.1, 3)
    assert cfg.tune == config.load(PARAMS).tune  # other groups stay params.yaml's
    written.write_text(yaml.safe_dump({"head": tuned | {"dropout": 2}}))
    with pytest.raises(config.ConfigError, match=f"^{written}: head.dropout must be <= 0.95"):
        config.load(PARAMS, params_files={written: ("head",)})
    with pytest.raises(config.ConfigError, match="not found .*run `dvc repro` first"):
        config.load(PARAMS, params_files={tmp_path / "missing.yaml": ("head",)})


def test_stage_options_become_command_line_options():
    parser = cli.build_parser()
    assert parser.parse_args(["tune", "--workers", "3"]).workers == 3
    assert parser.parse_args(["tune"]).workers == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["train_head", "--workers", "3"])  # only the stage that declares it


def test_no_stage_name_is_a_string_literal_outside_its_declaration():
    """Tracking, the CLI and the pipeline learn stage names from the declarations."""
    import ast

    names = set(stages.all_stages())
    for path in [*(REPO / "src/tlearn/tracking").glob("*.py"), REPO / "src/tlearn/cli.py",
                 REPO / "src/tlearn/pipeline.py"]:
        literals = {node.value for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert not literals & names, f"{path.name} names stages {literals & names}"


def test_every_declared_params_key_is_in_params_yaml():
    """DVC refuses a stage whose params key is not written in params.yaml: a key a preset
    provides is declared through its group."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for stage in stages.all_stages().values():
        for key in stage.params:
            node = raw
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{stage.name}: {key}"
                node = node[part]
