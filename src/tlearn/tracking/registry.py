"""The model registry: evaluate registers the fine-tuned model as ``@challenger``;
``tlearn promote`` moves ``@champion`` to it only if it wins on the same test split.
Aliases only, never MLflow's deprecated stages."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tlearn import paths
from tlearn.config import Config
from tlearn.errors import TlearnError
from tlearn.data.store import split_digest
from tlearn.io import file_digest
from tlearn.tracking import provenance
from tlearn.stats import Paired, Rule
from tlearn.tracking.store import Settings, Store, connect

log = logging.getLogger(__name__)
CHALLENGER, CHAMPION = "challenger", "champion"


def register(store: Store, cfg: Config, metrics: Mapping[str, Any], run_id: str,
             pipeline_run_id: str | None) -> str:
    """A new version of models/model.keras with alias challenger, tagged with its test
    accuracy and the identity of the test split it was measured on; returns its version.
    The same file measured on the same split (evaluate rerun for another reason, e.g. its
    TTA setting) is not registered again: its version becomes the challenger."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    from tlearn.tracking.models import log_project_model

    client, name = store.client, cfg.tracking.registered_model
    md5, test_split = _workspace_model()
    existing = _version_of(client, name, md5, test_split)
    if existing:
        _make_challenger(client, name, existing, run_id, pipeline_run_id)
        log.info("tracking: %s version %s is this very model on this test split: @%s again, "
                 "no new version", name, existing, CHALLENGER)
        return existing
    found = client.search_logged_models(  # the finetune stage logged this very file
        experiment_ids=[store.experiment_id], filter_string=f"tags.`tlearn.md5` = '{md5}'",
        max_results=1)
    model_id = found[0].model_id if found else log_project_model(paths.MODEL).model_id
    try:
        client.create_registered_model(
            name, description="tlearn's fine-tuned classifier (raw RGB in, probabilities "
                              "out); aliases champion and challenger")
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    commit, _ = provenance.git_state()
    tags = {"test_accuracy": repr(float(metrics["accuracy"])),
            "test_split_sha256": test_split,
            "n_test": str(metrics.get("n_test", "")), "backbone": cfg.model.backbone,
            "data.source": cfg.data.source, "evaluate_run_id": run_id, "model_md5": md5}
    for key, value in (("git.commit", commit), ("pipeline_run_id", pipeline_run_id),
                       ("dvc.exp_name", store.settings.dvc_exp_name)):
        if value:
            tags[key] = value
    version = str(client.create_model_version(name, source=f"models:/{model_id}",
                                              run_id=run_id, tags=tags,
                                              model_id=model_id).version)
    _make_challenger(client, name, version, run_id, pipeline_run_id)
    log.info("tracking: registered %s version %s (test accuracy %.4f) as @%s", name, version,
             float(metrics["accuracy"]), CHALLENGER)
    return version


def sync_challenger(store: Store, cfg: Config) -> bool:
    """Point @challenger at the version of models/model.keras measured on the current test
    split, the model in the workspace (DVC may have restored an older one from its cache);
    False when that model has no version: evaluate, the stage that registers, never ran on
    it with this store (DVC skips it when the rebuilt model is the locked one byte for
    byte, as on a fresh clone)."""
    if not paths.MODEL.is_file() or not paths.prepared_split("test").is_dir():
        return True  # nothing to register: the pipeline has not made a model yet
    client, name = store.client, cfg.tracking.registered_model
    version = _version_of(client, name, *_workspace_model())
    if version is None:
        return False
    if current_aliases(client, name).get(CHALLENGER) != version:
        _make_challenger(client, name, version, run_id=None, pipeline_run_id=None)
        log.info("tracking: %s version %s is the model in the workspace: @%s again", name,
                 version, CHALLENGER)
    return True


def _workspace_model() -> tuple[str, str]:
    """The identity of a registered version: models/model.keras's md5 and the digest of
    the test split it is measured on."""
    return file_digest(paths.MODEL, "md5"), split_digest(paths.prepared_split("test"))


def _version_of(client, name: str, md5: str, test_split: str) -> str | None:
    """The version of ``name`` registered for the model file ``md5`` measured on
    ``test_split``, if there is one."""
    return next((str(v.version) for v in client.search_model_versions(f"name = '{name}'")
                 if v.tags.get("model_md5") == md5
                 and v.tags.get("test_split_sha256") == test_split), None)


def _make_challenger(client, name: str, version: str, run_id: str | None,
                     pipeline_run_id: str | None) -> None:
    client.set_registered_model_alias(name, CHALLENGER, version)
    for run in filter(None, (run_id, pipeline_run_id)):
        client.set_tag(run, "registered_model_version", f"{name}/{version}")


# --------------------------------------------------------------------------------------
# Promotion
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What promotion decided, with the figures behind it (both models measured on the
    same current test split)."""

    name: str
    challenger: str
    champion: str | None                 # the champion before the decision
    challenger_accuracy: float
    paired: Paired | None                # None without a champion (or the same version)
    promoted: bool
    reason: str

    @property
    def line(self) -> str:
        chal = f"{self.name} v{self.challenger} (test accuracy {self.challenger_accuracy:.4f})"
        if self.champion is None:
            return f"{'promoted' if self.promoted else 'kept no champion'}: {chal}: {self.reason}"
        champ = (f"v{self.champion} ({self.paired.champion_accuracy:.4f})" if self.paired
                 else f"v{self.champion}")
        if self.promoted:
            return f"promoted: {chal} replaces {champ}: {self.reason}"
        return f"kept: {self.name} {champ}; challenger {chal}: {self.reason}"

    def figures(self) -> dict[str, Any]:
        """The decision as flat figures (MLflow, reports/retrain_history.csv)."""
        out: dict[str, Any] = {"challenger_version": self.challenger,
                               "champion_version": self.champion or "",
                               "challenger_accuracy": self.challenger_accuracy,
                               "promoted": self.promoted, "reason": self.reason}
        if self.paired:
            low, high = self.paired.difference_interval
            out |= {"champion_accuracy": self.paired.champion_accuracy,
                    "difference": self.paired.difference, "difference_low": low,
                    "difference_high": high, "p_value": self.paired.p_value,
                    "n_test": self.paired.n, "challenger_only": self.paired.challenger_only,
                    "champion_only": self.paired.champion_only}
        return out


def rule(cfg: Config) -> Rule:
    return Rule(cfg.tracking.promote_margin, cfg.retrain.alpha,
                cfg.retrain.require_significance, cfg.retrain.min_accuracy)


def promote(settings: Settings, cfg: Config, dry_run: bool = False) -> Outcome:
    """Move ``champion`` to the ``challenger`` version if it wins by the rule
    (:class:`tlearn.stats.Rule`) on data/prepared/test, where both are measured now; else
    tag the challenger with the reason. ``dry_run``: decide, change nothing."""
    store = connect(settings, cfg.tracking.experiment)
    if store is None:
        raise TlearnError("promote: tracking is off (TLEARN_TRACKING_OFF); the registry is "
                          "in the tracking store")
    client, name = store.client, cfg.tracking.registered_model
    aliases = current_aliases(client, name)
    if CHALLENGER not in aliases:
        raise TlearnError(f"promote: {name} has no @{CHALLENGER} version: `tlearn run` "
                          "registers one")
    challenger = client.get_model_version(name, aliases[CHALLENGER])
    champion = aliases.get(CHAMPION)
    if champion == challenger.version:
        accuracy = float(challenger.tags["test_accuracy"])
        return Outcome(name, challenger.version, champion, accuracy, None, False,
                       "it is already the champion")
    split = paths.prepared_split("test")
    if not split.is_dir() or challenger.tags.get("test_split_sha256") != split_digest(split):
        raise TlearnError(f"promote: challenger v{challenger.version} was evaluated on another "
                          f"test split than {split}; run the pipeline (or dvc checkout) first")
    chal_correct = correct_on_test_split(settings, name, challenger.version)
    paired = None
    if champion is not None:
        paired = Paired.of(chal_correct, correct_on_test_split(settings, name, champion))
    promoted, reason = rule(cfg).decide(float(chal_correct.mean()), paired)
    outcome = Outcome(name, challenger.version, champion, float(chal_correct.mean()), paired,
                      promoted, reason)
    if not dry_run:
        if promoted:  # one request: the alias never points at a half-made version
            client.set_registered_model_alias(name, CHAMPION, challenger.version)
        client.set_model_version_tag(name, challenger.version, "tlearn.decision", outcome.line)
    return outcome


def current_aliases(client, name: str) -> dict[str, str]:
    try:
        return dict(client.get_registered_model(name).aliases or {})
    except Exception as exc:  # noqa: BLE001
        raise TlearnError(f"promote: no registered model {name!r}: `tlearn run` registers "
                          "it (a bare `dvc repro` only when it runs evaluate)") from exc


def correct_on_test_split(settings: Settings, name: str, version: str) -> np.ndarray:
    """Which images of data/prepared/test version ``version`` gets right (with evaluate's
    own prediction code); refused when the model takes other classes or image sizes."""
    from tlearn.data.store import SplitReader, load_preprocess
    from tlearn.io import read_json
    from tlearn.metrics import predict_probabilities
    from tlearn.tracking import models

    model, labels, resize_mode = models.load_model(settings, f"models:/{name}/{version}")
    if list(labels) != list(read_json(paths.PREPARED_LABELS)):
        raise TlearnError(f"promote: v{version} has other classes than the test split; "
                          "they cannot be compared")
    prepared = load_preprocess(paths.PREPARED_PREPROCESS)
    if (int(model.input_shape[1]), resize_mode) != (prepared["image_size"],
                                                     prepared["resize_mode"]):
        raise TlearnError(f"promote: v{version} takes {model.input_shape[1]} px {resize_mode} "
                          f"images, not the {prepared['image_size']} px "
                          f"{prepared['resize_mode']} test split; they cannot be compared")
    data = SplitReader(paths.prepared_split("test"))
    predicted = predict_probabilities(model, data.images.batches()).argmax(axis=1)
    return predicted == data.labels


def champion_summary(settings: Settings, cfg: Config) -> str:
    """``tlearn v3 (test accuracy 0.9926)``, or what is missing; reads tags only."""
    store = connect(settings, cfg.tracking.experiment, cfg.tracking.required)
    if store is None:
        return "unknown (tracking is off)"
    name = cfg.tracking.registered_model
    with store.guarded():
        found = store.client.search_registered_models(f"name = '{name}'")
        version = dict(found[0].aliases or {}).get(CHAMPION) if found else None
        if version is None:
            return "none yet (`tlearn promote` makes the latest challenger champion)"
        accuracy = store.client.get_model_version(name, version).tags.get("test_accuracy")
        return f"{name} v{version} (test accuracy {float(accuracy):.4f})"
    return "unknown (the tracking store failed)"


def log_decision(settings: Settings, cfg: Config, record: Mapping[str, Any]) -> None:
    """A run ``retrain`` of its own: the figures as metrics, what changed and the outcome
    as params and tags, the data's hash."""
    from tlearn.tracking.records import log_metrics, log_params, numeric_items

    store = connect(settings, cfg.tracking.experiment, cfg.tracking.required)
    if store is None:
        return
    with store.guarded():
        tags = {"stage": "retrain", "mlflow.source.name": "tlearn retrain",
                "outcome": str(record["outcome"]), "reason": str(record.get("reason", ""))}
        if sha := provenance.data_sha256():
            tags["data.sha256"] = sha
        run_id = store.client.create_run(store.experiment_id, run_name="retrain",
                                         tags=tags).info.run_id
        log_params(store.client, run_id, {k: v for k, v in record.items()
                                          if k in ("changed", "challenger_version",
                                                   "champion_version", "data_fingerprint")})
        figures = {k: v for k, v in numeric_items(record).items() if k != "promoted"}
        log_metrics(store.client, run_id, [(k, v, 0) for k, v in figures.items()])
        store.client.set_terminated(run_id, "FINISHED")
