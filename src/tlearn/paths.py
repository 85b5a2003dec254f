"""Where each stage reads and writes, relative to the project root (mirrors dvc.yaml)."""

from pathlib import Path

DATA = Path("data")
RAW = DATA / "raw"
MANIFEST = RAW / "manifest.json"
DOWNLOADS = DATA / "downloads"          # resumable download cache, not a DVC output
PREPARED = DATA / "prepared"
PREPARED_LABELS = PREPARED / "labels.json"
PREPARED_PREPROCESS = PREPARED / "preprocess.json"  # image size and resize mode of the splits
AUGMENTED = DATA / "augmented"
FEATURES = DATA / "features"
MODELS = Path("models")
LABELS = MODELS / "labels.json"
PREPROCESS = MODELS / "preprocess.json"  # how predict must square-ify images for the models
HEAD_MODEL = MODELS / "head.keras"
MODEL = MODELS / "model.keras"
BEST_PARAMS = MODELS / "best_params.json"
CHECKPOINTS = DATA / "checkpoints"      # finetune resume state, not a DVC output
REPORTS = Path("reports")


def prepared_split(split: str) -> Path:
    return PREPARED / f"{split}.npz"
