"""Which chunk rows make up each vector collection, read from SQLite (the source of truth)."""
from __future__ import annotations

import logging
from collections import Counter
from typing import Iterable

from peewee import fn

import numpy as np

from .. import db
from ..auth import policy
from ..db import Chunk, File, IndexLog, Knowledge, KnowledgeFile
from ..errors import NotFound

log = logging.getLogger("webui_api.rag")

FILE_PREFIX = "file-"


def collection_name(file_id: str) -> str:
    return f"{FILE_PREFIX}{file_id}"


def linked_knowledge(file_id: str) -> list[str]:
    return [link.knowledge_id for link in KnowledgeFile.select(KnowledgeFile.knowledge)
            .where(KnowledgeFile.file == file_id)]


def member_file_ids(knowledge_id: str) -> list[str]:
    """The ids of the files a collection exposes to its readers (policy.exposed: not every stored link)."""
    return [row[0] for row in policy.exposed(KnowledgeFile.select(KnowledgeFile.file)
                                             .where(KnowledgeFile.knowledge == knowledge_id)).tuples()]


def link_row(knowledge_id: str, file_id: str) -> None:
    """Membership only; the file's vectors join the collection's index through index_sync. Both rows are
    looked up again under the write lock: one deleted meanwhile is a 404, never a foreign-key failure."""
    with db.write_transaction():
        if not File.select().where(File.id == file_id).exists():
            raise NotFound("The file was deleted.")
        if not Knowledge.select().where(Knowledge.id == knowledge_id).exists():
            raise NotFound("The knowledge collection was deleted.")
        KnowledgeFile.get_or_create(knowledge=knowledge_id, file=file_id)
        Knowledge.update(updated_at=db.now()).where(Knowledge.id == knowledge_id).execute()


ID_SLICE = 500  # ids bound in one IN (...) list


def rows_for_ids(sql: str, ids: list[str], params: tuple = ()) -> list[tuple]:
    """Raw `sql` (one `{ids}` placeholder list, then `params`) over many ids, ID_SLICE at a time: peewee
    builds each bound value in Python, ten times the cost of the query for thousands of ids."""
    rows = []
    for start in range(0, len(ids), ID_SLICE):
        part = ids[start:start + ID_SLICE]
        rows += db.execute(sql.format(ids=", ".join("?" * len(part))), (*part, *params)).fetchall()
    return rows


def link_rows(knowledge_id: str, file_ids: list[str]) -> set[str]:
    """Membership of many files in one write transaction (the index log triggers record their chunks
    joining); returns the ids now linked, those deleted meanwhile left out. The collection deleted
    meanwhile is a 404 and nothing is written."""
    with db.write_transaction():
        if not Knowledge.select().where(Knowledge.id == knowledge_id).exists():
            raise NotFound("The knowledge collection was deleted.")
        present = {row[0] for row in rows_for_ids("SELECT id FROM file WHERE id IN ({ids})", file_ids)}
        linked = {row[0] for row in rows_for_ids(
            "SELECT file_id FROM knowledge_file WHERE file_id IN ({ids}) AND knowledge_id = ?", file_ids,
            (knowledge_id,))}
        stamp = db.now()
        new_links = [(knowledge_id, f, stamp) for f in file_ids if f in present and f not in linked]
        if new_links:
            db.insert_rows(KnowledgeFile, ["knowledge", "file", "created_at"], new_links)
        Knowledge.update(updated_at=stamp).where(Knowledge.id == knowledge_id).execute()
    return present


def chunk_ids_of(file_ids: list[str]) -> list[int]:
    return [row[0] for row in rows_for_ids("SELECT id FROM chunk WHERE file_id IN ({ids})", file_ids)]


def dims_of(file_ids: list[str]) -> dict[str, int]:
    """Each file's vector size (its chunks' majority), from the chunk (file_id, dim) index."""
    counts: dict[str, Counter] = {}
    for file_id, dim, n in rows_for_ids("SELECT file_id, dim, COUNT(*) FROM chunk WHERE file_id IN ({ids}) "
                                        "GROUP BY file_id, dim", file_ids):
        counts.setdefault(file_id, Counter())[dim] += n
    return {file_id: majority_dim(dims.elements()) for file_id, dims in counts.items()}


def chunk_ids(file_id: str) -> list[int]:
    return [row[0] for row in Chunk.select(Chunk.id).where(Chunk.file == file_id).tuples()]


def majority_dim(dims: Iterable[int]) -> int | None:
    counts = Counter(dims)
    return counts.most_common(1)[0][0] if counts else None


def stored_vectors(file_ids) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the chunks of these files, read from SQLite (no embedding call)."""
    file_ids = list(file_ids)
    if not file_ids:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return _as_arrays(list(Chunk.select(Chunk.id, Chunk.vector, Chunk.dim).where(Chunk.file.in_(file_ids))
                           .order_by(Chunk.id).tuples()))


def _as_arrays(rows: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of (id, vector bytes, dim) rows, keeping those of the majority dimension."""
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
    if name.startswith(FILE_PREFIX):
        return stored_vectors([name[len(FILE_PREFIX):]])
    return _as_arrays(db.execute("SELECT chunk.id, chunk.vector, chunk.dim FROM chunk JOIN knowledge_file "
                                 "ON knowledge_file.file_id = chunk.file_id WHERE knowledge_file.knowledge_id = ? "
                                 "ORDER BY chunk.id", (name,)).fetchall())


# ---------------------------------------------------------------- the index log (another host's writes)

def versions(names: list[str]) -> dict[str, int]:
    """The database's version of each named collection (absent: never changed since the log began), in one
    read of the collection_state primary key."""
    if not names:
        return {}
    marks = ", ".join("?" * len(names))
    return dict(db.execute(f"SELECT name, version FROM collection_state WHERE name IN ({marks})",
                           tuple(names)).fetchall())


def changes_after(name: str, version: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(latest version, ids that joined, ids that left) of the log rows after `version`, each id judged by
    its last row; None when the row right after `version` is gone (pruned), so only a rebuild is safe."""
    rows = (IndexLog.select(IndexLog.version, IndexLog.chunk_id, IndexLog.op)
            .where(IndexLog.collection == name, IndexLog.version > version)
            .order_by(IndexLog.version).tuples())
    last: dict[int, int] = {}
    first = latest = None
    for row_version, chunk_id, op in rows:
        first = row_version if first is None else first
        latest = row_version
        last[chunk_id] = op
    if first != version + 1:
        return None
    joined = np.fromiter((i for i, op in last.items() if op > 0), dtype=np.int64)
    left = np.fromiter((i for i, op in last.items() if op < 0), dtype=np.int64)
    return latest, joined, left


def joining_vectors(name: str, ids: np.ndarray, dim: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, vectors) of these chunks that still exist, when the collection stays of one dimension (`dim`,
    else theirs); None when it holds or gains vectors of another size: then only the loader's
    majority rule (a rebuild) gives the right ids."""
    rows = []
    for start in range(0, len(ids), 500):
        rows += list(Chunk.select(Chunk.id, Chunk.vector, Chunk.dim)
                     .where(Chunk.id.in_(ids[start:start + 500].tolist())).order_by(Chunk.id).tuples())
    dims = {row[2] for row in rows} | ({dim} if dim is not None else set())
    if len(dims) > 1 or (dims and _holds_other_dims(name, dims.pop())):
        return None
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, dim or 0), np.float32)
    found = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    vectors = np.frombuffer(b"".join(bytes(row[1]) for row in rows), dtype=np.float32)
    return found, vectors.reshape(len(rows), rows[0][2])


def _holds_other_dims(name: str, dim: int) -> bool:
    """Whether a chunk of the collection has another dimension (read from the chunk (file_id, dim) index)."""
    if name.startswith(FILE_PREFIX):
        files = [name[len(FILE_PREFIX):]]
    else:
        files = KnowledgeFile.select(KnowledgeFile.file).where(KnowledgeFile.knowledge == name)
    return Chunk.select(Chunk.id).where(Chunk.file.in_(files), (Chunk.dim < dim) | (Chunk.dim > dim)).exists()


def prune_index_log(older_than: float) -> int:
    """Delete log rows older than `older_than` seconds. Other hosts' positions in the log are unknown, so
    age decides: a host whose cache is older than the retention finds the row after its version gone and
    rebuilds from the chunk rows. Only a prefix of each collection's versions goes, so no gap opens."""
    cutoff = db.now() - int(older_than)
    ends = list(IndexLog.select(IndexLog.collection, fn.MAX(IndexLog.version))
                .where(IndexLog.created_at < cutoff).group_by(IndexLog.collection).tuples())
    removed = 0
    for name, version in ends:
        with db.write_transaction():
            removed += (IndexLog.delete().where(IndexLog.collection == name, IndexLog.version <= version)
                        .execute())
    return removed
