"""Resumable training: the state of an epoch loop on disk, so a killed fine-tune picks up
at its last finished epoch when the stage is rerun."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import keras

from tlearn.io import atomic_path, read_json

log = logging.getLogger(__name__)
START = "start.weights.h5"  # the weights before the first epoch (fit_epochs' keep_start)


@dataclass
class Checkpoint:
    """Resume state of an epoch loop in ``folder``: the model (with optimizer state) after
    the last finished epoch, the best weights so far, and the loop state. ``fingerprint``
    ties it to its inputs, so a changed config never resumes a stale run.

    Each save writes new files under new names and only then replaces ``state.json``,
    which names them: a kill at any instant leaves a state whose files all belong to it.
    """

    folder: Path
    fingerprint: str
    state_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.state_file = self.folder / "state.json"

    def _state(self) -> dict | None:
        """The saved state if it is ours; a state of other inputs (or of an older tlearn,
        which named no files) is not."""
        if not self.state_file.exists():
            return None
        state = read_json(self.state_file)
        if state.get("fingerprint") != self.fingerprint or "last" not in state:
            log.info("ignoring checkpoint in %s: made with other inputs", self.folder)
            return None
        return state

    def exists(self) -> bool:
        """A resumable state of these inputs is there."""
        return self._state() is not None

    def load(self) -> tuple[keras.Model, dict] | None:
        state = self._state()
        if state is None:
            return None
        return keras.saving.load_model(self.folder / state["last"]), state

    def save(self, model: keras.Model, state: dict, best_improved: bool) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        done = state["epochs_done"]
        last = f"last-{done}.keras"
        with atomic_path(self.folder / last) as tmp:
            model.save(tmp)
        if best_improved:
            best = f"best-{done}.weights.h5"
            with atomic_path(self.folder / best) as tmp:
                model.save_weights(tmp)
        else:
            best = (self._state() or {}).get("best")
        with atomic_path(self.state_file) as tmp:  # the commit point of this epoch
            tmp.write_text(json.dumps({**state, "fingerprint": self.fingerprint,
                                       "last": last, "best": best}))
        # Only now may the previous epoch's files go (and strays of a killed save).
        for path in self.folder.iterdir():
            if path.name not in {self.state_file.name, last, best, START} and path.is_file():
                path.unlink()

    def restore_best(self, model: keras.Model) -> None:
        model.load_weights(self.folder / self._state()["best"])

    def save_start(self, model: keras.Model) -> None:
        """The weights before the first epoch, kept until the run is cleared."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / START) as tmp:
            model.save_weights(tmp)

    def restore_start(self, model: keras.Model) -> None:
        model.load_weights(self.folder / START)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def fingerprint(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.read_bytes() if isinstance(part, Path) else repr(part).encode())
    return digest.hexdigest()[:16]


