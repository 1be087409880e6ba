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


@pytest.mark.sqlite_only
def test_each_threads_connection_caches_at_most_sqlite_cache_mb(tmp_path):
    """A worker keeps one SQLite connection per thread for the thread's life: at the old 16 MB page cache
    each, 32 threads could hold 512 MB once the file had grown that far (issue 11, item 14). Eight threads
    each read a 12 MB table through their own connection; SQLite's own allocations grow by about eight times
    SQLITE_CACHE_MB, not by eight times the table."""
    from webui_api.telemetry import _sqlite_memory_used

    path = str(tmp_path / "webui.db")
    db.init_database(f"sqlite:///{path}", sqlite_cache_mb=1)
    db.execute("CREATE TABLE bulk (payload BLOB)")
    with db.write_transaction():
        for _ in range(3000):
            db.execute("INSERT INTO bulk VALUES (randomblob(4000))")
    read, release = threading.Barrier(9), threading.Event()

    def reader():
        assert db.execute("SELECT sum(length(payload)) FROM bulk").fetchone()[0] == 12_000_000
        read.wait()
        release.wait()  # the connection stays open, its cache full, as a gthread worker's thread keeps it
        db.close_thread_connection()

    threads = [threading.Thread(target=reader) for _ in range(8)]
    before = _sqlite_memory_used()
    try:
        for thread in threads:
            thread.start()
        read.wait()
        grown_mb = (_sqlite_memory_used() - before) / 2**20
    finally:
        release.set()
        for thread in threads:
            thread.join()
        db.database.close()
    assert 0 < grown_mb < 8 * 1.5
