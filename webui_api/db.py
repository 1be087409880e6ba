"""SQLite persistence with peewee: one deferred database, every table, schema versioning."""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid

import peewee as pw
from playhouse.sqlite_ext import AutoIncrementField

from .config import DEFAULT_BM25_TOKENIZER

# Bound by create_app (or a test) through `init_database`; peewee keeps one connection per thread.
database = pw.SqliteDatabase(None)

SCHEMA_VERSION = 6

WAL_SWITCH_SECONDS = 30.0  # how long start-up retries the switch to WAL while another process holds a lock
_PRAGMAS = {  # every new connection; WAL is a property of the file, set once by init_database
    "busy_timeout": 30000,      # ms: wait for the write lock instead of failing with "database is locked"
    "foreign_keys": 1,
    "synchronous": "normal",    # durable at each WAL checkpoint; recommended with WAL
    "cache_size": -16000,
}


def now() -> int:
    return int(time.time())


def new_id() -> str:
    return str(uuid.uuid4())


class JSONField(pw.TextField):
    """A JSON document stored as text."""

    def db_value(self, value):
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def python_value(self, value):
        return None if value is None else json.loads(value)


class BaseModel(pw.Model):
    class Meta:
        database = database


class User(BaseModel):
    id = pw.CharField(primary_key=True, default=new_id)
    email = pw.CharField(unique=True)
    name = pw.CharField()
    role = pw.CharField(default="pending")
    password_hash = pw.CharField()
    profile_image_url = pw.CharField(null=True)
    # JWTs issued before this instant are refused (password change, admin reset).
    tokens_valid_after = pw.FloatField(default=0.0)
    last_active_at = pw.IntegerField(default=now)
    created_at = pw.IntegerField(default=now)
    updated_at = pw.IntegerField(default=now)

    class Meta:
        table_name = "user"


class ApiKey(BaseModel):
    """One key per user, stored only as a SHA-256 hash (keys are 128-bit random, so no KDF is needed)."""

    user = pw.ForeignKeyField(User, primary_key=True, on_delete="CASCADE", backref="api_key")
    key_hash = pw.CharField(unique=True)
    masked = pw.CharField()
    created_at = pw.IntegerField(default=now)
    last_used_at = pw.IntegerField(null=True)

    class Meta:
        table_name = "api_key"


class RevokedToken(BaseModel):
    jti = pw.CharField(primary_key=True)
    expires_at = pw.IntegerField(null=True, index=True)

    class Meta:
        table_name = "revoked_token"


class SigninAttempt(BaseModel):
    email = pw.CharField(index=True)
    at = pw.FloatField(index=True)

    class Meta:
        table_name = "signin_attempt"


class Preset(BaseModel):
    """A workspace model: a base model plus name, system prompt, params and knowledge."""

    id = pw.CharField(primary_key=True)
    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="presets")
    base_model_id = pw.CharField(null=True)
    name = pw.CharField()
    meta = JSONField(default=dict)
    params = JSONField(default=dict)
    is_public = pw.BooleanField(default=False)
    is_active = pw.BooleanField(default=True)
    created_at = pw.IntegerField(default=now)
    updated_at = pw.IntegerField(default=now)

    class Meta:
        table_name = "preset"


class File(BaseModel):
    id = pw.CharField(primary_key=True, default=new_id)
    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="files")
    filename = pw.CharField()
    storage_name = pw.CharField()             # server-generated name under UPLOAD_DIR
    content_type = pw.CharField(default="application/octet-stream")
    size = pw.IntegerField(default=0)
    file_hash = pw.CharField(index=True)      # sha256 of the uploaded bytes
    text_hash = pw.CharField(null=True)       # sha256 of the extracted text
    content = pw.TextField(null=True)         # extracted text
    status = pw.CharField(default="pending")  # pending | processing | completed | failed
    error = pw.TextField(null=True)
    meta = JSONField(default=dict)            # client metadata form field
    created_at = pw.IntegerField(default=now)
    updated_at = pw.IntegerField(default=now)

    class Meta:
        table_name = "file"
        indexes = ((("user", "file_hash"), False),)


class Chunk(BaseModel):
    """A piece of a file's text with its embedding: the source of truth every FAISS index is rebuilt from."""

    id = AutoIncrementField()                  # the FAISS id; never reused, so a stale vector cannot alias
    file = pw.ForeignKeyField(File, on_delete="CASCADE", backref="chunks")
    seq = pw.IntegerField()
    text = pw.TextField()
    start = pw.IntegerField()
    end = pw.IntegerField()
    vector = pw.BlobField()                    # float32, L2-normalised
    dim = pw.IntegerField()
    model = pw.CharField()

    class Meta:
        table_name = "chunk"
        # (file, dim) covers the start-up check's per-collection counts: no page holding a blob is read
        indexes = ((("file", "seq"), True), (("file", "dim"), False))


class Knowledge(BaseModel):
    id = pw.CharField(primary_key=True, default=new_id)
    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="knowledge")
    name = pw.CharField()
    description = pw.TextField(default="")
    meta = JSONField(null=True)
    is_public = pw.BooleanField(default=False)
    created_at = pw.IntegerField(default=now)
    updated_at = pw.IntegerField(default=now)

    class Meta:
        table_name = "knowledge"


class KnowledgeFile(BaseModel):
    knowledge = pw.ForeignKeyField(Knowledge, on_delete="CASCADE", backref="links")
    file = pw.ForeignKeyField(File, on_delete="CASCADE", backref="links")
    created_at = pw.IntegerField(default=now)

    class Meta:
        table_name = "knowledge_file"
        indexes = ((("knowledge", "file"), True),)


class ChangeStamp(BaseModel):
    """A counter per cached concept, bumped in the same transaction as every change to it (by triggers)."""

    name = pw.CharField(primary_key=True)
    value = pw.IntegerField(default=0)

    class Meta:
        table_name = "change_stamp"


TABLES = [User, ApiKey, RevokedToken, SigninAttempt, Preset, File, Chunk, Knowledge, KnowledgeFile,
          ChangeStamp]

# What bumps which stamp. Triggers rather than calls in Python: no writer (CLI, another host, a future
# route) can forget one, and the bump commits or rolls back with the change itself. A user's
# last_active_at is not listed, so activity tracking does not empty the caches.
_BUMP = "UPDATE change_stamp SET value = value + 1 WHERE name IN ({names})"
STAMP_TRIGGERS = {
    "user_ins": ('AFTER INSERT ON "user"', ("auth",)),
    "user_upd": ('AFTER UPDATE OF email, name, role, password_hash, tokens_valid_after, profile_image_url '
                 'ON "user"', ("auth",)),
    "user_del": ('AFTER DELETE ON "user"', ("auth", "presets")),  # presets go with their owner
    "api_key_ins": ("AFTER INSERT ON api_key", ("auth",)),
    "api_key_upd": ("AFTER UPDATE ON api_key", ("auth",)),
    "api_key_del": ("AFTER DELETE ON api_key", ("auth",)),
    "revoked_ins": ("AFTER INSERT ON revoked_token", ("auth",)),
    "preset_ins": ("AFTER INSERT ON preset", ("presets",)),
    "preset_upd": ("AFTER UPDATE ON preset", ("presets",)),
    "preset_del": ("AFTER DELETE ON preset", ("presets",)),
}
STAMPS = ("auth", "presets", "models")


def _add_change_stamps(db: pw.SqliteDatabase) -> None:
    db.execute_sql("CREATE TABLE IF NOT EXISTS change_stamp (name VARCHAR(255) NOT NULL PRIMARY KEY, "
                   "value INTEGER NOT NULL DEFAULT 0)")
    for name in STAMPS:
        db.execute_sql("INSERT OR IGNORE INTO change_stamp (name, value) VALUES (?, 0)", (name,))
    for trigger, (when, names) in STAMP_TRIGGERS.items():
        bump = _BUMP.format(names=", ".join(f"'{n}'" for n in names))
        db.execute_sql(f"CREATE TRIGGER IF NOT EXISTS stamp_{trigger} {when} BEGIN {bump}; END")


# Migrations: MIGRATIONS[n] upgrades a database at version n-1 to version n. Version 1 is the tables above.
MIGRATIONS: dict[int, callable] = {
    2: _add_change_stamps,
    # chunk (file_id, dim): start-up counts each collection's vectors without reading a blob
    4: lambda database: database.execute_sql(
        'CREATE INDEX IF NOT EXISTS "chunk_file_id_dim" ON "chunk" ("file_id", "dim")'),
}

# The lexical (BM25) index of chunk text. External content: the text lives only in `chunk`; triggers keep the
# index in the transaction that writes the rows (cascaded deletes included), so it can always be rebuilt.
CHUNK_FTS = "chunk_fts"


def create_chunk_fts(database, tokenizer: str = DEFAULT_BM25_TOKENIZER) -> None:
    """(Re)create the FTS5 table over chunk.text with `tokenizer` and index every existing chunk."""
    quoted = tokenizer.replace("'", "''")
    for statement in (
            f"DROP TABLE IF EXISTS {CHUNK_FTS}",
            f"CREATE VIRTUAL TABLE {CHUNK_FTS} USING fts5(text, content='chunk', content_rowid='id', "
            f"tokenize='{quoted}')",
            f"CREATE TRIGGER IF NOT EXISTS {CHUNK_FTS}_insert AFTER INSERT ON chunk BEGIN "
            f"INSERT INTO {CHUNK_FTS}(rowid, text) VALUES (new.id, new.text); END",
            f"CREATE TRIGGER IF NOT EXISTS {CHUNK_FTS}_delete AFTER DELETE ON chunk BEGIN "
            f"INSERT INTO {CHUNK_FTS}({CHUNK_FTS}, rowid, text) VALUES ('delete', old.id, old.text); END",
            f"CREATE TRIGGER IF NOT EXISTS {CHUNK_FTS}_update AFTER UPDATE OF text ON chunk BEGIN "
            f"INSERT INTO {CHUNK_FTS}({CHUNK_FTS}, rowid, text) VALUES ('delete', old.id, old.text); "
            f"INSERT INTO {CHUNK_FTS}(rowid, text) VALUES (new.id, new.text); END",
            f"INSERT INTO {CHUNK_FTS}({CHUNK_FTS}) VALUES ('rebuild')"):
        database.execute_sql(statement)


MIGRATIONS[3] = create_chunk_fts


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


def init_database(path: str) -> pw.SqliteDatabase:
    """Bind the deferred database to `path`, create tables and run pending migrations."""
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        _use_wal(path)
    database.init(path, pragmas=_PRAGMAS, check_same_thread=False)
    with database.connection_context():
        migrate()
    return database


def migrate() -> int:
    """Create missing tables and bring PRAGMA user_version up to SCHEMA_VERSION; safe when workers race."""
    with database.atomic("IMMEDIATE"):  # one worker migrates at a time; the others wait on busy_timeout
        version = database.execute_sql("PRAGMA user_version").fetchone()[0]
        if version == 0:
            database.create_tables(TABLES, safe=True)
            version = 1
        for target in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[target](database)
            version = target
        database.execute_sql(f"PRAGMA user_version = {int(version)}")
    return version


def write_transaction():
    """A transaction that takes the write lock up front, so concurrent writers queue instead of failing."""
    return database.atomic("IMMEDIATE")


# --- change stamps: per-worker caches that every worker and host drops at once ----------------------

def read_stamp(name: str) -> int:
    """The stamp's current value: one indexed read on the raw connection (~0.01 ms, no ORM)."""
    row = database.connection().execute("SELECT value FROM change_stamp WHERE name = ?", (name,)).fetchone()
    return row[0] if row else 0


def bump_stamp(name: str) -> None:
    """Tell every worker that what `name` covers changed outside the tables the triggers watch."""
    database.execute_sql("UPDATE change_stamp SET value = value + 1 WHERE name = ?", (name,))


class StampedCache:
    """Values loaded from the database, kept per worker until the stamp `name` changes. Each lookup reads
    the stamp, so a change committed by any worker or host is seen by the very next request."""

    MAX_ENTRIES = 10_000  # a flood of distinct keys empties the cache instead of growing it

    def __init__(self, name: str):
        self.name = name
        self._seen: tuple | None = None
        self._values: dict = {}
        self._lock = threading.Lock()

    def get(self, key, load, values: dict | None = None):
        """The cached value for `key`, else load() it. `values`: a generation from current(), so that
        several lookups for one request cost one stamp read."""
        values = self.current() if values is None else values
        try:
            return values[key]
        except KeyError:
            value = load()  # stored in this generation only: a change meanwhile starts a new one
            if len(values) >= self.MAX_ENTRIES:
                values.clear()
            values[key] = value
            return value

    def current(self) -> dict:
        stamp = (database.database, read_stamp(self.name))  # the path too: tests rebind the database
        with self._lock:
            if stamp != self._seen:
                self._seen, self._values = stamp, {}
            return self._values


# --- processing leases: which process, on any host, is working on a file (issue 10) ----------------

class ProcessingLease(BaseModel):
    """A file's processing claim: held by `owner` until `expires_at` (epoch seconds), renewed while it works."""

    file = pw.ForeignKeyField(File, primary_key=True, on_delete="CASCADE", backref="lease")
    owner = pw.CharField()
    expires_at = pw.DoubleField(index=True)  # not FloatField: PostgreSQL's REAL keeps ~7 digits of epoch time

    class Meta:
        table_name = "processing_lease"


def _add_processing_lease(database) -> None:
    database.create_tables([ProcessingLease], safe=True)
    # every worker of every host looks up the unsettled files each half lease period
    database.execute_sql('CREATE INDEX IF NOT EXISTS "file_status" ON "file" ("status")')


MIGRATIONS[6] = _add_processing_lease
MIGRATIONS.setdefault(5, lambda database: None)  # PLACEHOLDER until merge: 5 belongs to another slice
