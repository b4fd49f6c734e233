"""One writer per run folder: ``RUN/.lock``, held with ``flock`` for as long as a process
writes the run.

The kernel drops a ``flock`` when its process dies, however it dies, so a lock file left by
a killed run is stale by construction: the next writer takes the lock and rewrites the
holder's details. The file says who holds it (pid, host, command, since when) so the refusal
can name the other process. The lock belongs to the process: a second trainer on the same
folder in the same process (a resume test, a search reusing a folder) shares it, and the
file is released when the last holder lets go.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from minbert.run.layout import RunDir, RunFileError


class RunLockedError(RunFileError):
    """Another process is writing this run folder."""


_held: dict[Path, tuple[int, int]] = {}  # lock file -> (open descriptor, holders in this process)


def acquire(run: RunDir) -> Path:
    """Take ``run``'s lock (the folder exists), or raise ``RunLockedError`` at once."""
    path = run.lock.resolve()
    if path in _held:
        fd, count = _held[path]
        _held[path] = (fd, count + 1)
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockedError(f"{run} is in use: {holder(run)}") from None
    holder_info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder_info) + "\n").encode(), 0)
    _held[path] = (fd, 1)
    return path


def release(path: Path) -> None:
    """Let go of a lock ``acquire`` returned; the last holder in the process unlocks it."""
    fd, count = _held[path]
    if count > 1:
        _held[path] = (fd, count - 1)
        return
    del _held[path]
    os.close(fd)  # closing the descriptor drops the flock; the file stays for the next writer


def holder(run: RunDir) -> str:
    """Who holds the lock, in words, from the lock file."""
    try:
        info = json.loads(run.lock.read_text(encoding="utf-8"))
        who = f"pid {info['pid']} on {info['host']} since {info['since']} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        who = "a process whose details could not be read"
    return (
        f"another minbert process is writing it: {who}. Wait for it to finish or stop it "
        "(SIGTERM saves its state for --resume), or give another --out"
    )
