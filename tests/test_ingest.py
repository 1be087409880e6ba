"""The ingest pipeline: chunk rows as source of truth, index rebuilds, background work and crash recovery."""
from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np
import pytest

from webui_api.rag import files, knowledge
from webui_api.db import Chunk, File, User
from webui_api.rag import index_sync, jobs, lease, pipeline, storage
from webui_api.rag.vectors import VectorStore

from .rag_helpers import _drain_background, embed_calls, rag_settings  # noqa: F401

LONG = "\n\n".join(f"## Part {i}\n\n" + " ".join(f"word{i}x{j}" for j in range(60)) for i in range(12))


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend, CHUNK_SIZE="300", CHUNK_OVERLAP="40", RAG_EMBEDDING_BATCH_SIZE="8")


@pytest.fixture
def ext(app):
    return app.extensions["webui_api"]


@pytest.fixture
def owner(user):
    return User.get_by_id(user["id"])


def put(ext, owner, text=LONG, name="long.md", **kwargs) -> File:
    file, _ = files.upload(ext, owner, io.BytesIO(text.encode()), name, "text/markdown", None, **kwargs)
    return file


def test_chunk_rows_hold_text_offsets_and_vectors(ext, owner, fake_backend):
    file = put(ext, owner)
    rows = list(Chunk.select().where(Chunk.file == file.id).order_by(Chunk.seq))
    assert len(rows) > 8
    content = File.get_by_id(file.id).content
    for row in rows:
        assert content[row.start:row.end] == row.text and len(row.text) <= 300
        vector = np.frombuffer(row.vector, dtype=np.float32)
        assert vector.shape == (row.dim,) == (64,) and abs(np.linalg.norm(vector) - 1) < 1e-5
        assert row.model == "nomic-embed-text"
    assert all(r.text.startswith("## Part") for r in rows if r.start in [content.index(f"## Part {i}")
                                                                           for i in range(12)])
    assert embed_calls(fake_backend) == -(-len(rows) // 8)  # batches of RAG_EMBEDDING_BATCH_SIZE
    assert ext.vectors.ids(f"file-{file.id}") == {r.id for r in rows}


def test_lost_index_is_rebuilt_from_sqlite_without_embedding(ext, owner, fake_backend, app):
    file = put(ext, owner)
    kb = knowledge.create(owner, "KB")
    knowledge.add_file(ext, owner, kb.id, file.id)
    query = ext.embedder.embed(["word3x7 word3x8"])[0]
    names = (kb.id, f"file-{file.id}")
    before = {name: ext.vectors.search([name], query, 5) for name in names}
    shutil.rmtree(ext.vectors.index_dir)
    restarted = VectorStore(ext.vectors.index_dir)  # a fresh process: no cache at all
    calls = embed_calls(fake_backend)
    for name in names:
        assert [h[:2] for h in restarted.search([name], query, 5)] == [h[:2] for h in before[name]]
        assert os.path.exists(restarted.path(name))
    assert embed_calls(fake_backend) == calls  # rebuilt from stored vectors, not re-embedded


def test_rebuild_indexes_rewrites_everything(ext, owner):
    a, b = put(ext, owner), put(ext, owner, "short text", "b.txt")
    kb = knowledge.create(owner, "KB")
    knowledge.add_file(ext, owner, kb.id, a.id)
    before = {n: ext.vectors.ids(n) for n in (f"file-{a.id}", f"file-{b.id}", kb.id)}
    shutil.rmtree(ext.vectors.index_dir)
    assert index_sync.rebuild_all(ext.vectors) == 3
    assert {n: VectorStore(ext.vectors.index_dir).ids(n) for n in before} == before


def test_reprocessing_replaces_chunks_everywhere(ext, owner):
    file = put(ext, owner)
    kb = knowledge.create(owner, "KB")
    knowledge.add_file(ext, owner, kb.id, file.id)
    old = ext.vectors.ids(kb.id)
    pipeline.process(ext, file.id, "Brand new content.")
    new = {c.id for c in Chunk.select().where(Chunk.file == file.id)}
    assert len(new) == 1 and len(old) > 1
    assert ext.vectors.ids(kb.id) == new == ext.vectors.ids(f"file-{file.id}")


def test_recover_resumes_interrupted_files(ext, owner):
    file = put(ext, owner, process=False)
    pipeline.set_status(file.id, "processing")  # as a crashed worker would leave it
    assert jobs.recover_interrupted(ext) == 1
    assert ext.jobs.drain(10)
    assert File.get_by_id(file.id).status == "completed"


def test_recover_skips_files_a_live_worker_holds(ext, owner):
    file = put(ext, owner, process=False)
    pipeline.set_status(file.id, "processing")
    with lease.held(ext.settings, file.id):
        assert jobs.recover_interrupted(ext) == 0
    assert File.get_by_id(file.id).status == "processing"


def test_recover_sweeps_abandoned_temp_uploads(ext):
    folder = storage.uploads_dir(ext.settings)
    stale = os.path.join(folder, storage.INCOMING_PREFIX + "old")
    fresh = os.path.join(folder, storage.INCOMING_PREFIX + "new")
    for path in (stale, fresh):
        open(path, "wb").close()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    jobs.recover_interrupted(ext)
    assert not os.path.exists(stale) and os.path.exists(fresh)


def test_file_deleted_during_background_processing_leaves_nothing(ext, owner, fake_backend):
    fake_backend.fault = {"kind": "slow", "path": "/api/embed", "delay": 0.4}
    file = put(ext, owner, background=True)
    files.delete(ext, owner, file.id)
    assert ext.jobs.drain(10)
    assert File.get_or_none(File.id == file.id) is None and Chunk.select().count() == 0
    assert not os.path.exists(ext.vectors.path(f"file-{file.id}"))


def test_receive_enforces_the_limit_while_reading(ext):
    ext.settings.RAG_FILE_MAX_SIZE = 0.001  # about 1 KB

    class Endless(io.RawIOBase):
        reads = 0

        def read(self, n=-1):
            Endless.reads += 1
            return b"z" * 4096

    with pytest.raises(Exception) as err:
        storage.receive(ext.settings, Endless())
    assert err.value.status == 413 and Endless.reads == 1  # stopped at the first block over the limit
    assert [n for n in os.listdir(storage.uploads_dir(ext.settings)) if not n.startswith(".locks")] == []
