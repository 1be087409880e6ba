"""Upload bytes on disk: receive a stream into a temp file, keep it under a server-generated name."""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from typing import BinaryIO

from .. import db
from ..db import File
from ..errors import NotFound, PayloadTooLarge

INCOMING_PREFIX = ".incoming-"
READ_BLOCK = 256 * 1024


def too_large(limit_mb: float) -> PayloadTooLarge:
    return PayloadTooLarge("Oops! The file you're trying to upload is too large. "
                           f"Please upload a file that is less than {limit_mb:g} MB.")


def max_upload_bytes(settings) -> int | None:
    limit = settings.RAG_FILE_MAX_SIZE
    return None if limit is None or limit <= 0 else int(limit * 1024 * 1024)


def uploads_dir(settings) -> str:
    """UPLOAD_DIR: every host of a multi-host deployment shares it (a network filesystem)."""
    os.makedirs(settings.UPLOAD_DIR, exist_ok=True)
    return settings.UPLOAD_DIR


def stored_path(settings, file: File) -> str:
    return os.path.join(uploads_dir(settings), file.storage_name)


def read_bytes(settings, file: File) -> bytes:
    try:
        with open(stored_path(settings, file), "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise NotFound("Original file is unavailable.") from None


@dataclass
class Staged:
    """Upload bytes received into a temp file in UPLOAD_DIR (same filesystem: the rename is atomic), not yet
    a File row."""

    path: str
    size: int
    sha256: str
    head: bytes

    def discard(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def receive(settings, stream: BinaryIO) -> Staged:
    """Copy an upload stream to a temp file while hashing; stop and delete it past RAG_FILE_MAX_SIZE."""
    limit = max_upload_bytes(settings)
    path = os.path.join(uploads_dir(settings), f"{INCOMING_PREFIX}{uuid.uuid4().hex}")
    digest, size, head = hashlib.sha256(), 0, b""
    try:
        with open(path, "wb") as out:
            while True:
                block = stream.read(READ_BLOCK)
                if not block:
                    break
                size += len(block)
                if limit is not None and size > limit:
                    raise too_large(settings.RAG_FILE_MAX_SIZE)
                if len(head) < 8192:
                    head += block[:8192 - len(head)]
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        Staged(path, size, "", b"").discard()
        raise
    return Staged(path, size, digest.hexdigest(), head)


def store(settings, user_id: str, staged: Staged, filename: str, content_type: str, meta: dict,
          status: str) -> File:
    """Turn staged bytes into a File row plus its stored copy (server-generated name). The bytes are in
    place before the row commits: another host that sees the row (on a shared UPLOAD_DIR) finds them."""
    file_id = db.new_id()
    stored = os.path.join(uploads_dir(settings), file_id)
    os.replace(staged.path, stored)
    try:
        _fsync_dir(uploads_dir(settings))
        with db.write_transaction():
            return File.create(id=file_id, user=user_id, filename=filename, storage_name=file_id,
                               content_type=content_type, size=staged.size, file_hash=staged.sha256,
                               dedup_key=staged.sha256,
                               status=status, meta={"data": meta or {}})
    except BaseException:
        os.unlink(stored)
        raise


def remove_stored(settings, file: File) -> None:
    try:
        os.unlink(stored_path(settings, file))
    except FileNotFoundError:
        pass


def sweep_incoming(settings, older_than: float = 3600.0) -> None:
    """Delete temp uploads untouched for `older_than` seconds. Safe on a directory shared by hosts: a
    receiving upload rewrites its temp file every block, so another host's live upload is always fresh
    (the hour also covers clock skew between hosts and the file server)."""
    folder = uploads_dir(settings)
    cutoff = time.time() - older_than
    for name in os.listdir(folder):
        if not name.startswith(INCOMING_PREFIX):
            continue
        path = os.path.join(folder, name)
        try:
            if os.path.getmtime(path) < cutoff:
                os.unlink(path)
        except OSError:  # stored or removed meanwhile (by another host, on a shared directory)
            pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
