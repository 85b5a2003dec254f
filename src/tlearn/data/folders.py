"""A user's local image folder as a source: which files it holds (symlinks to regular files
followed, as in a folder of links or DVC's own checkout), taken into data/raw as hard links
where the file system allows (no second copy on disk), and its content fingerprint, so a
scheduled retrain sees images added, removed or changed although DVC does not."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}


@dataclass
class FolderFiles:
    files: dict[str, Path] = field(default_factory=dict)  # relative path -> the real file
    skipped: Counter = field(default_factory=Counter)     # reason -> how many


def list_files(source: Path) -> FolderFiles:
    """Every regular file under ``source`` by its relative path; links to regular files are
    followed to them, links to folders are not (no loops), hidden files are left out."""
    found = FolderFiles()
    for folder, dirs, names in os.walk(source):
        here = Path(folder)
        for name in list(dirs):
            if name.startswith(".") or name in IGNORED_NAMES:
                dirs.remove(name)
                found.skipped["hidden"] += 1
            elif (here / name).is_symlink():
                dirs.remove(name)
                found.skipped["link to a folder"] += 1
        for name in sorted(names):
            path = here / name
            if name.startswith(".") or name in IGNORED_NAMES:
                found.skipped["hidden"] += 1
            elif path.is_symlink() and not path.exists():
                found.skipped["broken link"] += 1
            elif not path.is_file():
                found.skipped["not a regular file"] += 1
            else:
                found.files[path.relative_to(source).as_posix()] = path.resolve()
    return found


def take(source: Path, target: Path) -> dict:
    """The folder's files into ``target``, hard-linked (copied across file systems);
    returns how many were linked or copied and how many skipped, by reason."""
    found = list_files(source)
    linked = 0
    for relative, real in found.files.items():
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(real, destination)
            linked += 1
        except OSError:  # another file system, or links not allowed
            shutil.copy2(real, destination)
    return {"linked": linked, "copied": len(found.files) - linked,
            "skipped": dict(sorted(found.skipped.items()))}


def fingerprint(source: Path) -> str:
    """sha256 over every file's relative path and content: any image added, removed,
    renamed or changed gives another fingerprint."""
    digest = hashlib.sha256()
    for relative, real in sorted(list_files(source).files.items()):
        with open(real, "rb") as f:
            digest.update(f"{relative}\0".encode() + hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()
