"""Exclusive advisory file locks, shared by threads and processes (each holder opens its own descriptor),
and whether a process that holds something (a temp file, a lease) still runs."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def exclusive(path: str, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on the file at `path` (created if missing); yields False when `blocking` is off
    and another holder has it. Closing the descriptor releases the lock, so a killed holder never keeps it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    """Whether process `pid` (of this machine) still runs. A killed process stays a zombie until someone
    reaps it (a container's PID 1 may take its time, or never): it answers kill(0) but will never finish."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")
