"""The ingest pipeline: store bytes, extract, chunk, embed, write chunk rows and vector indexes."""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from .. import db
from ..db import Chunk, File, Knowledge, KnowledgeFile
from ..errors import EMPTY_CONTENT, ApiError, BadRequest, NotFound, PayloadTooLarge
from .chunk import split_text
from .extract import Extracted, extract
from .vectors import dimension_conflict, majority_dim

log = logging.getLogger("webui_api.rag")

UNSETTLED = ("pending", "processing")
INCOMING_PREFIX = ".incoming-"
READ_BLOCK = 256 * 1024
_CHUNK_COLUMNS = ("file", "seq", "text", "start", "end", "vector", "dim", "model")
_INSERT_CHUNK = 'INSERT INTO "{}" ({}) VALUES ({})'.format(
    Chunk._meta.table_name, ", ".join(f'"{Chunk._meta.fields[name].column_name}"' for name in _CHUNK_COLUMNS),
    ", ".join("?" for _ in _CHUNK_COLUMNS))


def too_large(limit_mb: float) -> PayloadTooLarge:
    return PayloadTooLarge("Oops! The file you're trying to upload is too large. "
                           f"Please upload a file that is less than {limit_mb:g} MB.")


def max_upload_bytes(settings) -> int | None:
    limit = settings.RAG_FILE_MAX_SIZE
    return None if limit is None or limit <= 0 else int(limit * 1024 * 1024)


# ---------------------------------------------------------------- storage

def uploads_dir(settings) -> str:
    path = os.path.join(settings.DATA_DIR, "uploads")
    os.makedirs(path, exist_ok=True)
    return path


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
    """Upload bytes received into a temp file under uploads/, not yet a File row."""

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
    """Turn staged bytes into a File row plus its stored copy (server-generated name)."""
    file_id = db.new_id()
    with db.write_transaction():
        file = File.create(id=file_id, user=user_id, filename=filename, storage_name=file_id,
                           content_type=content_type, size=staged.size, file_hash=staged.sha256,
                           status=status, meta={"data": meta or {}})
    try:
        os.replace(staged.path, os.path.join(uploads_dir(settings), file_id))
        _fsync_dir(uploads_dir(settings))
    except OSError:
        File.delete().where(File.id == file_id).execute()
        raise
    return file


def remove_stored(settings, file: File) -> None:
    try:
        os.unlink(stored_path(settings, file))
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- processing

@contextmanager
def file_lock(settings, file_id: str, blocking: bool = True):
    """Exclusive lock on processing one file, across threads and workers; yields False if not acquired."""
    lock_dir = os.path.join(uploads_dir(settings), ".locks")
    os.makedirs(lock_dir, exist_ok=True)
    fd = os.open(os.path.join(lock_dir, f"{file_id}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def process(ext, file_id: str, content: str | None = None) -> File:
    """Run the whole pipeline now; returns the completed File. On failure the file is marked `failed`
    with its error and the error is raised (extraction errors carry `content_error = True`)."""
    with file_lock(ext.settings, file_id):
        return _process_locked(ext, file_id, content)


def _process_locked(ext, file_id: str, content: str | None) -> File:
    file = File.get_or_none(File.id == file_id)
    if file is None:
        raise NotFound()
    before = (file.status, file.error)
    set_status(file_id, "processing")
    try:
        extracted = _extract(ext.settings, file, content)
        pieces = split_text(extracted.text, ext.settings.CHUNK_SIZE, ext.settings.CHUNK_OVERLAP,
                            extracted.markdown)
        if not pieces:
            raise _content_error(BadRequest(EMPTY_CONTENT))
        vectors = ext.embedder.embed([piece.text for piece in pieces])
        _check_dimensions(ext, file_id, vectors.shape[1])
        new_ids, old_ids = _write_chunks(file_id, extracted, pieces, vectors, ext.embedder.model)
        _index(ext, file_id, new_ids, old_ids, vectors)
    except ApiError as exc:
        if getattr(exc, "unchanged", False) and before[0] == "completed":
            set_status(file_id, *before)  # refused before anything was touched: the file is as it was
        else:
            set_status(file_id, "failed", _failure_text(exc))
        raise
    except Exception as exc:
        log.exception("processing file %s failed", file_id)
        set_status(file_id, "failed", f"Processing failed unexpectedly ({type(exc).__name__}).")
        raise ApiError(f"Processing the file failed unexpectedly ({type(exc).__name__}).") from exc
    set_status(file_id, "completed")
    try:
        _index_late_links(ext, file_id, new_ids, vectors)
    except ApiError as exc:  # the file itself is fine; the collection says why (e.g. other dimension)
        log.warning("file %s could not join a collection linked meanwhile: %s", file_id, exc.detail)
    return File.get_or_none(File.id == file_id) or file


def _extract(settings, file: File, content: str | None) -> Extracted:
    if content is not None:
        if not content.strip():
            raise _content_error(BadRequest(EMPTY_CONTENT))
        return Extracted(content, "text")
    try:
        return extract(read_bytes(settings, file), file.filename, file.content_type,
                       max_chars=settings.RAG_MAX_EXTRACTED_CHARS)
    except ApiError as exc:
        raise _content_error(exc)


def _content_error(exc: ApiError) -> ApiError:
    exc.content_error = True  # the file itself is unusable (as opposed to the backend failing)
    return exc


def _failure_text(exc: ApiError) -> str:
    return exc.detail if isinstance(exc.detail, str) else str(exc.detail)


def _check_dimensions(ext, file_id: str, dim: int) -> None:
    """Refuse up front (before touching anything) when a linked collection holds other-sized vectors."""
    for kid in linked_knowledge(file_id):
        have = ext.vectors.dim(kid)
        if have is not None and have != dim:
            conflict = dimension_conflict(kid, have, dim)
            conflict.unchanged = True
            raise conflict


def _write_chunks(file_id, extracted: Extracted, pieces, vectors: np.ndarray, model: str):
    """Replace the file's chunk rows and extracted text in one transaction; returns (new ids, old ids)."""
    text_hash = hashlib.sha256(extracted.text.encode("utf-8", "surrogatepass")).hexdigest()
    dim = int(vectors.shape[1])
    with db.write_transaction():
        file = File.get_or_none(File.id == file_id)
        if file is None:
            raise NotFound("The file was deleted while it was being processed.")
        old_ids = [row[0] for row in Chunk.select(Chunk.id).where(Chunk.file == file_id).tuples()]
        Chunk.delete().where(Chunk.file == file_id).execute()
        rows = [(file_id, i, piece.text, piece.start, piece.end, vectors[i].tobytes(), dim, model)
                for i, piece in enumerate(pieces)]
        db.database.cursor().executemany(_INSERT_CHUNK, rows)  # peewee's per-row SQL building costs ~10x more
        meta = dict(file.meta or {})
        meta["pages"] = extracted.pages or None
        File.update(content=extracted.text, text_hash=text_hash, meta=meta, updated_at=db.now()) \
            .where(File.id == file_id).execute()
        new_ids = [row[0] for row in Chunk.select(Chunk.id).where(Chunk.file == file_id).order_by(Chunk.seq)
                   .tuples()]
    return new_ids, old_ids


def _index(ext, file_id: str, new_ids, old_ids, vectors) -> None:
    ext.vectors.rebuild(collection_name(file_id), new_ids, vectors)
    for kid in linked_knowledge(file_id):
        ext.vectors.remove(kid, old_ids)
        ext.vectors.add(kid, new_ids, vectors)
    if File.get_or_none(File.id == file_id) is None:  # deleted meanwhile: undo what we just wrote
        forget_vectors(ext, file_id, new_ids, linked_knowledge(file_id))
        raise NotFound("The file was deleted while it was being processed.")


def _index_late_links(ext, file_id: str, new_ids, vectors) -> None:
    """Collections linked while we were embedding: file/add saw the file unfinished and left it to us."""
    for kid in linked_knowledge(file_id):
        if not set(new_ids) <= ext.vectors.ids(kid):
            ext.vectors.add(kid, new_ids, vectors)


def forget_vectors(ext, file_id: str, chunk_ids, knowledge_ids) -> None:
    for kid in knowledge_ids:
        ext.vectors.remove(kid, chunk_ids)
    ext.vectors.drop(collection_name(file_id))


def set_status(file_id: str, status: str, error: str | None = None) -> None:
    File.update(status=status, error=error, updated_at=db.now()).where(File.id == file_id).execute()


def wait_settled(file_id: str, timeout: float, poll: float = 0.1) -> File | None:
    """Wait until the file is no longer pending/processing (or `timeout` passes); returns the fresh row."""
    deadline = time.monotonic() + timeout
    while True:
        file = File.get_or_none(File.id == file_id)
        if file is None or file.status not in UNSETTLED or time.monotonic() >= deadline:
            return file
        time.sleep(poll)


# ---------------------------------------------------------------- collections and stored vectors

def collection_name(file_id: str) -> str:
    return f"file-{file_id}"


def linked_knowledge(file_id: str) -> list[str]:
    return [link.knowledge_id for link in KnowledgeFile.select(KnowledgeFile.knowledge)
            .where(KnowledgeFile.file == file_id)]


def stored_vectors(file_ids) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the chunks of these files, read from SQLite (no embedding call)."""
    file_ids = list(file_ids)
    if not file_ids:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    rows = list(Chunk.select(Chunk.id, Chunk.vector, Chunk.dim).where(Chunk.file.in_(file_ids))
                .order_by(Chunk.id).tuples())
    dim = majority_dim(row[2] for row in rows)
    keep = [row for row in rows if row[2] == dim]
    if len(keep) < len(rows):
        log.warning("skipping %d chunks whose vectors are not %s-dimensional", len(rows) - len(keep), dim)
    if not keep:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    ids = np.fromiter((row[0] for row in keep), dtype=np.int64, count=len(keep))
    vectors = np.frombuffer(b"".join(bytes(row[1]) for row in keep), dtype=np.float32).reshape(len(keep), dim)
    return ids, vectors


def collection_vectors(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The VectorStore loader: `file-<id>` → that file's chunks; a knowledge id → its files' chunks."""
    if name.startswith("file-"):
        return stored_vectors([name[len("file-"):]])
    file_ids = [link.file_id for link in KnowledgeFile.select(KnowledgeFile.file)
                .where(KnowledgeFile.knowledge == name)]
    return stored_vectors(file_ids)


def rebuild_indexes(ext) -> int:
    """Rewrite every index from SQLite (after restoring a backup, or when index files were lost)."""
    count = 0
    for file_id in [f.id for f in File.select(File.id).where(File.status == "completed")]:
        ext.vectors.rebuild(collection_name(file_id), *stored_vectors([file_id]))
        count += 1
    for kid in [k.id for k in Knowledge.select(Knowledge.id)]:
        ext.vectors.rebuild(kid, *collection_vectors(kid))
        count += 1
    return count


# ---------------------------------------------------------------- background work and recovery

_executor: ThreadPoolExecutor | None = None
_executor_guard = threading.Lock()
_pending: set[Future] = set()


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_guard:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rag-ingest")
        return _executor


def submit(ext, file_id: str) -> Future:
    """Process in the background; the status is polled through the file routes."""
    future = _pool().submit(_background, ext, file_id)
    with _executor_guard:
        _pending.add(future)
    future.add_done_callback(lambda f: _forget(f))
    return future


def _forget(future: Future) -> None:
    with _executor_guard:
        _pending.discard(future)


def _background(ext, file_id: str) -> None:
    # A pooled thread outlives requests: use a fresh connection per job, never one left from earlier.
    if not db.database.is_closed():
        db.database.close()
    try:
        with file_lock(ext.settings, file_id):
            file = File.get_or_none(File.id == file_id)
            if file is not None and file.status in UNSETTLED:  # nobody (e.g. recovery) finished it first
                _process_locked(ext, file_id, None)
    except ApiError as exc:
        log.info("background processing of file %s failed: %s", file_id, exc.detail)
    except Exception:
        log.exception("background processing of file %s failed", file_id)
    finally:
        if not db.database.is_closed():
            db.database.close()


def drain(timeout: float = 30.0) -> bool:
    """Wait for background work of this process to finish (tests, shutdown); True when idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _executor_guard:
            futures = list(_pending)
        if not futures:
            return True
        for future in futures:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # already logged by _background
                pass
    with _executor_guard:
        return not _pending


def recover_interrupted(ext) -> int:
    """At start-up: resume files a crashed worker left pending/processing (those nobody holds the lock
    of), and sweep abandoned temp uploads. Returns how many files were queued."""
    _sweep_incoming(ext.settings)
    queued = 0
    try:
        stuck = [f.id for f in File.select(File.id).where(File.status.in_(UNSETTLED))]
    except Exception:  # a database problem must not stop the app from starting
        log.exception("could not look for interrupted uploads")
        return 0
    for file_id in stuck:
        with file_lock(ext.settings, file_id, blocking=False) as free:
            if not free:
                continue  # a live worker is processing it
        submit(ext, file_id)
        queued += 1
    if queued:
        log.info("resuming %d interrupted file(s) in the background", queued)
    return queued


def _sweep_incoming(settings, older_than: float = 3600.0) -> None:
    folder = uploads_dir(settings)
    cutoff = time.time() - older_than
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith(INCOMING_PREFIX) and os.path.getmtime(path) < cutoff:
            try:
                os.unlink(path)
            except OSError:
                pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
