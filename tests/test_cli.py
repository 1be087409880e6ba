"""The `webui-api` console script, run as a real process against the same DATA_DIR as the app."""
import glob
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from webui_api.db import File, Knowledge, User

from .servers import BIN

WEBUI_API = str(BIN / "webui-api")


@pytest.fixture
def settings_overrides(fake_backend):
    return {"OLLAMA_BASE_URLS": fake_backend.url}


@pytest.fixture
def run(data_dir, database_settings, fake_backend):
    env = {**os.environ, "DATA_DIR": data_dir, **database_settings, "OLLAMA_BASE_URLS": fake_backend.url,
           "OPENAI_API_BASE_URLS": "", "PASSWORD_HASH_COST": "1024",
           "RAG_EMBEDDING_MODEL": "nomic-embed-text"}
    env.pop("WEBUI_ADMIN_PASSWORD", None)

    def run(*args, stdin: str | None = None, **extra_env) -> subprocess.CompletedProcess:
        return subprocess.run([WEBUI_API, *args], input=stdin, capture_output=True, text=True, timeout=120,
                              env={**env, **extra_env})
    return run


def one_line_error(result, fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("webui-api: error:") and fragment in lines[0], result.stderr


def test_accounts_from_the_command_line(run, client):
    result = run("create-admin", "--email", "Root@Example.com", "--name", "Root", stdin="s3cret-pass\n")
    assert result.returncode == 0, result.stderr
    session = client.post("/api/v1/auths/signin",
                          json={"email": "root@example.com", "password": "s3cret-pass"})
    assert session.status_code == 200 and session.get_json()["role"] == "admin"

    key = run("create-api-key", "--email", "root@example.com").stdout.strip()
    assert key.startswith("sk-") and len(key) == 35
    assert client.get("/api/v1/auths/", headers={"Authorization": f"Bearer {key}"}).status_code == 200

    client.post("/api/v1/auths/add", headers={"Authorization": f"Bearer {key}"},
                json={"name": "U", "email": "u@example.com", "password": "pw-pw-pw", "role": "user"})
    assert run("set-role", "u@example.com", "pending").returncode == 0
    assert User.get(User.email == "u@example.com").role == "pending"


def test_errors_are_one_line_without_traceback(run, data_dir):
    one_line_error(run("set-role", "ghost@example.com", "admin"), "no account with email 'ghost@example.com'")
    one_line_error(run("create-api-key", "--email", "ghost@example.com"), "no account")
    assert run("create-admin", "--email", "a@example.com", "--password", "pw").returncode == 0
    one_line_error(run("create-admin", "--email", "a@example.com", "--password", "pw"), "already registered")
    one_line_error(run("set-role", "a@example.com", "user"), "last admin")
    one_line_error(run("create-admin", "--email", "not-an-email", "--password", "pw"), "email format")
    one_line_error(run("check", DATA_DIR=os.path.join(data_dir, "missing")), "does not exist")
    one_line_error(run("ingest", os.path.join(data_dir, "nope")), "no such file or folder")
    usage = run("set-role", "a@example.com", "emperor")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr and "Traceback" not in usage.stderr


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "alpha.md").write_text("# Alpha\n\nThe alpaca grazes on the high plateau every morning.\n")
    (folder / "beta.txt").write_text("Beta notes: the lighthouse keeper logs every passing ship.\n")
    (folder / "sub" / "gamma.txt").write_text("Gamma: volcanic soil makes the vineyard terraces fertile.\n")
    (folder / ".hidden.txt").write_text("never ingested")
    (folder / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return folder


def query(client, headers, collection, text):
    response = client.post("/api/v1/retrieval/query/collection", headers=headers,
                           json={"collection_names": [collection], "query": text, "k": 1})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["documents"][0]


def test_ingest_a_folder_into_a_collection_then_resume_and_update(run, client, admin, fake_backend, corpus):
    first = run("ingest", str(corpus), "--knowledge", "Field notes")
    assert first.returncode == 1  # the png could not be ingested; the rest was
    assert "3 added, 0 updated, 0 unchanged, 1 failed" in first.stdout
    assert "ingest [" in first.stderr and "5/4" not in first.stderr and "4/4" in first.stderr
    assert "photo.png" in first.stderr.splitlines()[-1] and "Traceback" not in first.stderr
    kb = Knowledge.get(Knowledge.name == "Field notes")
    assert "vineyard" in query(client, admin["headers"], kb.id, "vineyard terraces")[0]

    embeds = len(fake_backend.requests_to("/api/embed"))
    again = run("ingest", str(corpus), "--knowledge", "Field notes")
    assert "0 added, 0 updated, 3 unchanged, 1 failed" in again.stdout
    assert len(fake_backend.requests_to("/api/embed")) == embeds  # nothing embedded twice
    assert Knowledge.select().where(Knowledge.name == "Field notes").count() == 1

    (corpus / "beta.txt").write_text("Beta notes, revised: the harbour pilot guides tankers at night.\n")
    (corpus / "photo.png").unlink()
    third = run("ingest", str(corpus), "--knowledge", "Field notes")
    assert third.returncode == 0 and "0 added, 1 updated, 2 unchanged, 0 failed" in third.stdout
    assert "harbour" in query(client, admin["headers"], kb.id, "harbour pilot tankers")[0]
    assert not any("lighthouse" in (f.content or "") for f in File.select())  # the old version is gone
    assert run("check").returncode == 0


def test_reindex_and_check_find_and_repair_drift(run, client, admin, corpus, data_dir):
    assert run("ingest", str(corpus / "sub"), str(corpus / "alpha.md"), "--knowledge", "K").returncode == 0
    index_dir = os.path.join(data_dir, "vector_db")
    kb = Knowledge.get(Knowledge.name == "K")
    file_id = File.get(File.filename == "alpha.md").id
    ok = run("check")
    assert ok.returncode == 0 and "ok: 3 collection(s)" in ok.stdout

    shutil.rmtree(os.path.join(index_dir, kb.id))
    shutil.copytree(os.path.join(index_dir, f"file-{file_id}"), os.path.join(index_dir, "file-gone"))
    for segment in glob.glob(os.path.join(index_dir, f"file-{file_id}", "seg-*")):
        with open(segment, "r+b") as handle:
            handle.truncate(40)  # a half-written segment
    drift = run("check")
    assert drift.returncode == 3
    assert kb.id not in drift.stdout  # a missing directory is not cached here: built on first use
    assert f"drift: file-{file_id}: index file unreadable" in drift.stdout
    assert "drift: file-gone: index file for a collection that does not exist" in drift.stdout

    fixed = run("reindex")
    assert fixed.returncode == 0
    assert "rebuilt 3 collection(s)" in fixed.stdout and "removed 1 stray" in fixed.stdout
    assert "reindex [" in fixed.stderr
    assert run("check").returncode == 0
    assert "alpaca" in query(client, admin["headers"], kb.id, "alpaca plateau")[0]


@pytest.mark.sqlite_only
def test_check_sees_a_drifted_bm25_index_and_reindex_rebuilds_it(run, client, admin, corpus):
    from webui_api import db

    assert run("ingest", str(corpus / "alpha.md"), "--knowledge", "K").returncode == 0
    db.database.execute_sql(f"INSERT INTO {db.CHUNK_FTS}({db.CHUNK_FTS}) VALUES ('delete-all')")
    drift = run("check")
    assert drift.returncode == 3 and "drift: BM25 index: does not match the chunk rows" in drift.stdout
    fixed = run("reindex")
    assert fixed.returncode == 0 and "BM25 index rebuilt" in fixed.stdout
    assert run("check").returncode == 0


def test_check_sees_orphaned_vectors_and_reindex_of_one_collection(run, app, admin, corpus):
    assert run("ingest", str(corpus / "alpha.md"), "--knowledge", "K").returncode == 0
    kb = Knowledge.get(Knowledge.name == "K")
    vectors = app.extensions["webui_api"].vectors
    vectors.add(kb.id, [999_999], np.ones((1, 64), dtype=np.float32) / 8.0)  # a vector of no chunk
    drift = run("check")
    assert drift.returncode == 3 and f"drift: {kb.id}: 1 orphaned vector(s) in the index" in drift.stdout
    assert run("reindex", "--collection", "K").returncode == 0  # a name, as ingest takes
    assert 999_999 not in vectors.ids(kb.id)
    assert run("check").returncode == 0
    assert run("reindex", "--collection", kb.id).returncode == 0  # or an id
    one_line_error(run("reindex", "--collection", "no-such"), "no collection 'no-such'")


def test_check_repair_and_compact(run, app, admin, corpus, data_dir):
    assert run("ingest", str(corpus / "alpha.md"), str(corpus / "sub"), "--knowledge", "K").returncode == 0
    kb = Knowledge.get(Knowledge.name == "K")
    vectors = app.extensions["webui_api"].vectors
    before = vectors.ids(kb.id)
    for segment in glob.glob(os.path.join(data_dir, "vector_db", kb.id, "seg-*")):
        with open(segment, "r+b") as handle:
            handle.truncate(40)  # a half-written segment
    repaired = run("check", "--repair")
    assert repaired.returncode == 0 and "repaired:" in repaired.stdout and run("check").returncode == 0
    vectors.remove(kb.id, sorted(before)[:1])  # a tombstone on top of the rebuilt segment
    assert vectors.segment_counts(kb.id) == (1, 1)
    compacted = run("compact")
    assert compacted.returncode == 0 and "compacted 1 collection(s)" in compacted.stdout
    assert vectors.segment_counts(kb.id) == (1, 0) and vectors.ids(kb.id) == before - {min(before)}


def left_processing(app, admin, text: str, lease_owner: str, expires_in: float) -> File:
    """A file its host left 'processing' under a lease of `lease_owner`, expiring in `expires_in` s."""
    import io
    import time

    from webui_api.db import ProcessingLease
    from webui_api.rag import files, pipeline

    file, _ = files.upload(app.extensions["webui_api"], User.get_by_id(admin["id"]), io.BytesIO(text.encode()),
                           "notes.txt", "text/plain", None, process=False)
    pipeline.set_status(file.id, "processing")
    ProcessingLease.insert(file=file.id, owner=lease_owner, expires_at=time.time() + expires_in).execute()
    return file


def test_check_finishes_a_file_whose_host_died(run, app, admin):
    """A file left 'processing' under the expired lease of a host that never returns: `check` on this
    host takes it over, finishes it and ends clean; a file a live host holds is left to that host."""
    from webui_api.db import ProcessingLease

    abandoned = left_processing(app, admin, "The otter dives for mussels.", "gone-host~0~0/4242/cafe", -5)
    held = left_processing(app, admin, "Kelp sways in the swell.", "live-host~0~0/4343/beef", 3600)
    result = run("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"file {abandoned.id}: was left 'processing' by a stopped process; processed here" in result.stdout
    assert File.get_by_id(abandoned.id).status == "completed"
    assert ProcessingLease.get_or_none(ProcessingLease.file == abandoned.id) is None
    assert File.get_by_id(held.id).status == "processing"  # its live host will finish it


def test_ingest_counts_bytes_already_uploaded_over_http_as_unchanged(run, client, admin, corpus):
    """The same bytes uploaded through the API first: ingest links them, and never calls them "added"."""
    import io

    uploaded = client.post("/api/v1/files/", headers=admin["headers"],
                           data={"file": (io.BytesIO((corpus / "beta.txt").read_bytes()), "beta.txt")})
    assert uploaded.status_code == 200
    first, again = (run("ingest", str(corpus / "beta.txt"), str(corpus / "alpha.md"), "--knowledge", "K")
                    for _ in range(2))
    assert first.stdout.startswith("1 added, 0 updated, 1 unchanged, 0 failed"), first.stdout + first.stderr
    assert again.stdout.startswith("0 added, 0 updated, 2 unchanged, 0 failed"), again.stdout + again.stderr
    assert File.select().count() == 2


def test_ingest_never_makes_a_second_collection_of_a_name_another_account_uses(run, admin, make_user, corpus):
    assert run("ingest", str(corpus / "alpha.md"), "--knowledge", "Shared").returncode == 0
    other = make_user("user", email="other@example.com")
    refused = run("ingest", str(corpus / "beta.txt"), "--knowledge", "Shared", "--email", other["email"])
    one_line_error(refused, f"the collection 'Shared' belongs to {admin['email']}, not other@example.com")
    assert Knowledge.select().where(Knowledge.name == "Shared").count() == 1
    kb = Knowledge.get(Knowledge.name == "Shared")
    one_line_error(run("ingest", str(corpus / "beta.txt"), "--knowledge", kb.id, "--email", other["email"]),
                   f"other@example.com may not add files to collection {kb.id}")
    by_id = run("ingest", str(corpus / "beta.txt"), "--knowledge", kb.id)  # its owner may, by id too
    assert by_id.returncode == 0 and f"(knowledge {kb.id!r}: {kb.id})" in by_id.stdout


def test_reindex_refuses_an_ambiguous_name(run, client, admin, make_user, corpus):
    assert run("ingest", str(corpus / "alpha.md"), "--knowledge", "K").returncode == 0
    other = make_user("user")
    assert client.post("/api/v1/knowledge/create", headers=other["headers"],
                       json={"name": "K", "description": ""}).status_code == 200
    one_line_error(run("reindex", "--collection", "K"), "2 collections are named 'K'; give one of their ids")
    one_line_error(run("compact", "--collection", "K"), "2 collections are named 'K'")


def test_a_file_kept_as_failed_is_explained_in_sentences_for_the_command_line(run, make_backend, fake_backend,
                                                                              admin, corpus):
    port = fake_backend.port
    fake_backend.stop()  # the embedding backend is down: the file is kept as 'failed'
    failed = run("ingest", str(corpus / "alpha.md"))
    assert failed.returncode == 1 and "0 added, 0 updated, 0 unchanged, 1 failed" in failed.stdout
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith(f"webui-api: failed: {corpus / 'alpha.md'}: ")
    assert re.search(r"[a-z]\. The file was kept as [\w-]+ with status 'failed'; run the same command again "
                     r"once the embedding backend is back\.$", line), line
    assert "POST /api" not in line
    make_backend(port=port)  # back, where it was
    retried = run("ingest", str(corpus / "alpha.md"))
    assert retried.returncode == 0 and "1 added, 0 updated, 0 unchanged, 0 failed" in retried.stdout
