"""A lock file so that one scheduled job runs at a time: created atomically with the
holder's process id, start time and host; a lock whose process is gone (killed, crashed,
the machine rebooted) is taken over."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tlearn.errors import TlearnError


class Locked(TlearnError):
    """Another live process holds the lock (the message names it)."""

    exit_code = 3


def holder_alive(holder: dict) -> bool:
    """Is the process that wrote ``holder`` still running? (Process ids are reused, so its
    start time must match too.) A lock from another host is assumed alive."""
    import psutil

    if holder.get("host") != socket.gethostname():
        return True
    try:
        return abs(psutil.Process(holder["pid"]).create_time() - holder["created"]) < 1
    except (psutil.Error, KeyError, TypeError):
        return False


def _this_process() -> dict:
    import psutil

    return {"pid": os.getpid(), "host": socket.gethostname(),
            "created": psutil.Process().create_time(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


@contextmanager
def held(path: Path, what: str) -> Iterator[dict]:
    """Hold the lock at ``path`` while the block runs; raises :class:`Locked` at once when
    a live process holds it. ``what`` names the job in the message."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _this_process()
    mine = path.with_name(f"{path.name}.{me['pid']}")
    mine.write_text(json.dumps(me))
    try:
        for _ in range(2):  # a stale lock is removed once, then taken like a free one
            try:
                os.link(mine, path)  # atomic, and the lock is never seen half-written
                break
            except FileExistsError:
                try:
                    holder = json.loads(path.read_text())
                except FileNotFoundError:  # released just now
                    continue
                if holder_alive(holder):
                    raise Locked(f"{what}: already running as pid {holder['pid']} on "
                                 f"{holder['host']} since {holder['started']} "
                                 f"(lock {path})") from None
                path.unlink(missing_ok=True)
        else:
            raise Locked(f"{what}: another process took the lock {path} at the same moment")
    finally:
        mine.unlink()
    try:
        yield me
    finally:
        path.unlink(missing_ok=True)
