"""The ``tlearn`` command: one subcommand per DVC stage, plus the tools.

What ``tlearn --help`` says, in plain text: DESCRIPTION and EXIT_CODES below. Errors are
one line naming the params key, file or class (exit code 2), or the MLflow tracking URI
that does not answer (3).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from tlearn import __version__, config, stages
from tlearn.errors import TlearnError
from tlearn.tracking.store import Settings, apply_http_defaults

log = logging.getLogger("tlearn")
DESCRIPTION = ("tlearn: transfer learning for image classification. One subcommand per DVC "
               "stage, plus the tools.")
EXIT_CODES = ("exit codes: 0 success, 1 partial failure (some images could not be predicted), "
              "2 bad input, 3 the MLflow tracking store does not answer (or tlearn retrain "
              "is already running), 130 interrupted; tlearn run exits with the failed stage's "
              "code (DVC's own when DVC itself fails).")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    apply_http_defaults()
    args.settings = Settings.from_environ()  # the environment, read once
    try:
        return args.handler(args)
    except TlearnError as exc:
        print(str(exc), file=sys.stderr)
        code = exc.exit_code
        _tell_tlearn_run(args, code)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlearn", description=DESCRIPTION, epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"tlearn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, stage in stages.all_stages().items():
        p = sub.add_parser(name, help=f"stage: {stage.help}", description=stage.help)
        _add_params_options(p, "head.dropout=0.2")
        for option in stage.options:
            p.add_argument(f"--{option.name}", type=int, default=option.default,
                           help=f"{option.help} (default: %(default)s)")
        p.set_defaults(handler=_run_stage, stage=name)

    p = sub.add_parser("run", help="the whole pipeline as one MLflow parent run (dvc repro, or "
                                   "dvc exp run -S ... when parameters are set)")
    p.add_argument("targets", nargs="*", metavar="STAGE", help="stages to reproduce (default: all)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="run dvc exp run -S KEY=VALUE (DVC records an experiment), "
                        "e.g. -S head.dropout=0.2")
    p.add_argument("-P", "--project-param", action="append", default=[], metavar="KEY=VALUE",
                   help="like -S, but VALUE params.yaml (or empty) keeps params.yaml's "
                        "value: the MLproject parameters' default")
    p.add_argument("--exp", action="store_true", help="dvc exp run even with nothing set")
    p.add_argument("-n", "--name", help="DVC experiment name (implies --exp)")
    p.add_argument("--mlflow-project", action="store_true",
                   help="started by mlflow run: its run becomes the parent run (implies --exp)")
    p.set_defaults(handler=_run_pipeline)

    p = sub.add_parser("promote", help="move the registry alias champion to the challenger if "
                                       "it beats the champion by tracking.promote_margin")
    _add_params_options(p, "tracking.promote_margin=0.01")
    p.set_defaults(handler=_promote)

    p = sub.add_parser("retrain", help="the scheduled job: retrain when data, params or code "
                                       "changed, promote only a significantly better model")
    p.add_argument("--dry-run", action="store_true",
                   help="say what changed and what would run; change nothing")
    p.add_argument("--commit", action="store_true",
                   help="after a retrain, commit dvc.lock and reports/ to git")
    p.set_defaults(handler=_retrain)

    p = sub.add_parser("backbones", help="list every backbone: size, input size, weights, offline")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="a table to read, or JSON for scripts (default: %(default)s)")
    p.set_defaults(handler=_backbones)

    p = sub.add_parser("predict", help="classify images with a pretrained or trained model")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, or folders (searched recursively for images)")
    p.add_argument("--model", default="models/model.keras",
                   help="imagenet:<backbone>, a .keras file (labels.json beside it) or "
                        "models:/<name>@<alias> (default: %(default)s)")
    p.add_argument("--top", type=int, default=5, help="predictions per image (default: 5)")
    p.add_argument("--tta", choices=config.TTA_MODES, default="none",
                   help="test-time augmentation: average over the mirror image (flip), and "
                        "centre crops (flip_crops) (default: none)")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="a table to read, or for scripts a JSON list, an object per image "
                        "(default: %(default)s)")
    p.set_defaults(handler=_predict)

    p = sub.add_parser("gui", help="a desktop window: load an image, see the top 3 classes")
    p.add_argument("image", nargs="?", help="an image to classify at start")
    p.add_argument("--model", default="imagenet:efficientnet_lite0",
                   help="imagenet:<backbone>, a .keras file or models:/<name>@<alias> "
                        "(default: %(default)s; the window has a chooser)")
    p.set_defaults(handler=_gui)

    about = ("a first look at an image folder in one process: a linear probe on frozen "
             "features, validation accuracy in seconds, and a model predict takes")
    p = sub.add_parser("probe", help=about, description=about)
    p.add_argument("folder", type=Path, help="<class>/<images>, or <split>/<class>/<images> "
                                             "with splits train, validation (or val), test")
    p.add_argument("--image-size", type=_positive_int, default=192,
                   help="pixels; below the backbone's own size for speed (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("models/folder_probe"),
                   help="where the model and probe.json go (default: %(default)s)")
    _add_params_options(p, "model.backbone=efficientnet_lite1")
    p.set_defaults(handler=_probe)

    p = sub.add_parser("regress", help="Keras regression (Dense 16-8-1) on a table beside a "
                                       "linear regression: regress.source, regress.target")
    _add_params_options(p, "regress.source=housing.csv")
    p.set_defaults(handler=_regress)
    return parser


def _add_params_options(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--params", default="params.yaml",
                        help="params file (default: %(default)s)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a params key for this run, e.g. -S {example}")


def _run_stage(args: argparse.Namespace) -> int:
    from tlearn.tracking.runs import stage_run

    from tlearn import preflight

    overrides = _parse_overrides(args.set)
    stage = stages.get(args.stage)
    cfg = config.load(args.params, overrides=overrides)
    # What the stage runs with: params.yaml, with the groups of its params files in place
    # (train_head: the tuned head), then -S.
    stage_cfg = config.load(args.params, overrides, stage.params_files)
    preflight.check(stage_cfg, stage.param_keys)
    options = {option.name: getattr(args, option.name) for option in stage.options}
    # The tracking store is checked before the stage does any work: a dead server fails
    # the stage within seconds and nothing is written.
    with stage_run(stage, stage_cfg, args.settings, pipeline_cfg=cfg) as run:
        metrics = stage.run(stage_cfg, tracker=run, **options)
        run.finish(metrics)
    log.debug("%s metrics: %s", args.stage, metrics)
    return 0


def _run_pipeline(args: argparse.Namespace) -> int:
    from tlearn import pipeline

    return pipeline.run(args.settings, args.set, args.project_param, exp=args.exp,
                        mlflow_project=args.mlflow_project, targets=args.targets, name=args.name)


def _promote(args: argparse.Namespace) -> int:
    from tlearn.tracking import registry

    cfg = config.load(args.params, overrides=_parse_overrides(args.set))
    print(registry.promote(args.settings, cfg).line)
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from tlearn import retrain

    return retrain.run(args.settings, dry_run=args.dry_run, commit=args.commit)


def _backbones(args: argparse.Namespace) -> int:
    import json

    from tlearn.models import backbones

    rows = backbones.table()
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'backbone':<22} {'params':>8} {'size':>5} {'min':>4}  {'offline':<7}  weights"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['name']:<22} {row['parameters'] / 1e6:>7.1f}M {row['default_size']:>5} "
              f"{row['min_size']:>4}  {'yes' if row['offline'] else 'no':<7}  {row['weights']}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tlearn import predict

    return predict.run(args.images, args.model, top=args.top, fmt=args.format,
                       settings=args.settings, tta=args.tta)


def _tell_tlearn_run(args: argparse.Namespace, code: int) -> None:
    """A stage that ``tlearn run`` started through DVC leaves its exit code for it: DVC
    itself only says 255."""
    from tlearn.pipeline import RUN_PREFIX, stage_exit_file

    invocation = args.settings.invocation or ""
    if getattr(args, "stage", None) and invocation.startswith(RUN_PREFIX) \
            and Path(".dvc", "tmp").is_dir():
        stage_exit_file(invocation).write_text(str(code))


def _gui(args: argparse.Namespace) -> int:
    try:
        from tlearn import gui
    except ImportError as exc:  # PySide6 (or a library Qt needs) is missing
        print(f"tlearn gui needs PySide6: pip install -e '.[gui]' ({exc})", file=sys.stderr)
        return 2
    return gui.main(args.model, args.image, args.settings)


def _regress(args: argparse.Namespace) -> int:
    from tlearn import config, regress
    from tlearn.tracking.standalone import Regressor, command_run

    cfg = config.load(args.params, overrides=_parse_overrides(args.set))
    table = regress.load_table(cfg.regress.source, cfg.regress.target)  # before anything is made
    params = {"base.seed": cfg.base.seed,
              **{f"regress.{k}": v for k, v in vars(cfg.regress).items()}}
    with command_run(args.settings, cfg.regress.experiment, cfg.tracking.required, "regress",
                     params, tags={"regress.source": cfg.regress.source}) as run:
        result = regress.run(cfg, table)
        run.finish(result.metrics, (regress.REPORT, regress.PLOT),
                   Regressor(regress.MODEL, result.example),
                   history=(regress.HISTORY_PREFIX, result.history))
    report = result.report
    print(regress.format_rows(report["first_rows"], report["target"]), end="")
    for name in ("network", "linear_regression"):
        figures = report[name]
        print(f"{name}: R2 {figures['r2']:.4f}, RMSE {figures['rmse']:.4f}, "
              f"MAE {figures['mae']:.4f} on {report['n_test']} test rows")
    return 0


def _probe(args: argparse.Namespace) -> int:
    started = time.perf_counter()  # its figures count the tracking store's connection too
    from tlearn import probe
    from tlearn.tracking.standalone import ImageClassifier, command_run

    cfg = config.load(args.params, overrides=_parse_overrides(args.set))
    probe.check(cfg, args.image_size, args.out)
    images = probe.list_images(args.folder, cfg)  # all before anything is made
    params = {"folder": str(args.folder.resolve()), "image_size": args.image_size,
              "out": str(args.out), "base.seed": cfg.base.seed,
              "features.batch_size": cfg.features.batch_size,
              **{f"model.{k}": v for k, v in vars(cfg.model).items()},
              **{f"prepare.{k}": v for k, v in vars(cfg.prepare).items()
                 if k not in ("image_size", "split")},
              **{f"prepare.split.{k}": v for k, v in vars(cfg.prepare.split).items()},
              **{f"baselines.{k}": getattr(cfg.baselines, k)
                 for k in ("logistic_regression", "max_iter", "max_train")}}
    # Decoding starts once the tracking store answers, and overlaps TensorFlow's import and
    # the base's building. (Started before, it slowed MLflow's import and connection, which
    # the probe waits for: 1-2 s later to validation here.)
    with command_run(args.settings, f"{cfg.tracking.experiment}-probe", cfg.tracking.required,
                     "probe", params, tags={"probe.folder": params["folder"]}) as run, \
            probe.decoding(images, cfg, args.image_size) as decoding:
        result, model = probe.run(decoding, cfg, started=started,
                                  on_validation=lambda r: print(probe.summary(r), flush=True))
        print(f"test accuracy {result.test['accuracy']:.4f} on {result.counts['test']} images "
              f"after {result.seconds_to_test:.1f} s", flush=True)
        files = probe.save(args.out, result, model)
        run.finish(result.metrics(), files, ImageClassifier(
            args.out / probe.MODEL_FILE, result.example, result.classes, result.resize_mode))
    for bad in result.left_out:
        log.warning("left out %s: %s", bad["file"], bad["reason"])
    if left_out := len(result.left_out):
        print(f"{left_out} file{'s' if left_out > 1 else ''} left out (duplicates, or not "
              f"decodable): {args.out / probe.REPORT_FILE}")
    model_file = args.out / probe.MODEL_FILE
    print(f"model: {model_file} (tlearn predict --model {model_file} IMAGE)")
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _parse_overrides(pairs: list[str]) -> dict:

    return config.typed_overrides(config.parse_sets(pairs))


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # TensorFlow's C++ start-up chatter buries the one line that matters.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


if __name__ == "__main__":
    sys.exit(main())
