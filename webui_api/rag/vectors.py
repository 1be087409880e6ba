"""FAISS indexes on disk, one per collection, shared safely by every gunicorn worker."""
from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterable

import faiss
import numpy as np

from ..errors import BadRequest, Conflict
from .collection_rows import collection_vectors

log = logging.getLogger("webui_api.rag")

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
# _write puts `<name>.faiss.tmp-<pid>-<thread>` next to the index and renames it into place.
_TEMP = re.compile(r"^(?P<name>.+)\.faiss\.tmp-(?P<pid>\d+)-\d+$")
STALE_TEMP_SECONDS = 3600.0

# loader(name) -> (ids, vectors) read from SQLite, the source of truth; vectors is an (n, dim) float32 array.
Loader = Callable[[str], "tuple[np.ndarray, np.ndarray]"]


def dimension_conflict(name: str, have: int, got: int) -> Conflict:
    return Conflict(
        f"The embedding model changed: collection {name} holds {have}-dimensional vectors but the current "
        f"embedding model produces {got}-dimensional ones. Either set RAG_EMBEDDING_MODEL back, or re-embed: "
        "empty knowledge collections with POST /api/v1/knowledge/{id}/reset, re-process their files with "
        "POST /api/v1/retrieval/process/file, then add them again.")


class VectorStore:
    """`<index_dir>/<name>.faiss` files holding IndexIDMap2(IndexFlatIP) over L2-normalised vectors.

    Writers take an exclusive fcntl lock per collection, write a temp file, fsync and rename it into place.
    Readers keep a cache keyed by the file's (inode, size, mtime_ns) and reload when another worker
    replaced it. A missing or unreadable file is rebuilt from SQLite through `loader` (default: chunk
    rows)."""

    def __init__(self, index_dir: str, loader: Loader | None = None):
        self.index_dir = index_dir
        self.loader = loader or collection_vectors
        self._cache: dict[str, tuple[tuple, faiss.Index]] = {}
        self._mutex = threading.Lock()

    # ---- public API
    def add(self, name: str, ids: Iterable[int], vectors: np.ndarray, replacing: Iterable[int] = ()) -> None:
        """Insert (or replace) vectors under `ids`, removing `replacing` in the same write; adding the same
        ids twice never duplicates them."""
        ids, vectors, replacing = _as_ids(ids), _as_matrix(vectors), _as_ids(replacing)
        if not len(ids):
            self.remove(name, replacing)
            return
        if len(ids) != len(vectors):
            raise ValueError("ids and vectors differ in length")
        with self._locked(name):
            index = self._load_for_write(name, vectors.shape[1], persist=False)  # written below anyway
            if index.d != vectors.shape[1]:
                raise dimension_conflict(name, index.d, vectors.shape[1])
            index.remove_ids(np.union1d(ids, replacing).astype(np.int64))
            index.add_with_ids(vectors, ids)
            self._write(name, index)

    def remove(self, name: str, ids: Iterable[int]) -> None:
        ids = _as_ids(ids)
        if not len(ids):
            return
        with self._locked(name):
            index = self._load_for_write(name, None)
            if index is None or index.remove_ids(ids) == 0:
                return
            self._write(name, index)

    def rebuild(self, name: str, ids: Iterable[int], vectors: np.ndarray) -> None:
        """Replace the whole collection with exactly these vectors (an empty one drops it)."""
        ids, vectors = _as_ids(ids), _as_matrix(vectors)
        with self._locked(name):
            if not len(ids):
                self._unlink(name)
                return
            index = _new_index(vectors.shape[1])
            index.add_with_ids(vectors, ids)
            self._write(name, index)

    def drop(self, name: str) -> None:
        with self._locked(name):
            self._unlink(name)

    def dim(self, name: str) -> int | None:
        index = self._get(name)
        return None if index is None else index.d

    def count(self, name: str) -> int:
        index = self._get(name)
        return 0 if index is None else index.ntotal

    def ids(self, name: str) -> set[int]:
        index = self._get(name)
        if index is None or not index.ntotal:
            return set()
        return set(faiss.vector_to_array(index.id_map).tolist())

    def ids_on_disk(self, name: str) -> set[int] | None:
        """The ids in the index file as it is on disk (never rebuilt on the way); None when unreadable."""
        index = _read(self.path(name))
        if index is None:
            return None
        return set(faiss.vector_to_array(index.id_map).tolist()) if index.ntotal else set()

    def index_files(self) -> tuple[dict[str, str], list[str]]:
        """({collection: path}, [temp files of interrupted writes: writer dead, or older than an hour])."""
        indexes, temps = {}, []
        if not os.path.isdir(self.index_dir):
            return indexes, temps
        for entry in sorted(os.listdir(self.index_dir)):
            path = os.path.join(self.index_dir, entry)
            temp = _TEMP.match(entry)
            if temp and (not _alive(int(temp["pid"])) or _age(path) > STALE_TEMP_SECONDS):
                temps.append(path)
            elif entry.endswith(".faiss"):
                indexes[entry[:-len(".faiss")]] = path
        return indexes, temps

    def search(self, names: Iterable[str], vector: np.ndarray, k: int) -> list[tuple[int, float, str]]:
        """Top `k` (chunk_id, score, collection) over every named collection, best first; a chunk present
        in several collections is reported once, under the first collection named."""
        query = _as_matrix(vector).reshape(1, -1)
        hits: dict[int, tuple[int, float, str]] = {}
        for name in dict.fromkeys(names):
            index = self._get(name)
            if index is None or not index.ntotal:
                continue
            if index.d != query.shape[1]:
                raise dimension_conflict(name, index.d, query.shape[1])
            scores, ids = index.search(query, min(k, index.ntotal))
            for chunk_id, score in zip(ids[0].tolist(), scores[0].tolist()):
                if chunk_id >= 0 and chunk_id not in hits:
                    hits[chunk_id] = (chunk_id, float(score), name)
        return sorted(hits.values(), key=lambda hit: -hit[1])[:max(0, k)]

    # ---- files and cache
    def path(self, name: str) -> str:
        if not _NAME.match(name or ""):
            raise BadRequest(f"Invalid collection name {name!r}: use letters, digits, '-' and '_'.")
        return os.path.join(self.index_dir, f"{name}.faiss")

    def _get(self, name: str) -> faiss.Index | None:
        """The current index for reading: cached while the file is unchanged, else (re)loaded."""
        path = self.path(name)
        signature = _signature(path)
        with self._mutex:
            cached = self._cache.get(name)
        if cached is not None and signature is not None and cached[0] == signature:
            return cached[1]
        if signature is not None:
            index = _read(path)
            if index is not None:
                with self._mutex:
                    self._cache[name] = (signature, index)
                return index
        with self._locked(name):  # missing or corrupt: rebuild from SQLite once, under the writer lock
            return self._load_for_write(name, None)

    def _load_for_write(self, name: str, dim: int | None, persist: bool = True) -> faiss.Index | None:
        """Under the lock: the on-disk index (a private copy), rebuilt from SQLite when missing or
        corrupt (and written back when `persist`), or a fresh empty one of `dim` when the collection has
        nothing yet."""
        path = self.path(name)
        signature = _signature(path)
        with self._mutex:
            cached = self._cache.get(name)
        if cached is not None and signature is not None and cached[0] == signature:
            index = faiss.clone_index(cached[1])  # cached objects are shared by readers: never mutate them
        else:
            index = _read(path) if signature is not None else None
        if index is None:
            if signature is not None:
                log.warning("vector index %s is unreadable; rebuilding it from the database", path)
            index = self._rebuild_from_db(name)
            if index is not None and persist:
                self._write(name, index)
            elif signature is not None:
                self._unlink(name)  # corrupt and nothing stored: forget it
        if index is None and dim is not None:
            index = _new_index(dim)
        return index

    def _rebuild_from_db(self, name: str) -> faiss.Index | None:
        ids, vectors = self.loader(name)
        ids = _as_ids(ids)
        if not len(ids):
            return None
        vectors = _as_matrix(vectors)
        index = _new_index(vectors.shape[1])
        index.add_with_ids(vectors, ids)
        log.info("rebuilt vector index %s from %d stored chunks", name, len(ids))
        return index

    def _write(self, name: str, index: faiss.Index) -> None:
        """Crash-safe replace: temp file in the same directory, fsync, rename, fsync the directory."""
        path = self.path(name)
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        data = faiss.serialize_index(index)
        try:
            with open(tmp, "wb") as handle:
                handle.write(data.tobytes())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            _silent_unlink(tmp)
            raise
        _fsync_dir(self.index_dir)
        with self._mutex:
            self._cache[name] = (_signature(path), index)

    def _unlink(self, name: str) -> None:
        _silent_unlink(self.path(name))
        _fsync_dir(self.index_dir)
        with self._mutex:
            self._cache.pop(name, None)

    @contextmanager
    def _locked(self, name: str):
        """Exclusive per-collection lock shared by threads and processes (a fresh fd per holder)."""
        path = self.path(name)
        os.makedirs(self.index_dir, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the fd releases the lock


def _new_index(dim: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(int(dim)))


def _read(path: str) -> faiss.Index | None:
    try:
        data = np.fromfile(path, dtype=np.uint8)
        return faiss.deserialize_index(data) if data.size else None
    except (OSError, RuntimeError, ValueError, MemoryError):
        return None


def _signature(path: str) -> tuple | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _as_ids(ids) -> np.ndarray:
    return np.ascontiguousarray(np.fromiter((int(i) for i in ids), dtype=np.int64))


def _as_matrix(vectors) -> np.ndarray:
    matrix = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    return matrix.reshape(1, -1) if matrix.ndim == 1 else matrix


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age(path: str) -> float:
    try:
        return time.time() - os.path.getmtime(path)
    except FileNotFoundError:
        return 0.0


def _silent_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
