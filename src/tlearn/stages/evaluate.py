"""evaluate stage: the head model and the final model (fine-tuned, or the linear probe the
fine-tune kept in its place) on the test split ->
reports/evaluate.json (with the comparison against the classical baselines), the
confusion matrix, the training curves and the worst mistakes."""

from __future__ import annotations

import logging

from tlearn import paths
from tlearn.config import Config
from tlearn.stages import Stage
from tlearn.stages.baselines import STAGE as BASELINES
from tlearn.stages.finetune import STAGE as FINETUNE
from tlearn.stages.train_head import STAGE as TRAIN_HEAD
from tlearn.stages.tune import STAGE as TUNE

log = logging.getLogger(__name__)

STAGE = Stage(
    name="evaluate",
    help="test-split metrics, confusion matrix, curves, worst mistakes",
    params=("evaluate", "preset", "presets"),
    deps=(paths.HEAD_MODEL, paths.MODEL, paths.LABELS, paths.prepared_split("test"),
          TRAIN_HEAD.report, TRAIN_HEAD.history, FINETUNE.report, FINETUNE.history,
          BASELINES.report, TUNE.report),
    report=paths.REPORTS / "evaluate.json",
    metrics=(paths.REPORTS / "metrics.json",),
    plots=(paths.REPORTS / "predictions.csv", paths.REPORTS / "confusion_matrix.png",
           paths.REPORTS / "training_curves.png", paths.REPORTS / "misclassified.png"),
    datasets=("test",),
    metric_prefix="test",
    registers_model=True,
)
REPORT, HEADLINE, PREDICTIONS, CONFUSION_PNG, CURVES_PNG, MISTAKES_PNG = STAGE.reports


def run(cfg: Config) -> dict:
    import keras

    from tlearn import metrics, plots
    from tlearn.data.store import SplitReader
    from tlearn.io import read_csv, read_json, write_csv, write_json
    from tlearn.models import preprocess  # noqa: F401  registers tlearn's layer for loading

    labels = read_json(paths.LABELS)
    test = SplitReader(paths.prepared_split("test"))
    reports, probs = {}, {}
    for name, path in (("head", paths.HEAD_MODEL), ("model", paths.MODEL)):
        model = keras.saving.load_model(path)
        probs[name] = metrics.predict_probabilities(model, test.images.batches())
        reports[name] = metrics.classification_report(test.labels, probs[name], labels)
        if cfg.evaluate.tta != "none":
            reports[f"{name}_tta"] = metrics.classification_report(
                test.labels, metrics.predict_probabilities(model, test.images.batches(),
                                                           cfg.evaluate.tta), labels)
    report = metrics.evaluation_report(reports, cfg.evaluate.tta)
    report["kept_probe"] = read_json(FINETUNE.report).get("kept_probe", False)
    baselines = read_json(BASELINES.report)
    report["comparison"] = metrics.comparison(baselines, report)
    report["margin_over_probe"] = metrics.probe_margin(report, baselines)
    if report["margin_over_probe"] < 0:
        log.warning("evaluate: the fine-tuned model (%.4f) is below the linear probe, a "
                    "logistic regression on the frozen features (%.4f): try another preset, "
                    "fewer unfrozen layers or a lower finetune.learning_rate",
                    report["accuracy"], baselines["logistic_regression_accuracy"])
    write_json(REPORT, report)
    write_json(HEADLINE, metrics.headline(report, read_json(TRAIN_HEAD.report),
                                          read_json(FINETUNE.report), read_json(TUNE.report)))

    predicted = probs["model"].argmax(axis=1)
    write_csv(PREDICTIONS, [{"file": f, "actual": labels[t], "predicted": labels[p]}
                            for f, t, p in zip(test.files, test.labels, predicted)])
    plots.confusion_matrix(report["confusion_matrix"], labels, CONFUSION_PNG)
    head_history, finetune_history = read_csv(TRAIN_HEAD.history), read_csv(FINETUNE.history)
    plots.training_curves(head_history + finetune_history, CURVES_PNG,
                          phase_start=finetune_history[0]["epoch"] if finetune_history else None)
    plots.worst_mistakes(test.images.take, test.labels, probs["model"], labels,
                         cfg.evaluate.misclassified, MISTAKES_PNG)
    log.info("evaluate: test accuracy %.4f (head %.4f)%s, top-%d %.4f, loss %.4f on %d images",
             report["accuracy"], report["head_accuracy"],
             f", with {cfg.evaluate.tta} TTA {report['tta_accuracy']:.4f}"
             if "tta_accuracy" in report else "", report["k"], report["top_k_accuracy"],
             report["loss"], report["n_test"])
    log.info("evaluate: every model on the test split\n%s",
             metrics.markdown_table(report["comparison"], report["k"]))
    return {k: v for k, v in report.items() if isinstance(v, (int, float))}
