"""Issue 11's integrity and access defects, attacked the way the audit did: un-sharing that did not revoke,
duplicate rows from racing identical uploads, a file deleted while being added, API keys for pending users."""
from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from webui_api import db
from webui_api.db import File, KnowledgeFile
from webui_api.rag import index_sync

from .rag_helpers import _drain_background, rag_settings, upload, upload_ok  # noqa: F401

SECRET = b"Project Zephyr notes.\n\nThe secret launch code of project Zephyr is 7-alpha-9.\n"
CODE = "7-alpha-9"
QUESTION = [{"role": "user", "content": "What is the secret launch code of project Zephyr?"}]
PUBLIC = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]
RACERS = 8


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend)


def collection(client, creds, name, grants=None):
    response = client.post("/api/v1/knowledge/create", headers=creds["headers"],
                           json={"name": name, "access_grants": grants or []})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["id"]


def add(client, creds, kid, fid):
    return client.post(f"/api/v1/knowledge/{kid}/file/add", headers=creds["headers"], json={"file_id": fid})


def together(count, action):
    """Run action(i) in `count` threads released at once; their results in order."""
    start = threading.Barrier(count)

    def one(i):
        start.wait()
        return action(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


# ---------------------------------------------------------------- item 1: un-sharing revokes

def test_a_file_shared_with_you_cannot_be_added_to_your_collection(client, user, make_user):
    shared = collection(client, user, "A's public", PUBLIC)
    secret = upload_ok(client, user["headers"], "z.txt", SECRET)
    assert add(client, user, shared, secret["id"]).status_code == 200
    other = make_user("user")
    mine = collection(client, other, "B's")
    response = add(client, other, mine, secret["id"])
    assert response.status_code == 403 and "your own files" in response.get_json()["detail"]
    assert not KnowledgeFile.select().where(KnowledgeFile.knowledge == mine).exists()
    assert add(client, other, mine, "no-such-file").status_code == 404


def test_unsharing_revokes_a_link_made_while_the_file_was_shared(app, client, user, make_user, fake_backend):
    """The audit's attack, on a link the old rule let B make: every read path through B's collection."""
    shared = collection(client, user, "A's public", PUBLIC)
    secret = upload_ok(client, user["headers"], "z.txt", SECRET)
    add(client, user, shared, secret["id"])
    b, stranger = make_user("user"), make_user("user")
    mine = collection(client, b, "B's")
    KnowledgeFile.create(knowledge=mine, file=secret["id"])  # what file/add stored before the fix
    index_sync.link(app.extensions["webui_api"].vectors, mine, secret["id"])  # vectors in B's index too
    client.post(f"/api/v1/knowledge/{shared}/access/update", headers=user["headers"], json={"access_grants": []})

    found = client.post("/api/v1/retrieval/query/collection", headers=b["headers"],
                        json={"collection_names": [mine], "query": "launch code"})
    assert found.status_code == 200 and CODE not in str(found.get_json())
    for files in ([{"type": "collection", "id": mine}], [{"type": "collection", "id": mine, "context": "full"}]):
        reply = client.post("/api/chat/completions", headers=b["headers"],
                            json={"model": "llama3.2:latest", "messages": QUESTION, "files": files})
        assert reply.status_code == 200 and CODE not in str(fake_backend.last("/api/chat")["json"])
    preset = client.post("/api/v1/models/create", headers=b["headers"], json={
        "id": "b-bot", "base_model_id": "llama3.2:latest", "name": "B bot",
        "meta": {"knowledge": [{"id": mine, "type": "collection"}]}})
    assert preset.status_code == 200, preset.get_json()
    reply = client.post("/api/chat/completions", headers=b["headers"], json={"model": "b-bot", "messages": QUESTION})
    assert reply.status_code == 200 and CODE not in str(fake_backend.last("/api/chat")["json"])
    got = client.get(f"/api/v1/knowledge/{mine}", headers=b["headers"]).get_json()
    assert got["files"] == []
    assert client.get(f"/api/v1/knowledge/{mine}/files", headers=b["headers"]).get_json()["total"] == 0
    assert client.get("/api/v1/knowledge/", headers=b["headers"]).get_json()["items"][0]["file_count"] == 0
    client.post(f"/api/v1/knowledge/{mine}/access/update", headers=b["headers"], json={"access_grants": PUBLIC})
    for creds in (b, stranger):
        for path in ("", "/content", "/data/content"):
            assert client.get(f"/api/v1/files/{secret['id']}{path}", headers=creds["headers"]).status_code == 404
    assert client.get(f"/api/v1/files/{secret['id']}/content", headers=user["headers"]).status_code == 200


# ---------------------------------------------------------------- item 8: identical uploads racing

@pytest.mark.parametrize("query", ["", "?background=true"])
def test_identical_uploads_racing_make_one_row(app, user, query):
    data = SECRET + query.encode()

    def send(_):
        response = upload(app.test_client(), user["headers"], "same.txt", data, query=query)
        return response.status_code, response.get_json()["id"]

    for round_ in range(3):  # the window is narrow: open it a few times
        File.delete().execute()
        answers = together(RACERS, send)
        assert {status for status, _ in answers} == {200}, answers
        assert len({fid for _, fid in answers}) == 1, f"round {round_}: {answers}"
        assert File.select().count() == 1
        app.extensions["webui_api"].jobs.drain(30)


# ---------------------------------------------------------------- item 12: deleted while being added

def test_deleting_a_file_while_it_is_added_is_never_a_500(app, user):
    kid = collection(app.test_client(), user, "Target")
    for trial in range(8):
        fid = upload_ok(app.test_client(), user["headers"], f"t{trial}.txt", SECRET + str(trial).encode())["id"]
        actions = (lambda: add(app.test_client(), user, kid, fid).status_code,
                   lambda: app.test_client().delete(f"/api/v1/files/{fid}", headers=user["headers"]).status_code)
        added, deleted = together(2, lambda i: actions[i]())
        assert added in (200, 404) and deleted == 200, (trial, added, deleted)
        assert not KnowledgeFile.select().where(KnowledgeFile.file == fid).exists()



def test_deleting_a_collection_while_a_file_is_uploaded_into_it_is_never_a_500(app, user):
    for trial in range(8):
        kid = collection(app.test_client(), user, f"Target {trial}")
        meta = json.dumps({"knowledge_id": kid})
        actions = (lambda: upload(app.test_client(), user["headers"], "u.txt", SECRET + str(trial).encode(),
                                  metadata=meta).status_code,
                   lambda: app.test_client().delete(f"/api/v1/knowledge/{kid}/delete",
                                                    headers=user["headers"]).status_code)
        uploaded, deleted = together(2, lambda i: actions[i]())
        assert uploaded in (200, 404) and deleted == 200, (trial, uploaded, deleted)
        assert not KnowledgeFile.select().where(KnowledgeFile.knowledge == kid).exists()


# ---------------------------------------------------------------- item 18: keys are for verified users

def test_pending_users_cannot_create_api_keys(client, pending, user):
    response = client.post("/api/v1/auths/api_key", headers=pending["headers"])
    assert response.status_code == 403 and "api_key" not in response.get_json()
    assert client.post("/api/v1/auths/api_key", headers=user["headers"]).status_code == 200


def test_migration_keeps_duplicates_from_before_the_constraint_working(app, client, user):
    """A database from before the unique index (schema 6) that already holds duplicate rows upgrades:
    every row stays, the oldest becomes the one copy later uploads of those bytes find."""
    db.execute('DROP INDEX "file_user_id_dedup_key"')
    db.execute('ALTER TABLE "file" DROP COLUMN dedup_key')
    digest = hashlib.sha256(SECRET).hexdigest()
    for file_id, created in (("dup-new", 200), ("dup-old", 100), ("dup-mid", 150)):
        db.execute('INSERT INTO "file" (id, user_id, filename, storage_name, content_type, size, file_hash, '
                   'status, meta, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                   (file_id, user["id"], "z.txt", file_id, "text/plain", len(SECRET), digest, "completed",
                    "{}", created, created))
    db.execute("UPDATE schema_version SET version = 6")
    assert db.migrate() == db.SCHEMA_VERSION
    keys = dict(File.select(File.id, File.dedup_key).tuples())
    assert keys == {"dup-old": digest, "dup-mid": None, "dup-new": None}
    assert upload_ok(client, user["headers"], "again.txt", SECRET)["id"] == "dup-old"
    assert client.get("/api/v1/files/dup-new", headers=user["headers"]).status_code == 200
    assert db.migrate() == db.SCHEMA_VERSION and File.select().count() == 3  # idempotent
