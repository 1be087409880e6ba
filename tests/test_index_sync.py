"""index_sync, the one writer of vector indexes, against a real SQLite database and real FAISS files."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from webui_api import db
from webui_api.db import Chunk, File, Knowledge, KnowledgeFile, User
from webui_api.errors import Conflict
from webui_api.rag import index_sync
from webui_api.rag.vectors import VectorStore

from .rag_helpers import _drain_background, embed_calls, rag_settings, upload_ok  # noqa: F401

PACKAGE = Path(__file__).resolve().parent.parent / "webui_api"


class CountingStore(VectorStore):
    """The real store, counting the segments it writes per collection."""

    def __init__(self, index_dir: str):
        super().__init__(index_dir)
        self.writes: Counter = Counter()

    def _write_segment(self, name, first, last, index):
        self.writes[name] += 1
        super()._write_segment(name, first, last, index)


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend)


@pytest.fixture
def store(app):
    counting = CountingStore(os.path.join(app.extensions["webui_api"].settings.DATA_DIR, "vector_db"))
    app.extensions["webui_api"].vectors = counting
    return counting


@pytest.fixture
def owner(app):
    return User.create(email="owner@example.com", name="Owner", password_hash="-", role="user")


def unit_rows(count: int, dim: int = 4, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def stored_file(owner, count=3, dim=4, seed=0) -> tuple[str, set[int]]:
    """A completed file whose chunk rows (with vectors) are in SQLite; no index written yet."""
    file = File.create(user=owner.id, filename="f.txt", storage_name="f", file_hash=db.new_id(),
                       status="completed")
    for seq, vector in enumerate(unit_rows(count, dim, seed)):
        Chunk.create(file=file.id, seq=seq, text=f"chunk {seq}", start=0, end=1, vector=vector.tobytes(),
                     dim=dim, model="m")
    return file.id, {c.id for c in Chunk.select(Chunk.id).where(Chunk.file == file.id)}


def collection(owner, *file_ids) -> str:
    kb = Knowledge.create(user=owner.id, name="KB")
    for file_id in file_ids:
        KnowledgeFile.create(knowledge=kb.id, file=file_id)
    return kb.id


def test_link_reads_stored_vectors_and_writes_once(store, owner):
    file_id, ids = stored_file(owner)
    kid = collection(owner, file_id)
    index_sync.link(store, kid, file_id)
    index_sync.link(store, kid, file_id)  # already there: nothing to write
    assert store.ids(kid) == ids and store.writes[kid] == 1


def test_check_dimension_refuses_vectors_of_another_size(store, owner):
    file_id, _ = stored_file(owner, dim=4)
    kid = collection(owner, file_id)
    index_sync.link(store, kid, file_id)
    with pytest.raises(Conflict) as refused:
        index_sync.check_dimension(store, kid, 8)
    assert refused.value.status == 409 and "4-dimensional" in refused.value.detail
    index_sync.check_dimension(store, kid, 4)  # same size: accepted


def test_unlink_removes_only_that_files_vectors(store, owner):
    (a, a_ids), (b, b_ids) = stored_file(owner), stored_file(owner, seed=1)
    kid = collection(owner, a, b)
    for file_id in (a, b):
        index_sync.link(store, kid, file_id)
    KnowledgeFile.delete().where(KnowledgeFile.file == a).execute()
    index_sync.unlink(store, kid)
    assert store.ids(kid) == b_ids


def test_forget_removes_a_file_everywhere(store, owner):
    file_id, ids = stored_file(owner)
    kids = [collection(owner, file_id), collection(owner, file_id)]
    store.rebuild(f"file-{file_id}", sorted(ids), unit_rows(3))
    for kid in kids:
        index_sync.link(store, kid, file_id)
    index_sync.forget(store, file_id, ids, kids)
    assert [store.ids(kid) for kid in kids] == [set(), set()]
    assert not os.path.exists(store.path(f"file-{file_id}"))


def test_drop_deletes_the_collection_index(store, owner):
    file_id, _ = stored_file(owner)
    kid = collection(owner, file_id)
    index_sync.link(store, kid, file_id)
    Knowledge.delete().where(Knowledge.id == kid).execute()
    index_sync.drop(store, kid)
    assert not os.path.exists(store.path(kid)) and store.count(kid) == 0


def test_rebuild_restores_an_index_from_chunk_rows_without_embedding(store, owner, fake_backend):
    file_id, ids = stored_file(owner)
    kid = collection(owner, file_id)
    os.makedirs(store.path(kid))
    with open(os.path.join(store.path(kid), "seg-1-1-3-abc.faiss"), "wb") as handle:
        handle.write(b"not a faiss index")
    assert index_sync.rebuild(store, kid) == len(ids)
    assert store.ids_on_disk(kid) == ids
    shutil.rmtree(store.path(kid))
    assert index_sync.rebuild_all(store) == 2  # the file's own index and the collection's
    assert store.ids_on_disk(kid) == ids == store.ids_on_disk(f"file-{file_id}")
    assert embed_calls(fake_backend) == 0


def test_repair_reconciles_the_index_directory_with_sqlite(store, owner):
    (a, a_ids), (b, b_ids) = stored_file(owner), stored_file(owner, seed=1)
    kid = collection(owner, a)
    index_sync.rebuild_all(store)
    KnowledgeFile.create(knowledge=kid, file=b)  # committed, then killed before the index write
    store.add("gone", [99], unit_rows(1))  # a collection deleted in SQLite only
    temp = os.path.join(store.path(kid), ".tmp-1-abc")
    open(temp, "wb").close()
    os.utime(temp, (time.time() - 7200, time.time() - 7200))
    assert {d.name for d in index_sync.index_drift(store)} == {kid, "gone", os.path.basename(temp)}
    rebuilt, removed = index_sync.repair(store)
    assert rebuilt == len(a_ids | b_ids) and sorted(removed) == sorted([store.path("gone"), temp])
    assert store.ids_on_disk(kid) == a_ids | b_ids and index_sync.index_drift(store) == []


def test_upload_into_a_collection_writes_its_index_once(client, user, store):
    kb = client.post("/api/v1/knowledge/create", headers=user["headers"], json={"name": "KB"}).get_json()
    body = upload_ok(client, user["headers"], "z.txt", b"The launch code is 1234.",
                     metadata=json.dumps({"knowledge_id": kb["id"]}))
    ids = {c.id for c in Chunk.select(Chunk.id).where(Chunk.file == body["id"])}
    assert store.ids(kb["id"]) == ids and store.writes[kb["id"]] == 1
    again = client.post("/api/v1/retrieval/process/file", headers=user["headers"],
                        json={"file_id": body["id"], "content": "New text.", "collection_name": kb["id"]})
    assert again.status_code == 200, again.get_json()
    new = {c.id for c in Chunk.select(Chunk.id).where(Chunk.file == body["id"])}
    assert store.ids(kb["id"]) == new and not new & ids
    assert store.writes[kb["id"]] == 2  # old vectors out, new ones in: one write


def test_nothing_else_writes_vector_indexes():
    writers = re.compile(r"\bvectors\.(add|remove|rebuild|drop|compact)\(|\bfaiss\b")
    found = sorted(f"{path.relative_to(PACKAGE)}: {line.strip()}" for path in PACKAGE.rglob("*.py")
                   if path.name not in ("index_sync.py", "vectors.py", "index_types.py")
                   for line in path.read_text().splitlines() if writers.search(line))
    assert found == []
