"""Database <-> vector index consistency: find drift (index files read as they are), repair it from SQLite."""
from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass

import faiss

from ..db import Chunk, File, Knowledge, KnowledgeFile
from . import ingest, vectors

# VectorStore writes `<name>.faiss.tmp-<pid>-<thread>` and renames it into place.
_TEMP = re.compile(r"^(?P<name>.+)\.faiss\.tmp-(?P<pid>\d+)-\d+$")
STALE_TEMP_SECONDS = 3600.0


@dataclass(frozen=True)
class Drift:
    name: str      # collection (knowledge id or file-<id>), temp file name, or file id
    problem: str

    def __str__(self) -> str:
        return f"{self.name}: {self.problem}"


def expected_ids() -> dict[str, set[int]]:
    """Collection -> the chunk ids its index must hold, as the vector store's own loader defines them: a
    file's chunks under `file-<id>`, and the chunks of a knowledge collection's files (majority dimension)."""
    by_file: dict[str, list[tuple[int, int]]] = {}
    for chunk_id, file_id, dim in Chunk.select(Chunk.id, Chunk.file, Chunk.dim).tuples():
        by_file.setdefault(file_id, []).append((chunk_id, dim))
    wanted = {ingest.collection_name(f): _majority(rows) for f, rows in by_file.items()}
    members: dict[str, list[str]] = {}
    for knowledge_id, file_id in KnowledgeFile.select(KnowledgeFile.knowledge, KnowledgeFile.file).tuples():
        members.setdefault(knowledge_id, []).append(file_id)
    for (knowledge_id,) in Knowledge.select(Knowledge.id).tuples():
        rows = [row for f in members.get(knowledge_id, []) for row in by_file.get(f, [])]
        wanted[knowledge_id] = _majority(rows)
    return wanted


def _majority(rows: list[tuple[int, int]]) -> set[int]:
    if not rows:
        return set()
    dim = Counter(d for _i, d in rows).most_common(1)[0][0]
    return {i for i, d in rows if d == dim}


def index_files(index_dir: str) -> tuple[dict[str, str], list[str]]:
    """({collection: path}, [temp files left by interrupted writes: writer dead, or older than an hour])."""
    indexes, temps = {}, []
    if not os.path.isdir(index_dir):
        return indexes, temps
    for entry in sorted(os.listdir(index_dir)):
        path = os.path.join(index_dir, entry)
        temp = _TEMP.match(entry)
        if temp and (not _alive(int(temp["pid"])) or _age(path) > STALE_TEMP_SECONDS):
            temps.append(path)
        elif entry.endswith(".faiss"):
            indexes[entry[:-len(".faiss")]] = path
    return indexes, temps


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


def stored_index_ids(path: str) -> set[int] | None:
    """The ids in an index file as it is on disk (never rebuilt on the way); None when unreadable."""
    index = vectors._read(path)
    if index is None:
        return None
    return set(faiss.vector_to_array(index.id_map).tolist()) if index.ntotal else set()


def find_drift(ext, progress=None) -> list[Drift]:
    """Every disagreement between SQLite and the index directory, plus files nobody will ever finish."""
    wanted = expected_ids()
    indexes, temps = index_files(ext.vectors.index_dir)
    found = []
    for name, expected in wanted.items():
        found += _compare(name, indexes.get(name), expected)
        if progress:
            progress(name)
    found += [Drift(name, "index file for a collection that does not exist")
              for name in indexes if name not in wanted]
    found += [Drift(os.path.basename(p), "temp file of an interrupted index write") for p in temps]
    found += abandoned_files(ext)
    return found


def _compare(name: str, path: str | None, expected: set[int]) -> list[Drift]:
    if path is None:
        if not expected:
            return []
        return [Drift(name, f"index file missing ({len(expected)} vectors in the database)")]
    have = stored_index_ids(path)
    if have is None:
        return [Drift(name, "index file unreadable")]
    out = []
    if expected - have:
        out.append(Drift(name, f"{len(expected - have)} vector(s) missing from the index"))
    if have - expected:
        out.append(Drift(name, f"{len(have - expected)} orphaned vector(s) in the index"))
    return out


def abandoned_files(ext) -> list[Drift]:
    """Files left pending/processing whose processing lock nobody holds (a crash, before recovery ran)."""
    out = []
    unsettled = File.select(File.id, File.status).where(File.status.in_(ingest.UNSETTLED))
    for file_id, status in unsettled.tuples():
        with ingest.file_lock(ext.settings, file_id, blocking=False) as free:
            if free:
                out.append(Drift(f"file {file_id}", f"left {status!r} and nobody is processing it"))
    return out


def rebuild(ext, name: str) -> int:
    """Rebuild one collection from SQLite, reading the database under the collection's writer lock (the store
    rebuilds a missing index that way), so a concurrent add or remove on a live server is never lost."""
    ext.vectors.drop(name)
    return ext.vectors.count(name)


def repair(ext, names=None, progress=None, sweep: bool = True) -> tuple[int, list[str]]:
    """Rebuild `names` (default: the drifted collections) and, with `sweep`, delete index files of collections
    that no longer exist and temp files of interrupted writes. Returns (vectors rebuilt, removed paths).
    Safe on a live server: a deleted index file is rebuilt from SQLite by whichever worker reads it next."""
    wanted = expected_ids()
    indexes, temps = index_files(ext.vectors.index_dir)
    if names is None:
        names = [n for n, expected in wanted.items() if _compare(n, indexes.get(n), expected)]
    total = 0
    for name in names:
        total += rebuild(ext, name)
        if progress:
            progress(name)
    removed = [p for n, p in indexes.items() if n not in wanted] + temps if sweep else []
    for path in removed:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return total, removed
