"""SQLite set-up: WAL, foreign keys, schema version, and concurrent writers from several processes."""
import multiprocessing
import sqlite3
import threading

import pytest

from webui_api import db


@pytest.mark.sqlite_only
def test_pragmas_and_schema_version(app):
    assert db.database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.database.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.database.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert db.schema_version() == db.SCHEMA_VERSION
    assert set(db.database.get_tables()) >= {m._meta.table_name for m in db.TABLES}


@pytest.mark.sqlite_only
def test_a_new_file_locked_by_another_process_is_waited_for(tmp_path):
    """A worker booting while another connection holds a write lock on a new (not yet WAL) file used to die
    at once with "database is locked": switching to WAL does not wait on busy_timeout."""
    path = str(tmp_path / "webui.db")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE held (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO held VALUES (1)")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        db.init_database(f"sqlite:///{path}")
        assert db.database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.database.execute_sql("SELECT count(*) FROM held").fetchone()[0] == 1
    finally:
        release.join()
        holder.close()
        db.database.close()


def test_migrate_is_idempotent_and_keeps_rows(app, admin):
    assert db.migrate() == db.SCHEMA_VERSION
    assert db.User.select().count() == 1


def _hammer(path, worker, count, errors):
    db.init_database(f"sqlite:///{path}")
    try:
        for i in range(count):
            with db.write_transaction():
                db.SigninAttempt.create(email=f"w{worker}", at=float(i))
                db.SigninAttempt.select().count()
    except Exception as exc:  # report, the parent asserts
        errors.put(repr(exc))


@pytest.mark.sqlite_only
def test_concurrent_writers_never_see_database_locked(tmp_path):
    path = str(tmp_path / "webui.db")
    db.init_database(f"sqlite:///{path}")
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(path, w, 200, errors)) for w in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert errors.empty(), errors.get()
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM signin_attempt").fetchone()[0] == 1200


def test_chunk_ids_are_never_reused(app, admin):
    owner = db.User.get_by_id(admin["id"])
    file = db.File.create(user=owner, filename="a.txt", storage_name="x", file_hash="h")
    first = db.Chunk.create(file=file, seq=0, text="t", start=0, end=1, vector=b"", dim=0, model="m")
    first.delete_instance()
    second = db.Chunk.create(file=file, seq=0, text="t", start=0, end=1, vector=b"", dim=0, model="m")
    assert second.id > first.id
