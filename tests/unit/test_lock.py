"""tlearn.lock: one holder at a time; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tlearn import lock


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    path = tmp_path / ".tlearn" / "job.lock"
    with lock.held(path, "job") as me:
        assert json.loads(path.read_text())["pid"] == os.getpid() == me["pid"]
        with pytest.raises(lock.Locked, match=rf"^job: already running as pid {os.getpid()} "
                                              r"on .* since \d{4}-\d\d-\d\d") as info:
            with lock.held(path, "job"):
                pass
        assert info.value.exit_code == 3
    assert not path.exists() and list(path.parent.iterdir()) == []  # released, no leftovers


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / "job.lock"
    # a process that takes the lock and dies without releasing it (as SIGKILL leaves it)
    code = (f"import os; from pathlib import Path; from tlearn import lock\n"
            f"held = lock.held(Path({str(path)!r}), 'job'); held.__enter__(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)
    dead = json.loads(path.read_text())["pid"]
    assert not lock.holder_alive(json.loads(path.read_text()))
    with lock.held(path, "job") as me:
        assert me["pid"] != dead and json.loads(path.read_text())["pid"] == os.getpid()
