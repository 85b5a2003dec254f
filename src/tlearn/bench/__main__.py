"""``python -m tlearn.bench [NAME ...]``: run the benchmarks (all by default)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("legacy", "tune")


def main(names: list[str]) -> None:
    for name in names or BENCHMARKS:
        importlib.import_module(f"tlearn.bench.{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
