"""FAISS indexes on disk as immutable segments per collection, memory-mapped and shared by every worker."""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable

import faiss
import numpy as np

from .. import db, locks
from ..errors import BadRequest, Conflict
from .collection_rows import collection_vectors
from .index_types import build_index, index_rows, search_segment

log = logging.getLogger("webui_api.rag")

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
# seg-<first>-<last>-<rows>-<tag>.faiss: the vectors added by writes first..last (rows = ntotal).
# del-<n>-<rows>-<tag>.ids: int64 ids write n removed; they hide in every segment whose last write is < n.
_SEGMENT = re.compile(r"^seg-(?P<first>\d+)-(?P<last>\d+)-(?P<rows>\d+)-[0-9a-f]+\.faiss$")
_TOMBSTONE = re.compile(r"^del-(?P<n>\d+)-(?P<rows>\d+)-[0-9a-f]+\.ids$")
# ver-<v>: an empty file naming the database version (collection_state) the collection's files reflect, read
# from the directory listing every read makes anyway. No such file: version 0 (built before the index log,
# or by a local write; a catch-up replays the log from its start, or rebuilds when that was pruned).
_VERSION = re.compile(r"^ver-(?P<v>\d+)$")
# Files are written as `.tmp-<pid>-<tag>` inside the collection directory and renamed into place.
_TEMP = re.compile(r"^\.tmp-(?P<pid>\d+)-[0-9a-f]+$")
STALE_TEMP_SECONDS = 3600.0

# Measured in bench/rag_scale.py on 2 shared cores: OpenMP's default thread team stalls a single query up
# to 40x when the other core is busy (80 ms vs 1.1 ms at 10k), and gunicorn already runs queries in parallel.
FAISS_THREADS = 1
# Past this many live segments a write schedules a merge in the background.
MAX_SEGMENTS = 8
# Memory-mapped, not copied: flat codes and IVF lists stay in the page cache, one copy for every worker.
_READ_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY

# loader(name) -> (ids, vectors) read from SQLite, the source of truth; vectors is an (n, dim) float32 array.
Loader = Callable[[str], "tuple[np.ndarray, np.ndarray]"]
# changes_after(version) -> (latest version, joined ids, left ids) of the log after it, or None when pruned.
ChangesAfter = Callable[[int], "tuple[int, np.ndarray, np.ndarray] | None"]
# joining(ids, dim) -> (ids, vectors) of those still stored, or None when only a rebuild is right.
Joining = Callable[["np.ndarray", "int | None"], "tuple[np.ndarray, np.ndarray] | None"]


def dimension_conflict(name: str, have: int, got: int) -> Conflict:
    return Conflict(
        f"The embedding model changed: collection {name} holds {have}-dimensional vectors but the current "
        f"embedding model produces {got}-dimensional ones. Either set RAG_EMBEDDING_MODEL back, or re-embed: "
        "empty knowledge collections with POST /api/v1/knowledge/{id}/reset, re-process their files with "
        "POST /api/v1/retrieval/process/file, then add them again.")


@dataclass(frozen=True)
class SegmentFile:
    file: str
    first: int
    last: int
    rows: int


@dataclass(frozen=True)
class TombstoneFile:
    file: str
    n: int
    rows: int


@dataclass
class Layout:
    """What a collection directory holds, with merge leftovers (covered segments, spent tombstones) set
    aside: the same answer for every reader, whatever point a writer or merger was killed at."""

    segments: list[SegmentFile] = field(default_factory=list)
    tombstones: list[TombstoneFile] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)
    version: int = 0

    @property
    def last(self) -> int:
        return max([s.last for s in self.segments] + [t.n for t in self.tombstones] + [0])

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments) - sum(t.rows for t in self.tombstones)

    def hiding(self, segment: SegmentFile) -> list[TombstoneFile]:
        return [t for t in self.tombstones if t.n > segment.last]


def layout_of(files: Iterable[str]) -> Layout:
    segments, tombstones, versions, out = [], [], {}, Layout()
    for entry in files:
        if m := _VERSION.match(entry):
            versions[entry] = int(m["v"])
        elif m := _SEGMENT.match(entry):
            segments.append(SegmentFile(entry, int(m["first"]), int(m["last"]), int(m["rows"])))
        elif m := _TOMBSTONE.match(entry):
            tombstones.append(TombstoneFile(entry, int(m["n"]), int(m["rows"])))
        elif _TEMP.match(entry):
            out.temps.append(entry)
    for seg in segments:  # a merged segment covers the ones it replaced (a merge killed before unlinking)
        if any(o is not seg and o.first <= seg.first and seg.last <= o.last and (o.first, o.last) !=
               (seg.first, seg.last) for o in segments):
            out.leftovers.append(seg.file)
        else:
            out.segments.append(seg)
    out.segments.sort(key=lambda s: s.first)
    for tomb in tombstones:  # spent: every segment it could hide in was merged with it applied
        if any(s.last < tomb.n for s in out.segments):
            out.tombstones.append(tomb)
        else:
            out.leftovers.append(tomb.file)
    out.tombstones.sort(key=lambda t: t.n)
    out.version = max(versions.values(), default=0)  # the newest is written before older ones are unlinked
    out.leftovers += [entry for entry, v in versions.items() if v != out.version]
    return out


class Segment:
    """One loaded (memory-mapped) segment: the FAISS index plus its ids, sorted for membership tests."""

    def __init__(self, path: str, index: faiss.Index):
        self.path = path
        self.index = index
        ids = faiss.vector_to_array(faiss.downcast_index(index).id_map) if index.ntotal else np.zeros(0)
        self.order = np.argsort(ids, kind="stable")  # sorted position -> FAISS's internal position
        self.sorted_ids = ids.astype(np.int64)[self.order]

    def positions(self, held_ids: np.ndarray) -> np.ndarray:
        """FAISS's internal positions of ids this segment holds."""
        return self.order[np.searchsorted(self.sorted_ids, held_ids)].astype(np.int64)

    def holds(self, ids: np.ndarray) -> np.ndarray:
        where = np.searchsorted(self.sorted_ids, ids)
        where[where >= len(self.sorted_ids)] = 0
        return self.sorted_ids[where] == ids if len(self.sorted_ids) else np.zeros(len(ids), bool)


@dataclass
class View:
    """A collection as one reader sees it: live segments, each with the ids tombstones hide in it."""

    layout: Layout
    parts: list[tuple[Segment, np.ndarray]]  # (segment, sorted hidden ids)

    @property
    def dim(self) -> int | None:
        return self.parts[0][0].index.d if self.parts else None

    def contains(self, ids: np.ndarray) -> np.ndarray:
        found = np.zeros(len(ids), bool)
        for segment, hidden in self.parts:
            found |= segment.holds(ids) & ~np.isin(ids, hidden)
        return found

    def ids(self) -> np.ndarray:
        live = [s.sorted_ids[~np.isin(s.sorted_ids, hidden)] for s, hidden in self.parts]
        return np.concatenate(live) if live else np.zeros(0, np.int64)


@dataclass
class _Cached:
    """What a worker keeps of one collection: its loaded files and the view they last made."""

    key: tuple[str, ...] = ()
    view: View | None = None
    segments: dict[str, Segment] = field(default_factory=dict)
    tombstones: dict[str, np.ndarray] = field(default_factory=dict)


class VectorStore:
    """`<index_dir>/<name>/` holds a collection as immutable files: a write adds one small segment or one
    tombstone file, never rewrites what is there. Writers take an exclusive fcntl lock per collection and
    rename fsynced temp files into place; readers list the directory and load (memory-map) only files they
    have not seen, so every worker shares one copy of the vectors in the page cache. Merges build one
    segment from many off the lock and commit it with a rename. A missing or unreadable collection is
    rebuilt from SQLite through `loader` (default: chunk rows). At most `cached_collections` collections stay
    loaded, the least recently used leaving first: every upload is a collection of its own."""

    def __init__(self, index_dir: str, loader: Loader | None = None, auto_merge: bool = True,
                 cached_collections: int = 256):
        self.index_dir = index_dir
        self.loader = loader or collection_vectors
        self.auto_merge = auto_merge
        self.cached_collections = max(1, cached_collections)
        self._cache: OrderedDict[str, _Cached] = OrderedDict()  # least recently used first
        self._mutex = threading.Lock()
        faiss.omp_set_num_threads(FAISS_THREADS)

    # ---- public API
    def add(self, name: str, ids: Iterable[int], vectors: np.ndarray, replacing: Iterable[int] = ()) -> None:
        """Insert (or replace) vectors under `ids`, removing `replacing` in the same write; adding the same
        ids twice never duplicates them. Costs what it adds: one new segment (plus one tombstone file)."""
        ids, vectors, replacing = _as_ids(ids), _as_matrix(vectors), _as_ids(replacing)
        if not len(ids):
            self.remove(name, replacing)
            return
        if len(ids) != len(vectors):
            raise ValueError("ids and vectors differ in length")
        with self._locked(name):
            view = self._view_for_write(name, rebuild=False)
            if view is None:  # nothing readable on disk: one segment of the stored rows, this write applied
                self._replace_all(name, build_index(*self._stored_with(name, ids, vectors, replacing)))
            else:
                if view.dim is not None and view.dim != vectors.shape[1]:
                    raise dimension_conflict(name, view.dim, vectors.shape[1])
                next_n = self._tombstone(name, view, np.union1d(ids, replacing).astype(np.int64))
                self._write_segment(name, next_n, next_n, build_index(ids, vectors))
        self._maybe_merge(name)

    def remove(self, name: str, ids: Iterable[int]) -> None:
        ids = _as_ids(ids)
        if not len(ids):
            return
        with self._locked(name):
            if os.path.isdir(self._dir(name)):
                self._tombstone(name, self._view_for_write(name), ids)
        self._maybe_merge(name)

    def rebuild(self, name: str, ids: Iterable[int], vectors: np.ndarray) -> None:
        """Replace the whole collection with exactly these vectors (an empty one drops it)."""
        ids, vectors = _as_ids(ids), _as_matrix(vectors)
        with self._locked(name):
            if not len(ids):
                self._unlink(name)
                return
            self._replace_all(name, build_index(ids, vectors))
            self._record_version(name, 0)  # whatever the log says since is replayed (e.g. after a restore)

    def drop(self, name: str) -> None:
        with self._locked(name):
            self._unlink(name)

    def compact(self, name: str) -> bool:
        """Merge every segment and apply every tombstone (`webui-api compact`); False when nothing to do."""
        return self._merge(name, full=True)

    def catch_up(self, name: str, version: int, changes_after: ChangesAfter, joining: Joining) -> None:
        """Bring the collection to the database's `version` under its writer lock: apply the log rows after
        the version its files reflect (load only vectors it lacks: one segment, one tombstone), else, with no
        files or the log pruned, rebuild from the database and record `version`, read before loading."""
        with self._locked(name):
            cached = self.cached_version(name)
            if cached is not None and cached >= version:
                # another thread or worker of this host caught up meanwhile, maybe past what we read (a
                # database restored from a backup, with lower versions, goes with `webui-api reindex`)
                return
            changes = changes_after(cached) if cached is not None else None
            if changes is None or not self._apply(name, changes, joining):
                self._reload(name, version)
        self._maybe_merge(name)

    def cached_version(self, name: str) -> int | None:
        """The database version the collection's files reflect; None when it has no directory."""
        try:
            return layout_of(os.listdir(self._dir(name))).version
        except (FileNotFoundError, NotADirectoryError):
            return None

    def dim(self, name: str) -> int | None:
        return self._get(name).dim

    def count(self, name: str) -> int:
        return self._get(name).layout.rows

    def ids(self, name: str) -> set[int]:
        return set(self._get(name).ids().tolist())

    def contains_all(self, name: str, ids: Iterable[int]) -> bool:
        ids = _as_ids(ids)
        return bool(self._get(name).contains(ids).all()) if len(ids) else True

    def ids_on_disk(self, name: str) -> set[int] | None:
        """The ids the collection's files hold as they are on disk (never rebuilt on the way); None when a
        file is unreadable."""
        try:
            view = self._load_view(name, self._layout(name))
        except _Unreadable:
            return None
        return set(view.ids().tolist())

    def segment_counts(self, name: str) -> tuple[int, int]:
        """(live segments, tombstone files) of a collection, from its directory listing alone."""
        layout = self._layout(name)
        return len(layout.segments), len(layout.tombstones)

    def index_files(self) -> tuple[dict[str, str], list[str]]:
        """({collection: directory}, [leftovers: temp files of dead writers or older than an hour, merge
        leftovers, old single-file indexes])."""
        indexes, stray = {}, []
        if not os.path.isdir(self.index_dir):
            return indexes, stray
        for entry in sorted(os.listdir(self.index_dir)):
            path = os.path.join(self.index_dir, entry)
            if os.path.isdir(path) and _NAME.match(entry):
                indexes[entry] = path
                layout = self._layout(entry)
                stray += [os.path.join(path, f) for f in layout.temps if _stale_temp(os.path.join(path, f))]
            elif entry.endswith(".faiss") or ".faiss.tmp-" in entry:
                stray.append(path)  # the single-file layout before segments; rebuilt from SQLite on read
        return indexes, stray

    def rows_on_disk(self) -> dict[str, int]:
        """{collection: live vector count} from file names alone: nothing is read or loaded."""
        indexes, _ = self.index_files()
        return {name: self._layout(name).rows for name in indexes}

    def search(self, names: Iterable[str], vector: np.ndarray, k: int) -> list[tuple[int, float, str]]:
        """Top `k` (chunk_id, score, collection) over every named collection, best first; a chunk present
        in several collections is reported once, under the first collection named."""
        query = _as_matrix(vector).reshape(1, -1)
        hits: dict[int, tuple[int, float, str]] = {}
        for name in dict.fromkeys(names):
            view = self._get(name)
            if view.dim is not None and view.dim != query.shape[1]:
                raise dimension_conflict(name, view.dim, query.shape[1])
            for chunk_id, score in _search_view(view, query, k):
                hits.setdefault(chunk_id, (chunk_id, score, name))
        return sorted(hits.values(), key=lambda hit: -hit[1])[:max(0, k)]

    # ---- files and cache
    def path(self, name: str) -> str:
        """The collection's directory."""
        if not _NAME.match(name or ""):
            raise BadRequest(f"Invalid collection name {name!r}: use letters, digits, '-' and '_'.")
        return os.path.join(self.index_dir, name)

    _dir = path

    def _layout(self, name: str) -> Layout:
        try:
            return layout_of(os.listdir(self._dir(name)))
        except (FileNotFoundError, NotADirectoryError):
            return Layout()

    def _get(self, name: str) -> View:
        """The collection for reading: new files loaded, gone ones forgotten; rebuilt when unreadable."""
        try:
            return self._current_view(name)
        except _Unreadable:
            with self._locked(name):  # unreadable: rebuild from SQLite once, under the writer lock
                return self._view_for_write(name)

    def _current_view(self, name: str) -> View:
        for _attempt in range(5):  # a merge may unlink a file between listing and opening it
            layout = self._layout(name)
            if not layout.segments and not os.path.isdir(self._dir(name)):
                self._missing(name)
            key = tuple(s.file for s in layout.segments) + tuple(t.file for t in layout.tombstones)
            with self._mutex:
                cached = self._cache.get(name)
                if cached is not None and cached.view is not None and cached.key == key:
                    self._cache.move_to_end(name)
                    return cached.view
            try:
                view = self._load_view(name, layout)
            except FileNotFoundError:
                continue
            with self._mutex:
                cached = self._entry(name)
                cached.key, cached.view = key, view
            return view
        return self._load_view(name, self._layout(name))

    def _missing(self, name: str) -> None:
        """No directory: when SQLite holds vectors for it (files lost), the caller rebuilds them."""
        raise _Unreadable(name)

    def _load_view(self, name: str, layout: Layout) -> View:
        path = self._dir(name)
        segments = {s.file: self._load_segment(name, os.path.join(path, s.file)) for s in layout.segments}
        deleted = {t.file: self._load_tombstone(name, os.path.join(path, t.file)) for t in layout.tombstones}
        parts = []
        for seg in layout.segments:
            segment = segments[seg.file]
            hidden = np.unique(np.concatenate([deleted[t.file] for t in layout.hiding(seg)] or [_NO_IDS]))
            parts.append((segment, hidden[segment.holds(hidden)]))  # only what this segment holds
        with self._mutex:  # keep only what is listed (a merge replaced the rest)
            cached = self._entry(name)
            cached.segments, cached.tombstones = segments, deleted
        return View(layout, parts)

    def _entry(self, name: str) -> _Cached:
        """Under the mutex: the collection's cache entry, now the most recently used; the least recently
        used beyond the bound leave (a search still holding their view finishes with it)."""
        cached = self._cache.get(name)
        if cached is None:
            cached = self._cache[name] = _Cached()
            while len(self._cache) > self.cached_collections:
                self._cache.popitem(last=False)
        self._cache.move_to_end(name)
        return cached

    def cached_names(self) -> list[str]:
        """The collections this worker keeps loaded, least recently used first."""
        with self._mutex:
            return list(self._cache)

    def _load_segment(self, name: str, path: str) -> Segment:
        file = os.path.basename(path)
        with self._mutex:
            cached = self._cache.get(name)
            if cached is not None and file in cached.segments:
                return cached.segments[file]
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        try:
            segment = Segment(path, faiss.read_index(path, _READ_FLAGS))
        except (RuntimeError, ValueError, MemoryError) as exc:
            raise _Unreadable(path) from exc
        with self._mutex:
            self._entry(name).segments[file] = segment
        return segment

    def _load_tombstone(self, name: str, path: str) -> np.ndarray:
        file = os.path.basename(path)
        with self._mutex:
            cached = self._cache.get(name)
            if cached is not None and file in cached.tombstones:
                return cached.tombstones[file]
        with open(path, "rb") as handle:
            data = handle.read()
        if len(data) % 8:
            raise _Unreadable(path)
        ids = np.frombuffer(data, dtype=np.int64)
        with self._mutex:
            self._entry(name).tombstones[file] = ids
        return ids

    def _stored_with(self, name: str, ids: np.ndarray, vectors: np.ndarray, replacing: np.ndarray):
        stored_ids, stored = self.loader(name)
        stored_ids, stored = _as_ids(stored_ids), _as_matrix(stored)
        if len(stored_ids) and stored.shape[1] != vectors.shape[1]:
            raise dimension_conflict(name, stored.shape[1], vectors.shape[1])
        keep = ~np.isin(stored_ids, np.union1d(ids, replacing)) if len(stored_ids) else slice(0, 0)
        kept = stored[keep].reshape(-1, vectors.shape[1])
        return np.concatenate([stored_ids[keep], ids]), np.concatenate([kept, vectors])

    def _view_for_write(self, name: str, rebuild: bool = True) -> View | None:
        """Under the lock: the collection as it is on disk, rebuilt from SQLite when missing or unreadable
        (else None), and with leftovers of interrupted writes and merges swept."""
        try:
            view = self._current_view(name)
        except _Unreadable:
            if not rebuild:
                return None
            if os.path.isdir(self._dir(name)):
                log.warning("vector index %s is unreadable; rebuilding it from the database", name)
            ids, vectors = self.loader(name)
            ids, vectors = _as_ids(ids), _as_matrix(vectors)
            if len(ids):
                self._replace_all(name, build_index(ids, vectors))
                log.info("rebuilt vector index %s from %d stored chunks", name, len(ids))
            else:
                self._unlink(name)
            view = self._current_view(name) if len(ids) else View(Layout(), [])
        self._sweep(name, view.layout)
        return view

    def _apply(self, name: str, changes: tuple[int, np.ndarray, np.ndarray], joining: Joining) -> bool:
        """Under the lock: apply log changes (latest version, joined ids, left ids) idempotently (ids already
        there or already gone cost nothing); False when only a rebuild gives the right ids."""
        latest, joined, left = changes
        try:
            view = self._current_view(name)
        except _Unreadable:
            return False
        missing, going = joined[~view.contains(joined)], left[view.contains(left)]
        if len(missing) or len(going):
            loaded = joining(missing, view.dim)
            if loaded is None:
                return False
            n = self._tombstone(name, view, going)
            if len(loaded[0]):
                self._write_segment(name, n, n, build_index(*loaded))
        self._record_version(name, latest)
        return True

    def _reload(self, name: str, version: int) -> None:
        """Under the lock: the collection rebuilt from the database, at `version` (read before loading). An
        empty one keeps an empty directory holding its version, unless it never had a version."""
        ids, vectors = self.loader(name)
        ids, vectors = _as_ids(ids), _as_matrix(vectors)
        if len(ids):
            self._replace_all(name, build_index(ids, vectors))
        else:
            self._unlink(name)
            if not version:
                return
        self._record_version(name, version)

    def _record_version(self, name: str, version: int) -> None:
        if version:  # version 0 is the absence of a file; an empty file needs no temp file to appear whole
            path = self._dir(name)
            os.makedirs(path, exist_ok=True)
            os.close(os.open(os.path.join(path, f"ver-{version}"), os.O_WRONLY | os.O_CREAT, 0o644))
            _fsync_dir(path)
        for entry in os.listdir(self._dir(name)):
            if _VERSION.match(entry) and entry != f"ver-{version}":
                _silent_unlink(os.path.join(self._dir(name), entry))

    def _sweep(self, name: str, layout: Layout) -> None:
        path = self._dir(name)
        for entry in layout.leftovers + [t for t in layout.temps if _stale_temp(os.path.join(path, t))]:
            _silent_unlink(os.path.join(path, entry))

    def _tombstone(self, name: str, view: View, ids: np.ndarray) -> int:
        """Hide the `ids` the collection holds; returns the number the next write takes."""
        n = view.layout.last + 1
        present = ids[view.contains(ids)] if len(ids) else ids
        if not len(present):
            return n
        self._publish(name, f"del-{n}-{len(present)}-{_tag()}.ids", np.unique(present).tobytes())
        return n + 1

    def _write_segment(self, name: str, first: int, last: int, index: faiss.Index) -> None:
        self._publish(name, f"seg-{first}-{last}-{index.ntotal}-{_tag()}.faiss", faiss.serialize_index(index))

    def _replace_all(self, name: str, index: faiss.Index) -> None:
        """One segment covering every number so far: everything else becomes a leftover, then is swept."""
        layout = self._layout(name)
        self._write_segment(name, 0, layout.last + 1, index)
        self._sweep(name, self._layout(name))

    def _publish(self, name: str, entry: str, data) -> None:
        """Crash-safe: temp file in the collection directory, fsync, rename, fsync the directory."""
        path = self._dir(name)
        os.makedirs(path, exist_ok=True)
        tmp = os.path.join(path, f".tmp-{os.getpid()}-{_tag()}")
        try:
            with open(tmp, "wb") as handle:
                handle.write(memoryview(data))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, os.path.join(path, entry))
        except BaseException:
            _silent_unlink(tmp)
            raise
        _fsync_dir(path)

    def _unlink(self, name: str) -> None:
        path = self._dir(name)
        if os.path.isdir(path):  # rename first so no reader ever lists a half-deleted collection
            gone = os.path.join(self.index_dir, f".dropped-{_tag()}")
            os.replace(path, gone)
            shutil.rmtree(gone, ignore_errors=True)
            _fsync_dir(self.index_dir)
        with self._mutex:
            self._cache.pop(name, None)

    # ---- merging
    def _maybe_merge(self, name: str) -> None:
        layout = self._layout(name)
        if not self.auto_merge or len(layout.segments) <= MAX_SEGMENTS:
            return
        threading.Thread(target=self._merge_quietly, args=(name,), daemon=True, name=f"merge-{name}").start()

    def _merge_quietly(self, name: str) -> None:
        try:
            self._merge(name, full=False)
        except Exception:  # noqa: BLE001 - a background merge must never take the worker down; retried later
            log.exception("merging vector segments of %s failed", name)
        finally:
            db.close_thread_connection()  # a rebuild reads the database: the thread's connection goes back

    def _merge(self, name: str, full: bool) -> bool:
        """Build one segment from several without holding the writer lock (writers keep adding), then
        commit it under the lock with one rename; the replaced files are leftovers from that instant."""
        with self._merge_lock(name) as mine:
            if not mine:
                return False  # another thread or worker is merging this collection
            with self._locked(name):
                view = self._view_for_write(name)
            chosen, full = _merge_plan(view.layout, full)
            if not chosen:
                return False
            index = _merged_index(view, chosen, drop_hidden=full)
            with self._locked(name):
                if not {s.file for s in chosen} <= {s.file for s in self._layout(name).segments}:
                    return False  # dropped or rebuilt meanwhile: the merge is moot
                # a full merge applied every tombstone it saw: its range covers them so they are spent
                first, last = chosen[0].first, view.layout.last if full else chosen[-1].last
                if index is None:  # everything merged was deleted: an empty placeholder keeps the numbers
                    index = build_index(np.zeros(0, np.int64), np.zeros((0, view.dim or 1), np.float32))
                self._write_segment(name, first, last, index)
                self._sweep(name, self._layout(name))
            return True

    def _merge_lock(self, name: str):
        return locks.exclusive(self._lock_path(name, ".merge"), blocking=False)

    def _locked(self, name: str):
        """Exclusive per-collection lock shared by threads and processes (a fresh fd per holder)."""
        return locks.exclusive(self._lock_path(name, ""))

    def _lock_path(self, name: str, suffix: str) -> str:
        return f"{self.path(name)}{suffix}.lock"


class _Unreadable(Exception):
    pass


_NO_IDS = np.zeros(0, np.int64)


def _merge_plan(layout: Layout, full: bool) -> tuple[list[SegmentFile], bool]:
    """(segments to merge, whether the merge is full): every one (asked for, or when tombstones pile up,
    or when the small ones outgrow a quarter of the biggest), else the newest run of small segments with no
    tombstone inside it. Only a full merge drops deleted vectors, so tombstone counts stay true."""
    segments = layout.segments
    everything = (segments if (len(segments) > 1 or layout.tombstones) else []), True
    if full or layout.rows < 2 * sum(t.rows for t in layout.tombstones) or len(segments) < 2:
        return everything
    biggest = max(s.rows for s in segments)
    tail = []
    for seg in reversed(segments):
        if seg.rows * 4 > biggest and tail:
            break
        tail.insert(0, seg)
    if len(tail) < 2 or sum(s.rows for s in tail) * 4 > biggest or any(
            tail[0].last < t.n <= tail[-1].last for t in layout.tombstones):
        return everything
    return tail, False


def _merged_index(view: View, chosen: list[SegmentFile], drop_hidden: bool) -> faiss.Index | None:
    """The chosen segments' vectors (hidden ones dropped when asked) as one new index of the right type."""
    wanted = {s.file for s in chosen}
    all_ids, all_vectors = [], []
    for seg, (segment, hidden) in zip(view.layout.segments, view.parts):
        if seg.file not in wanted or not segment.index.ntotal:
            continue
        ids, vectors = index_rows(segment.index, segment.path)
        keep = ~np.isin(ids, hidden) if drop_hidden else np.ones(len(ids), bool)
        all_ids.append(ids[keep])
        all_vectors.append(vectors[keep])
    if not all_ids or not sum(len(i) for i in all_ids):
        return None
    return build_index(np.concatenate(all_ids), np.concatenate(all_vectors))


def _search_view(view: View, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    found: dict[int, float] = {}
    for segment, hidden in view.parts:
        for chunk_id, score in search_segment(segment.index, query, k, hidden, segment.positions):
            found[chunk_id] = max(score, found.get(chunk_id, score))
    return sorted(found.items(), key=lambda hit: -hit[1])[:k]


def _tag() -> str:
    return uuid.uuid4().hex[:12]


def _stale_temp(path: str) -> bool:
    match = _TEMP.match(os.path.basename(path))
    return bool(match) and (not locks.alive(int(match["pid"])) or _age(path) > STALE_TEMP_SECONDS)


def _as_ids(ids) -> np.ndarray:
    return np.ascontiguousarray(np.fromiter((int(i) for i in ids), dtype=np.int64))


def _as_matrix(vectors) -> np.ndarray:
    matrix = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    return matrix.reshape(1, -1) if matrix.ndim == 1 else matrix


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
