"""The ``tlearn`` command: one subcommand per DVC stage, plus the tools.

Exit codes: 0 success, 1 partial failure (e.g. some images could not be predicted),
2 bad input (a one-line message naming the params key, file or class), 3 the MLflow
tracking store does not answer (one line naming its URI), 130 interrupted. ``tlearn run``
exits with DVC's code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tlearn import __version__, stages
from tlearn.errors import TlearnError
from tlearn.tracking.store import Settings, TrackingUnavailable, apply_http_defaults

log = logging.getLogger("tlearn")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    apply_http_defaults()
    args.settings = Settings.from_environ()  # the environment, read once
    try:
        return args.handler(args)
    except TrackingUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return 3
    except TlearnError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlearn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tlearn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, stage in stages.all_stages().items():
        p = sub.add_parser(name, help=f"stage: {stage.help}", description=stage.help)
        p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
        p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a params key for this run, e.g. -S head.dropout=0.2")
        p.set_defaults(handler=_run_stage, stage=name)

    p = sub.add_parser("run", help="the whole pipeline as one MLflow parent run (dvc repro, or "
                                   "dvc exp run -S ... when parameters are set)")
    p.add_argument("targets", nargs="*", metavar="STAGE", help="stages to reproduce (default: all)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="run `dvc exp run -S KEY=VALUE` (DVC records an experiment), "
                        "e.g. -S head.dropout=0.2")
    p.add_argument("-P", "--project-param", action="append", default=[], metavar="KEY=VALUE",
                   help="like -S, but an empty VALUE keeps params.yaml's value (MLproject)")
    p.add_argument("--exp", action="store_true", help="`dvc exp run` even with nothing set")
    p.add_argument("-n", "--name", help="DVC experiment name (implies --exp)")
    p.add_argument("--mlflow-project", action="store_true",
                   help="started by `mlflow run`: its run becomes the parent run (implies --exp)")
    p.set_defaults(handler=_run_pipeline)

    p = sub.add_parser("promote", help="move the registry alias champion to the challenger if "
                                       "it beats the champion by tracking.promote_margin")
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params key, e.g. -S tracking.promote_margin=0.01")
    p.set_defaults(handler=_promote)

    p = sub.add_parser("backbones", help="list every backbone: size, input size, weights, offline")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=_backbones)

    p = sub.add_parser("predict", help="classify images with a pretrained or trained model")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", default="models/model.keras",
                   help="imagenet:<backbone>, a .keras file (labels.json beside it) or "
                        "models:/<name>@<alias> (default: %(default)s)")
    p.add_argument("--top", type=int, default=5, help="predictions per image (default: 5)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=_predict)

    p = sub.add_parser("gui", help="a desktop window: load an image, see the top 3 classes")
    p.add_argument("image", nargs="?", help="an image to classify at start")
    p.add_argument("--model", default="imagenet:efficientnet_lite0",
                   help="imagenet:<backbone>, a .keras file or models:/<name>@<alias> "
                        "(default: %(default)s; the window has a chooser)")
    p.set_defaults(handler=_gui)

    p = sub.add_parser("regress", help="Keras regression (Dense 16-8-1) on a table beside a "
                                       "linear regression: regress.source, regress.target")
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params key, e.g. -S regress.source=housing.csv")
    p.set_defaults(handler=_regress)
    return parser


def _run_stage(args: argparse.Namespace) -> int:
    from tlearn import config
    from tlearn.tracking.runs import stage_run

    cfg = config.load(args.params, overrides=_parse_overrides(args.set))
    stage = stages.get(args.stage)
    # The tracking store is checked before the stage does any work: a dead server fails
    # the stage within seconds and nothing is written.
    with stage_run(stage, cfg, args.settings) as run:
        metrics = stage.run(cfg, tracker=run)
        run.finish(metrics)
    log.debug("%s metrics: %s", args.stage, metrics)
    return 0


def _run_pipeline(args: argparse.Namespace) -> int:
    from tlearn import pipeline

    return pipeline.run(args.settings, args.set, args.project_param, exp=args.exp,
                        mlflow_project=args.mlflow_project, targets=args.targets, name=args.name)


def _promote(args: argparse.Namespace) -> int:
    from tlearn import config
    from tlearn.tracking import registry

    cfg = config.load(args.params, overrides=_parse_overrides(args.set))
    print(registry.promote(args.settings, cfg).line)
    return 0


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
                       settings=args.settings)


def _gui(args: argparse.Namespace) -> int:
    try:
        from tlearn import gui
    except ImportError as exc:  # PySide6 (or a library Qt needs) is missing
        print(f"tlearn gui needs PySide6: pip install -e '.[gui]' ({exc})", file=sys.stderr)
        return 2
    return gui.main(args.model, args.image, args.settings)


def _regress(args: argparse.Namespace) -> int:
    from tlearn import config, regress
    from tlearn.tracking.standalone import command_run

    cfg = config.load(args.params, overrides=_parse_overrides(args.set))
    table = regress.load_table(cfg.regress.source, cfg.regress.target)  # before anything is made
    params = {"base.seed": cfg.base.seed,
              **{f"regress.{k}": v for k, v in vars(cfg.regress).items()}}
    with command_run(args.settings, cfg.regress.experiment, cfg.tracking.required, "regress",
                     params, tags={"regress.source": cfg.regress.source}) as run:
        result = regress.run(cfg, table)
        run.finish(result.metrics, (regress.HISTORY_PREFIX, result.history),
                   (regress.REPORT, regress.PLOT), (regress.MODEL, result.example))
    report = result.report
    print(regress.format_rows(report["first_rows"], report["target"]), end="")
    for name in ("network", "linear_regression"):
        figures = report[name]
        print(f"{name}: R2 {figures['r2']:.4f}, RMSE {figures['rmse']:.4f}, "
              f"MAE {figures['mae']:.4f} on {report['n_test']} test rows")
    return 0


def _parse_overrides(pairs: list[str]) -> dict:
    from tlearn import config

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
