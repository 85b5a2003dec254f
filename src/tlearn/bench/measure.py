"""``python -m tlearn.bench.measure CMD...``: run CMD, then print its wall time and the
peak memory of the largest of its processes as one JSON line starting with ``MARK`` (CMD's
own output passes through). The benchmarks put it in front of each stage's command, also
inside ``dvc repro``."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

MARK = "tlearn-bench "


def main(cmd: list[str]) -> int:
    started = time.perf_counter()
    returncode = subprocess.run(cmd).returncode
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KB on Linux
    print(MARK + json.dumps({"cmd": " ".join(cmd), "peak_rss_mb": round(peak, 1),
                             "seconds": round(time.perf_counter() - started, 2)}), flush=True)
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
