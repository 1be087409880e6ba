"""SQLite persistence with peewee: one deferred database, every table, schema versioning."""
from __future__ import annotations

import json
import os
import time
import uuid

import peewee as pw
from playhouse.sqlite_ext import AutoIncrementField

# Bound by create_app (or a test) through `init_database`; peewee keeps one connection per thread.
database = pw.SqliteDatabase(None)

SCHEMA_VERSION = 2

_PRAGMAS = {
    "journal_mode": "wal",      # readers never block the writer; safe across gunicorn workers
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
    storage_name = pw.CharField()             # server-generated name under DATA_DIR/uploads
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


TABLES = [User, ApiKey, RevokedToken, SigninAttempt, Preset, File, Chunk, Knowledge, KnowledgeFile]

# Migrations: MIGRATIONS[n] upgrades a database at version n-1 to version n. Version 1 is the tables above.
MIGRATIONS: dict[int, callable] = {
    2: lambda database: database.execute_sql(
        'CREATE INDEX IF NOT EXISTS "chunk_file_id_dim" ON "chunk" ("file_id", "dim")'),
}


def init_database(path: str) -> pw.SqliteDatabase:
    """Bind the deferred database to `path`, create tables and run pending migrations."""
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
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
