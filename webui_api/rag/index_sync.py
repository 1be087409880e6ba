"""The one owner of "SQLite is the truth, FAISS follows": every write of a collection's vector index."""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass

from peewee import fn

from .. import locks
from ..db import Chunk, File, Knowledge, KnowledgeFile
from . import collection_rows
from .collection_rows import (chunk_ids, collection_name, collection_vectors, linked_knowledge, majority_dim,
                          stored_vectors)
from .vectors import VectorStore, dimension_conflict

log = logging.getLogger("webui_api.rag")


@dataclass(frozen=True)
class Drift:
    name: str      # collection (knowledge id or file-<id>), temp file name, or file id
    problem: str

    def __str__(self) -> str:
        return f"{self.name}: {self.problem}"


# ---------------------------------------------------------------- reading: other hosts' writes first

CATCH_UP_BATCH = 500  # collections per version read when many catch up at once (bound parameters)

def catch_up(store: VectorStore, names) -> int:
    """Bring the named collections' cached files up to the database, where another host (or a process on
    another DATA_DIR) may have written: one indexed read of their versions, then work only for those that
    moved (returns how many). Call before every read of a collection."""
    moved = _moved(store, list(dict.fromkeys(names)))
    for name, version in moved.items():
        store.catch_up(name, version, lambda after, name=name: collection_rows.changes_after(name, after),
                       lambda ids, dim, name=name: collection_rows.joining_vectors(name, ids, dim))
    return len(moved)


def _moved(store: VectorStore, names: list[str]) -> dict[str, int]:
    versions = collection_rows.versions(names)
    wanted = {name: versions.get(name, 0) for name in names}
    return {name: version for name, version in wanted.items() if store.cached_version(name) != version}


def search(store: VectorStore, names, vector, k: int) -> list[tuple[int, float, str]]:
    """VectorStore.search over collections caught up with the database first."""
    names = list(dict.fromkeys(names))
    catch_up(store, names)
    return store.search(names, vector, k)


# ---------------------------------------------------------------- one file, one collection

def dimension(store: VectorStore, knowledge_id: str) -> int | None:
    """The size of the vectors the collection holds (None while empty), caught up with the database."""
    catch_up(store, [knowledge_id])
    return store.dim(knowledge_id)


def check_dimension(store: VectorStore, knowledge_id: str, dim: int | None) -> None:
    """Refuse (409) vectors of another size than the collection already holds."""
    have = dimension(store, knowledge_id)
    if dim is not None and have is not None and have != dim:
        raise dimension_conflict(knowledge_id, have, dim)


def link(store: VectorStore, knowledge_id: str, file_id: str, ids=None, vectors=None) -> None:
    """Put a file's vectors into a collection's index, from the index log (catch_up: a link's own change
    then lands in the same order as another host's unlink of the file, never after it); what is still
    missing after that (given, else read from its chunk rows). Writes nothing when all is there already."""
    catch_up(store, [knowledge_id])
    wanted = chunk_ids(file_id) if ids is None else [int(i) for i in ids]
    if store.contains_all(knowledge_id, wanted):
        return
    if ids is None:
        ids, vectors = stored_vectors([file_id])
    store.add(knowledge_id, ids, vectors)


def link_many(store: VectorStore, knowledge_id: str, file_ids: list[str]) -> None:
    """`link` for a batch whose links are committed: the index log brings their vectors in as one segment
    (catch_up); what is still missing after that is read from the chunk rows and added as one more."""
    catch_up(store, [knowledge_id])
    wanted = collection_rows.chunk_ids_of(file_ids)
    if store.contains_all(knowledge_id, wanted):
        return
    for start in range(0, len(file_ids), 500):  # bound parameters; a rare path (a log pruned mid-batch)
        store.add(knowledge_id, *stored_vectors(file_ids[start:start + 500]))


def unlink(store: VectorStore, knowledge_id: str) -> None:
    """A file left the collection (committed): its chunk ids leave the index, as the index log says. Not a
    removal of the ids this host read: had another host linked the file again and this host caught up with
    that before this call, removing them would hide vectors the database has, with the version recorded."""
    catch_up(store, [knowledge_id])


def reindex_file(store: VectorStore, file_id: str, new_ids, old_ids, vectors) -> None:
    """Fresh chunk rows were committed: the file's own index and each linked collection follow (one write
    each)."""
    store.rebuild(collection_name(file_id), new_ids, vectors)
    for knowledge_id in linked_knowledge(file_id):
        store.add(knowledge_id, new_ids, vectors, replacing=old_ids)


def forget(store: VectorStore, file_id: str, ids, knowledge_ids) -> None:
    """A file is gone: its vectors leave every collection and its own index is deleted."""
    for knowledge_id in knowledge_ids:
        store.remove(knowledge_id, ids)
    store.drop(collection_name(file_id))


def drop(store: VectorStore, knowledge_id: str) -> None:
    """A collection was deleted or emptied: its index goes."""
    store.drop(knowledge_id)


# ---------------------------------------------------------------- rebuilding from SQLite

def rebuild(store: VectorStore, name: str) -> int:
    """Rebuild one collection from SQLite, reading the database under the collection's writer lock (the store
    rebuilds a missing index that way), so a concurrent add or remove on a live server is never lost."""
    store.drop(name)
    return store.count(name)


def rebuild_all(store: VectorStore) -> int:
    """Rewrite every index from SQLite (after restoring a backup, or when index files were lost)."""
    count = 0
    for file_id in [f.id for f in File.select(File.id).where(File.status == "completed")]:
        store.rebuild(collection_name(file_id), *stored_vectors([file_id]))
        count += 1
    for knowledge_id in [k.id for k in Knowledge.select(Knowledge.id)]:
        store.rebuild(knowledge_id, *collection_vectors(knowledge_id))
        count += 1
    return count


def compact(store: VectorStore, names=None) -> list[str]:
    """Merge each collection's segments into one and drop deleted vectors (`webui-api compact`)."""
    indexes, _ = store.index_files()
    return [name for name in (indexes if names is None else names) if store.compact(name)]


def prune_log(retention: float | None) -> int:
    """Delete index log rows older than `retention` seconds (None: keep them); see prune_index_log."""
    return 0 if retention is None else collection_rows.prune_index_log(retention)


# ---------------------------------------------------------------- the cheap check at start-up

def expected_rows() -> dict[str, int]:
    """Collection -> how many vectors its index must hold, like expected_ids but read from covering indexes
    only (chunk(file_id, dim), knowledge_file(knowledge_id, file_id)): no vector or text is read."""
    by_file: dict[str, Counter] = {}
    for file_id, dim, count in (Chunk.select(Chunk.file, Chunk.dim, fn.COUNT(Chunk.id))
                                .group_by(Chunk.file, Chunk.dim).tuples()):
        by_file.setdefault(file_id, Counter())[dim] += count
    wanted = {collection_name(f): max(dims.values()) for f, dims in by_file.items()}
    members: dict[str, Counter] = {k: Counter() for (k,) in Knowledge.select(Knowledge.id).tuples()}
    for knowledge_id, file_id in KnowledgeFile.select(KnowledgeFile.knowledge, KnowledgeFile.file).tuples():
        members[knowledge_id].update(by_file.get(file_id, Counter()))
    wanted.update({k: max(dims.values()) if dims else 0 for k, dims in members.items()})
    return wanted


def quick_drift(store: VectorStore, wanted: dict[str, int] | None = None) -> list[str]:
    """Cached collections whose vector count on disk (from file names) differs from the database's. One
    without a directory is not cached here (a new host, or never queried): its first query builds it."""
    wanted, have = expected_rows() if wanted is None else wanted, store.rows_on_disk()
    return sorted(n for n in have if wanted.get(n, 0) != have[n])


def repair_on_drift(store: VectorStore) -> tuple[int, list[str]]:
    """Start-up: the cached collections catch up with writes made elsewhere meanwhile (from the index log,
    cheaper than rebuilding them), then the cheap check and a repair of what it finds; workers take turns
    under a lock, so the first one repairs and the others find nothing to do."""
    with locks.exclusive(os.path.join(store.index_dir, ".startup.lock")):
        wanted = expected_rows()
        moved = catch_up_cached(store, wanted)
        if moved:
            log.info("start-up repair: %d collection(s) caught up with the index log", moved)
        drifted = quick_drift(store, wanted)
        if drifted:
            log.warning("vector indexes out of step with the database: %s", ", ".join(drifted[:20]))
        total = sum(rebuild(store, name) for name in drifted)
        _, leftovers = store.index_files()  # temp files of writes killed (healed by the catch-up or rebuild)
        for path in leftovers:
            _silent_unlink(path)
        return total, drifted


# ---------------------------------------------------------------- drift and repair

def expected_ids() -> dict[str, set[int]]:
    """Collection -> the chunk ids its index must hold, as the vector store's loader defines them: a file's
    chunks under `file-<id>`, and the chunks of a knowledge collection's files (majority dimension)."""
    by_file: dict[str, list[tuple[int, int]]] = {}
    for chunk_id, file_id, dim in Chunk.select(Chunk.id, Chunk.file, Chunk.dim).tuples():
        by_file.setdefault(file_id, []).append((chunk_id, dim))
    wanted = {collection_name(f): _majority(rows) for f, rows in by_file.items()}
    members: dict[str, list[str]] = {}
    for knowledge_id, file_id in KnowledgeFile.select(KnowledgeFile.knowledge, KnowledgeFile.file).tuples():
        members.setdefault(knowledge_id, []).append(file_id)
    for (knowledge_id,) in Knowledge.select(Knowledge.id).tuples():
        rows = [row for f in members.get(knowledge_id, []) for row in by_file.get(f, [])]
        wanted[knowledge_id] = _majority(rows)
    return wanted


def _majority(rows: list[tuple[int, int]]) -> set[int]:
    dim = majority_dim(d for _i, d in rows)
    return {i for i, d in rows if d == dim}


def catch_up_cached(store: VectorStore, wanted: dict[str, int] | None = None) -> int:
    """Every collection this host caches catches up with the index log, as its next query would; one
    deleted on another host (caught up to empty, gone from the database) leaves the cache."""
    cached = list(store.index_files()[0])
    moved = sum(catch_up(store, cached[start:start + CATCH_UP_BATCH])
                for start in range(0, len(cached), CATCH_UP_BATCH))
    wanted = expected_rows() if wanted is None else wanted
    for name in cached:
        if name not in wanted and store.count(name) == 0:
            store.drop(name)
    return moved


def index_drift(store: VectorStore, progress=None) -> list[Drift]:
    """Every disagreement between SQLite and the index directory (index files read as they are)."""
    wanted = expected_ids()
    indexes, temps = store.index_files()
    found = []
    for name, expected in wanted.items():
        found += _compare(store, name, indexes.get(name), expected)
        if progress:
            progress(name)
    found += [Drift(name, "index file for a collection that does not exist")
              for name in indexes if name not in wanted]
    found += [Drift(os.path.basename(p), "leftover of an interrupted index write") for p in temps]
    return found


def _compare(store: VectorStore, name: str, path: str | None, expected: set[int]) -> list[Drift]:
    if path is None:  # not cached on this host: the first query builds it from the database
        return []
    have = store.ids_on_disk(name)
    if have is None:
        return [Drift(name, "index file unreadable")]
    out = []
    if expected - have:
        out.append(Drift(name, f"{len(expected - have)} vector(s) missing from the index"))
    if have - expected:
        out.append(Drift(name, f"{len(have - expected)} orphaned vector(s) in the index"))
    return out


def repair(store: VectorStore, names=None, progress=None, sweep: bool = True) -> tuple[int, list[str]]:
    """Rebuild `names` (default: the drifted collections) and, with `sweep`, delete index files of collections
    that no longer exist and temp files of interrupted writes. Returns (vectors rebuilt, removed paths).
    Safe on a live server: a deleted index file is rebuilt from SQLite by whichever worker reads it next."""
    wanted = expected_ids()
    indexes, temps = store.index_files()
    if names is None:
        names = [n for n, expected in wanted.items() if _compare(store, n, indexes.get(n), expected)]
    total = 0
    for name in names:
        total += rebuild(store, name)
        if progress:
            progress(name)
    if not sweep:
        return total, []
    for name in [n for n in indexes if n not in wanted]:
        store.drop(name)
    for path in temps:
        _silent_unlink(path)
    return total, [p for n, p in indexes.items() if n not in wanted] + temps


def _silent_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
