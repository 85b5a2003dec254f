"""The model registry: evaluate registers the fine-tuned model as ``@challenger``;
``tlearn promote`` moves ``@champion`` to it only if it wins on the same test split.
Aliases only, never MLflow's deprecated stages."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tlearn import paths
from tlearn.config import Config
from tlearn.errors import TlearnError
from tlearn.data.store import split_digest
from tlearn.io import file_digest
from tlearn.tracking import provenance
from tlearn.tracking.store import Settings, Store, connect

log = logging.getLogger(__name__)
CHALLENGER, CHAMPION = "challenger", "champion"


def register(store: Store, cfg: Config, metrics: Mapping[str, Any], run_id: str,
             pipeline_run_id: str | None) -> str:
    """A new version of models/model.keras with alias challenger, tagged with its test
    accuracy and the identity of the test split it was measured on; returns its version."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    from tlearn.tracking.models import log_project_model

    client, name = store.client, cfg.tracking.registered_model
    md5 = file_digest(paths.MODEL, "md5")
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
            "test_split_sha256": split_digest(paths.prepared_split("test")),
            "n_test": str(metrics.get("n_test", "")), "backbone": cfg.model.backbone,
            "data.source": cfg.data.source, "evaluate_run_id": run_id, "model_md5": md5}
    for key, value in (("git.commit", commit), ("pipeline_run_id", pipeline_run_id),
                       ("dvc.exp_name", store.settings.dvc_exp_name)):
        if value:
            tags[key] = value
    version = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id,
                                          tags=tags, model_id=model_id).version
    client.set_registered_model_alias(name, CHALLENGER, version)
    for run in filter(None, (run_id, pipeline_run_id)):
        client.set_tag(run, "registered_model_version", f"{name}/{version}")
    log.info("tracking: registered %s version %s (test accuracy %.4f) as @%s", name, version,
             float(metrics["accuracy"]), CHALLENGER)
    return version


# --------------------------------------------------------------------------------------
# Promotion
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    promote: bool
    line: str


def decide(name: str, challenger: str, challenger_acc: float, champion: str | None,
           champion_acc: float | None, margin: float) -> Decision:
    """Promote iff there is no champion, or the challenger's test accuracy beats the
    champion's (on the same test split) by more than zero and by at least ``margin``."""
    if champion is None or champion_acc is None:
        return Decision(True, f"promoted: {name} v{challenger} (test accuracy "
                              f"{challenger_acc:.4f}) is the first champion")
    if champion == challenger:
        return Decision(False, f"kept: {name} v{champion} is already the champion "
                               f"(test accuracy {champion_acc:.4f})")
    gain = challenger_acc - champion_acc
    if gain > 0 and gain >= margin - 1e-12:
        return Decision(True, f"promoted: {name} v{challenger} (test accuracy "
                              f"{challenger_acc:.4f}) replaces v{champion} ({champion_acc:.4f}); "
                              f"margin {margin:g}")
    return Decision(False, f"kept: {name} v{champion} (test accuracy {champion_acc:.4f}); "
                           f"challenger v{challenger} ({challenger_acc:.4f}) does not beat it "
                           f"by margin {margin:g}")


def promote(settings: Settings, cfg: Config) -> Decision:
    """Move the ``champion`` alias to the ``challenger`` version if it wins (see
    :func:`decide`); both accuracies must come from the same test split."""
    store = connect(settings, cfg.tracking.experiment)
    if store is None:
        raise TlearnError("promote: tracking is off (TLEARN_TRACKING_OFF); the registry is "
                          "in the tracking store")
    client, name = store.client, cfg.tracking.registered_model
    try:
        aliases = dict(client.get_registered_model(name).aliases or {})
    except Exception as exc:  # noqa: BLE001
        raise TlearnError(f"promote: no registered model {name!r} at {store.uri} "
                          "(run the pipeline first)") from exc
    if CHALLENGER not in aliases:
        raise TlearnError(f"promote: {name} has no @{CHALLENGER} version (run the pipeline first)")
    challenger = client.get_model_version(name, aliases[CHALLENGER])
    chal_acc = float(challenger.tags["test_accuracy"])
    split = challenger.tags.get("test_split_sha256", "")
    champion = client.get_model_version(name, aliases[CHAMPION]) if CHAMPION in aliases else None
    champ_acc = None
    if champion is not None:
        champ_acc = (chal_acc if champion.version == challenger.version else
                     champion_accuracy(settings, client, name, champion, split))
    decision = decide(name, challenger.version, chal_acc,
                      champion.version if champion is not None else None, champ_acc,
                      cfg.tracking.promote_margin)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
    return decision


def champion_accuracy(settings: Settings, client, name: str, champion, split: str) -> float:
    """The champion's test accuracy on the challenger's test split: its own tag when it was
    evaluated on that split, else measured now on data/prepared/test/ when that folder is
    that split (with evaluate's own code; the result is kept as a version tag), else refused."""
    if champion.tags.get("test_split_sha256") == split:
        return float(champion.tags["test_accuracy"])
    key = f"test_accuracy.{split[:12]}"
    if key in champion.tags:
        return float(champion.tags[key])
    test = paths.prepared_split("test")
    if not split or not test.is_dir() or split_digest(test) != split:
        raise TlearnError(
            f"promote: champion v{champion.version} was evaluated on another test split and "
            f"the challenger's split is not in {test}; re-run evaluate on one split first")
    from tlearn.data.store import SplitReader, load_preprocess
    from tlearn.io import read_json
    from tlearn.metrics import classification_report, predict_probabilities
    from tlearn.tracking import models

    model, labels, resize_mode = models.load_model(settings, f"models:/{name}/{champion.version}")
    if list(labels) != list(read_json(paths.LABELS)):
        raise TlearnError(f"promote: champion v{champion.version} has other classes than the "
                          "challenger; they cannot be compared")
    prepared = load_preprocess(paths.PREPARED_PREPROCESS)
    if (int(model.input_shape[1]), resize_mode) != (prepared["image_size"],
                                                     prepared["resize_mode"]):
        raise TlearnError(f"promote: champion v{champion.version} takes {model.input_shape[1]} "
                          f"px {resize_mode} images, not the {prepared['image_size']} px "
                          f"{prepared['resize_mode']} test split; they cannot be compared")
    data = SplitReader(test)
    accuracy = classification_report(
        data.labels, predict_probabilities(model, data.images.batches()), labels)["accuracy"]
    client.set_model_version_tag(name, champion.version, key, repr(accuracy))
    log.info("promote: champion v%s measured on the challenger's test split: %.4f",
             champion.version, accuracy)
    return accuracy
