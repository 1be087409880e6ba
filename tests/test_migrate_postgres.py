"""`webui-api migrate-to-postgres`: a deployment built through the app on SQLite, copied by the real command
into PostgreSQL, then served by gunicorn from there: same sessions, keys, files, chunks and search hits."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess

import peewee as pw
import pytest
import requests

from webui_api import cli, db
from webui_api.db import BaseModel, Chunk, File, Text, User

from .rag_helpers import _drain_background, rag_settings, upload_ok  # noqa: F401  (fixture)
from .servers import BIN, Gunicorn
from .test_files import ZEPHYR

HARBOR = b"Harbor log.\n\nThe ferry to Kestrel Island leaves at dawn from pier nine.\n"


@pytest.fixture
def database_settings():
    """The source of a migration is SQLite whatever engine the suite runs on (postgres_url: conftest.py)."""
    return {}


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend)  # the key is generated into DATA_DIR, as on most single hosts


@pytest.fixture
def source_url(data_dir):
    return f"sqlite:///{data_dir}/webui.db"


def migrate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "webui-api"), "migrate-to-postgres", *args], capture_output=True,
                          text=True, timeout=300)


def target_query(url: str, sql: str):
    import psycopg2

    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:  # commits on success
            cursor.execute(sql)
            return cursor.fetchall() if cursor.description else None
    finally:
        connection.close()


def collection_query(base, headers, names, text):
    body = {"collection_names": names, "query": text, "k": 3}
    if callable(base):
        return base("/api/v1/retrieval/query/collection", headers=headers, json=body).get_json()
    return requests.post(f"{base}/api/v1/retrieval/query/collection", headers=headers, json=body,
                         timeout=30).json()


@pytest.fixture
def deployment(client, admin, user, api_key_headers, data_dir):
    """A small real deployment: two processed files (a third deleted), a collection, an API key, a preset,
    a signed-out session and a failed sign-in; one legacy NUL character put in the file directly."""
    zephyr = upload_ok(client, user["headers"], "zephyr.txt", ZEPHYR)
    harbor = upload_ok(client, user["headers"], "harbor.txt", HARBOR)
    kb = client.post("/api/v1/knowledge/create", headers=user["headers"],
                     json={"name": "Travel", "description": "Notes"}).get_json()
    for file in (zephyr, harbor):
        added = client.post(f"/api/v1/knowledge/{kb['id']}/file/add", headers=user["headers"],
                            json={"file_id": file["id"]})
        assert added.status_code == 200, added.get_json()
    preset = client.post("/api/v1/models/create", headers=user["headers"], json={
        "id": "travel-bot", "base_model_id": "llama3.2:latest", "name": "Travel Bot",
        "meta": {"knowledge": [{"type": "collection", "id": kb["id"]}]}, "params": {"temperature": 0.2}})
    assert preset.status_code == 200, preset.get_json()
    signed_out = client.post("/api/v1/auths/signin", json={"email": user["email"], "password": user["password"]})
    revoked = {"Authorization": f"Bearer {signed_out.get_json()['token']}"}
    assert client.post("/api/v1/auths/signout", headers=revoked).status_code == 200
    assert client.post("/api/v1/auths/signin", json={"email": user["email"], "password": "wrong"}).status_code == 400
    doomed = upload_ok(client, user["headers"], "doomed.txt", b"Gone soon: the newest chunk ids leave with it.")
    assert client.delete(f"/api/v1/files/{doomed['id']}", headers=user["headers"]).status_code == 200
    with sqlite3.connect(os.path.join(data_dir, "webui.db")) as connection:  # as an older version wrote it
        connection.execute('UPDATE "user" SET name = ? WHERE id = ?', ("Ada\x00Admin", admin["id"]))
    return {"zephyr": zephyr, "harbor": harbor, "kb": kb, "key": api_key_headers(user), "revoked": revoked,
            "hits": collection_query(client.post, user["headers"], [kb["id"]], "ferry at dawn")}


def test_migrated_deployment_serves_the_same_data_from_postgres(deployment, user, admin, data_dir, tmp_path,
                                                               source_url, postgres_url, fake_backend):
    result = migrate("--from", source_url, "--to", postgres_url)
    assert result.returncode == 0, result.stderr
    assert "MISMATCH" not in result.stdout and "chunk (id, sha256(vector))" in result.stdout
    assert "copy chunk [" in result.stderr  # the progress bar, per table
    counts = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.endswith(" ok")}
    for table in ("api_key", "revoked_token", "signin_attempt", "preset", "knowledge"):
        assert counts[table] == ["1", "1", "ok"], result.stdout
    assert counts["knowledge_file"] == ["2", "2", "ok"]
    source_ids = [row[0] for row in sqlite3.connect(source_url[len("sqlite:///"):]).execute(
        "SELECT id FROM chunk ORDER BY id")]
    assert [row[0] for row in target_query(postgres_url, "SELECT id FROM chunk ORDER BY id")] == source_ids

    host_dir = tmp_path / "pg-host"  # an empty cache: every vector must come from the database
    shutil.copytree(os.path.join(data_dir, "uploads"), host_dir / "uploads")
    secret = open(os.path.join(data_dir, ".webui_secret_key")).read().strip()  # as the docs tell operators
    env = {**rag_settings(fake_backend), "DATA_DIR": str(host_dir), "DATABASE_URL": postgres_url,
           "WEBUI_SECRET_KEY": secret}
    with Gunicorn(env, workers=1, threads=2) as host:
        def get(path, headers):
            return requests.get(host.url + path, headers=headers, timeout=30)

        me = get("/api/v1/auths/", user["headers"])  # a JWT issued by the SQLite deployment
        assert me.status_code == 200 and me.json()["email"] == user["email"]
        assert get("/api/v1/auths/", deployment["key"]).json()["id"] == user["id"]
        assert get("/api/v1/auths/", deployment["revoked"]).status_code == 401
        assert get("/api/v1/auths/", admin["headers"]).json()["name"] == "Ada\ufffdAdmin"
        zephyr = deployment["zephyr"]["id"]
        assert "7-alpha-9" in get(f"/api/v1/files/{zephyr}/data/content", user["headers"]).json()["content"]
        assert get(f"/api/v1/files/{zephyr}/content", user["headers"]).content == ZEPHYR
        kb = get(f"/api/v1/knowledge/{deployment['kb']['id']}", user["headers"]).json()
        assert sorted(f["id"] for f in kb["files"]) == sorted([zephyr, deployment["harbor"]["id"]])
        preset = get("/api/v1/models/model?id=travel-bot", user["headers"]).json()
        assert preset["params"] == {"temperature": 0.2} and preset["is_active"] is True
        assert collection_query(host.url, user["headers"], [kb["id"]], "ferry at dawn") == deployment["hits"]

        fresh = requests.post(f"{host.url}/api/v1/files/", headers=user["headers"], timeout=60,
                              files={"file": ("new.txt", b"Fresh notes about the glacier.\n", "text/plain")})
        assert fresh.status_code == 200, fresh.text
    new_ids = target_query(postgres_url, f"SELECT id FROM chunk WHERE file_id = '{fresh.json()['id']}'")
    highest_ever = sqlite3.connect(source_url[len("sqlite:///"):]).execute(
        "SELECT seq FROM sqlite_sequence WHERE name = 'chunk'").fetchone()[0]
    assert highest_ever > max(source_ids)  # the deleted file's chunks had the newest ids
    assert new_ids and min(row[0] for row in new_ids) > highest_ever  # the sequence went on past them


def test_refuses_a_used_target_and_verify_only_catches_a_missing_chunk(client, user, source_url, postgres_url):
    upload_ok(client, user["headers"], "zephyr.txt", ZEPHYR)
    assert migrate("--from", source_url, "--to", postgres_url).returncode == 0
    ok = migrate("--from", source_url, "--to", postgres_url, "--verify-only")
    assert ok.returncode == 0 and "MISMATCH" not in ok.stdout and "copied" not in ok.stdout

    again = migrate("--from", source_url, "--to", postgres_url)
    assert again.returncode == 1 and again.stderr.strip().count("\n") == 0
    assert again.stderr.startswith("webui-api: error: the target database already holds data (user")

    target_query(postgres_url, "DELETE FROM chunk WHERE id = (SELECT max(id) FROM chunk)")
    caught = migrate("--from", source_url, "--to", postgres_url, "--verify-only")
    assert caught.returncode == 3 and "verification failed: chunk, chunk id sum" in caught.stderr
    mismatched = [line.split()[0] for line in caught.stdout.splitlines() if line.endswith("MISMATCH")]
    assert mismatched == ["chunk", "chunk", "chunk"]  # its count, id sum and checksum; nothing else


def test_a_copy_taken_while_the_server_writes_is_one_consistent_snapshot(client, user, source_url,
                                                                          postgres_url):
    for n in range(3):
        upload_ok(client, user["headers"], f"before-{n}.txt", b"Before %d. " % n + ZEPHYR)
    command = [str(BIN / "webui-api"), "migrate-to-postgres", "--from", source_url, "--to", postgres_url,
               "--batch-size", "1"]  # a row per insert: the copy lasts while the uploads below go on
    running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    written = 0
    while running.poll() is None and written < 40:
        upload_ok(client, user["headers"], f"during-{written}.txt", b"During %d. " % written + HARBOR)
        written += 1
    out, err = running.communicate(timeout=300)
    assert running.returncode == 0 and "MISMATCH" not in out, out + err
    copied = target_query(postgres_url, "SELECT count(*), (SELECT count(*) FROM chunk) FROM file")[0]
    source = sqlite3.connect(source_url[len("sqlite:///"):])
    assert copied[0] >= 3 and copied[0] <= source.execute("SELECT count(*) FROM file").fetchone()[0]
    files_without_chunks = target_query(postgres_url, "SELECT count(*) FROM file WHERE status = 'completed' "
                                        "AND NOT EXISTS (SELECT 1 FROM chunk WHERE file_id = file.id)")
    assert files_without_chunks == [(0,)]  # a file and its chunks are copied together or not at all


@pytest.mark.parametrize("args,fragment", [
    (["--from", "sqlite:////nonexistent/webui.db"], "no SQLite database at /nonexistent/webui.db"),
    (["--from", "sqlite:///{empty}"], "empty.db holds no webui_api database"),
    (["--from", "postgresql://x@h/db"], "--from must be sqlite:///"),
    (["--to", "sqlite:///elsewhere.db"], "--to must be postgresql://"),
    (["--skip", "user"], "--skip user: "),
])
def test_bad_arguments_are_one_line_errors(client, admin, source_url, postgres_url, tmp_path, args, fragment):
    (tmp_path / "empty.db").touch()
    given = {"--from": source_url, "--to": postgres_url}
    given.update((name, value.format(empty=tmp_path / "empty.db")) for name, value in zip(args[::2], args[1::2]))
    result = migrate(*[part for pair in given.items() for part in pair])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("webui-api: error: ") and fragment in result.stderr, result.stderr


class ExtraState(BaseModel):
    """Stand-ins for tables other slices add (a trigger-kept collection state and log, a lease on a file)."""
    name = Text(primary_key=True)
    version = pw.BigIntegerField(default=0)

    class Meta:
        table_name = "test_extra_state"


class ExtraLog(BaseModel):
    name = Text()
    version = pw.BigIntegerField()
    chunk_id = pw.BigIntegerField()

    class Meta:
        table_name = "test_extra_log"
        primary_key = pw.CompositeKey("name", "version", "chunk_id")


class ExtraLease(BaseModel):
    file = pw.ForeignKeyField(File, primary_key=True, on_delete="CASCADE")
    held = pw.BooleanField()

    class Meta:
        table_name = "test_extra_lease"


def add_extra_tables(database) -> None:
    database.create_tables([ExtraState, ExtraLog, ExtraLease], safe=True)
    touched = "'file-' || new.file_id"
    for statement in db.dialect.trigger("test_extra_chunk_ins", "AFTER INSERT ON chunk", [
            f"INSERT INTO test_extra_state (name, version) SELECT {touched}, 0 WHERE true "
            "ON CONFLICT (name) DO NOTHING",
            f"UPDATE test_extra_state SET version = version + 1 WHERE name = {touched}",
            "INSERT INTO test_extra_log (name, version, chunk_id) SELECT name, version, new.id "
            f"FROM test_extra_state WHERE name = {touched}"]):
        database.execute_sql(statement)


def test_tables_added_later_are_copied_as_they_are(monkeypatch, tmp_path, postgres_url):
    """Any model in db.TABLES is copied; rows triggers derive arrive once, as on the source, and the
    triggers work again afterwards."""
    version = db.SCHEMA_VERSION + 1
    monkeypatch.setattr(db, "TABLES", [*db.TABLES, ExtraState, ExtraLog, ExtraLease])
    monkeypatch.setattr(db, "SCHEMA_VERSION", version)
    monkeypatch.setitem(db.MIGRATIONS, version, add_extra_tables)
    source_url = f"sqlite:///{tmp_path}/source.db"
    db.init_database(source_url)
    with db.database.connection_context(), db.write_transaction():
        owner = User.create(email="a@example.com", name="A", password_hash="x")
        file = File.create(user=owner, filename="a.txt", storage_name="a", file_hash="h")
        db.insert_rows(Chunk, ["file", "seq", "text", "start", "end", "vector", "dim", "model"],
                       [(file.id, n, "text", 0, 4, bytes(16), 4, "m") for n in range(3)])
        ExtraLease.create(file=file, held=True)
    db.close_database()
    assert cli.main(["migrate-to-postgres", "--from", source_url, "--to", postgres_url]) == cli.EXIT_OK

    assert target_query(postgres_url, "SELECT name, version FROM test_extra_state") == [(f"file-{file.id}", 3)]
    assert target_query(postgres_url, "SELECT held FROM test_extra_lease") == [(True,)]
    target_query(postgres_url, f"INSERT INTO chunk (file_id, seq, text, start, \"end\", vector, dim, model) "
                               f"VALUES ('{file.id}', 9, 'new', 0, 3, '\\x00', 1, 'm')")
    assert target_query(postgres_url, "SELECT version FROM test_extra_state") == [(4,)]
    assert target_query(postgres_url, "SELECT count(*) FROM test_extra_log") == [(4,)]
