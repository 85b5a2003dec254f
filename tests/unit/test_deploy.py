"""deploy/: the schedules parse and name real commands; systemd accepts the units."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, crontab_command
from tlearn.cli import build_parser



def test_the_crontab_entry_runs_tlearn_retrain_with_a_log():
    command = crontab_command()
    assert ".venv/bin/tlearn retrain" in command and ">> logs/retrain.log 2>&1" in command
    # the integration test tests/integration/test_retrain.py runs this exact line


def test_the_workflow_parses_and_its_steps_are_real_commands():
    workflow = yaml.safe_load((REPO / "deploy" / "github" / "retrain.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert "schedule" in triggers and "workflow_dispatch" in triggers
    runs = [step["run"] for step in workflow["jobs"]["retrain"]["steps"] if "run" in step]
    commands = [shlex.split(line) for run in runs for line in run.splitlines()]
    for argv in commands:
        if argv[0] == "make":  # a target of the Makefile (-n: say, do not run)
            assert subprocess.run(["make", "-n", "-C", str(REPO), *argv[1:]],
                                  capture_output=True).returncode == 0, argv
        elif argv[0] == ".venv/bin/tlearn":
            build_parser().parse_args(argv[1:])  # a real subcommand and options
        elif argv[0] == ".venv/bin/dvc":
            assert argv[1] in ("pull", "push")
        else:
            assert argv[0] == "git"
    assert any(a[:2] == [".venv/bin/tlearn", "retrain"] for a in commands)
    assert [a[1] for a in commands if a[0] == ".venv/bin/dvc"] == ["pull", "push"]
    assert any(step.get("uses", "").startswith("actions/upload-artifact")
               for step in workflow["jobs"]["retrain"]["steps"])


@pytest.mark.skipif(not shutil.which("systemd-analyze"),
                    reason="systemd-analyze is missing (Debian's systemd package)")
def test_systemd_accepts_the_service_and_timer(tmp_path):
    # %h/tlearn is the user's clone: here a folder whose tlearn is this virtualenv's
    clone = tmp_path / "clone"
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / ".venv" / "bin" / "tlearn").symlink_to(Path(sys.executable).parent / "tlearn")
    for name in ("tlearn-retrain.service", "tlearn-retrain.timer"):
        text = (REPO / "deploy" / name).read_text().replace("%h/tlearn", str(clone))
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "tlearn-retrain.service"),
                           str(tmp_path / "tlearn-retrain.timer")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
