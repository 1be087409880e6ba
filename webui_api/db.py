"""Persistence with peewee on SQLite or PostgreSQL: one database proxy, every table, schema versioning."""
from __future__ import annotations

import json
import threading
import time
import uuid

import peewee as pw

from .config import DEFAULT_BM25_TOKENIZER
from .dialect import Dialect, SqliteDialect, for_url

# Bound by create_app (or a test) through `init_database` to SQLite (a connection per thread) or to a
# PostgreSQL pool (a connection per request).
database = pw.DatabaseProxy()
dialect: Dialect = SqliteDialect("sqlite:///:memory:")

SCHEMA_VERSION = 10


def now() -> int:
    return int(time.time())


def new_id() -> str:
    return str(uuid.uuid4())


class Text(pw.TextField):
    """Text without length limit (VARCHAR(255) would fail on PostgreSQL where SQLite stores anything).
    NUL becomes U+FFFD on both engines: PostgreSQL text cannot hold it, and both must store the same."""

    def db_value(self, value):
        value = super().db_value(value)
        return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


class ChunkIdField(pw.BigAutoField):
    """64-bit ids never reused (SQLite: AUTOINCREMENT; PostgreSQL: a sequence), so a stale vector in an
    index cannot alias a newer chunk."""

    def ddl(self, ctx):
        nodes = super().ddl(ctx)
        return pw.NodeList((nodes, pw.SQL("AUTOINCREMENT"))) if dialect.name == "sqlite" else nodes


class JSONField(Text):
    """A JSON document stored as text."""

    def db_value(self, value):
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def python_value(self, value):
        return None if value is None else json.loads(value)


class BaseModel(pw.Model):
    class Meta:
        database = database


class User(BaseModel):
    id = Text(primary_key=True, default=new_id)
    email = Text(unique=True)
    name = Text()
    role = Text(default="pending")
    password_hash = Text()
    profile_image_url = Text(null=True)
    # JWTs issued before this instant are refused (password change, admin reset).
    tokens_valid_after = pw.DoubleField(default=0.0)
    last_active_at = pw.IntegerField(default=now)
    created_at = pw.IntegerField(default=now)
    updated_at = pw.IntegerField(default=now)

    class Meta:
        table_name = "user"


class ApiKey(BaseModel):
    """A user's API key, stored only as a SHA-256 hash (keys are 128-bit random, so no KDF is needed). Each
    user has at most one default key (Open WebUI's /auths/api_key routes) and any number of named keys, each
    optionally expiring, limited to models and endpoints, and rate-limited (issue 12)."""

    id = Text(primary_key=True, default=new_id)
    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="api_keys", index=True)
    is_default = pw.BooleanField(default=False)
    name = Text(null=True)                        # NULL on the default key
    key_hash = Text(unique=True)
    masked = Text()                               # sk-1234...abcd: how lists show the key
    expires_at = pw.BigIntegerField(null=True)    # epoch seconds; NULL never expires
    allowed_models = JSONField(null=True)         # model ids; NULL: every model the user may use
    allowed_endpoints = JSONField(null=True)      # path prefixes; NULL: every route
    requests_per_minute = pw.IntegerField(null=True)
    tokens_per_minute = pw.IntegerField(null=True)
    created_at = pw.IntegerField(default=now)
    last_used_at = pw.IntegerField(null=True)

    class Meta:
        table_name = "api_key"


class RevokedToken(BaseModel):
    jti = Text(primary_key=True)
    expires_at = pw.IntegerField(null=True, index=True)

    class Meta:
        table_name = "revoked_token"


class SigninAttempt(BaseModel):
    email = Text(index=True)
    at = pw.DoubleField(index=True)

    class Meta:
        table_name = "signin_attempt"


class Preset(BaseModel):
    """A workspace model: a base model plus name, system prompt, params and knowledge."""

    id = Text(primary_key=True)
    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="presets")
    base_model_id = Text(null=True)
    name = Text()
    meta = JSONField(default=dict)
    params = JSONField(default=dict)
    is_public = pw.BooleanField(default=False)
    is_active = pw.BooleanField(default=True)
    created_at = pw.IntegerField(default=now)
    updated_at = pw.IntegerField(default=now)

    class Meta:
        table_name = "preset"


class File(BaseModel):
    id = Text(primary_key=True, default=new_id)
    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="files")
    filename = Text()
    storage_name = Text()             # server-generated name under UPLOAD_DIR
    content_type = Text(default="application/octet-stream")
    size = pw.IntegerField(default=0)
    file_hash = Text(index=True)      # sha256 of the uploaded bytes
    dedup_key = Text(null=True)       # file_hash on a user's one copy of those bytes (unique); NULL on older
                                      # duplicates kept from before the constraint (migration 7)
    text_hash = Text(null=True)       # sha256 of the extracted text
    content = Text(null=True)         # extracted text
    status = Text(default="pending")  # pending | processing | completed | failed
    error = Text(null=True)
    meta = JSONField(default=dict)            # client metadata form field
    created_at = pw.IntegerField(default=now)
    updated_at = pw.IntegerField(default=now)

    class Meta:
        table_name = "file"
        indexes = ((("user", "file_hash"), False), (("user", "dedup_key"), True))


class Chunk(BaseModel):
    """A piece of a file's text with its embedding: the source of truth every FAISS index is rebuilt from."""

    id = ChunkIdField()                       # the FAISS id; never reused, so a stale vector cannot alias
    file = pw.ForeignKeyField(File, on_delete="CASCADE", backref="chunks")
    seq = pw.IntegerField()
    text = Text()
    start = pw.IntegerField()
    end = pw.IntegerField()
    vector = pw.BlobField()                    # float32, L2-normalised
    dim = pw.IntegerField()
    model = Text()

    class Meta:
        table_name = "chunk"
        # (file, dim) covers the start-up check's per-collection counts: no page holding a blob is read
        indexes = ((("file", "seq"), True), (("file", "dim"), False))


class Knowledge(BaseModel):
    id = Text(primary_key=True, default=new_id)
    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="knowledge")
    name = Text()
    description = Text(default="")
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

    name = Text(primary_key=True)
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


def _add_change_stamps(database) -> None:
    database.execute_sql("CREATE TABLE IF NOT EXISTS change_stamp (name VARCHAR(255) NOT NULL PRIMARY KEY, "
                         "value BIGINT NOT NULL DEFAULT 0)")
    for name in STAMPS:
        database.execute_sql(dialect.sql("INSERT INTO change_stamp (name, value) VALUES (?, 0) "
                                         "ON CONFLICT (name) DO NOTHING"), (name,))
    _create_stamp_triggers(database)


def _create_stamp_triggers(database, table: str | None = None) -> None:
    """The STAMP_TRIGGERS (only those on `table` when given: a rebuilt table lost its own)."""
    for trigger, (when, names) in STAMP_TRIGGERS.items():
        if table is not None and not when.endswith(f" ON {table}"):
            continue
        bump = _BUMP.format(names=", ".join(f"'{n}'" for n in names))
        for statement in dialect.trigger(f"stamp_{trigger}", when, [bump]):
            database.execute_sql(statement)


# Migrations: MIGRATIONS[n] upgrades a database at version n-1 to version n. Version 1 is the tables above.
MIGRATIONS: dict[int, callable] = {
    2: _add_change_stamps,
    # chunk (file_id, dim): start-up counts each collection's vectors without reading a blob
    4: lambda database: database.execute_sql(
        'CREATE INDEX IF NOT EXISTS "chunk_file_id_dim" ON "chunk" ("file_id", "dim")'),
}

# The lexical (BM25) index of chunk text. SQLite: FTS5 with external content (the text lives only in `chunk`;
# triggers keep the index in the transaction that writes the rows, cascaded deletes included). PostgreSQL: a
# generated tsvector column with a GIN index, in step with the rows by construction.
CHUNK_FTS = "chunk_fts"
PG_TEXT_SEARCH_CONFIG = "english"  # Porter-stemmed, like the default FTS5 tokenizer


def create_chunk_fts(database, tokenizer: str = DEFAULT_BM25_TOKENIZER) -> None:
    """(Re)create the lexical index over chunk.text (`tokenizer`: FTS5's) and index every existing chunk."""
    if dialect.name == "postgres":
        for statement in (
                "ALTER TABLE chunk ADD COLUMN IF NOT EXISTS tsv tsvector GENERATED ALWAYS AS "
                f"(to_tsvector('{PG_TEXT_SEARCH_CONFIG}', text)) STORED",
                "CREATE INDEX IF NOT EXISTS chunk_tsv ON chunk USING GIN (tsv)"):
            database.execute_sql(statement)
        return
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


class CollectionState(BaseModel):
    """A vector collection's version in the database: bumped by triggers with every change to its members,
    so a host compares it with the version its cached index files reflect (one indexed read per query)."""

    name = Text(primary_key=True)      # collection_rows.collection_name: file-<id> or knowledge id
    version = pw.BigIntegerField(default=0)

    class Meta:
        table_name = "collection_state"


class IndexLog(BaseModel):
    """What each version of a collection changed: chunk ids that joined (+1) or left (-1) it. Every version
    has at least one row and versions follow commit order (the bump locks the state row), so a host catching
    up from version v reads rows > v; when v + 1 is gone (pruned by age) it rebuilds from the chunk rows."""

    collection = Text()
    version = pw.BigIntegerField()
    chunk_id = pw.BigIntegerField()
    op = pw.SmallIntegerField()                # +1 joined, -1 left
    created_at = pw.BigIntegerField()          # unix seconds: `webui-api compact` prunes old rows by age

    class Meta:
        table_name = "index_log"
        primary_key = pw.CompositeKey("collection", "version", "chunk_id")


# The index log triggers. Each is a list of plain INSERT/UPDATE statements (valid in a PL/pgSQL trigger
# body too) over {collections}: a subquery naming the collections the change touches. Per collection: make
# sure the state row exists, bump its version (on PostgreSQL the row lock serialises writers of one
# collection until commit, so versions follow commit order), log the chunk ids under the new version.
# {now} is the dialect's unix time. A link or unlink of a file without chunks bumps nothing (the WHERE
# EXISTS guards), so no version is ever empty; links deleted with their collection log nothing (the
# collection is gone, no host will read it).
_STATE_ROWS = ("INSERT INTO collection_state (name, version) SELECT name, 0 FROM {collections} AS touched "
               "WHERE true ON CONFLICT (name) DO NOTHING")
_BUMP_VERSIONS = ("UPDATE collection_state SET version = version + 1 "
                  "WHERE name IN (SELECT name FROM {collections} AS touched)")
_FILE_COLLECTIONS = ("(SELECT 'file-' || {file} AS name UNION ALL "
                     "SELECT knowledge_id FROM knowledge_file WHERE file_id = {file})")
_LINKED_COLLECTION = ("(SELECT {row}.knowledge_id AS name WHERE EXISTS (SELECT 1 FROM chunk WHERE file_id = "
                      "{file}) AND EXISTS (SELECT 1 FROM knowledge WHERE id = {row}.knowledge_id))")
_FILE_LINKS = ("(SELECT knowledge_id AS name FROM knowledge_file WHERE file_id = {file} "
               "AND EXISTS (SELECT 1 FROM chunk WHERE file_id = {file}))")
_LOG_CHUNK = ("INSERT INTO index_log (collection, version, chunk_id, op, created_at) "
              "SELECT name, version, {row}.id, {op}, {now} FROM collection_state "
              "WHERE name IN (SELECT name FROM {collections} AS touched)")
_LOG_FILE_CHUNKS = ("INSERT INTO index_log (collection, version, chunk_id, op, created_at) "
                    "SELECT state.name, state.version, chunk.id, {op}, {now} "
                    "FROM collection_state AS state, chunk "
                    "WHERE state.name IN (SELECT name FROM {collections} AS touched) "
                    "AND chunk.file_id = {file}")


def _log_statements(collections: str, log: str, row: str, op: int, file: str = "file_id") -> tuple[str, ...]:
    touched = collections.format(row=row, file=f"{row}.{file}")
    return tuple(s.format(collections=touched, row=row, file=f"{row}.{file}", op=op, now="{now}")
                 for s in (_STATE_ROWS, _BUMP_VERSIONS, log))


INDEX_LOG_TRIGGERS = {  # name: (event, statements)
    "chunk_ins": ("AFTER INSERT ON chunk", _log_statements(_FILE_COLLECTIONS, _LOG_CHUNK, "new", 1)),
    "chunk_del": ("AFTER DELETE ON chunk", _log_statements(_FILE_COLLECTIONS, _LOG_CHUNK, "old", -1)),
    "link_ins": ("AFTER INSERT ON knowledge_file",
                 _log_statements(_LINKED_COLLECTION, _LOG_FILE_CHUNKS, "new", 1)),
    "link_del": ("AFTER DELETE ON knowledge_file",
                 _log_statements(_LINKED_COLLECTION, _LOG_FILE_CHUNKS, "old", -1)),
    # A deleted file leaves its collections before the cascades run: PostgreSQL fires the row triggers of
    # cascaded deletes only after both cascades (chunks, links) are done, when link_del finds no chunk and
    # chunk_del no link, so neither would log the file leaving a knowledge collection.
    "file_del": ("BEFORE DELETE ON file", _log_statements(_FILE_LINKS, _LOG_FILE_CHUNKS, "old", -1, "id")),
}


# Where the engine has statement triggers (PostgreSQL), the chunk triggers run once per statement over its
# transition table: row by row, a bulk insert bumped one collection_state row thousands of times in one
# transaction, each update walking the chain of row versions the earlier ones left (20,000 chunks took 10 s,
# growing as the square). One version per statement and collection; the log rows share it.
_CHUNK_PAIRS = ("(SELECT 'file-' || r.file_id AS name, r.id AS chunk_id FROM changed_rows r UNION ALL "
                "SELECT l.knowledge_id, r.id FROM changed_rows r JOIN knowledge_file l ON l.file_id = r.file_id)")


# A batch of links (knowledge batch/add: 10,000 in one statement) likewise bumps its collection once: row by
# row it took 25 s on PostgreSQL. Only links to an existing collection, of files with chunks, log anything.
_LINK_PAIRS = ("(SELECT r.knowledge_id AS name, c.id AS chunk_id FROM changed_rows r "
               "JOIN chunk c ON c.file_id = r.file_id JOIN knowledge k ON k.id = r.knowledge_id)")


def _statement_log(op: int, pairs: str = _CHUNK_PAIRS) -> tuple[str, ...]:
    return (f"INSERT INTO collection_state (name, version) SELECT DISTINCT name, 0 FROM {pairs} AS p "
            "WHERE true ON CONFLICT (name) DO NOTHING",
            f"UPDATE collection_state SET version = version + 1 WHERE name IN (SELECT name FROM {pairs} AS p)",
            "INSERT INTO index_log (collection, version, chunk_id, op, created_at) "
            f"SELECT p.name, s.version, p.chunk_id, {op}, {{now}} FROM {pairs} AS p "
            "JOIN collection_state s ON s.name = p.name")


INDEX_LOG_STATEMENT_TRIGGERS = {  # name: (event, transition table, statements over `changed_rows`)
    "chunk_ins": ("AFTER INSERT ON chunk", "NEW", _statement_log(1)),
    "chunk_del": ("AFTER DELETE ON chunk", "OLD", _statement_log(-1)),
    "link_ins": ("AFTER INSERT ON knowledge_file", "NEW", _statement_log(1, _LINK_PAIRS)),
}


def _add_index_log(database) -> None:
    database.create_tables([CollectionState, IndexLog], safe=True)
    for trigger in INDEX_LOG_TRIGGERS:
        _create_log_trigger(database, trigger)


def _create_log_trigger(database, trigger: str) -> None:
    """(Re)create one index log trigger: per statement where the engine can and one is defined, else per row."""
    name, (when, statements) = f"index_log_{trigger}", INDEX_LOG_TRIGGERS[trigger]
    if dialect.statement_triggers and trigger in INDEX_LOG_STATEMENT_TRIGGERS:
        when, transition, statements = INDEX_LOG_STATEMENT_TRIGGERS[trigger]
        rendered = dialect.statement_trigger(name, when, transition, [s.format(now=dialect.unix_now)
                                                                      for s in statements])
    else:
        rendered = dialect.trigger(name, when, [s.format(now=dialect.unix_now) for s in statements])
    for statement in rendered:
        database.execute_sql(statement)


MIGRATIONS[5] = _add_index_log


def init_database(url: str, pool_size: int = 8, sqlite_cache_mb: float = 2.0) -> pw.Database:
    """Bind the database proxy to `url` (sqlite:///path or postgresql://…), create tables and run pending
    migrations. `pool_size`: PostgreSQL connections per process at most (threads + background jobs);
    `sqlite_cache_mb`: SQLite's page cache per connection."""
    global dialect
    close_database()
    dialect = for_url(url)
    database.initialize(dialect.open(pool_size, sqlite_cache_mb))
    with database.connection_context():
        migrate()
    return database


def close_database() -> None:
    """Close this thread's connection and, on PostgreSQL, every pooled one (process exit, tests)."""
    current = database.obj
    if current is None:
        return
    if not current.is_closed():
        current.close()
    if hasattr(current, "close_all"):
        current.close_all()


def migrate() -> int:
    """Create missing tables and bring the schema version up to SCHEMA_VERSION; safe when workers race
    (the write lock makes them take turns)."""
    with write_transaction():
        version = _schema_version()
        if version == 0:
            database.create_tables(TABLES, safe=True)
            version = 1
        for target in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[target](database)
            version = target
        execute("UPDATE schema_version SET version = ? WHERE id = 1", (version,))
    return version


def _schema_version() -> int:
    """The schema_version row (one mechanism for both engines), created on first use; a SQLite file from
    before the table carries its version over from PRAGMA user_version."""
    database.execute_sql("CREATE TABLE IF NOT EXISTS schema_version (id INTEGER PRIMARY KEY, "
                         "version INTEGER NOT NULL)")
    found = schema_version()
    if found is not None:
        return found
    version = dialect.legacy_schema_version(database)
    execute("INSERT INTO schema_version (id, version) VALUES (1, ?)", (version,))
    return version


def schema_version() -> int | None:
    row = database.execute_sql("SELECT version FROM schema_version WHERE id = 1").fetchone()
    return row[0] if row else None


def write_transaction():
    """A transaction that takes the write lock up front, so concurrent writers queue instead of failing
    (SQLite: BEGIN IMMEDIATE; PostgreSQL: one advisory lock, held to commit)."""
    return dialect.write_transaction(database)


def insert_rows(model: type[pw.Model], columns: list[str], rows: list[tuple]) -> None:
    """Insert many rows with one prepared statement (peewee's per-row SQL building costs ~10x more)."""
    fields = [model._meta.fields[c] for c in columns]
    names = ", ".join(f'"{f.column_name}"' for f in fields)
    sql = f'INSERT INTO "{model._meta.table_name}" ({names}) VALUES ({", ".join("?" for _ in columns)})'
    values = [tuple(f.db_value(v) for f, v in zip(fields, row)) for row in rows]  # the fields' conversions
    dialect.insert_rows(database, dialect.sql(sql), values)


def execute(sql: str, params: tuple = ()):
    """Run raw SQL written with `?` placeholders on either engine; returns the cursor."""
    return database.execute_sql(dialect.sql(sql), params)


def close_thread_connection() -> None:
    """A thread that ends must not keep its connection: on PostgreSQL it would hold a pool slot for ever."""
    if database.obj is not None and not database.is_closed():
        database.close()


def close_request_connection() -> None:
    """After a request: on PostgreSQL, hand the connection back to the pool."""
    if dialect.connection_per_request() and not database.is_closed():
        database.close()


# --- change stamps: per-worker caches that every worker and host drops at once ----------------------

def read_stamp(name: str) -> int:
    """The stamp's current value: one indexed read on the raw connection (~0.01 ms, no ORM)."""
    row = execute("SELECT value FROM change_stamp WHERE name = ?", (name,)).fetchone()
    return row[0] if row else 0


def bump_stamp(name: str) -> None:
    """Tell every worker that what `name` covers changed outside the tables the triggers watch."""
    execute("UPDATE change_stamp SET value = value + 1 WHERE name = ?", (name,))


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
    owner = Text()
    expires_at = pw.DoubleField(index=True)  # not FloatField: PostgreSQL's REAL keeps ~7 digits of epoch time

    class Meta:
        table_name = "processing_lease"


def _add_processing_lease(database) -> None:
    database.create_tables([ProcessingLease], safe=True)
    # every worker of every host looks up the unsettled files each half lease period
    database.execute_sql('CREATE INDEX IF NOT EXISTS "file_status" ON "file" ("status")')


MIGRATIONS[6] = _add_processing_lease


# --- one row per user and bytes, decided by the database (issue 11) ---------------------------------

# The oldest row of each (user, bytes) group takes the key; later duplicates (racing uploads before the
# constraint) keep NULL, stay readable and are never chosen as the key holder again.
_FIRST_COPIES_TAKE_THE_KEY = (
    'UPDATE "file" SET dedup_key = file_hash WHERE dedup_key IS NULL AND NOT EXISTS ('
    'SELECT 1 FROM "file" AS older WHERE older.user_id = "file".user_id '
    'AND older.file_hash = "file".file_hash AND (older.created_at < "file".created_at '
    'OR (older.created_at = "file".created_at AND older.id < "file".id)))')


def _add_dedup_key(database) -> None:
    if "dedup_key" not in {column.name for column in database.get_columns("file")}:
        database.execute_sql('ALTER TABLE "file" ADD COLUMN dedup_key TEXT')
    database.execute_sql(_FIRST_COPIES_TAKE_THE_KEY)
    database.execute_sql('CREATE UNIQUE INDEX IF NOT EXISTS "file_user_id_dedup_key" '
                         'ON "file" ("user_id", "dedup_key")')


MIGRATIONS[7] = _add_dedup_key


# --- API keys made for services: several per user, limits counted in the database (issue 12) --------

class ApiKeyUsage(BaseModel):
    """What a rate-limited key spent in one minute (`minute` = epoch seconds // 60): requests counted as they
    arrive, tokens as the backend reports them. One row per key and minute, bumped by one atomic UPSERT, so
    the limits hold across workers and hosts; a key's older minutes are deleted when a new one starts."""

    key = pw.ForeignKeyField(ApiKey, on_delete="CASCADE", column_name="key_id")
    minute = pw.BigIntegerField()
    requests = pw.IntegerField(default=0)
    tokens = pw.BigIntegerField(default=0)

    class Meta:
        table_name = "api_key_usage"
        primary_key = pw.CompositeKey("key", "minute")


_COPIED_KEY_COLUMNS = "user_id, key_hash, masked, created_at, last_used_at"


def _add_named_api_keys(database) -> None:
    """api_key keyed by its own id instead of the user's (SQLite cannot change a primary key, so the table is
    rebuilt); each existing key becomes its user's default key, id `key_<user id>` as in Open WebUI."""
    if "id" not in {column.name for column in database.get_columns("api_key")}:
        database.execute_sql("CREATE TABLE api_key_before_v8 AS SELECT * FROM api_key")
        database.execute_sql("DROP TABLE api_key")  # its indexes and triggers go with it
        database.create_tables([ApiKey])
        database.execute_sql(f"INSERT INTO api_key (id, is_default, {_COPIED_KEY_COLUMNS}) "
                             f"SELECT 'key_' || user_id, TRUE, {_COPIED_KEY_COLUMNS} FROM api_key_before_v8")
        database.execute_sql("DROP TABLE api_key_before_v8")
        _create_stamp_triggers(database, "api_key")
    database.execute_sql('CREATE UNIQUE INDEX IF NOT EXISTS "api_key_one_default" ON "api_key" ("user_id") '
                         "WHERE is_default")
    database.create_tables([ApiKeyUsage], safe=True)


MIGRATIONS[8] = _add_named_api_keys


def _link_statement_trigger(database) -> None:
    """PostgreSQL logs a statement's new links once per collection (_LINK_PAIRS); SQLite keeps its row trigger."""
    if dialect.statement_triggers:
        _create_log_trigger(database, "link_ins")


MIGRATIONS[9] = _link_statement_trigger


# --- sharing with people: groups and access grants (issue 13) ----------------------------------------

class Group(BaseModel):
    """A named set of users that grants can name (Open WebUI's user groups); managed by admins."""

    id = Text(primary_key=True, default=new_id)
    user_id = Text()                           # the admin who created it (kept if that account goes)
    name = Text()
    description = Text(default="")
    permissions = JSONField(null=True)         # stored and returned as given; nothing here reads it
    data = JSONField(null=True)
    meta = JSONField(null=True)
    created_at = pw.IntegerField(default=now)
    updated_at = pw.IntegerField(default=now)

    class Meta:
        table_name = "user_group"


class GroupMember(BaseModel):
    group = pw.ForeignKeyField(Group, on_delete="CASCADE", backref="members")
    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="memberships")
    created_at = pw.IntegerField(default=now)

    class Meta:
        table_name = "group_member"
        primary_key = pw.CompositeKey("group", "user")
        indexes = ((("user", "group"), False),)  # a caller's groups, read by every shared-object check


class AccessGrant(BaseModel):
    """A user or group may read or write one collection (resource_type "knowledge") or preset ("model").
    Public read stays the row's `is_public` column: this table holds grants to named principals only."""

    id = Text(primary_key=True, default=new_id)
    resource_type = Text()
    resource_id = Text()
    principal_type = Text()                    # user | group
    principal_id = Text()
    permission = Text()                        # read | write
    created_at = pw.IntegerField(default=now)

    class Meta:
        table_name = "access_grant"
        indexes = ((("resource_type", "resource_id", "principal_type", "principal_id", "permission"), True),
                   (("principal_type", "principal_id"), False))


# Grants name their resource and principal by id without a foreign key (one table for several kinds), so the
# database drops them with what they name: a preset id freed by a deletion must not inherit the old grants.
GRANT_CLEANUP_TRIGGERS = {
    "grant_knowledge_del": ("AFTER DELETE ON knowledge",
                            "DELETE FROM access_grant WHERE resource_type = 'knowledge' AND resource_id = old.id"),
    "grant_preset_del": ("AFTER DELETE ON preset",
                         "DELETE FROM access_grant WHERE resource_type = 'model' AND resource_id = old.id"),
    "grant_user_del": ('AFTER DELETE ON "user"',
                       "DELETE FROM access_grant WHERE principal_type = 'user' AND principal_id = old.id"),
    "grant_group_del": ("AFTER DELETE ON user_group",
                        "DELETE FROM access_grant WHERE principal_type = 'group' AND principal_id = old.id"),
}


def _add_sharing(database) -> None:
    database.create_tables([Group, GroupMember, AccessGrant], safe=True)
    for trigger, (when, statement) in GRANT_CLEANUP_TRIGGERS.items():
        for rendered in dialect.trigger(trigger, when, [statement]):
            database.execute_sql(rendered)


MIGRATIONS[10] = _add_sharing
TABLES += [Group, GroupMember, AccessGrant]  # copied by `webui-api migrate-to-postgres` like the others
