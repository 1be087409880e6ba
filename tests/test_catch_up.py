"""Two hosts on one database: each host's vector files are a cache that catches up with the other's writes."""
from __future__ import annotations

import json
import os
import random
from contextlib import contextmanager

import numpy as np
import pytest

from webui_api import create_app, db
from webui_api.db import Chunk, CollectionState, File, IndexLog, Knowledge, KnowledgeFile, User
from webui_api.rag import collection_rows, index_sync
from webui_api.rag.collection_rows import collection_name
from webui_api.rag.vectors import VectorStore

from .conftest import FAST_HASH
from .rag_helpers import _drain_background, rag_settings, upload_ok  # noqa: F401


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend)


@pytest.fixture
def hosts(app, tmp_path):
    """Host A is the app's own store; host B another index directory on the same database."""
    ext = app.extensions["webui_api"]
    return ext.vectors, VectorStore(str(tmp_path / "host-b" / "vector_db"))


@contextmanager
def serving(app, store: VectorStore):
    """Requests to `app` go through `store`, as if sent to the host that owns it."""
    ext = app.extensions["webui_api"]
    own, ext.vectors = ext.vectors, store
    try:
        yield
    finally:
        ext.vectors = own


@pytest.fixture
def owner(app):
    return User.create(email="owner@example.com", name="Owner", password_hash="-", role="user")


def found(store: VectorStore, name: str) -> set[int]:
    """The chunk ids a search through `store` can return (k covers the collection)."""
    index_sync.catch_up(store, [name])
    dim = store.dim(name)
    if dim is None:
        return set()
    return {hit[0] for hit in index_sync.search(store, [name], np.ones(dim, np.float32), 10_000)}


def expected(name: str) -> set[int]:
    return index_sync.expected_ids().get(name, set())


def unit_rows(count: int, dim: int, rng) -> np.ndarray:
    rows = rng.normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def stored_file(owner, count: int, dim: int = 4, seed: int = 0) -> str:
    """A completed file whose chunk rows are committed (the pipeline's transaction), no index written."""
    file = File.create(user=owner.id, filename="f.txt", storage_name="f", file_hash=db.new_id(),
                       status="completed")
    for seq, vector in enumerate(unit_rows(count, dim, np.random.default_rng(seed))):
        Chunk.create(file=file.id, seq=seq, text=f"chunk {seq}", start=0, end=1, vector=vector.tobytes(),
                     dim=dim, model="m")
    return file.id


def index_new_file(store: VectorStore, file_id: str) -> None:
    """What the pipeline does on the host that processed the file, after committing its chunk rows."""
    ids, vectors = collection_rows.stored_vectors([file_id])
    index_sync.reindex_file(store, file_id, ids, [], vectors)


def test_upload_through_a_is_found_through_b(client, user, hosts):
    a, b = hosts
    kb = client.post("/api/v1/knowledge/create", headers=user["headers"], json={"name": "KB"}).get_json()
    assert found(b, kb["id"]) == set()  # B looked before the upload: its (empty) cache is at version 0
    body = upload_ok(client, user["headers"], "z.txt", b"The launch code is 1234.",
                     metadata=json.dumps({"knowledge_id": kb["id"]}))
    ids = {c.id for c in Chunk.select(Chunk.id).where(Chunk.file == body["id"])}
    assert ids and found(b, kb["id"]) == ids == found(b, f"file-{body['id']}")
    assert found(a, kb["id"]) == ids  # the writer's own catch-up finds everything already there
    with serving(client.application, b):
        response = client.post("/api/v1/retrieval/query/doc", headers=user["headers"],
                               json={"collection_name": kb["id"], "query": "launch code", "k": 3})
    assert response.status_code == 200 and response.get_json()["ids"] == [[str(i) for i in sorted(ids)]]


def test_delete_through_b_is_gone_from_a(client, user, hosts):
    a, b = hosts
    kb = client.post("/api/v1/knowledge/create", headers=user["headers"], json={"name": "KB"}).get_json()
    keep = upload_ok(client, user["headers"], "keep.txt", b"Keep this one.",
                     metadata=json.dumps({"knowledge_id": kb["id"]}))
    gone = upload_ok(client, user["headers"], "gone.txt", b"Delete this one.",
                     metadata=json.dumps({"knowledge_id": kb["id"]}))
    assert found(a, kb["id"]) == found(b, kb["id"]) == expected(kb["id"])
    with serving(client.application, b):
        assert client.delete(f"/api/v1/files/{gone['id']}", headers=user["headers"]).status_code == 200
    kept = {c.id for c in Chunk.select(Chunk.id).where(Chunk.file == keep["id"])}
    assert found(a, kb["id"]) == found(b, kb["id"]) == kept


def test_knowledge_links_on_either_host_reach_the_other(client, user, hosts):
    a, b = hosts
    kb = client.post("/api/v1/knowledge/create", headers=user["headers"], json={"name": "KB"}).get_json()
    files = [upload_ok(client, user["headers"], f"{n}.txt", f"Document number {n}.".encode())["id"]
             for n in range(3)]
    steps = [(a, "add", files[0]), (b, "add", files[1]), (a, "add", files[2]), (b, "remove", files[0]),
             (a, "remove", files[1]), (b, "add", files[0])]
    for host, action, file_id in steps:
        with serving(client.application, host):
            response = client.post(f"/api/v1/knowledge/{kb['id']}/file/{action}", headers=user["headers"],
                                   json={"file_id": file_id})
        assert response.status_code == 200, response.get_json()
        assert found(a, kb["id"]) == found(b, kb["id"]) == expected(kb["id"]), (action, file_id)
    assert expected(kb["id"])


def test_a_host_with_an_empty_data_dir_answers_from_the_database(owner, hosts, tmp_path):
    a, _ = hosts
    files = [stored_file(owner, 5, seed=n) for n in range(3)]
    kb = Knowledge.create(user=owner.id, name="KB")
    for file_id in files:
        index_new_file(a, file_id)
        KnowledgeFile.create(knowledge=kb.id, file=file_id)
        index_sync.link(a, kb.id, file_id)
    fresh = VectorStore(str(tmp_path / "fresh" / "vector_db"))
    assert found(fresh, kb.id) == expected(kb.id) and len(expected(kb.id)) == 15
    version = CollectionState.get_by_id(kb.id).version
    assert fresh.cached_version(kb.id) == version  # recorded: the next query reads nothing more


def test_a_pruned_log_makes_the_lagging_host_rebuild(owner, hosts):
    a, b = hosts
    first = stored_file(owner, 4, seed=1)
    kb = Knowledge.create(user=owner.id, name="KB")
    KnowledgeFile.create(knowledge=kb.id, file=first)
    assert found(b, kb.id) == expected(kb.id)
    second = stored_file(owner, 4, seed=2)
    KnowledgeFile.create(knowledge=kb.id, file=second)
    index_sync.link(a, kb.id, second)
    KnowledgeFile.delete().where(KnowledgeFile.file == first).execute()
    index_sync.unlink(a, kb.id)
    assert collection_rows.prune_index_log(older_than=-60) > 0  # everything is "older" than a minute ahead
    assert not IndexLog.select().where(IndexLog.collection == kb.id).exists()
    assert collection_rows.changes_after(kb.id, b.cached_version(kb.id)) is None
    assert found(b, kb.id) == expected(kb.id) == set(collection_rows.chunk_ids(second))


def test_prune_keeps_rows_younger_than_the_retention(owner):
    stored_file(owner, 3)
    assert index_sync.prune_log(3600.0) == 0 and index_sync.prune_log(None) == 0
    assert IndexLog.select().count() == 3


def test_a_late_unlink_never_hides_a_relink_made_on_another_host(owner, hosts):
    a, b = hosts
    file_id = stored_file(owner, 3)
    kb = Knowledge.create(user=owner.id, name="KB")
    KnowledgeFile.create(knowledge=kb.id, file=file_id)
    index_sync.link(a, kb.id, file_id)
    ids = set(collection_rows.chunk_ids(file_id))
    KnowledgeFile.delete().where(KnowledgeFile.file == file_id).execute()  # A's unlink commits...
    KnowledgeFile.create(knowledge=kb.id, file=file_id)  # ...B links the file again...
    index_sync.link(b, kb.id, file_id)
    assert found(a, kb.id) == ids  # ...a query on A catches up with both...
    index_sync.unlink(a, kb.id)  # ...and only then does A's unlink reach its index
    assert found(a, kb.id) == found(b, kb.id) == expected(kb.id) == ids


def test_start_up_catches_up_a_cached_collection_instead_of_rebuilding_it(owner, hosts):
    a, b = hosts
    first = stored_file(owner, 3)
    kb = Knowledge.create(user=owner.id, name="KB")
    KnowledgeFile.create(knowledge=kb.id, file=first)
    assert found(b, kb.id) == expected(kb.id)
    second = stored_file(owner, 4, seed=1)
    KnowledgeFile.create(knowledge=kb.id, file=second)  # written through A while B was down
    index_sync.link(a, kb.id, second)
    rebuilt, drifted = index_sync.repair_on_drift(b)
    assert kb.id not in drifted and b.ids(kb.id) == expected(kb.id) and len(expected(kb.id)) == 7
    assert b.segment_counts(kb.id) == (2, 0)  # the catch-up added one segment; no rebuild


def test_a_version_read_before_another_worker_caught_up_further_costs_nothing(owner, hosts):
    _, b = hosts
    kb = Knowledge.create(user=owner.id, name="KB")
    for seed in range(2):
        KnowledgeFile.create(knowledge=kb.id, file=stored_file(owner, 3, seed=seed))
    assert found(b, kb.id) == expected(kb.id)
    version, layout = b.cached_version(kb.id), sorted(os.listdir(b.path(kb.id)))

    def refuse(*_args):
        raise AssertionError("a stale read must not touch the database or the files")
    b.catch_up(kb.id, version - 1, refuse, refuse)
    assert b.cached_version(kb.id) == version and sorted(os.listdir(b.path(kb.id))) == layout


def test_a_full_rewrite_replays_the_log_from_its_start(owner, hosts):
    a, _ = hosts
    file_id = stored_file(owner, 3)
    kb = Knowledge.create(user=owner.id, name="KB")
    KnowledgeFile.create(knowledge=kb.id, file=file_id)
    assert found(a, kb.id) == expected(kb.id) and a.cached_version(kb.id) > 0
    index_sync.rebuild_all(a)  # e.g. after restoring a backup, whose versions may be lower
    assert a.cached_version(kb.id) == 0 and found(a, kb.id) == expected(kb.id)
    assert a.cached_version(kb.id) == CollectionState.get_by_id(kb.id).version


def test_the_majority_dimension_rule_holds_on_the_catching_up_host(owner, hosts):
    a, b = hosts
    small, big = stored_file(owner, 2, dim=4), stored_file(owner, 3, dim=8, seed=1)
    kb = Knowledge.create(user=owner.id, name="KB")
    KnowledgeFile.create(knowledge=kb.id, file=small)
    assert found(b, kb.id) == expected(kb.id) and b.dim(kb.id) == 4
    KnowledgeFile.create(knowledge=kb.id, file=big)  # another size: a refused link on a live host, forced
    assert found(b, kb.id) == expected(kb.id) == set(collection_rows.chunk_ids(big)) and b.dim(kb.id) == 8
    Chunk.delete().where(Chunk.id.in_(collection_rows.chunk_ids(big)[:2])).execute()
    assert found(b, kb.id) == expected(kb.id) == set(collection_rows.chunk_ids(small))


def test_random_writes_on_both_hosts_leave_both_equal_to_the_database(owner, hosts):
    a, b = hosts
    rng = random.Random(10)
    kbs = [Knowledge.create(user=owner.id, name=f"KB{n}").id for n in range(3)]
    live: list[str] = []
    for step in range(60):
        host = rng.choice((a, b))
        action = rng.choice(("upload", "upload", "link", "link", "unlink", "delete", "read"))
        if action == "upload" or not live:
            live.append(stored_file(owner, rng.randint(1, 6), seed=step))
            index_new_file(host, live[-1])
        elif action == "link":
            kid, file_id = rng.choice(kbs), rng.choice(live)
            KnowledgeFile.get_or_create(knowledge=kid, file=file_id)
            index_sync.link(host, kid, file_id)
        elif action == "unlink":
            kid, file_id = rng.choice(kbs), rng.choice(live)
            KnowledgeFile.delete().where(KnowledgeFile.knowledge == kid,
                                         KnowledgeFile.file == file_id).execute()
            index_sync.unlink(host, kid)
        elif action == "delete":
            file_id = live.pop(rng.randrange(len(live)))
            ids, kids = collection_rows.chunk_ids(file_id), collection_rows.linked_knowledge(file_id)
            File.delete().where(File.id == file_id).execute()  # chunks and links go by cascade
            index_sync.forget(host, file_id, ids, kids)
        else:
            name = rng.choice(kbs + [collection_name(f) for f in live])
            assert found(host, name) == expected(name)
    wanted = index_sync.expected_ids()
    for name in kbs + [collection_name(f) for f in live]:
        assert found(a, name) == found(b, name) == wanted[name], name


@pytest.fixture
def two_apps(tmp_path, fake_backend):
    """Two hosts: separate DATA_DIRs, one database file, one secret."""
    database = f"sqlite:///{tmp_path / 'shared' / 'webui.db'}"
    apps = [create_app({"DATA_DIR": str(tmp_path / name), "DATABASE_URL": database,
                        "WEBUI_SECRET_KEY": "shared-secret", "PASSWORD_HASH_COST": FAST_HASH,
                        **rag_settings(fake_backend)}) for name in ("host-a", "host-b")]
    yield apps
    for application in apps:
        application.extensions["webui_api"].jobs.drain(30)
        application.extensions["webui_api"].close()


def test_two_apps_upload_through_a_query_through_b(two_apps):
    host_a, host_b = (application.test_client() for application in two_apps)
    signup = host_a.post("/api/v1/auths/signup", json={"name": "Ann", "email": "ann@example.com",
                                                        "password": "correct horse battery staple"})
    assert signup.status_code == 200, signup.get_json()
    headers = {"Authorization": f"Bearer {signup.get_json()['token']}"}
    body = upload_ok(host_a, headers, "z.txt", b"The launch code is 1234.")
    response = host_b.post("/api/v1/retrieval/query/doc", headers=headers,
                           json={"collection_name": f"file-{body['id']}", "query": "launch code", "k": 1})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["documents"] == [["The launch code is 1234."]]
    assert os.path.isdir(os.path.join(two_apps[1].extensions["webui_api"].settings.DATA_DIR, "vector_db",
                                      f"file-{body['id']}"))
