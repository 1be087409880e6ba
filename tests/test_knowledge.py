"""/api/v1/knowledge: CRUD, idempotent file/add reusing stored vectors, removal, access rules."""
from __future__ import annotations

import pytest

from webui_api.db import File, KnowledgeFile, Preset

from .rag_helpers import _drain_background, embed_calls, rag_settings, upload_ok  # noqa: F401

ZEPHYR = b"Project Zephyr notes.\n\nThe secret launch code of project Zephyr is 7-alpha-9.\n"
PUBLIC = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend)


@pytest.fixture
def vectors(app):
    return app.extensions["webui_api"].vectors


def create(client, headers, name="Zephyr KB", **extra):
    response = client.post("/api/v1/knowledge/create", headers=headers,
                           json={"name": name, "description": "Project docs", **extra})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def add(client, headers, kid, fid):
    return client.post(f"/api/v1/knowledge/{kid}/file/add", headers=headers, json={"file_id": fid})


def test_create_get_list_update_delete(client, user):
    kb = create(client, user["headers"])
    assert list(kb) == ["id", "user_id", "name", "description", "meta", "access_grants", "created_at",
                        "updated_at", "files"]
    assert kb["access_grants"] == [] and kb["files"] is None
    got = client.get(f"/api/v1/knowledge/{kb['id']}", headers=user["headers"]).get_json()
    assert got["files"] == [] and got["write_access"] is True
    listing = client.get("/api/v1/knowledge/", headers=user["headers"]).get_json()
    item = listing["items"][0]
    assert listing["total"] == 1 and item["file_count"] == 0 and item["user"]["email"] == user["email"]
    updated = client.post(f"/api/v1/knowledge/{kb['id']}/update", headers=user["headers"],
                          json={"name": "Renamed", "description": "New"}).get_json()
    assert updated["name"] == "Renamed" and updated["description"] == "New"
    response = client.delete(f"/api/v1/knowledge/{kb['id']}/delete", headers=user["headers"])
    assert response.status_code == 200 and response.get_json() is True
    assert client.get(f"/api/v1/knowledge/{kb['id']}", headers=user["headers"]).status_code == 404


def test_create_validation(client, user):
    assert client.post("/api/v1/knowledge/create", headers=user["headers"], json={}).status_code == 422
    grant = {"principal_type": "group", "principal_id": "g1", "permission": "write"}
    bad_grant = client.post("/api/v1/knowledge/create", headers=user["headers"],
                            json={"name": "x", "access_grants": [grant]})
    assert bad_grant.status_code == 400 and "no such group: g1" in bad_grant.get_json()["detail"]


def test_file_add_is_idempotent_and_reuses_stored_vectors(client, user, fake_backend, vectors):
    kb = create(client, user["headers"])
    file = upload_ok(client, user["headers"], "z.txt", ZEPHYR)
    calls = embed_calls(fake_backend)
    first = add(client, user["headers"], kb["id"], file["id"])
    assert first.status_code == 200
    body = first.get_json()
    assert [f["id"] for f in body["files"]] == [file["id"]]
    assert body["files"][0]["meta"]["collection_name"] == kb["id"]
    second = add(client, user["headers"], kb["id"], file["id"])
    assert second.status_code == 200 and len(second.get_json()["files"]) == 1
    assert embed_calls(fake_backend) == calls  # no second embedding, ever
    assert vectors.count(kb["id"]) == vectors.count(f"file-{file['id']}") == 1
    assert KnowledgeFile.select().count() == 1


def test_file_add_answers_with_the_newest_page_of_files(client, user):
    kb = create(client, user["headers"])
    added = [upload_ok(client, user["headers"], f"n{n}.txt", f"note number {n}".encode()) for n in range(32)]
    for file in added:
        body = add(client, user["headers"], kb["id"], file["id"]).get_json()
    assert [f["id"] for f in body["files"]] == [f["id"] for f in reversed(added)][:30]
    listed = client.get(f"/api/v1/knowledge/{kb['id']}/files?page=2", headers=user["headers"]).get_json()
    assert listed["total"] == 32 and [f["id"] for f in listed["items"]] == [added[1]["id"], added[0]["id"]]


def test_adding_a_file_still_processing_waits_for_it(client, user, fake_backend, vectors):
    kb = create(client, user["headers"])
    fake_backend.fault = {"kind": "slow", "path": "/api/embed", "delay": 0.5}
    file = upload_ok(client, user["headers"], "z.txt", ZEPHYR, query="?process_in_background=true")
    assert file["data"]["status"] != "completed"
    response = add(client, user["headers"], kb["id"], file["id"])
    assert response.status_code == 200
    assert response.get_json()["files"][0]["data"]["status"] == "completed"
    assert vectors.count(kb["id"]) == 1
    assert File.get_by_id(file["id"]).status == "completed"


def test_unprocessed_or_failed_files_cannot_be_added(client, user, fake_backend):
    kb = create(client, user["headers"])
    stored = upload_ok(client, user["headers"], "raw.txt", b"only stored", query="?process=false")
    response = add(client, user["headers"], kb["id"], stored["id"])
    assert response.status_code == 400 and "not available" in response.get_json()["detail"]
    fake_backend.fault = {"kind": "http500", "path": "/api/embed"}
    client.post("/api/v1/files/", headers=user["headers"], content_type="multipart/form-data",
                data={"file": (__import__("io").BytesIO(b"doomed text"), "d.txt", "text/plain")})
    failed = File.get(File.filename == "d.txt")
    response = add(client, user["headers"], kb["id"], failed.id)
    assert response.status_code == 400 and "failed" in response.get_json()["detail"]
    assert KnowledgeFile.select().count() == 0


def test_missing_file_or_knowledge_is_404(client, user):
    kb = create(client, user["headers"])
    assert add(client, user["headers"], kb["id"], "00000000-0000-0000-0000-000000000000").status_code == 404
    assert client.get("/api/v1/knowledge/00000000-0000-0000-0000-000000000000",
                      headers=user["headers"]).status_code == 404


def test_remove_unlinks_only_unless_asked(client, user, vectors):
    kb = create(client, user["headers"])
    keep = upload_ok(client, user["headers"], "keep.txt", b"keep this text")
    drop = upload_ok(client, user["headers"], "drop.txt", b"drop this text")
    for f in (keep, drop):
        add(client, user["headers"], kb["id"], f["id"])
    assert vectors.count(kb["id"]) == 2
    response = client.post(f"/api/v1/knowledge/{kb['id']}/file/remove", headers=user["headers"],
                           json={"file_id": keep["id"]})
    assert response.status_code == 200 and [f["id"] for f in response.get_json()["files"]] == [drop["id"]]
    assert vectors.count(kb["id"]) == 1 and File.get_or_none(File.id == keep["id"]) is not None
    response = client.post(f"/api/v1/knowledge/{kb['id']}/file/remove?delete_file=true",
                           headers=user["headers"], json={"file_id": drop["id"]})
    assert response.status_code == 200 and response.get_json()["files"] == []
    assert File.get_or_none(File.id == drop["id"]) is None and vectors.count(kb["id"]) == 0
    again = client.post(f"/api/v1/knowledge/{kb['id']}/file/remove", headers=user["headers"],
                        json={"file_id": keep["id"]})
    assert again.status_code == 404


def test_reset_unlinks_everything_and_keeps_files(client, user, vectors):
    kb = create(client, user["headers"])
    file = upload_ok(client, user["headers"], "z.txt", ZEPHYR)
    add(client, user["headers"], kb["id"], file["id"])
    response = client.post(f"/api/v1/knowledge/{kb['id']}/reset", headers=user["headers"])
    assert response.status_code == 200 and response.get_json()["files"] == []
    assert vectors.count(kb["id"]) == 0 and File.get_or_none(File.id == file["id"]) is not None


def test_deleting_a_file_removes_its_vectors_from_collections(client, user, vectors):
    kb = create(client, user["headers"])
    file = upload_ok(client, user["headers"], "z.txt", ZEPHYR)
    add(client, user["headers"], kb["id"], file["id"])
    client.delete(f"/api/v1/files/{file['id']}", headers=user["headers"])
    assert vectors.count(kb["id"]) == 0
    assert client.get(f"/api/v1/knowledge/{kb['id']}", headers=user["headers"]).get_json()["files"] == []


def test_private_collection_is_invisible_to_others_for_every_route(client, user, admin, make_user):
    kb = create(client, user["headers"])
    file = upload_ok(client, user["headers"], "z.txt", ZEPHYR)
    add(client, user["headers"], kb["id"], file["id"])
    other = make_user("user")
    own_file = upload_ok(client, other["headers"], "mine.txt", b"other words")
    kid = kb["id"]
    for method, path, kwargs in [
        ("get", f"/api/v1/knowledge/{kid}", {}), ("get", f"/api/v1/knowledge/{kid}/files", {}),
        ("post", f"/api/v1/knowledge/{kid}/update", {"json": {"name": "x"}}),
        ("post", f"/api/v1/knowledge/{kid}/access/update", {"json": {"access_grants": PUBLIC}}),
        ("post", f"/api/v1/knowledge/{kid}/file/add", {"json": {"file_id": own_file["id"]}}),
        ("post", f"/api/v1/knowledge/{kid}/file/remove", {"json": {"file_id": file["id"]}}),
        ("post", f"/api/v1/knowledge/{kid}/reset", {}), ("delete", f"/api/v1/knowledge/{kid}/delete", {}),
        ("post", "/api/v1/retrieval/query/collection", {"json": {"collection_names": [kid],
                                                                 "query": "code"}}),
    ]:
        response = getattr(client, method)(path, headers=other["headers"], **kwargs)
        assert response.status_code == 404, (method, path, response.get_json())
    assert client.get("/api/v1/knowledge/", headers=other["headers"]).get_json()["total"] == 0
    # and one's own collection cannot take someone else's file
    mine = create(client, other["headers"], "Mine")
    assert add(client, other["headers"], mine["id"], file["id"]).status_code == 404
    # admins see and manage everything
    assert client.get(f"/api/v1/knowledge/{kid}", headers=admin["headers"]).get_json()["write_access"] is True
    assert client.get("/api/v1/knowledge/", headers=admin["headers"]).get_json()["total"] == 2


def test_public_collection_is_read_only_for_others(client, user, make_user):
    kb = create(client, user["headers"], access_grants=PUBLIC)
    assert kb["access_grants"][0]["principal_id"] == "*"
    file = upload_ok(client, user["headers"], "z.txt", ZEPHYR)
    add(client, user["headers"], kb["id"], file["id"])
    reader = make_user("user")["headers"]
    got = client.get(f"/api/v1/knowledge/{kb['id']}", headers=reader)
    assert got.status_code == 200 and got.get_json()["write_access"] is False
    listed = client.get("/api/v1/knowledge/", headers=reader).get_json()["items"][0]
    assert "email" not in listed["user"]
    assert client.get(f"/api/v1/files/{file['id']}", headers=reader).status_code == 200  # readable through it
    assert client.delete(f"/api/v1/files/{file['id']}", headers=reader).status_code == 403
    for method, path, kwargs in [
        ("post", f"/api/v1/knowledge/{kb['id']}/update", {"json": {"name": "x"}}),
        ("post", f"/api/v1/knowledge/{kb['id']}/file/remove", {"json": {"file_id": file["id"]}}),
        ("post", f"/api/v1/knowledge/{kb['id']}/reset", {}),
        ("delete", f"/api/v1/knowledge/{kb['id']}/delete", {}),
    ]:
        assert getattr(client, method)(path, headers=reader, **kwargs).status_code == 403
    found = client.post("/api/v1/retrieval/query/collection", headers=reader,
                        json={"collection_names": [kb["id"]], "query": "launch code"})
    assert found.status_code == 200 and "7-alpha-9" in found.get_json()["documents"][0][0]
    # making it private again hides it
    client.post(f"/api/v1/knowledge/{kb['id']}/access/update", headers=user["headers"],
                json={"access_grants": []})
    assert client.get(f"/api/v1/knowledge/{kb['id']}", headers=reader).status_code == 404


def test_embedding_dimension_change_is_explained(client, user, fake_backend):
    kb = create(client, user["headers"])
    old = upload_ok(client, user["headers"], "old.txt", ZEPHYR)
    add(client, user["headers"], kb["id"], old["id"])
    fake_backend.embed_dims = {"nomic-embed-text:latest": 32}
    new = upload_ok(client, user["headers"], "new.txt", b"text embedded by the new model")
    response = add(client, user["headers"], kb["id"], new["id"])
    assert response.status_code == 409 and "embedding model changed" in response.get_json()["detail"]
    reprocess = client.post("/api/v1/retrieval/process/file", headers=user["headers"],
                            json={"file_id": old["id"]})
    assert reprocess.status_code == 409 and "knowledge/{id}/reset" in reprocess.get_json()["detail"]
    assert File.get_by_id(old["id"]).status == "completed"  # refused before anything changed
    found = client.post("/api/v1/retrieval/query/collection", headers=user["headers"],
                        json={"collection_names": [kb["id"]], "query": "launch code"})
    assert found.status_code == 409  # the query vector no longer fits: explained, not a crash


def test_deleting_a_collection_drops_it_from_presets(client, user):
    kb = create(client, user["headers"])
    Preset.create(id="helper", user=user["id"], base_model_id="llama3.2:latest", name="Helper",
                  meta={"knowledge": [{"id": kb["id"], "name": "Zephyr KB"}, {"id": "keep"}]})
    client.delete(f"/api/v1/knowledge/{kb['id']}/delete", headers=user["headers"])
    assert Preset.get_by_id("helper").meta["knowledge"] == [{"id": "keep"}]
