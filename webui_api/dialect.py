"""The one seam between the engines: what SQLite and PostgreSQL do differently, and nothing else."""
from __future__ import annotations

import os
import sqlite3
import time
from urllib.parse import unquote, urlsplit

import peewee as pw
from playhouse.pool import PooledPostgresqlDatabase

from .config import POSTGRES_SCHEMES, ConfigError, url_scheme

WAL_SWITCH_SECONDS = 30.0  # how long start-up retries the switch to WAL while another process holds a lock
_SQLITE_PRAGMAS = {  # every new connection; WAL is a property of the file, set once when opening
    "busy_timeout": 30000,      # ms: wait for the write lock instead of failing with "database is locked"
    "foreign_keys": 1,
    "synchronous": "normal",    # durable at each WAL checkpoint; recommended with WAL
}
# The advisory lock every write transaction takes on PostgreSQL: writers queue as they do on SQLite.
_WRITE_LOCK_KEY = 0x77656275  # "webu"


def for_url(url: str) -> "Dialect":
    """The dialect of a DATABASE_URL: sqlite:///path or postgresql://user:pass@host:port/db."""
    scheme = url_scheme(url)
    if scheme == "sqlite":
        return SqliteDialect(url)
    if scheme in POSTGRES_SCHEMES:
        return PostgresDialect(url)
    raise ConfigError("DATABASE_URL must be sqlite:///<path> or postgresql://user:pass@host:port/db")


class Dialect:
    name = ""
    param = "?"
    statement_triggers = False  # FOR EACH STATEMENT triggers with transition tables

    def __init__(self, url: str):
        self.url = url

    def sql(self, statement: str) -> str:
        """A statement written with `?` placeholders, in this driver's style."""
        return statement if self.param == "?" else statement.replace("?", self.param)


class SqliteDialect(Dialect):
    """One file, one writer at a time (BEGIN IMMEDIATE), a connection per thread kept for its life."""

    name = "sqlite"
    unix_now = "CAST(strftime('%s', 'now') AS INTEGER)"

    @property
    def path(self) -> str:
        return self.url[len("sqlite:///"):] if self.url.startswith("sqlite:///") else self._bad()

    def _bad(self):
        raise ConfigError("DATABASE_URL must be sqlite:///<path> (three slashes, then the file's path)")

    def open(self, pool_size: int, cache_mb: float = 2.0) -> pw.Database:
        path = self.path
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            _use_wal(path)
        pragmas = {**_SQLITE_PRAGMAS, "cache_size": -int(cache_mb * 1000)}  # negative: KiB, not pages
        return pw.SqliteDatabase(path, pragmas=pragmas, check_same_thread=False)

    def write_transaction(self, database: pw.Database):
        return database.atomic("IMMEDIATE")

    def connection_per_request(self) -> bool:
        return False  # opening a SQLite connection costs more than keeping one per thread

    def insert_rows(self, database: pw.Database, sql: str, rows: list[tuple]) -> None:
        database.cursor().executemany(sql, rows)

    def any_user(self) -> bool:
        """Read-only and without peewee: the gunicorn master must not hold a connection across fork."""
        path = self.path
        if not os.path.exists(path):
            return False
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        except sqlite3.Error:
            return False
        try:
            return conn.execute('SELECT 1 FROM "user" LIMIT 1').fetchone() is not None
        except sqlite3.Error:  # no table yet: a fresh database
            return False
        finally:
            conn.close()

    def legacy_schema_version(self, database: pw.Database) -> int:
        """Files written before the schema_version table kept their version in PRAGMA user_version."""
        return database.execute_sql("PRAGMA user_version").fetchone()[0]

    def trigger(self, name: str, when: str, statements: list[str]) -> list[str]:
        body = " ".join(f"{s};" for s in statements)
        return [f"CREATE TRIGGER IF NOT EXISTS {name} {when} BEGIN {body} END"]


class PostgresDialect(Dialect):
    """Shared by every host: a pool per worker; write transactions queue on one advisory lock, as they
    queue on SQLite's write lock, so every guarantee the SQLite code relies on holds unchanged."""

    name = "postgres"
    param = "%s"
    statement_triggers = True
    unix_now = "CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)"

    def open(self, pool_size: int, cache_mb: float = 2.0) -> pw.Database:  # cache_mb: the server's own
        parts = urlsplit(self.url)
        if not parts.path.strip("/"):
            raise ConfigError("DATABASE_URL names no database: postgresql://user:pass@host:port/<database>")
        return CheckedPool(
            unquote(parts.path.lstrip("/")), max_connections=pool_size, stale_timeout=300, timeout=30,
            user=unquote(parts.username or "") or None, password=unquote(parts.password or "") or None,
            host=parts.hostname or None, port=parts.port or None, connect_timeout=10,
            keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
            application_name="webui_api")

    def write_transaction(self, database: pw.Database):
        return _LockedTransaction(database, self)

    def take_write_lock(self, database: pw.Database) -> None:
        database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK_KEY,))

    def connection_per_request(self) -> bool:
        return True  # back to the pool after each request: a worker's threads share a few connections

    def insert_rows(self, database: pw.Database, sql: str, rows: list[tuple]) -> None:
        from psycopg2.extras import execute_values
        head, _values = sql.split(" VALUES ", 1)
        execute_values(database.cursor(), f"{head} VALUES %s", rows, page_size=500)

    def any_user(self) -> bool:
        import psycopg2
        try:
            conn = psycopg2.connect(self.url, connect_timeout=5)
        except psycopg2.Error:
            return False
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT to_regclass('public.\"user\"') IS NOT NULL")
                if not cursor.fetchone()[0]:
                    return False
                cursor.execute('SELECT 1 FROM "user" LIMIT 1')
                return cursor.fetchone() is not None
        except psycopg2.Error:
            return False
        finally:
            conn.close()

    def legacy_schema_version(self, database: pw.Database) -> int:
        return 0

    def trigger(self, name: str, when: str, statements: list[str]) -> list[str]:
        """A PL/pgSQL function and a row trigger calling it; `when` as SQLite writes it (AFTER … ON t)."""
        returned = "OLD" if " DELETE " in f" {when} " else "NEW"
        return self._function(name, statements, returned) + [
            f"DROP TRIGGER IF EXISTS {name} ON {when.rsplit(' ON ', 1)[1]}",
            f"CREATE TRIGGER {name} {when} FOR EACH ROW EXECUTE FUNCTION {name}_fn()"]

    def statement_trigger(self, name: str, when: str, transition: str, statements: list[str]) -> list[str]:
        """Once per statement, its rows in the transition table `changed_rows` (`transition`: NEW or OLD)."""
        return self._function(name, statements, "NULL") + [
            f"DROP TRIGGER IF EXISTS {name} ON {when.rsplit(' ON ', 1)[1]}",
            f"CREATE TRIGGER {name} {when} REFERENCING {transition} TABLE AS changed_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}_fn()"]

    @staticmethod
    def _function(name: str, statements: list[str], returned: str) -> list[str]:
        body = " ".join(f"{s};" for s in statements)
        return [f"CREATE OR REPLACE FUNCTION {name}_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"{body} RETURN {returned}; END $$"]


class CheckedPool(PooledPostgresqlDatabase):
    """peewee's pool, plus a ping at check-out: a connection the server closed (restart, failover,
    idle kill) is replaced there instead of failing the request that drew it."""

    def _is_closed(self, conn) -> bool:
        if super()._is_closed(conn):
            return True
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            return False
        except Exception:  # noqa: BLE001 - any failure means the connection is unusable
            return True


class _LockedTransaction:
    """atomic() that takes the write lock first when it opens the outermost transaction."""

    def __init__(self, database: pw.Database, dialect: PostgresDialect):
        self._atomic = database.atomic()
        self._database, self._dialect = database, dialect

    def __enter__(self):
        outermost = self._database.transaction_depth() == 0
        result = self._atomic.__enter__()
        if outermost:
            self._dialect.take_write_lock(self._database)
        return result

    def __exit__(self, *exc):
        return self._atomic.__exit__(*exc)


def _use_wal(path: str) -> None:
    """Switch the file to WAL (readers never block the writer; safe across gunicorn workers). The switch
    does not wait on busy_timeout: a worker booting while another process held a lock on a new file died
    with "database is locked", so retry for a while instead."""
    deadline = time.monotonic() + WAL_SWITCH_SECONDS
    while True:
        connection = sqlite3.connect(path, timeout=WAL_SWITCH_SECONDS)
        try:
            connection.execute("PRAGMA journal_mode=wal").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        finally:
            connection.close()
        time.sleep(0.05)
