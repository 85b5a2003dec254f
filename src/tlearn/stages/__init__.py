"""The pipeline's stages, each declared once in its own module of this package.

A stage module holds a :class:`Stage` record named ``STAGE`` (what it reads, writes and
reports) and a function ``run(cfg) -> dict of metrics`` (``run(cfg, tracker)`` for a stage
that logs runs of its own, such as tuning trials: see :class:`Tracker`; its
:class:`Option` s come as keyword arguments). Everything else derives from those records:
the ``tlearn <stage>`` subcommands, what tracking logs for a stage, and the code
dependencies ``dvc.yaml`` must list (a test checks that dvc.yaml agrees).
Adding a stage means one new module here plus its ``dvc.yaml`` entry.

Stage modules import the heavy libraries (TensorFlow) inside ``run``: listing the
stages, as the CLI and ``tlearn run`` do, must stay cheap.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # src/tlearn
#: Modules that never change what a stage writes (parsing params, error types, logging to
#: MLflow, the CLI, these declarations): editing them must not rerun the pipeline.
NOT_CODE_DEPS = ("tlearn", "tlearn.cli", "tlearn.config", "tlearn.errors", "tlearn.stages",
                 "tlearn.tracking")


@dataclass(frozen=True)
class Option:
    """A command-line option of a stage's subcommand, passed to ``run`` by name. Not a
    param: it changes how the stage runs (``tlearn tune --workers 4``), so DVC ignores it."""

    name: str
    help: str
    default: int = 1


@dataclass(frozen=True)
class Stage:
    """What one DVC stage reads and writes; paths are relative to the project root."""

    name: str
    help: str
    params: tuple[str, ...]              # params.yaml keys (groups or dotted), as dvc.yaml lists
    deps: tuple[Path, ...]               # data and models it reads
    # Params groups read from a file another stage writes, in place of params.yaml's:
    # {models/head_params.yaml: ("head",)} (the tuned head). dvc.yaml lists them as a
    # params file, so `dvc params diff` shows the values the stage used.
    params_files: Mapping[Path, tuple[str, ...]] = field(default_factory=dict)
    outs: tuple[Path, ...] = ()          # data and models it writes (cached by DVC)
    uncached: tuple[Path, ...] = ()      # outputs DVC hashes but keeps out of its cache
    report: Path | None = None           # its figures, JSON (a plain file for DVC)
    metrics: tuple[Path, ...] = ()       # the pipeline's headline figures: DVC metrics
    plots: tuple[Path, ...] = ()         # CSV and PNG reports: DVC plots
    history: Path | None = None          # per-epoch CSV (one of ``plots``)
    history_prefix: str = ""             # MLflow name of its curves: ``<prefix>/val_accuracy``
    model: Path | None = None            # the Keras model it trains, logged to MLflow
    artifacts: tuple[Path, ...] = ()     # other files worth keeping beside the run
    datasets: tuple[str, ...] = ()       # prepared splits it reads (MLflow dataset inputs)
    metric_prefix: str = ""              # MLflow metric names: ``<prefix>/<key>``, default
                                         # ``<name>.<key>``
    registers_model: bool = False        # the final model goes to the registry
    options: tuple[Option, ...] = ()     # extra command-line options of `tlearn <name>`

    @property
    def module(self) -> str:
        return f"{__name__}.{self.name}"

    @property
    def reports(self) -> tuple[Path, ...]:
        """Every file it writes under reports/."""
        return (*([self.report] if self.report else []), *self.metrics, *self.plots)

    @property
    def param_keys(self) -> tuple[str, ...]:
        """Every params key it reads: params.yaml's and those of its params files."""
        return self.params + tuple(key for keys in self.params_files.values() for key in keys)

    @property
    def reads(self) -> tuple[Path, ...]:
        return self.deps + tuple(self.params_files)

    def metric_name(self, key: str) -> str:
        return f"{self.metric_prefix}/{key}" if self.metric_prefix else f"{self.name}.{key}"

    def run(self, cfg, tracker: Tracker | None = None, **options: Any) -> dict:
        function = importlib.import_module(self.module).run
        if "tracker" in inspect.signature(function).parameters:
            return function(cfg, tracker=tracker or UNTRACKED, **options)
        return function(cfg, **options)


class ChildRun(Protocol):
    """A run nested under a stage's run (a tuning trial, a baseline classifier)."""

    def log(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Metrics at ``step`` (an epoch), kept and sent in one batch at :meth:`end`."""

    def end(self, status: str = "FINISHED", tags: Mapping[str, str] | None = None) -> None:
        """FINISHED, FAILED or KILLED, with tags such as the trial's state."""


class Tracker(Protocol):
    """What a stage may ask of tracking without knowing MLflow; tlearn.tracking gives a
    stage's run, or :data:`UNTRACKED` when tracking is off."""

    def child(self, name: str, params: Mapping[str, Any]) -> ChildRun: ...

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params the stage found (the tuned head), beside those it read."""

    def for_worker(self) -> Tracker:
        """A picklable tracker another process (a tuning worker) uses to add children to
        this same run."""


class Untracked:
    def child(self, name: str, params: Mapping[str, Any]) -> Untracked:
        return self

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def for_worker(self) -> Untracked:
        return self

    def log(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def end(self, status: str = "FINISHED", tags: Mapping[str, str] | None = None) -> None:
        pass


UNTRACKED = Untracked()


@functools.cache
def all_stages() -> dict[str, Stage]:
    """Every stage of this package, in pipeline order (each after the stages it reads)."""
    found = {info.name: importlib.import_module(f"{__name__}.{info.name}").STAGE
             for info in pkgutil.iter_modules(__path__)}
    ordered: dict[str, Stage] = {}
    while len(ordered) < len(found):  # topological; ties in alphabetical order
        name = next(n for n in sorted(found) if n not in ordered
                    and _reads_from(found[n], found.values()) <= ordered.keys())
        ordered[name] = found[name]
    return ordered


def get(name: str) -> Stage:
    return all_stages()[name]


def upstream_of(name: str) -> set[str]:
    """Every stage whose outputs stage ``name`` reads, directly or through others."""
    stages = all_stages()
    found: set[str] = set()
    todo = [name]
    while todo:
        for parent in _reads_from(stages[todo.pop()], stages.values()) - found:
            found.add(parent)
            todo.append(parent)
    return found


def _reads_from(stage: Stage, stages) -> set[str]:
    """The other stages that write something ``stage`` reads (a file or a folder around it)."""
    def overlap(a: Path, b: Path) -> bool:
        return a == b or a in b.parents or b in a.parents

    return {other.name for other in stages if other.name != stage.name
            and any(overlap(dep, out) for dep in stage.reads
                    for out in (*other.outs, *other.uncached, *other.reports))}


# --------------------------------------------------------------------------------------
# Code dependencies: the source files whose code determines a stage's outputs
# --------------------------------------------------------------------------------------


def code_deps(name: str) -> list[Path]:
    """The stage module and every tlearn module it imports, directly or not (relative to
    the project root, as dvc.yaml lists them), minus :data:`NOT_CODE_DEPS`. Another stage
    imported for its declaration brings none of its code."""
    start = f"{__name__}.{name}"
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen or (module != start and _not_code(module)):
            continue
        seen.add(module)
        todo += _tlearn_imports(module)
    project_root = PACKAGE_ROOT.parents[1]
    return sorted(_module_file(m).relative_to(project_root) for m in seen)


def _not_code(module: str) -> bool:
    return any(module == x or (x != "tlearn" and module.startswith(x + "."))
               for x in NOT_CODE_DEPS)


def _module_file(module: str) -> Path:
    relative = Path(*module.split(".")[1:])
    package = PACKAGE_ROOT / relative / "__init__.py"
    return package if package.is_file() else (PACKAGE_ROOT / relative).with_suffix(".py")


def _tlearn_imports(module: str) -> list[str]:
    """tlearn modules ``module`` imports anywhere in its code (also inside functions)."""
    tree = ast.parse(_module_file(module).read_text(encoding="utf-8"))
    for node in ast.walk(tree):  # imports only type checkers follow are not code
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                   "typing.TYPE_CHECKING"):
            node.body = []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("tlearn.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and (node.module == "tlearn" or node.module.startswith("tlearn.")):
            for alias in node.names:  # ``from tlearn import io`` names a module
                candidate = f"{node.module}.{alias.name}"
                found.append(candidate if _is_module(candidate) else node.module)
    return [m for m in found if _is_module(m)]


def _is_module(name: str) -> bool:
    return name.startswith("tlearn") and _module_file(name).is_file()

