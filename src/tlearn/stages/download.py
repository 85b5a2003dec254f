"""download stage: ``data.source`` -> data/raw/ + data/raw/manifest.json."""

from __future__ import annotations

import logging

from tlearn import paths
from tlearn.config import Config
from tlearn.stages import Stage

log = logging.getLogger(__name__)

STAGE = Stage(
    name="download",
    help="fetch data.source into data/raw",
    params=("data",),
    deps=(),
    # Not in DVC's cache: a local folder's files are hard links to the user's own (a cached
    # copy would double the disk use); data/prepared, cached, keeps what was trained on.
    uncached=(paths.RAW,),
    report=paths.REPORTS / "download.json",
    artifacts=(paths.MANIFEST,),
)


def run(cfg: Config) -> dict:
    from tlearn.data import sources
    from tlearn.io import atomic_path, write_json

    limits = sources.ExtractLimits(max_expansion=cfg.data.max_expansion,
                                   max_bytes=cfg.data.max_extracted_mb * 1024 * 1024)
    with atomic_path(paths.RAW) as tmp:
        tmp.mkdir()
        manifest = sources.fetch(cfg.data.source, cfg.data.sha256, tmp, paths.DOWNLOADS, limits)
        write_json(tmp / paths.MANIFEST.name, manifest)
    log.info("download: %d files in %d classes (%s) -> %s", manifest["n_files"],
             len(manifest["classes"]), ", ".join(manifest["splits"] or ["no given splits"]),
             paths.RAW)
    metrics = {"n_files": manifest["n_files"], "n_classes": len(manifest["classes"])}
    if "skipped" in manifest:  # a local folder: hard-linked or copied, and what was left out
        metrics |= {key: manifest[key] for key in ("linked", "copied", "skipped")}
        for reason, count in manifest["skipped"].items():
            log.info("download: %d file(s) of %s skipped: %s", count, cfg.data.source, reason)
    write_json(STAGE.report, metrics)
    return metrics
