"""What the benchmarks share: scratch projects, running a stage with its wall time and
peak memory, figures as median/min/max, the table they print and reports/bench.json."""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
CATS_AND_DOGS = REPO.parent / "shared" / "datasets" / "cats_and_dogs"
BENCH_JSON = REPO / "reports" / "bench.json"
BIN = Path(sys.executable).parent


def scratch_project(overrides: dict[str, object], dvc: bool = False) -> Path:
    """A temporary project: params.yaml with ``{"group.key": value}`` set, dvc.yaml and the
    package source (dvc.yaml's code deps); a git + DVC repository when ``dvc``."""
    root = Path(tempfile.mkdtemp(prefix="tlearn-bench-"))
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "src" / "tlearn", root / "src" / "tlearn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    set_params(root, overrides)
    if dvc:
        for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
            subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def set_params(root: Path, overrides: dict[str, object]) -> None:
    """Set ``{"group.key": value}`` in the project's params.yaml."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in overrides.items():
        *groups, key = dotted.split(".")
        node = params
        for group in groups:
            node = node.setdefault(group, {})
        node[key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def environment() -> dict[str, str]:
    """The stages' environment: this virtualenv first, tracking off, TensorFlow quiet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", TLEARN_TRACKING_OFF="1",
               TF_CPP_MIN_LOG_LEVEL="3", DVC_NO_ANALYTICS="1")
    return env


def measured(cmd: Sequence[str], cwd: Path) -> dict:
    """Run ``cmd``; its wall seconds and peak memory (MB, the largest of its processes)
    and its stderr. Raises with the stderr's end when it fails."""
    proc = subprocess.run(measuring(cmd), cwd=cwd, env=environment(), capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return {**marks(proc.stdout)[-1], "stderr": proc.stderr}


def measuring(cmd: Sequence[str]) -> list[str]:
    """``cmd`` run through tlearn.bench.measure (wall time and peak memory)."""
    return [sys.executable, "-m", "tlearn.bench.measure", *cmd]


def marks(stdout: str) -> list[dict]:
    """What tlearn.bench.measure printed, in order."""
    from tlearn.bench.measure import MARK

    return [json.loads(line[len(MARK):]) for line in stdout.splitlines()
            if line.startswith(MARK)]


def repeat(fn: Callable[[], float], times: int) -> dict:
    """``fn()`` ``times`` times: the median, min and max of what it returns."""
    values = [fn() for _ in range(times)]
    return figure(values)


def paired(first: Callable[[], float], second: Callable[[], float], times: int) -> dict:
    """``first()`` then ``second()``, ``times`` rounds, so both see the machine's same
    moments: each one's figure and the median of the rounds' ``second / first``."""
    rounds = [(first(), second()) for _ in range(times)]
    return {"first": figure([a for a, _ in rounds]), "second": figure([b for _, b in rounds]),
            "ratio": round(statistics.median(b / a for a, b in rounds), 3)}


def figure(values: Sequence[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def machine() -> dict:
    return {"cores": os.cpu_count(), "python": sys.version.split()[0],
            "date": time.strftime("%Y-%m-%d %H:%M")}


def save(section: str, figures: dict) -> None:
    """Put one benchmark's figures into reports/bench.json (the others' stay)."""
    BENCH_JSON.parent.mkdir(exist_ok=True)
    report = json.loads(BENCH_JSON.read_text()) if BENCH_JSON.is_file() else {}
    report[section] = {"machine": machine(), **figures}
    BENCH_JSON.write_text(json.dumps(report, indent=2) + "\n")


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([title, rule, lines[0], rule, *lines[1:], ""])


def peak_rss_mb() -> float:
    """This process' peak memory so far."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
