"""MLflow tracking: the only package of tlearn that talks to MLflow.

- :mod:`~tlearn.tracking.store`: where the store is (read once from the environment into
  ``Settings``), connecting, and the failure policy;
- :mod:`~tlearn.tracking.provenance`: git state, data hashes, DVC's hashes, datasets;
- :mod:`~tlearn.tracking.records`: what a run records (params, metrics in batches, files,
  datasets);
- :mod:`~tlearn.tracking.runs`: stage runs grouped under one pipeline run per execution;
- :mod:`~tlearn.tracking.models`: logging and loading tlearn's Keras models;
- :mod:`~tlearn.tracking.registry`: the ``challenger`` and ``champion`` aliases.

Stages stay MLflow-free: the CLI wraps each one in :func:`runs.stage_run`, which logs
what the stage wrote once it is done. Store: ``MLFLOW_TRACKING_URI`` when set, else the
embedded ``sqlite:///mlflow.db`` at the project root with artifacts in ``mlartifacts/``.

Names, stable across runs so the compare view lines them up:

- params: every params.yaml key flattened, ``head.dropout``; a stage run gets the keys
  its declaration (and dvc.yaml) lists;
- per-epoch curves: ``head/<metric>`` and ``finetune/<metric>`` (loss, accuracy,
  val_loss, val_accuracy) with step = the global epoch (fine-tune continues the count);
- reports: ``test/accuracy``, ``test/head_accuracy``, ... from evaluate; ``<stage>.<key>``
  from the others, e.g. ``finetune.val_accuracy`` (best epoch).
"""

from tlearn.tracking.store import Settings, TrackingUnavailable

__all__ = ["Settings", "TrackingUnavailable"]
