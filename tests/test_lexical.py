"""The BM25 index (SQLite FTS5) follows the chunk rows: insert, re-process, delete, roll back, crash, rebuild,
migration of an older database, and a changed tokenizer."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from webui_api import db
from webui_api.errors import ConfigError
from webui_api.rag import lexical

from .rag_helpers import _drain_background, rag_settings, upload_ok  # noqa: F401


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend)


def found(query: str, file_ids) -> set[str]:
    return {file_id for _, file_id, _ in lexical.search(query, file_ids, 10)}


def test_processing_indexes_chunks_with_stemming(client, user):
    file = upload_ok(client, user["headers"], "run.txt", b"The runner runs every morning along the canal.")
    assert found("running", [file["id"]]) == {file["id"]}  # porter: running ~ runs
    assert found("canals", [file["id"]]) == {file["id"]}
    assert found("bicycle", [file["id"]]) == set()
    assert lexical.is_consistent()


def test_search_stays_inside_the_given_files(client, user):
    one = upload_ok(client, user["headers"], "a.txt", b"Turbine blade vibration measured at speed.")
    two = upload_ok(client, user["headers"], "b.txt", b"Turbine inlet temperature limits.")
    assert found("turbine", [one["id"]]) == {one["id"]}
    assert found("turbine", [one["id"], two["id"]]) == {one["id"], two["id"]}
    assert found("turbine", []) == set()


def test_reprocessing_replaces_the_indexed_text(client, user):
    file = upload_ok(client, user["headers"], "memo.txt", b"Apples ripen in autumn.")
    response = client.post("/api/v1/retrieval/process/file", headers=user["headers"],
                           json={"file_id": file["id"], "content": "Cherries ripen in June."})
    assert response.status_code == 200
    assert found("apples", [file["id"]]) == set()
    assert found("cherries", [file["id"]]) == {file["id"]}
    assert lexical.is_consistent()


def test_deleting_a_file_or_its_owner_removes_its_chunks_from_the_index(client, admin, make_user):
    owner = make_user("user")
    kept = upload_ok(client, owner["headers"], "kept.txt", b"Glacier retreat in the Alps.")
    gone = upload_ok(client, owner["headers"], "gone.txt", b"Glacier mass balance in Norway.")
    assert client.delete(f"/api/v1/files/{gone['id']}", headers=owner["headers"]).status_code == 200
    assert found("glacier", [kept["id"], gone["id"]]) == {kept["id"]}
    assert client.delete(f"/api/v1/users/{owner['id']}", headers=admin["headers"]).status_code == 200
    assert found("glacier", [kept["id"]]) == set()  # cascaded deletes go through the trigger too
    assert lexical.is_consistent()


def test_a_rolled_back_write_leaves_no_trace_in_the_index(client, user):
    file = upload_ok(client, user["headers"], "x.txt", b"Original words.")
    with pytest.raises(RuntimeError):
        with db.write_transaction():
            db.Chunk.create(file=file["id"], seq=99, text="phantom zeppelin", start=0, end=1, vector=b"", dim=0,
                            model="m")
            raise RuntimeError("crash before commit")
    assert found("zeppelin", [file["id"]]) == set()
    assert lexical.is_consistent()


def test_a_process_killed_mid_transaction_leaves_index_and_rows_in_step(client, user, app):
    file = upload_ok(client, user["headers"], "x.txt", b"Original words.")
    script = textwrap.dedent(f"""
        import os
        from webui_api import db
        db.init_database({app.extensions["webui_api"].settings.DATABASE_URL!r})
        with db.write_transaction():
            db.Chunk.delete().where(db.Chunk.file == {file['id']!r}).execute()
            db.Chunk.create(file={file['id']!r}, seq=0, text="phantom zeppelin", start=0, end=1, vector=b"",
                            dim=0, model="m")
            os._exit(9)
    """)
    assert subprocess.run([sys.executable, "-c", script], timeout=60).returncode == 9
    assert found("zeppelin", [file["id"]]) == set() and found("original", [file["id"]]) == {file["id"]}
    assert lexical.is_consistent()


@pytest.mark.sqlite_only
def test_a_drifted_index_is_detected_and_rebuilt_from_the_chunk_rows(client, user):
    file = upload_ok(client, user["headers"], "x.txt", b"Supersonic wind tunnel tests.")
    db.database.execute_sql(f"INSERT INTO {db.CHUNK_FTS}({db.CHUNK_FTS}) VALUES ('delete-all')")
    assert not lexical.is_consistent() and found("tunnel", [file["id"]]) == set()
    lexical.rebuild()
    assert lexical.is_consistent() and found("tunnel", [file["id"]]) == {file["id"]}


@pytest.mark.sqlite_only
def test_migrating_an_older_database_indexes_its_existing_chunks(client, user):
    file = upload_ok(client, user["headers"], "x.txt", b"Hypersonic boundary layers.")
    for statement in (f"DROP TABLE {db.CHUNK_FTS}", *(f"DROP TRIGGER {db.CHUNK_FTS}_{event}"
                                                      for event in ("insert", "delete", "update")),
                      "UPDATE schema_version SET version = 1"):
        db.database.execute_sql(statement)
    assert db.migrate() == db.SCHEMA_VERSION
    assert found("hypersonic", [file["id"]]) == {file["id"]} and lexical.is_consistent()


@pytest.mark.sqlite_only
def test_changing_the_tokenizer_rebuilds_and_a_bad_one_keeps_the_index(client, user):
    file = upload_ok(client, user["headers"], "run.txt", b"The runner runs every morning.")
    assert lexical.use_tokenizer("unicode61") is True
    assert lexical.tokenizer() == "unicode61"
    assert found("running", [file["id"]]) == set() and found("runs", [file["id"]]) == {file["id"]}
    assert lexical.use_tokenizer("unicode61") is False
    with pytest.raises(ConfigError):
        lexical.use_tokenizer("no_such_tokenizer")
    assert lexical.tokenizer() == "unicode61" and found("runs", [file["id"]]) == {file["id"]}


def test_query_words_become_quoted_terms_without_stopwords():
    assert lexical.match_expression('What is "E-4711" OR NOT x*') == '"e" OR "4711" OR "x"'
    assert lexical.match_expression("the of and") is None
