"""Where the pipeline's data and models live, relative to the project root. Each stage
declares which of these it reads and writes (tlearn.stages); its reports are declared
there too."""

from pathlib import Path

DATA = Path("data")
RAW = DATA / "raw"
MANIFEST = RAW / "manifest.json"
DOWNLOADS = DATA / "downloads"          # resumable download cache, not a DVC output
PREPARED = DATA / "prepared"
PREPARED_LABELS = PREPARED / "labels.json"
PREPARED_PREPROCESS = PREPARED / "preprocess.json"  # image size and resize mode of the splits
AUGMENTED = DATA / "augmented"
AUGMENTED_TRAIN = AUGMENTED / "train"
FEATURES = DATA / "features"
EXTRACTOR = FEATURES / "extractor.keras"  # the frozen base that made the features
CHECKPOINTS = DATA / "checkpoints"      # finetune resume state, not a DVC output
MODELS = Path("models")
LABELS = MODELS / "labels.json"
PREPROCESS = MODELS / "preprocess.json"  # how predict must square-ify images for the models
HEAD_PARAMS = MODELS / "head_params.yaml"  # the head train_head trains (tune writes it)
HEAD_MODEL = MODELS / "head.keras"
MODEL = MODELS / "model.keras"
PROBE = MODELS / "probe.npz"            # the linear probe as a softmax layer (baselines writes it)
REPORTS = Path("reports")


def prepared_split(split: str) -> Path:
    """The folder of one prepared split (see tlearn.data.store)."""
    return PREPARED / split
