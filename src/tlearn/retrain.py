"""``tlearn retrain``: the job a scheduler (cron, systemd, CI) calls as new images arrive.

1. takes a lock (:mod:`tlearn.lock`; a second run exits 3 at once);
2. looks for changes without TensorFlow: a local folder's content fingerprint against the
   one download recorded (DVC does not look inside it), a local archive's sha256, and
   ``dvc status`` for params, code and everything else; nothing changed -> "up to date";
3. refreshes the data (download, prepare) and checks it before any training (the gate):
   no class vanished or fell below ``retrain.min_per_class`` images, at most
   ``retrain.max_quarantined`` of the files quarantined;
4. reproduces the pipeline as one tracked run (``tlearn run``);
5. promotes the challenger only if it beats the champion on the same test images by the
   rule (:func:`tlearn.tracking.registry.promote`);
6. records the decision: an MLflow run ``retrain`` and a line of reports/retrain_history.csv.

A crash or kill at any step leaves the champion alias as it was; the next run takes the
dead process's lock over.
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tlearn import config, lock, paths
from tlearn.config import Config
from tlearn.data import folders, sources
from tlearn.errors import DataError, TlearnError
from tlearn.io import file_digest, read_json

log = logging.getLogger(__name__)

LOCK = Path(".tlearn") / "retrain.lock"
HISTORY = paths.REPORTS / "retrain_history.csv"
HISTORY_COLUMNS = ("time", "outcome", "reason", "changed", "challenger_version",
                   "champion_version", "challenger_accuracy", "champion_accuracy",
                   "difference", "difference_low", "difference_high", "p_value", "n_test",
                   "data_fingerprint", "seconds")


class StepFailed(TlearnError):
    """One step of the job failed; the message names it, the exit code is the step's."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Changes:
    data: str | None = None                         # why the source must be fetched again
    stages: list[str] = field(default_factory=list)  # what `dvc status` says would run

    def __bool__(self) -> bool:
        return bool(self.data or self.stages)

    def describe(self) -> str:
        parts = ([self.data] if self.data else []) + (
            [f"stages to run: {', '.join(self.stages)}"] if self.stages else [])
        return "; ".join(parts) or "nothing"


def source_change(cfg: Config, manifest: dict | None) -> str | None:
    """Why data.source must be fetched again although DVC sees no change, or None."""
    if manifest is None or manifest.get("source") != cfg.data.source:
        return None  # never fetched, or another source: dvc status sees the params change
    kind = sources.source_kind(cfg.data.source)
    if kind == "folder" and folders.fingerprint(Path(cfg.data.source)) != manifest.get(
            "fingerprint"):
        return f"{cfg.data.source}: images added, removed or changed"
    if kind == "archive" and file_digest(Path(cfg.data.source)) != manifest.get("sha256"):
        return f"{cfg.data.source}: the archive changed"
    return None


def dvc_status() -> list[str]:
    """The stages ``dvc status`` finds changed (params, code, data), in its order."""
    dvc = Path(sys.executable).parent / "dvc"
    proc = subprocess.run([str(dvc), "status", "--json"], capture_output=True, text=True)
    if proc.returncode:
        raise StepFailed(f"retrain: dvc status failed: {proc.stderr.strip()[-300:]}")
    return [name.split(":")[-1] for name in json.loads(proc.stdout or "{}")]


DVC_RWLOCK = Path(".dvc") / "tmp" / "rwlock"


def release_dead_dvc_locks() -> int:
    """Drop the entries of DVC's own lock file whose processes are gone or zombies (a
    retrain killed with its DVC leaves them; in a container without an init nobody reaps
    the zombie, and DVC takes it for alive); returns how many processes were released."""
    import psutil

    def alive(info: dict) -> bool:
        try:
            return psutil.Process(int(info["pid"])).status() != psutil.STATUS_ZOMBIE
        except (psutil.Error, KeyError, ValueError):
            return False

    if not DVC_RWLOCK.is_file():
        return 0
    locks = json.loads(DVC_RWLOCK.read_text() or "{}")
    dead = {info["pid"] for infos in locks.get("read", {}).values() for info in infos
            if not alive(info)}
    dead |= {info["pid"] for info in locks.get("write", {}).values() if not alive(info)}
    if dead:
        locks["read"] = {path: kept for path, infos in locks.get("read", {}).items()
                         if (kept := [i for i in infos if i["pid"] not in dead])}
        locks["write"] = {path: info for path, info in locks.get("write", {}).items()
                          if info["pid"] not in dead}
        DVC_RWLOCK.write_text(json.dumps(locks))
        log.info("retrain: released DVC's locks of dead process(es) %s",
                 ", ".join(map(str, sorted(dead))))
    return len(dead)


def gate(cfg: Config, classes_before: list[str]) -> None:
    """The refreshed data must be fit to train on: raises DataError naming the problem."""
    prepared = read_json(paths.REPORTS / "prepare.json")
    per_class: dict[str, int] = {}
    for counts in prepared["counts"].values():
        for label, n in counts.items():
            per_class[label] = per_class.get(label, 0) + n
    vanished = sorted(set(classes_before) - set(per_class))
    if vanished:
        raise DataError(f"retrain: data gate: class(es) {', '.join(vanished)} vanished from "
                        f"{cfg.data.source}")
    small = {label: n for label, n in per_class.items() if n < cfg.retrain.min_per_class}
    if small:
        raise DataError(f"retrain: data gate: fewer than retrain.min_per_class "
                        f"({cfg.retrain.min_per_class}) images in "
                        + ", ".join(f"{label} ({n})" for label, n in sorted(small.items())))
    total = prepared["n_images"] + prepared["n_quarantined"]
    if total and prepared["n_quarantined"] / total > cfg.retrain.max_quarantined:
        raise DataError(f"retrain: data gate: {prepared['n_quarantined']} of {total} files "
                        f"quarantined, more than retrain.max_quarantined "
                        f"({cfg.retrain.max_quarantined:g}); see reports/prepare.json")


def append_history(row: dict) -> None:
    new = not HISTORY.is_file()
    HISTORY.parent.mkdir(exist_ok=True)
    with open(HISTORY, "a", newline="") as f:
        writer = csv.DictWriter(f, HISTORY_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({key: _cell(row.get(key, "")) for key in HISTORY_COLUMNS})


def _cell(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def run(settings, dry_run: bool = False, commit: bool = False) -> int:
    """The whole job; returns the exit code (0 promoted, kept or up to date). ``commit``:
    commit dvc.lock and reports/ to git after a retrain."""
    from tlearn import pipeline
    from tlearn.tracking import registry

    cfg = config.load(pipeline.PARAMS_YAML)
    with lock.held(LOCK, "tlearn retrain"):
        started = time.time()
        release_dead_dvc_locks()  # we hold tlearn's lock: a dead retrain's DVC may not
        manifest = read_json(paths.MANIFEST) if paths.MANIFEST.is_file() else None
        changes = Changes(source_change(cfg, manifest), dvc_status())
        champion = registry.champion_summary(settings, cfg)
        if not changes:
            log.info("retrain: up to date (data, params and code unchanged); champion %s",
                     champion)
            if not dry_run:
                append_history({"time": _now(), "outcome": "up to date", "changed": "nothing",
                                "seconds": round(time.time() - started, 1)})
            return 0
        log.info("retrain: changed: %s; champion %s", changes.describe(), champion)
        if dry_run:
            print(f"dry run: would retrain ({changes.describe()}); champion {champion}")
            return 0
        record = {"time": _now(), "changed": changes.describe()}
        try:
            code = pipeline.run(settings, [], [], targets=["prepare"],
                                force=("download",) if changes.data else ())
            if code:
                raise StepFailed(f"retrain: refreshing the data (download, prepare) failed "
                                 f"with exit code {code}", code)
            same_source = manifest and manifest.get("source") == cfg.data.source
            gate(cfg, manifest["classes"] if same_source else [])
            code = pipeline.run(settings, [], [])
            if code:
                raise StepFailed(f"retrain: the pipeline failed with exit code {code}", code)
            outcome = registry.promote(settings, cfg)
        except TlearnError as exc:
            append_history(record | {"outcome": "failed", "reason": str(exc),
                                     "seconds": round(time.time() - started, 1)})
            raise
        fingerprint = read_json(paths.MANIFEST).get("fingerprint", "")
        record |= outcome.figures() | {
            "outcome": "promoted" if outcome.promoted else "kept",
            "data_fingerprint": fingerprint, "seconds": round(time.time() - started, 1)}
        registry.log_decision(settings, cfg, record)
        append_history(record)
        log.info("retrain: %s", outcome.line)
        print(outcome.line)
        if commit:
            commit_results(outcome.line)
        return 0


def commit_results(line: str) -> None:
    """dvc.lock and reports/ committed to git with the decision as the message."""
    for cmd in (["git", "add", "dvc.lock", str(paths.REPORTS)],
                ["git", "commit", "--quiet", "-m", f"tlearn retrain: {line}"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise StepFailed(f"retrain: {' '.join(cmd[:2])} failed: "
                             f"{(proc.stderr or proc.stdout).strip()[-300:]}")


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
