"""The routes sync scripts call: files/search and count, knowledge batch/add and file/update,
retrieval/delete, and the read-only retrieval config and embedding views."""
from __future__ import annotations

import uuid

import pytest

from webui_api import db
from webui_api.db import Chunk, IndexLog, KnowledgeFile

from .rag_helpers import _drain_background, embed_calls, rag_settings, upload_ok  # noqa: F401

PUBLIC = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend, RAG_OPENAI_API_KEY="sk-secret-rag-key-1234")


@pytest.fixture
def vectors(app):
    return app.extensions["webui_api"].vectors


def create(client, creds, name="Sync KB", **extra) -> str:
    response = client.post("/api/v1/knowledge/create", headers=creds["headers"], json={"name": name, **extra})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["id"]


def batch(client, creds, kid, ids):
    return client.post(f"/api/v1/knowledge/{kid}/files/batch/add", headers=creds["headers"],
                       json=[{"file_id": i} for i in ids])


# ---------------------------------------------------------------- files/search, files/count

def test_search_matches_a_glob_over_own_files_only(client, user, make_user):
    other = make_user("user")
    report = upload_ok(client, user["headers"], "Report_2024.txt", b"annual figures")
    upload_ok(client, user["headers"], "notes.md", b"# notes\n\nsome notes")
    upload_ok(client, other["headers"], "report_other.txt", b"someone else's report")
    found = client.get("/api/v1/files/search?filename=report*.txt", headers=user["headers"])
    assert found.status_code == 200, found.get_json()
    assert [f["id"] for f in found.get_json()] == [report["id"]]  # case-insensitive, B's file not listed
    assert "content" not in found.get_json()[0]["data"]
    with_text = client.get("/api/v1/files/search?filename=*.txt&content=true", headers=user["headers"])
    assert with_text.get_json()[0]["data"]["content"] == "annual figures"
    one = client.get("/api/v1/files/search?filename=????s.md", headers=user["headers"]).get_json()
    assert [f["filename"] for f in one] == ["notes.md"]


def test_search_treats_like_wildcards_as_text_and_pages(client, user):
    for name in ("a_b.txt", "axb.txt", "100%.txt"):
        upload_ok(client, user["headers"], name, name.encode())
    names = lambda q: [f["filename"] for f in client.get(  # noqa: E731
        f"/api/v1/files/search?{q}", headers=user["headers"]).get_json()]
    assert names("filename=a_b.txt") == ["a_b.txt"]
    assert names("filename=100%25*") == ["100%.txt"]
    assert len(names("filename=*&limit=2")) == 2 and len(names("filename=*&skip=2&limit=2")) == 1


@pytest.mark.parametrize("query, status", [("filename=nothing*", 404), ("", 422), ("filename=*&limit=0", 422),
                                           ("filename=*&limit=1001", 422), ("filename=*&skip=-1", 422)])
def test_search_refusals(client, user, query, status):
    upload_ok(client, user["headers"], "x.txt", b"x")
    response = client.get(f"/api/v1/files/search?{query}", headers=user["headers"])
    assert response.status_code == status, response.get_json()
    if status == 404:
        assert response.get_json() == {"detail": "No files found matching the pattern."}


def test_count_is_own_files_and_all_for_admins(client, admin, user):
    upload_ok(client, user["headers"], "one.txt", b"one")
    upload_ok(client, user["headers"], "two.txt", b"two")
    upload_ok(client, admin["headers"], "three.txt", b"three")
    assert client.get("/api/v1/files/count", headers=user["headers"]).get_json() == 2
    assert client.get("/api/v1/files/count", headers=admin["headers"]).get_json() == 3


# ---------------------------------------------------------------- knowledge batch/add

def test_batch_add_links_many_reusing_vectors_with_per_file_results(client, user, make_user, fake_backend,
                                                                    vectors):
    other = make_user("user")
    mine = [upload_ok(client, user["headers"], f"doc{i}.txt", f"document number {i}".encode())["id"]
            for i in range(5)]
    stored = upload_ok(client, user["headers"], "raw.txt", b"stored only", query="?process=false")["id"]
    foreign = upload_ok(client, other["headers"], "theirs.txt", b"not yours")["id"]
    missing = str(uuid.uuid4())
    kid = create(client, user)
    calls = embed_calls(fake_backend)
    response = batch(client, user, kid, [*mine, mine[0], stored, foreign, missing])
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert embed_calls(fake_backend) == calls  # stored vectors reused
    results = {r["file_id"]: r for r in body["results"]}
    assert len(body["results"]) == 8  # the repeated id answered once
    assert all(results[f] == {"file_id": f, "status": "completed"} for f in mine)
    assert results[stored]["status"] == "failed" and "Extracted content" in results[stored]["error"]
    assert results[foreign]["error"] == results[missing]["error"]  # another user's file looks missing
    assert len(body["warnings"]["errors"]) == 3 and body["write_access"] is True
    assert {f["id"] for f in body["files"]} == set(mine)
    assert vectors.count(kid) == 5
    assert vectors.segment_counts(kid)[0] == 1  # one segment for the batch, not one per file
    again = batch(client, user, kid, mine).get_json()  # already there: kept, nothing duplicated
    assert "warnings" not in again and vectors.count(kid) == 5


def test_a_batch_of_links_is_logged_for_other_hosts(client, user):
    """Each chunk joins the collection in the index log (other hosts catch up from it); PostgreSQL logs the
    batch under one version (a statement trigger), SQLite one a link."""
    fids = [upload_ok(client, user["headers"], f"l{i}.txt", f"logged text {i}".encode())["id"] for i in range(3)]
    kid = create(client, user)
    assert batch(client, user, kid, fids).status_code == 200
    logged = list(IndexLog.select(IndexLog.chunk_id, IndexLog.op, IndexLog.version)
                  .where(IndexLog.collection == kid).tuples())
    chunks = {c for (c,) in Chunk.select(Chunk.id).where(Chunk.file.in_(fids)).tuples()}
    assert sorted(c for c, _op, _v in logged) == sorted(chunks) and {op for _c, op, _v in logged} == {1}
    assert len({v for _c, _op, v in logged}) == (1 if db.dialect.statement_triggers else len(fids))


def test_batch_added_files_are_searchable(client, user):
    zephyr = upload_ok(client, user["headers"], "z.txt", b"The secret launch code of project Zephyr is 7-alpha-9.")
    kid = create(client, user)
    assert batch(client, user, kid, [zephyr["id"]]).status_code == 200
    hits = client.post("/api/v1/retrieval/query/collection", headers=user["headers"],
                       json={"collection_names": [kid], "query": "launch code", "k": 1}).get_json()
    assert hits["metadatas"][0][0]["file_id"] == zephyr["id"]


def test_batch_add_refuses_a_file_only_shared_with_the_caller(client, user, make_user):
    owner = make_user("user")
    shared = upload_ok(client, owner["headers"], "shared.txt", b"shared reading")["id"]
    public_kb = create(client, owner, "Public", access_grants=PUBLIC)
    assert batch(client, owner, public_kb, [shared]).status_code == 200
    kid = create(client, user)
    result = batch(client, user, kid, [shared]).get_json()["results"][0]
    assert result["status"] == "failed" and "Only your own files" in result["error"]


def test_batch_add_bounds_and_shape(client, user):
    kid = create(client, user)
    too_many = client.post(f"/api/v1/knowledge/{kid}/files/batch/add", headers=user["headers"],
                           json=[{"file_id": "x"}] * 10_001)
    assert too_many.status_code == 400 and "10000" in too_many.get_json()["detail"]
    for body in ({"file_id": "x"}, [{}], [{"file_id": ""}], ["x"]):
        response = client.post(f"/api/v1/knowledge/{kid}/files/batch/add", headers=user["headers"], json=body)
        assert response.status_code == 422, (body, response.get_json())
    empty = client.post(f"/api/v1/knowledge/{kid}/files/batch/add", headers=user["headers"], json=[])
    assert empty.status_code == 200 and empty.get_json()["results"] == []


def test_batch_add_into_someone_elses_collection(client, user, make_user):
    owner = make_user("user")
    mine = upload_ok(client, user["headers"], "m.txt", b"mine")["id"]
    private, public = create(client, owner, "Private"), create(client, owner, "Public", access_grants=PUBLIC)
    assert batch(client, user, private, [mine]).status_code == 404
    assert batch(client, user, str(uuid.uuid4()), [mine]).status_code == 404
    assert batch(client, user, public, [mine]).status_code == 403
    assert not KnowledgeFile.select().where(KnowledgeFile.file == mine).exists()


# ---------------------------------------------------------------- knowledge file/update

def test_file_update_puts_a_members_vectors_back(client, user, vectors, fake_backend):
    fid = upload_ok(client, user["headers"], "u.txt", b"update me")["id"]
    kid = create(client, user)
    assert batch(client, user, kid, [fid]).status_code == 200
    vectors.drop(kid)  # the index lost (a host's cache wiped): rebuilt from the chunk rows
    calls = embed_calls(fake_backend)
    response = client.post(f"/api/v1/knowledge/{kid}/file/update", headers=user["headers"], json={"file_id": fid})
    assert response.status_code == 200, response.get_json()
    assert [f["id"] for f in response.get_json()["files"]] == [fid]
    assert vectors.count(kid) == 1 and embed_calls(fake_backend) == calls
    other = upload_ok(client, user["headers"], "o.txt", b"not a member")["id"]
    for file_id in (other, str(uuid.uuid4())):
        absent = client.post(f"/api/v1/knowledge/{kid}/file/update", headers=user["headers"],
                             json={"file_id": file_id})
        assert absent.status_code == 404, absent.get_json()


# ---------------------------------------------------------------- retrieval/delete

def test_retrieval_delete_takes_a_file_out_of_a_collection(client, user, vectors):
    fid = upload_ok(client, user["headers"], "d.txt", b"delete my vectors")["id"]
    kid = create(client, user)
    assert batch(client, user, kid, [fid]).status_code == 200
    body = {"collection_name": kid, "file_id": fid}
    response = client.post("/api/v1/retrieval/delete", headers=user["headers"], json=body)
    assert response.status_code == 200 and response.get_json() == {"status": True}
    assert vectors.count(kid) == 0
    assert client.get(f"/api/v1/files/{fid}", headers=user["headers"]).status_code == 200  # file kept
    again = client.post("/api/v1/retrieval/delete", headers=user["headers"], json=body)
    assert again.get_json() == {"status": False}
    own = client.post("/api/v1/retrieval/delete", headers=user["headers"],
                      json={"collection_name": f"file-{fid}", "file_id": fid})
    assert own.status_code == 400 and "DELETE /api/v1/files" in own.get_json()["detail"]


def test_retrieval_delete_in_someone_elses_collection(client, user, make_user):
    owner = make_user("user")
    fid = upload_ok(client, owner["headers"], "o.txt", b"owner's text")["id"]
    private, public = create(client, owner, "Private"), create(client, owner, "Public", access_grants=PUBLIC)
    for kid in (private, public):
        assert batch(client, owner, kid, [fid]).status_code == 200
    hidden = upload_ok(client, owner["headers"], "h.txt", b"in no collection")["id"]
    answers = [client.post("/api/v1/retrieval/delete", headers=user["headers"],
                           json={"collection_name": name, "file_id": fid}).status_code
               for name in (private, str(uuid.uuid4()), f"file-{hidden}", f"file-{uuid.uuid4()}", public)]
    assert answers == [404, 404, 404, 404, 403]
    assert KnowledgeFile.select().where(KnowledgeFile.file == fid).count() == 2


# ---------------------------------------------------------------- retrieval/config, retrieval/embedding

def test_config_views_are_admin_only_and_mask_keys(client, admin, user):
    for path in ("/api/v1/retrieval/config", "/api/v1/retrieval/embedding"):
        assert client.get(path, headers=user["headers"]).status_code == 403
    config = client.get("/api/v1/retrieval/config", headers=admin["headers"]).get_json()
    assert config["status"] is True and config["TOP_K"] == 3 and config["CHUNK_SIZE"] == 1000
    assert "{{CONTEXT}}" in config["RAG_TEMPLATE"] or config["RAG_TEMPLATE"]
    embedding = client.get("/api/v1/retrieval/embedding", headers=admin["headers"]).get_json()
    assert (embedding["RAG_EMBEDDING_ENGINE"], embedding["RAG_EMBEDDING_MODEL"]) == ("ollama", "nomic-embed-text")
    assert embedding["openai_config"]["key"] == "sk-secr...1234"
    assert client.post("/api/v1/retrieval/config", headers=admin["headers"], json={}).status_code == 405


# ---------------------------------------------------------------- query/collection's recorded shape

def test_query_collection_metadata_matches_open_webui(client, user):
    fid = upload_ok(client, user["headers"], "z.txt", b"Zephyr launch code 7-alpha-9.")["id"]
    kid = create(client, user)
    batch(client, user, kid, [fid])
    body = client.post("/api/v1/retrieval/query/collection", headers=user["headers"],
                       json={"collection_names": [kid], "query": "launch code", "k": 1}).get_json()
    assert isinstance(body["ids"][0][0], str)
    assert body["metadatas"][0][0]["embedding_config"] == "{'engine': 'ollama', 'model': 'nomic-embed-text'}"
