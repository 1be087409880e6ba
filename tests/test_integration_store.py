"""Two gunicorn workers serving one collection share its memory-mapped segment (one copy in the page cache),
and a restart repairs an index behind the database once, not in every worker."""
import os
import time

import numpy as np
import pytest
import requests

from webui_api import db
from webui_api.db import File, Knowledge, KnowledgeFile, User
from webui_api.rag import index_sync
from webui_api.rag.vectors import VectorStore

from . import engine
from .servers import Gunicorn

pytestmark = pytest.mark.integration

ROWS, DIM = 40_000, 64  # ~10 MB of float32 vectors: far above a worker's noise, flat (exact) search


@pytest.fixture
def backend(fake_backend):
    return fake_backend  # the shared per-test fake backend (tests/fake_backend.py), under this module's name


@pytest.fixture
def env(backend, tmp_path, database_settings):
    return {"DATA_DIR": str(tmp_path / "data"), "OLLAMA_BASE_URLS": backend.url, "OPENAI_API_BASE_URLS": "",
            "RAG_EMBEDDING_MODEL": "nomic-embed-text", "WEBUI_ADMIN_EMAIL": "admin@example.com",
            "WEBUI_ADMIN_PASSWORD": "admin-pw", **database_settings}


def fill_collection(env: dict) -> str:
    """A knowledge collection of ROWS chunks written through the project's store modules."""
    db.init_database(engine.url_of(env))
    admin = User.get(User.email == "admin@example.com")
    file = File.create(user=admin.id, filename="big.txt", storage_name="big", file_hash="h",
                       status="completed")
    rows = np.random.default_rng(0).normal(size=(ROWS, DIM)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    with db.write_transaction():
        db.insert_rows(db.Chunk, ["file", "seq", "text", "start", "end", "vector", "dim", "model"],
                       [(file.id, i, f"chunk {i}", 0, 1, rows[i].tobytes(), DIM, "m") for i in range(ROWS)])
    kb = Knowledge.create(user=admin.id, name="big")
    KnowledgeFile.create(knowledge=kb.id, file=file.id)
    index_sync.rebuild_all(VectorStore(os.path.join(env["DATA_DIR"], "vector_db")))
    db.close_database()
    return kb.id


def segment_mapping(pid: int, collection: str) -> tuple[int, int]:
    """(Rss, Pss) in kB of a collection's segment files mapped by one process, from /proc/<pid>/smaps."""
    rss = pss = 0
    inside = False
    with open(f"/proc/{pid}/smaps") as handle:
        for line in handle:
            if "-" in line.split()[0] and ":" not in line.split()[0]:
                inside = f"/{collection}/seg-" in line
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif inside and line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss, pss


def query(server, headers, kb_id) -> None:
    response = requests.post(server.url + "/api/v1/retrieval/query/collection", headers=headers, timeout=30,
                             json={"collection_names": [kb_id], "query": "chunk words", "k": 5})
    assert response.status_code == 200, response.text
    assert len(response.json()["ids"][0]) == 5


def test_two_workers_share_one_copy_of_the_vectors(env):
    server = Gunicorn(env, workers=2, threads=4, log_path=None)
    os.makedirs(env["DATA_DIR"], exist_ok=True)
    server.start()
    try:
        kb_id = fill_collection(env)
        token = requests.post(server.url + "/api/v1/auths/signin", timeout=30,
                              json={"email": "admin@example.com", "password": "admin-pw"}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        workers = server.worker_pids()
        size_kb = ROWS * DIM * 4 // 1024
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
                segment_mapping(pid, kb_id)[0] >= 0.9 * size_kb for pid in workers):  # each searched it all
            query(server, headers, kb_id)  # a fresh connection each time: the workers take turns
        mapped = [segment_mapping(pid, kb_id) for pid in workers]
        assert all(rss >= 0.9 * size_kb for rss, _pss in mapped), mapped
        assert sum(pss for _rss, pss in mapped) <= 1.2 * size_kb, mapped  # ... yet it is in memory once
    finally:
        server.stop()


def test_a_restart_repairs_an_index_behind_the_database_once(env):
    os.makedirs(env["DATA_DIR"], exist_ok=True)
    Gunicorn(env, workers=1).start().stop()  # creates the database and the admin
    kb_id = fill_collection(env)
    index_dir = os.path.join(env["DATA_DIR"], "vector_db")
    VectorStore(index_dir).remove(kb_id, range(1, 101))  # as if killed between a commit and its index write
    log = os.path.join(env["DATA_DIR"], "gunicorn.log")
    server = Gunicorn(env, workers=2, threads=4, log_path=log).start()
    try:
        token = requests.post(server.url + "/api/v1/auths/signin", timeout=30,
                              json={"email": "admin@example.com", "password": "admin-pw"}).json()["token"]
        query(server, {"Authorization": f"Bearer {token}"}, kb_id)
    finally:
        server.stop()
    with open(log) as handle:
        repairs = [line for line in handle if "start-up repair" in line]
    assert len(repairs) == 1, repairs
    assert VectorStore(index_dir).count(kb_id) == ROWS
