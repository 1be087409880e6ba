"""Exclusive advisory file locks, shared by threads and processes (each holder opens its own descriptor)."""
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
