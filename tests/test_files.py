"""/api/v1/files over the test client, with real embeddings from the fake backend."""
from __future__ import annotations

import io
import json
import os

import pytest

from webui_api.db import Chunk, File
from webui_api.errors import EMPTY_CONTENT

from .rag_helpers import _drain_background, embed_calls, rag_settings, upload, upload_ok  # noqa: F401
from .test_extract import make_docx, make_pdf

ZEPHYR = b"Project Zephyr notes.\n\nThe secret launch code of project Zephyr is 7-alpha-9.\n"


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend, RAG_FILE_MAX_SIZE="0.1")  # 100 KiB keeps the size tests fast


def stored_names(data_dir):
    folder = os.path.join(data_dir, "uploads")
    return sorted(n for n in os.listdir(folder) if not n.startswith(".")) if os.path.isdir(folder) else []


def query(client, headers, name, text, k=3):
    return client.post("/api/v1/retrieval/query/doc", headers=headers,
                       json={"collection_name": name, "query": text, "k": k})


def test_upload_answers_when_searchable_in_open_webui_shape(client, user, data_dir):
    body = upload_ok(client, user["headers"], "zephyr.txt", ZEPHYR)
    assert list(body) == ["id", "user_id", "hash", "filename", "data", "meta", "created_at",
                          "updated_at", "status"]
    assert body["status"] is True and body["data"]["status"] == "completed"
    assert body["meta"]["collection_name"] == f"file-{body['id']}"
    assert body["meta"]["size"] == len(ZEPHYR) and body["meta"]["content_type"] == "text/plain"
    assert "path" not in json.dumps(body) and data_dir not in json.dumps(body)
    found = query(client, user["headers"], f"file-{body['id']}", "launch code").get_json()
    assert "7-alpha-9" in found["documents"][0][0]
    assert stored_names(data_dir) == [body["id"]]  # a server-generated name, not the client's


@pytest.mark.parametrize("name,data,ctype,expect", [
    ("notes.md", b"# Zephyr\n\nThe launch code is 7-alpha-9.", "text/markdown", "# Zephyr"),
    ("table.csv", b"project,code\nZephyr,7-alpha-9\n", "text/csv", "code: 7-alpha-9"),
    ("data.json", b'{"project": "Zephyr", "code": "7-alpha-9"}', "application/json", '"code": "7-alpha-9"'),
    ("page.html", b"<html><script>evil()</script><body><p>Code 7-alpha-9</p></body></html>", "text/html",
     "Code 7-alpha-9"),
    ("script.py", b"# launch\nCODE = '7-alpha-9'\n", "text/x-python", "CODE = '7-alpha-9'"),
])
def test_each_text_type_is_processed(client, user, name, data, ctype, expect):
    body = upload_ok(client, user["headers"], name, data, ctype=ctype)
    content = client.get(f"/api/v1/files/{body['id']}/data/content",
                         headers=user["headers"]).get_json()["content"]
    assert expect in content and "evil" not in content


def test_pdf_and_docx_are_processed(client, user):
    pdf = upload_ok(client, user["headers"], "policy.pdf", make_pdf(["Refunds take five days."]),
                    ctype="application/pdf")
    docx = upload_ok(client, user["headers"], "policy.docx", make_docx("Policy", ["Returns need a receipt."]),
                     ctype="application/octet-stream")
    assert pdf["data"]["status"] == docx["data"]["status"] == "completed"
    hit = query(client, user["headers"], f"file-{pdf['id']}", "refunds").get_json()
    assert hit["metadatas"][0][0]["page"] == 1
    text = client.get(f"/api/v1/files/{docx['id']}", headers=user["headers"]).get_json()["data"]["content"]
    assert text.startswith("# Policy") and "receipt" in text


def test_same_bytes_again_returns_the_existing_file_without_embedding(client, user, make_user, fake_backend):
    first = upload_ok(client, user["headers"], "a.txt", ZEPHYR)
    calls = embed_calls(fake_backend)
    again = upload(client, user["headers"], "renamed.txt", ZEPHYR)
    assert again.status_code == 200 and again.get_json()["id"] == first["id"]
    assert embed_calls(fake_backend) == calls
    other = make_user("user")
    assert upload_ok(client, other["headers"], "a.txt", ZEPHYR)["id"] != first["id"]


@pytest.mark.parametrize("data,name,status", [
    (b"", "empty.txt", 400),
    (b"   \n\n  ", "blank.txt", 400),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "photo.png", 415),
    (bytes(range(256)) * 8, "blob.txt", 415),
    (b"x" * 110_000, "big.txt", 413),         # just over 100 KiB: caught while copying
    (b"x" * 3_000_000, "huge.txt", 413),      # far over: refused before the body is parsed
    (b"%PDF-1.4 broken", "bad.pdf", 400),
])
def test_rejected_uploads_leave_nothing_behind(client, user, data_dir, data, name, status):
    response = upload(client, user["headers"], name, data)
    assert response.status_code == status, response.get_json()
    detail = response.get_json()["detail"]
    assert isinstance(detail, str) and detail
    if status == 400 and name.endswith(".txt"):
        assert detail == EMPTY_CONTENT
    if status == 413:
        assert "0.1 MB" in detail
    assert File.select().count() == 0 and Chunk.select().count() == 0
    assert os.listdir(os.path.join(data_dir, "uploads")) in ([], [".locks"])


def test_file_yielding_more_text_than_allowed_is_413_naming_the_limit(client, user, data_dir, app):
    app.extensions["webui_api"].settings.RAG_MAX_EXTRACTED_CHARS = 500
    rows = b"name,city\n" + b"Ada,London\n" * 40  # 450 bytes that become 960 characters of labelled rows
    response = upload(client, user["headers"], "people.csv", rows, "text/csv")
    assert response.status_code == 413, response.get_json()
    assert response.get_json()["detail"] == ("'people.csv' holds more text than the 500 characters one file "
                                             "may yield (RAG_MAX_EXTRACTED_CHARS).")
    assert File.select().count() == 0 and Chunk.select().count() == 0


def test_extension_allow_list(client, user, app):
    app.extensions["webui_api"].settings.RAG_ALLOWED_FILE_EXTENSIONS = ["md"]
    response = upload(client, user["headers"], "notes.txt", b"hello")
    assert response.status_code == 400 and "txt" in response.get_json()["detail"]
    assert upload(client, user["headers"], "notes.md", b"hello").status_code == 200


def test_missing_file_field_and_bad_metadata(client, user):
    response = client.post("/api/v1/files/", headers=user["headers"], data={},
                           content_type="multipart/form-data")
    assert response.status_code == 422
    assert response.get_json()["detail"][0]["loc"] == ["body", "file"]
    bad = upload(client, user["headers"], metadata="{not json")
    assert bad.status_code == 400 and "metadata" in bad.get_json()["detail"]
    assert File.select().count() == 0
    good = upload_ok(client, user["headers"], metadata=json.dumps({"tag": "x"}))
    assert good["meta"]["data"] == {"tag": "x"}


def test_client_filename_never_becomes_a_path(client, user, data_dir):
    body = upload_ok(client, user["headers"], "../../etc/pass\x00wd", b"harmless text")
    assert body["filename"] == "passwd"
    assert stored_names(data_dir) == [body["id"]]


def test_background_mode_and_status_polling(client, user, fake_backend):
    fake_backend.fault = {"kind": "slow", "path": "/api/embed", "delay": 0.3}
    body = upload_ok(client, user["headers"], "z.txt", ZEPHYR, query="?process_in_background=true")
    assert body["data"]["status"] in ("pending", "processing")
    stream = client.get(f"/api/v1/files/{body['id']}/process/status?stream=true", headers=user["headers"])
    assert stream.mimetype == "text/event-stream"
    events = [json.loads(line[6:]) for line in stream.get_data(as_text=True).splitlines() if line]
    assert events[-1] == {"status": "completed"}
    status = client.get(f"/api/v1/files/{body['id']}/process/status", headers=user["headers"]).get_json()
    assert status == {"status": "completed"}


def test_backend_failure_keeps_the_file_failed_and_reprocessable(client, user, fake_backend):
    fake_backend.fault = {"kind": "http500", "path": "/api/embed", "message": "GPU on fire"}
    response = upload(client, user["headers"], "z.txt", ZEPHYR)
    assert response.status_code == 502
    detail = response.get_json()["detail"]
    assert "GPU on fire" in detail and "process/file" in detail
    file = File.get()
    assert file.id in detail and file.status == "failed" and "GPU on fire" in file.error
    shown = client.get(f"/api/v1/files/{file.id}/process/status", headers=user["headers"]).get_json()
    assert shown["status"] == "failed" and "GPU on fire" in shown["error"]
    location = fake_backend.url.split("//", 1)[1]  # host:port, for admins' eyes only
    assert "Ollama backend 0" in file.error and location not in file.error and location not in detail
    fake_backend.fault = None
    again = client.post("/api/v1/retrieval/process/file", headers=user["headers"], json={"file_id": file.id})
    assert again.status_code == 200 and again.get_json()["collection_name"] == f"file-{file.id}"
    assert File.get_by_id(file.id).status == "completed"


def test_backend_down_is_502_and_same_upload_retries(client, user, fake_backend, app):
    fake_backend.stop()
    response = upload(client, user["headers"], "z.txt", ZEPHYR)
    assert response.status_code == 502 and "Ollama backend" in response.get_json()["detail"]
    assert File.get().status == "failed"
    assert os.listdir(os.path.join(app.extensions["webui_api"].settings.DATA_DIR, "uploads"))


def test_process_false_stores_only(client, user):
    body = upload_ok(client, user["headers"], "raw.bin", bytes(range(256)), query="?process=false")
    assert body["data"] == {} and "collection_name" not in body["meta"]
    status = client.get(f"/api/v1/files/{body['id']}/process/status", headers=user["headers"]).get_json()
    assert status == {"status": "stored"}


def test_listing_is_per_user_and_admins_see_all(client, user, admin, make_user):
    mine = upload_ok(client, user["headers"], "mine.txt", b"my words")
    other = make_user("user")
    upload_ok(client, other["headers"], "theirs.txt", b"their words")
    listing = client.get("/api/v1/files/", headers=user["headers"]).get_json()
    assert [f["id"] for f in listing["items"]] == [mine["id"]] and listing["total"] == 1
    assert "content" not in listing["items"][0]["data"]  # the extracted text only when asked for
    full = client.get("/api/v1/files/?content=true", headers=user["headers"]).get_json()
    assert full["items"][0]["data"]["content"] == "my words"
    assert client.get("/api/v1/files/", headers=admin["headers"]).get_json()["total"] == 2


def test_original_content_types_and_disposition(client, user):
    text = upload_ok(client, user["headers"], "résumé notes.txt", b"plain words")
    response = client.get(f"/api/v1/files/{text['id']}/content", headers=user["headers"])
    assert response.data == b"plain words" and response.mimetype == "text/plain"
    assert response.headers["Content-Disposition"].startswith("inline")
    html = upload_ok(client, user["headers"], "x.html", b"<p>hi<script>alert(1)</script></p>",
                     ctype="text/html")
    response = client.get(f"/api/v1/files/{html['id']}/content", headers=user["headers"])
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    forced = client.get(f"/api/v1/files/{text['id']}/content?attachment=true", headers=user["headers"])
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9" in forced.headers["Content-Disposition"]


def test_content_update_reindexes(client, user):
    body = upload_ok(client, user["headers"], "z.txt", ZEPHYR)
    response = client.post(f"/api/v1/files/{body['id']}/data/content/update", headers=user["headers"],
                           json={"content": "Completely new text about orange giraffes."})
    assert response.status_code == 200 and "giraffes" in response.get_json()["content"]
    found = query(client, user["headers"], f"file-{body['id']}", "giraffes").get_json()
    assert found["documents"] == [["Completely new text about orange giraffes."]]
    blank = client.post(f"/api/v1/files/{body['id']}/data/content/update", headers=user["headers"],
                        json={"content": "  "})
    assert blank.status_code == 400 and blank.get_json()["detail"] == EMPTY_CONTENT


def test_content_update_over_the_text_limit_is_413_and_changes_nothing(client, user, app):
    body = upload_ok(client, user["headers"], "z.txt", ZEPHYR)
    app.extensions["webui_api"].settings.RAG_MAX_EXTRACTED_CHARS = 100
    response = client.post(f"/api/v1/files/{body['id']}/data/content/update", headers=user["headers"],
                           json={"content": "x" * 101})
    assert response.status_code == 413 and "RAG_MAX_EXTRACTED_CHARS" in response.get_json()["detail"]
    kept = File.get_by_id(body["id"])
    assert kept.status == "completed" and kept.content == ZEPHYR.decode()
    text = client.post("/api/v1/retrieval/process/text", headers=user["headers"],
                       json={"name": "big", "content": "y" * 101})
    assert text.status_code == 413 and File.select().count() == 1


def test_delete_removes_row_bytes_and_vectors(client, user, data_dir, app):
    body = upload_ok(client, user["headers"], "z.txt", ZEPHYR)
    vectors = app.extensions["webui_api"].vectors
    assert vectors.count(f"file-{body['id']}") == 1
    response = client.delete(f"/api/v1/files/{body['id']}", headers=user["headers"])
    assert response.status_code == 200 and response.get_json() == {"message": "File deleted successfully"}
    assert client.get(f"/api/v1/files/{body['id']}", headers=user["headers"]).status_code == 404
    assert stored_names(data_dir) == [] and Chunk.select().count() == 0
    assert vectors.count(f"file-{body['id']}") == 0


def test_delete_all_is_admin_only(client, user, admin):
    upload_ok(client, user["headers"], "z.txt", ZEPHYR)
    assert client.delete("/api/v1/files/all", headers=user["headers"]).status_code == 403
    response = client.delete("/api/v1/files/all", headers=admin["headers"])
    assert response.status_code == 200 and File.select().count() == 0


def test_other_users_cannot_touch_a_private_file(client, user, admin, make_user):
    body = upload_ok(client, user["headers"], "z.txt", ZEPHYR)
    other = make_user("user")["headers"]
    fid = body["id"]
    for method, path, kwargs in [
        ("get", f"/api/v1/files/{fid}", {}), ("get", f"/api/v1/files/{fid}/content", {}),
        ("get", f"/api/v1/files/{fid}/data/content", {}), ("get", f"/api/v1/files/{fid}/process/status", {}),
        ("post", f"/api/v1/files/{fid}/data/content/update", {"json": {"content": "hijack"}}),
        ("delete", f"/api/v1/files/{fid}", {}),
        ("post", "/api/v1/retrieval/process/file", {"json": {"file_id": fid}}),
        ("post", "/api/v1/retrieval/query/doc", {"json": {"collection_name": f"file-{fid}",
                                                          "query": "code"}}),
    ]:
        response = getattr(client, method)(path, headers=other, **kwargs)
        assert response.status_code == 404, (method, path, response.get_json())
    assert client.get(f"/api/v1/files/{fid}", headers=admin["headers"]).status_code == 200
    assert client.get(f"/api/v1/files/{fid}/content", headers={}).status_code == 401
    assert File.get_by_id(fid).content == ZEPHYR.decode()


def test_unknown_file_is_404(client, user):
    for path in ("/api/v1/files/nope", "/api/v1/files/nope/content", "/api/v1/files/nope/process/status"):
        response = client.get(path, headers=user["headers"])
        assert response.status_code == 404 and response.get_json()["detail"]


def test_upload_stream_is_not_held_in_memory(client, user, app):
    """A body over the limit is refused from its Content-Length, before parsing."""
    big = io.BytesIO(b"y" * 5_000_000)
    response = client.post("/api/v1/files/", headers=user["headers"], content_type="multipart/form-data",
                           data={"file": (big, "big.txt", "text/plain")})
    assert response.status_code == 413 and File.select().count() == 0


@pytest.mark.parametrize("background", [False, True])
def test_metadata_knowledge_id_links_after_processing(client, user, app, background):
    kb = client.post("/api/v1/knowledge/create", headers=user["headers"], json={"name": "KB"}).get_json()
    query_string = "?process_in_background=true" if background else ""
    body = upload_ok(client, user["headers"], "z.txt", ZEPHYR, query=query_string,
                     metadata=json.dumps({"knowledge_id": kb["id"]}))
    if background:
        assert app.extensions["webui_api"].jobs.drain(10)
    found = query(client, user["headers"], kb["id"], "launch code").get_json()
    assert found["metadatas"][0][0]["file_id"] == body["id"]
    assert body["meta"]["data"] == {"knowledge_id": kb["id"]}


def test_metadata_knowledge_id_of_someone_else_stores_nothing(client, user, make_user):
    kb = client.post("/api/v1/knowledge/create", headers=user["headers"], json={"name": "KB"}).get_json()
    other = make_user("user")
    response = upload(client, other["headers"], "z.txt", ZEPHYR,
                      metadata=json.dumps({"knowledge_id": kb["id"]}))
    assert response.status_code == 404 and File.select().count() == 0


def test_content_is_served_by_any_host_sharing_upload_dir(tmp_path, fake_backend):
    """Two hosts: own DATA_DIRs, one database, one UPLOAD_DIR (a network filesystem in production). Bytes
    uploaded through A are served by B; a host with its own upload directory cannot find them."""
    from webui_api import create_app

    shared = {**rag_settings(fake_backend), "DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
              "WEBUI_SECRET_KEY": "one-secret-for-every-host", "PASSWORD_HASH_COST": 1024}
    hosts = [create_app({**shared, "DATA_DIR": str(tmp_path / name), "UPLOAD_DIR": str(tmp_path / upload_dir)})
             for name, upload_dir in (("a", "nfs"), ("b", "nfs"), ("c", "c-uploads"))]
    try:
        a, b, c = (host.test_client() for host in hosts)
        token = a.post("/api/v1/auths/signup", json={"name": "Ada", "email": "ada@example.com",
                                                     "password": "pw-pw-pw-pw"}).get_json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        body = upload_ok(a, headers, "zephyr.txt", ZEPHYR)
        assert os.listdir(tmp_path / "nfs") == [body["id"]] and not os.path.exists(tmp_path / "a" / "uploads")
        served = b.get(f"/api/v1/files/{body['id']}/content", headers=headers)
        assert served.status_code == 200 and served.data == ZEPHYR
        missing = c.get(f"/api/v1/files/{body['id']}/content", headers=headers)
        assert missing.status_code == 404 and missing.get_json() == {"detail": "Original file is unavailable."}
    finally:
        for host in hosts:
            host.extensions["webui_api"].close()
