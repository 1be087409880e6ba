"""Which chunk rows make up each vector collection, read from SQLite (the source of truth)."""
from __future__ import annotations

import logging
from collections import Counter
from typing import Iterable

import numpy as np

from .. import db
from ..db import Chunk, KnowledgeFile

log = logging.getLogger("webui_api.rag")

FILE_PREFIX = "file-"


def collection_name(file_id: str) -> str:
    return f"{FILE_PREFIX}{file_id}"


def linked_knowledge(file_id: str) -> list[str]:
    return [link.knowledge_id for link in KnowledgeFile.select(KnowledgeFile.knowledge)
            .where(KnowledgeFile.file == file_id)]


def member_file_ids(knowledge_id: str) -> list[str]:
    """A collection's files as ids only, from the (knowledge_id, file_id) index: no file row is read."""
    return [row[0] for row in KnowledgeFile.select(KnowledgeFile.file)
            .where(KnowledgeFile.knowledge == knowledge_id).tuples()]


def link_row(knowledge_id: str, file_id: str) -> None:
    """Membership only; the file's vectors join the collection's index through index_sync."""
    with db.write_transaction():
        KnowledgeFile.get_or_create(knowledge=knowledge_id, file=file_id)


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
    if name.startswith(FILE_PREFIX):
        return stored_vectors([name[len(FILE_PREFIX):]])
    file_ids = [link.file_id for link in KnowledgeFile.select(KnowledgeFile.file)
                .where(KnowledgeFile.knowledge == name)]
    return stored_vectors(file_ids)
