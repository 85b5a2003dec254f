"""Serving latency of a trained model under ``mlflow models serve``, printed and saved.

The model the pipeline benchmark just trained on the cats-vs-dogs photos, else
``models/model.keras`` (from ``make run``), is logged as tlearn logs it into a scratch
MLflow store and served with ``mlflow models serve --env-manager local`` on 127.0.0.1, one
worker. Timed: one raw JPEG per request (``dataframe_split``, base64), 32 JPEGs per
request, and the same as prepared float tensors (``inputs``); the median of several
requests, client and server on the same 2 cores. The photos are the cats-vs-dogs test
JPEGs when ``../shared/datasets`` is there.

Speed depends on the machine and its load; these are measurements, not test thresholds.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tlearn.bench import common
from tlearn.io import read_json

REPO = common.REPO
MODEL = REPO / "models" / "model.keras"
PHOTOS = common.CATS_AND_DOGS / "test" / "cats"
BATCH = 32
SINGLE_REQUESTS, BATCH_REQUESTS = 15, 5
TENSOR_BATCH_REQUESTS = 2  # each takes ~16 s (the JSON of 32 tensors)


class ModelServer:
    """``mlflow models serve -m <uri> --env-manager local`` on 127.0.0.1 (a free port), in
    a process group of its own, stopped on exit; its output goes to ``log``."""

    def __init__(self, model_uri: str, tracking_uri: str, log: Path, start_seconds: float = 180):
        self.model_uri, self.tracking_uri, self.log = model_uri, tracking_uri, log
        self.start_seconds = start_seconds
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ModelServer:
        bin_dir = Path(sys.executable).parent  # mlflow and the uvicorn it starts
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.tracking_uri,
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("MLFLOW_RUN_ID", None)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(bin_dir / "mlflow"), "models", "serve", "-m", self.model_uri,
                 "--env-manager", "local", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.start_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited with {self.process.returncode}:"
                                   f"\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow models serve did not answer on {self.url} within "
                           f"{self.start_seconds:.0f} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def invoke(self, payload: dict) -> tuple[int, dict]:
        """POST ``payload`` to /invocations: the status and the decoded JSON answer."""
        request = urllib.request.Request(f"{self.url}/invocations",
                                         data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # uvicorn runs as a child of the CLI
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def images_payload(files: list[bytes]) -> dict:
    """Encoded image files as ``mlflow models serve`` takes them: base64 in an image column."""
    return {"dataframe_split": {"columns": ["image"],
                                "data": [[base64.b64encode(f).decode("ascii")] for f in files]}}


def tensor_payload(pixels: np.ndarray) -> dict:
    return {"inputs": pixels.astype("float32").tolist()}


def median_ms(send: Callable[[], tuple[int, dict]], repeats: int) -> float:
    """Median wall time of ``repeats`` requests after one warm-up (each must succeed)."""
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        status, answer = send()
        times.append(1000 * (time.perf_counter() - started))
        if status != 200:
            raise RuntimeError(f"the server answered {status}: {str(answer)[:500]}")
    return statistics.median(times[1:])


def _jpeg_files() -> list[bytes]:
    """BATCH cats-vs-dogs test photos, or noise JPEGs of a typical photo size without them."""
    photos = sorted(PHOTOS.glob("*.jpg"))[:BATCH] if PHOTOS.is_dir() else []
    if len(photos) == BATCH:
        return [photo.read_bytes() for photo in photos]
    from PIL import Image

    rng, files = np.random.default_rng(0), []
    for _ in range(BATCH):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), np.uint8)).save(buffer, "JPEG")
        files.append(buffer.getvalue())
    return files


def model_to_serve() -> Path | None:
    """The pipeline benchmark's model (it records its project in reports/bench.json), else
    make run's, else None."""
    report = read_json(common.BENCH_JSON) if common.BENCH_JSON.is_file() else {}
    project = report.get("pipeline", {}).get("project")
    if project and (Path(project) / "models" / "model.keras").is_file():
        return Path(project) / "models" / "model.keras"
    return MODEL if MODEL.is_file() else None


def bench_serving(model: Path) -> None:
    import mlflow

    from tlearn.predict import load_image
    from tlearn.tracking.models import log_model
    from tlearn.tracking.store import quiet_mlflow

    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-serve-"))
    try:
        quiet_mlflow()
        tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
        mlflow.set_tracking_uri(tracking_uri)
        preprocess = read_json(model.with_name("preprocess.json"))
        size, resize_mode = int(preprocess["image_size"]), preprocess["resize_mode"]
        files = _jpeg_files()
        # the same photos prepared as tlearn predict prepares them: the tensor payloads
        pixels = np.stack([load_image(data, size, resize_mode) for data in files])
        with mlflow.start_run():
            info = log_model(model, "model", read_json(model.with_name("labels.json")),
                             resize_mode, pixels[:2].astype(np.uint8))
        with ModelServer(info.model_uri, tracking_uri, work / "server.log") as server:
            one_jpeg = median_ms(lambda: server.invoke(images_payload(files[:1])), SINGLE_REQUESTS)
            batch_jpeg = median_ms(lambda: server.invoke(images_payload(files)), BATCH_REQUESTS)
            one_tensor = median_ms(lambda: server.invoke(tensor_payload(pixels[:1])),
                                   SINGLE_REQUESTS)
            batch_tensor = median_ms(lambda: server.invoke(tensor_payload(pixels)),
                                     TENSOR_BATCH_REQUESTS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    jpeg_kb = statistics.median(len(f) for f in files) / 1000
    common.save("serve", {"model": str(model), "image_size": size, "jpeg_kb": round(jpeg_kb, 1),
                          "ms": {"jpeg_1": one_jpeg, f"jpeg_{BATCH}": batch_jpeg,
                                 "tensor_1": one_tensor, f"tensor_{BATCH}": batch_tensor}})
    print(f"serve     {model} at {size} px under mlflow models serve "
          f"(1 worker), median of {SINGLE_REQUESTS} / {BATCH_REQUESTS} requests "
          f"({TENSOR_BATCH_REQUESTS} for {BATCH} tensors)")
    print(f"          raw JPEG (~{jpeg_kb:.0f} KB, base64)  1 image {one_jpeg:7.0f} ms   "
          f"{BATCH} images {batch_jpeg:7.0f} ms ({batch_jpeg / BATCH:.0f} ms/image)")
    print(f"          float tensor (JSON)          1 image {one_tensor:7.0f} ms   "
          f"{BATCH} images {batch_tensor:7.0f} ms ({batch_tensor / BATCH:.0f} ms/image)")


def main() -> None:
    model = model_to_serve()
    if model is None:
        print(f"serve     skipped: no model (the pipeline benchmark's, or {MODEL.relative_to(REPO)}"
              f" from make run)")
        return
    bench_serving(model)


if __name__ == "__main__":
    main()
