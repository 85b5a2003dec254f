"""``python -m tlearn.bench [NAME ...]``: run the benchmarks (all but the race by default),
print their tables and write reports/bench.json."""

from __future__ import annotations

import importlib
import sys

#: What ``make bench`` runs, in this order (under 25 minutes on a 2-core machine).
#: serve needs models/model.keras: pipeline's, from its scratch project, or make run's.
BENCHMARKS = ("throughput", "pipeline", "probe", "serve", "scale", "tune")


def main(names: list[str]) -> None:
    for name in names or BENCHMARKS:
        importlib.import_module(f"tlearn.bench.{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
