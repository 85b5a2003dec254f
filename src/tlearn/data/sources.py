"""Turn a data source into ``data/raw/[<split>/]<class>/<files>`` plus a manifest.

A source is one of:
- ``digits``: scikit-learn's 1,797 handwritten digits, written as PNGs (no network);
- ``cifar10``: the official CIFAR-10 tarball, downloaded, verified and converted to PNGs
  with its train/test split (tlearn.data.cifar10);
- an ``http(s)://`` URL of a zip/tar archive (resumable download, optional sha256);
- a local archive (zip, tar, tar.gz, tgz);
- a local folder laid out as ``<class>/<images>`` or ``<split>/<class>/<images>``.

Archives are extracted safely: absolute paths, ``..``, links and device files are
refused, and so is anything that would expand past a size cap (decompression bombs).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from tlearn.data import cifar10, folders
from tlearn.data.splits import SPLITS
from tlearn.errors import DataError
from tlearn.io import file_digest

log = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
IGNORED_NAMES = folders.IGNORED_NAMES
CHUNK = 1 << 20


@dataclass(frozen=True)
class ExtractLimits:
    """Refuse archives that would expand past ``max_expansion`` x their size or ``max_bytes``."""

    max_expansion: float
    max_bytes: int


def source_kind(source: str) -> str:
    if source in ("digits", "cifar10"):
        return source
    if source.startswith(("http://", "https://")):
        return "url"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if path.is_file():
        return "archive"
    raise DataError(f"data.source: {source!r} is not 'digits', 'cifar10', an http(s) URL, "
                    "an archive or a folder")


def fetch(source: str, sha256: str | None, target: Path, download_dir: Path,
          limits: ExtractLimits) -> dict:
    """Materialise ``source`` into the (new, empty) folder ``target``; return the manifest."""
    kind = source_kind(source)
    archive_sha, extra = None, {}
    if kind == "digits":
        write_digits(target)
    elif kind == "folder":
        extra = {"fingerprint": folders.fingerprint(Path(source)),
                 **folders.take(Path(source), target)}
    elif kind == "cifar10":
        archive_sha = fetch_cifar10(target, download_dir, sha256)
    else:
        archive = download(source, download_dir, sha256) if kind == "url" else Path(source)
        archive_sha = file_digest(archive)
        if sha256 and kind == "archive" and archive_sha != sha256.lower():
            raise DataError(f"data.sha256: {archive} has sha256 {archive_sha}, expected {sha256}")
        extract(archive, target, limits)
        unwrap_single_folder(target)
    layout = normalise_layout(target)
    return {"source": source, "kind": kind, "sha256": archive_sha, **layout, **extra}


# --- digits -------------------------------------------------------------------------

def write_digits(target: Path) -> None:
    """scikit-learn's 8x8 digits (values 0..16) as 8x8 grayscale PNGs, one folder per digit."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = target / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"digit_{i:04d}.png")


def fetch_cifar10(target: Path, download_dir: Path, sha256: str | None) -> str:
    """The official tarball, downloaded (resumable, verified against its published size
    and checksum), as ``target/{train,test}/<class>/*.png``; returns its sha256."""
    archive = cifar10.ARCHIVE
    if sha256 and sha256.lower() != archive.sha256:
        raise DataError(f"data.sha256: cifar10 is verified against its published sha256 "
                        f"{archive.sha256}; leave data.sha256 null")
    path = download(archive.url, download_dir, archive.sha256)
    cifar10.check(path, archive)
    cifar10.convert(path, target)
    return archive.sha256


# --- downloads ----------------------------------------------------------------------

def download(url: str, download_dir: Path, sha256: str | None, timeout: float = 60) -> Path:
    """Download ``url`` into ``download_dir``, resuming a partial ``.part`` file if any.

    The final file appears only once complete (and verified when ``sha256`` is given);
    a checksum mismatch deletes it and fails.
    """
    # One folder per URL: two URLs with the same file name (``.../v1/data.zip`` and
    # ``.../v2/data.zip``, or many ``.../download``) must never share a cached file.
    download_dir = download_dir / hashlib.sha256(url.encode()).hexdigest()[:16]
    download_dir.mkdir(parents=True, exist_ok=True)
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "download"
    final = download_dir / name
    if final.exists() and (sha256 is None or file_digest(final) == sha256.lower()):
        log.info("using already downloaded %s", final)
        return final
    final.unlink(missing_ok=True)
    part = download_dir / (name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "tlearn"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    total = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = offset and response.status == 206
            if offset and not resumed:
                log.info("server ignored the resume request: restarting %s", name)
                offset = 0
            total = response.length + offset if response.length is not None else None
            with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=name,
                disable=None,
            ) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part is already complete (or too long)
            log.info("partial file already complete or invalid: verifying %s", name)
        else:
            raise DataError(f"data.source: download of {url} failed: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"data.source: download of {url} failed: {reason} "
                        "(rerun to resume)") from None
    if total is not None and part.stat().st_size != total:
        raise DataError(f"data.source: download of {url} ended early "
                        f"({part.stat().st_size} of {total} bytes; rerun to resume)")
    if sha256:
        actual = file_digest(part)
        if actual != sha256.lower():
            part.unlink()
            raise DataError(f"data.sha256: {url} has sha256 {actual}, expected {sha256} "
                            "(the download was deleted)")
    part.replace(final)
    return final


# --- safe extraction ----------------------------------------------------------------

def extract(archive: Path, target: Path, limits: ExtractLimits) -> None:
    """Extract a zip or tar archive into ``target``, refusing anything unsafe."""
    cap = min(limits.max_bytes, int(archive.stat().st_size * limits.max_expansion))
    # is_zipfile alone also says yes to a tar whose last member is a zip (it looks for the
    # end record near the end of the file): require the zip signature at the start too.
    with open(archive, "rb") as f:
        starts_like_zip = f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    try:
        if starts_like_zip and zipfile.is_zipfile(archive):
            _extract_zip(archive, target, cap)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, target, cap)
        else:
            raise DataError(f"data.source: {archive} is not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile,
            lzma.LZMAError) as exc:  # truncated or damaged: one line, not a traceback
        raise DataError(f"data.source: {archive} is corrupt or truncated ({exc})") from None


def _safe_member_path(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (path.parts and ":" in path.parts[0]):
        raise DataError(f"data.source: {archive} has an entry with an absolute path: {name!r}")
    if ".." in path.parts:
        raise DataError(f"data.source: {archive} has an entry that escapes the target: {name!r}")
    return path


def _bomb(archive: Path, cap: int) -> DataError:
    return DataError(f"data.source: {archive} expands past {cap:,} bytes "
                     "(a decompression bomb? raise data.max_expansion / data.max_extracted_mb)")


def _copy_capped(src, dst: Path, written: int, cap: int, archive: Path) -> int:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > cap:
                raise _bomb(archive, cap)
            out.write(chunk)
    return written


def _extract_zip(archive: Path, target: Path, cap: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _safe_member_path(info.filename, archive)
            mode = info.external_attr >> 16
            if mode and (mode & 0o170000) not in (0, 0o100000, 0o040000):  # links, devices...
                raise DataError(f"data.source: {archive} has a link or special file: {info.filename!r}")
        if sum(i.file_size for i in infos) > cap:  # declared sizes; actual bytes checked too
            raise _bomb(archive, cap)
        written = 0
        for info in infos:
            dst = target / _safe_member_path(info.filename, archive)
            if info.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:
                written = _copy_capped(src, dst, written, cap, archive)


def _extract_tar(archive: Path, target: Path, cap: int) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            _safe_member_path(m.name, archive)
            if not (m.isfile() or m.isdir()):
                raise DataError(f"data.source: {archive} has a link or special file: {m.name!r}")
        if sum(m.size for m in members) > cap:
            raise _bomb(archive, cap)
        written = 0
        for m in members:
            dst = target / _safe_member_path(m.name, archive)
            if m.isdir():
                dst.mkdir(parents=True, exist_ok=True)
                continue
            src = tf.extractfile(m)
            written = _copy_capped(src, dst, written, cap, archive)


# --- layout -------------------------------------------------------------------------

def _children(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.name not in IGNORED_NAMES)


def unwrap_single_folder(target: Path) -> None:
    """``archive.zip`` often holds one top folder (``cats_and_dogs/train/...``): lift it."""
    children = _children(target)
    while len(children) == 1 and children[0].is_dir() and not is_split_name(children[0].name):
        inner = children[0]
        holding = target / f".unwrap-{inner.name}"
        inner.rename(holding)
        for child in holding.iterdir():
            child.rename(target / child.name)
        holding.rmdir()
        children = _children(target)
    for junk in target.iterdir():
        if junk.name in IGNORED_NAMES or junk.name.startswith("."):
            shutil.rmtree(junk) if junk.is_dir() else junk.unlink()


def is_split_name(name: str) -> bool:
    return name.lower() in SPLIT_ALIASES


def split_folders(folder: Path) -> list[Path]:
    """The split folders (train, validation or val, test) of ``folder``, or ``[]`` when its
    folders are classes; a DataError when it mixes split folders with others."""
    children = [c for c in _children(folder) if c.is_dir()]
    split_dirs = [c for c in children if is_split_name(c.name)]
    if split_dirs and len(split_dirs) != len(children):
        others = sorted(c.name for c in children if not is_split_name(c.name))
        raise DataError(f"data.source: {folder} mixes split folders with other folders: "
                        f"{others}")
    return split_dirs


def folder_layout(folder: Path) -> dict[str | None, dict[str, int]]:
    """Files per class of a local folder source, without copying or decoding anything:
    ``{split or None: {class: count}}`` (None when the folder has no split folders)."""
    if split_dirs := split_folders(folder):
        return {SPLIT_ALIASES[d.name.lower()]: _count_classes(d) for d in split_dirs}
    return {None: _count_classes(folder)}


def normalise_layout(target: Path) -> dict:
    """Rename split folders to train/validation/test and count files per class.

    Returns ``{"splits": [...] or None, "classes": [...], "counts": {...}, "n_files": N}``.
    """
    if not any(c.is_dir() for c in _children(target)):
        raise DataError(f"data.source: no class folders found in {target}")
    if split_dirs := split_folders(target):
        for d in split_dirs:
            canonical = SPLIT_ALIASES[d.name.lower()]
            if d.name != canonical:
                d.rename(target / canonical)
        counts = {s: _count_classes(target / s) for s in SPLITS if (target / s).is_dir()}
        classes = sorted({c for per_split in counts.values() for c in per_split})
        splits = list(counts)
    else:
        counts = _count_classes(target)
        classes = sorted(counts)
        splits = None
    n_files = sum(sum(c.values()) for c in counts.values()) if splits else sum(counts.values())
    return {"splits": splits, "classes": classes, "counts": counts, "n_files": n_files}


def _count_classes(folder: Path) -> dict[str, int]:
    return {c.name: sum(1 for f in c.rglob("*") if f.is_file() and not f.name.startswith("."))
            for c in _children(folder) if c.is_dir()}
