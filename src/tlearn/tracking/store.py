"""The tracking store: where it is, connecting to it, and the one failure policy.

Everything tracking reads from the environment is read once, at the CLI entry, into
:class:`Settings`; subprocesses (DVC and the stages it starts) get theirs from
:meth:`Settings.child_env`. The failure policy lives in :meth:`Store.failed`: with
``tracking.required`` a store that stops answering fails the command (exit code 3, one
line naming the URI); without it, tlearn warns once and goes on untracked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlearn.errors import TlearnError

log = logging.getLogger(__name__)

#: One pipeline execution: stages that share it are grouped under one pipeline run.
ENV_INVOCATION = "TLEARN_INVOCATION"
#: Tracking is off for this process and its children (store down, not required).
ENV_OFF = "TLEARN_TRACKING_OFF"
#: Seconds the connection check may take before giving up (default 15, at most 25).
ENV_CHECK_SECONDS = "TLEARN_TRACKING_CHECK_SECONDS"
DEFAULT_DB = Path("mlflow.db")
ARTIFACTS = Path("mlartifacts")
#: MLflow's own HTTP defaults retry for minutes; these are tighter (a user's values win).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 # Ending a run on a server prints two "View run" lines after one more
                 # request: per tuning trial, that buries the log. tlearn names its runs.
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
#: Variables that would make MLflow resume or redirect runs tlearn did not make.
STRAY = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


class TrackingUnavailable(TlearnError):
    """The tracking store does not answer (the message names its URI)."""

    exit_code = 3


@dataclass(frozen=True)
class Settings:
    """What tracking takes from the environment, read once when a command starts."""

    uri: str                        # MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    off: bool = False               # TLEARN_TRACKING_OFF
    invocation: str | None = None   # TLEARN_INVOCATION, or this `dvc repro`'s process
    mlflow_run_id: str | None = None  # MLFLOW_RUN_ID: never resumed, only adopted by
                                      # `tlearn run --mlflow-project`
    check_seconds: float = 15.0
    dvc_exp_name: str | None = None
    dvc_stage: str | None = None    # DVC_STAGE: set when DVC runs the stage

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        uri = environ.get("MLFLOW_TRACKING_URI", "").strip()
        try:
            check = min(max(float(environ.get(ENV_CHECK_SECONDS, 15)), 1.0), 25.0)
        except ValueError:
            check = 15.0
        dvc_stage = environ.get("DVC_STAGE") or None
        invocation = environ.get(ENV_INVOCATION) or None
        if invocation is None and dvc_stage:
            from tlearn.tracking.provenance import dvc_invocation

            invocation = dvc_invocation()
        return cls(uri=uri or f"sqlite:///{DEFAULT_DB.resolve()}",
                   off=bool(environ.get(ENV_OFF)),
                   invocation=invocation,
                   mlflow_run_id=environ.get("MLFLOW_RUN_ID", "").strip() or None,
                   check_seconds=check, dvc_exp_name=environ.get("DVC_EXP_NAME") or None,
                   dvc_stage=dvc_stage)

    @property
    def embedded(self) -> bool:
        """A database the client opens itself (no server): artifacts go to mlartifacts/."""
        return is_embedded(self.uri)

    def child_env(self, environ: Mapping[str, str], invocation: str | None = None,
                  off: bool = False) -> dict[str, str]:
        """The environment of a subprocess: the same store, no stray MLflow run, the
        pipeline execution it belongs to, and whether tracking is off."""
        env = {k: v for k, v in environ.items()
               if k not in (*STRAY, ENV_INVOCATION, ENV_OFF)}
        env["MLFLOW_TRACKING_URI"] = self.uri
        if invocation:
            env[ENV_INVOCATION] = invocation
        if off or self.off:
            env[ENV_OFF] = "1"
        return env


def is_embedded(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "databricks"))


def apply_http_defaults(environ: dict = os.environ) -> None:
    """The one place tlearn writes ``os.environ``: MLflow's HTTP client reads its timeouts
    from there when it sends a request, whichever module sends it."""
    for key, value in HTTP_DEFAULTS.items():
        environ.setdefault(key, value)


def one_line(exc: BaseException) -> str:
    """A short reason for an exception: the well-known network failures by name."""
    for marker in ("Connection refused", "timed out", "Name or service not known"):
        if marker in str(exc):
            return marker.lower()
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:200]


@dataclass
class Store:
    """A connected tracking store and its failure policy (see the module docstring)."""

    settings: Settings
    client: Any  # mlflow.MlflowClient
    experiment_id: str
    required: bool = True
    disabled: bool = field(default=False)

    @property
    def uri(self) -> str:
        return self.settings.uri

    def failed(self, exc: BaseException) -> None:
        """Apply the policy to a failure while logging: raise, or warn once and stop."""
        message = f"tracking store {self.uri} failed: {one_line(exc)}"
        if self.required:
            raise TrackingUnavailable(message) from exc
        if not self.disabled:
            log.warning("%s; going on without tracking (tracking.required: false)", message)
        self.disabled = True

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        """Run a block of logging calls under the policy (tlearn's own errors pass)."""
        try:
            yield
        except TlearnError:
            raise
        except Exception as exc:  # noqa: BLE001 - any store failure
            self.failed(exc)


def connect(settings: Settings, experiment: str, required: bool = True) -> Store | None:
    """Check the store answers (fail fast, naming the URI), then get or create the
    experiment. None when tracking is off, or down and not ``required`` (warned once)."""
    if settings.off:
        return None
    try:
        return _connect(settings, experiment, required)
    except TrackingUnavailable as exc:
        if required:
            raise
        log.warning("%s; going on without tracking (tracking.required: false)", exc)
        return None


@contextlib.contextmanager
def tracked(store: Store | None, start: Callable[[Store], Any], untracked: Any) -> Iterator[Any]:
    """A run's life: started by ``start(store)`` before any work (a dead server fails
    first), yielded, then ended FINISHED, or FAILED/KILLED with the error (``run.end(exc)``).
    Yields ``untracked`` when tracking is off or the store failed and is not required."""
    run = None
    if store is not None:
        with store.guarded():
            run = start(store)
    if run is None:
        yield untracked
        return
    try:
        yield run
    except BaseException as exc:
        run.end(exc)
        raise
    with store.guarded():
        run.end()


def _connect(settings: Settings, experiment: str, required: bool) -> Store:
    if not settings.embedded:
        probe(settings.uri, settings.check_seconds)
    import mlflow
    from mlflow.exceptions import MlflowException

    quiet_mlflow()
    mlflow.set_tracking_uri(settings.uri)
    client = mlflow.MlflowClient(settings.uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            location = ARTIFACTS.resolve().as_uri() if settings.embedded else None
            try:
                exp_id = client.create_experiment(experiment, artifact_location=location)
            except MlflowException:  # created meanwhile by a concurrent process
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        elif exp.lifecycle_stage == "deleted":
            raise TrackingUnavailable(
                f"{settings.uri}: experiment {experiment!r} is deleted; restore it (mlflow "
                f"experiments restore --experiment-id {exp.experiment_id}) or set "
                "tracking.experiment")
        else:
            exp_id = exp.experiment_id
    except TrackingUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any store failure: one line naming the URI
        raise TrackingUnavailable(f"tracking store {settings.uri} cannot be used: "
                                  f"{one_line(exc)}") from exc
    return Store(settings, client, exp_id, required=required)


def probe(uri: str, seconds: float) -> None:
    """Does anything answer at ``uri``? Raises TrackingUnavailable within ~``seconds``."""
    import requests

    deadline = time.monotonic() + seconds
    attempt, last = 0, "no answer"
    while True:
        remaining = deadline - time.monotonic()
        try:
            requests.get(uri.rstrip("/") + "/health",
                         timeout=(min(3.0, remaining), min(8.0, remaining)))
            return  # any HTTP answer: the server is there (API calls report real errors)
        except requests.RequestException as exc:
            last = one_line(exc)
        attempt += 1
        pause = min(2.0 ** (attempt - 1), deadline - time.monotonic() - 1.0)
        if pause <= 0:
            break
        time.sleep(pause)
    raise TrackingUnavailable(
        f"tracking server {uri} does not answer ({last}); start it, unset "
        "MLFLOW_TRACKING_URI for the embedded sqlite store, or set tracking.required: false")


def quiet_mlflow() -> None:
    """MLflow's database set-up chatter ("Creating initial MLflow database tables...") would
    bury tlearn's one-line messages on stderr; warnings still show."""
    for name in ("mlflow.store.db.utils", "mlflow.store.db.db_types", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
