"""`webui-api` command line: accounts, bulk ingest, index rebuild, database/index consistency check, the
move of a SQLite deployment to PostgreSQL and a fake LLM backend to try the API with."""
from __future__ import annotations

import argparse
import getpass
import hashlib
import logging
import mimetypes
import os
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence
from urllib.parse import quote

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DRIFT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
CLI_RETRY = "run the same command again"  # what a CLI user does where an HTTP client would re-post


class CliError(Exception):
    """A failure explained in one line on stderr."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="webui-api: %(levelname)s: %(message)s")
    try:
        return args.handler(args) or EXIT_OK
    except KeyboardInterrupt:
        print("webui-api: interrupted (run the same command again to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # every failure is one line, never a traceback
        print(f"webui-api: error: {describe(exc)}", file=sys.stderr)
        return EXIT_ERROR


def describe(exc: BaseException) -> str:
    from .errors import ApiError, KeptAsFailed

    if isinstance(exc, KeptAsFailed):
        return exc.advise(CLI_RETRY)
    if isinstance(exc, ApiError):
        return exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if isinstance(exc, CliError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc.__class__.__name__}: {exc.filename}"
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webui-api", description="Operate a webui_api installation. Configuration comes from the same "
        "environment variables as the server (DATA_DIR, DATABASE_URL, RAG_*, OLLAMA_BASE_URLS, ...).")
    sub = parser.add_subparsers(metavar="COMMAND")

    cmd = sub.add_parser("create-admin", help="create an admin account")
    cmd.add_argument("--email", required=True)
    cmd.add_argument("--name", default="Admin")
    cmd.add_argument("--password", help="default: WEBUI_ADMIN_PASSWORD, else read from stdin / prompt")
    cmd.set_defaults(handler=cmd_create_admin)

    cmd = sub.add_parser("set-role", help="change an account's role")
    cmd.add_argument("email")
    cmd.add_argument("role", choices=["pending", "user", "admin"])
    cmd.set_defaults(handler=cmd_set_role)

    cmd = sub.add_parser("create-api-key", help="create (or replace) an account's API key and print it once")
    cmd.add_argument("--email", required=True)
    cmd.set_defaults(handler=cmd_create_api_key)

    cmd = sub.add_parser("ingest", help="upload files or folders (recursively) and make them searchable")
    cmd.add_argument("paths", nargs="+", metavar="PATH")
    cmd.add_argument("--knowledge", metavar="NAME",
                     help="add every file to the owner's collection of this name (or id), created if no "
                          "collection has that name")
    cmd.add_argument("--email", help="owner of the files (default: the first admin)")
    cmd.set_defaults(handler=cmd_ingest)

    cmd = sub.add_parser("reindex", help="rebuild vector index files from the database (no embedding calls)")
    cmd.add_argument("--collection", metavar="NAME",
                     help="only this collection: a knowledge name or id, or file-<id>")
    cmd.set_defaults(handler=cmd_reindex)

    cmd = sub.add_parser("check", help="verify database <-> vector index consistency; exit 3 on drift")
    cmd.add_argument("--repair", action="store_true",
                     help="rebuild the drifted collections from the database")
    cmd.set_defaults(handler=cmd_check)

    cmd = sub.add_parser("compact", help="merge each collection's index segments, drop deleted vectors and "
                                          "prune the index log (INDEX_LOG_RETENTION)")
    cmd.add_argument("--collection", metavar="NAME",
                     help="only this collection: a knowledge name or id, or file-<id>")
    cmd.set_defaults(handler=cmd_compact)

    cmd = sub.add_parser("mock-backend", help="serve a fake Ollama + OpenAI backend (no model needed) to try "
                                               "the API with: chat, streams, embeddings, RAG")
    cmd.add_argument("--host", default="127.0.0.1")
    cmd.add_argument("--port", type=int, default=11434, help="default 11434, where the server looks for Ollama")
    cmd.add_argument("--token-delay", type=float, default=0.0, metavar="SECONDS",
                     help="pause between streamed tokens (default 0)")
    cmd.set_defaults(handler=cmd_mock_backend)

    cmd = sub.add_parser(
        "migrate-to-postgres", help="copy a SQLite deployment into an empty PostgreSQL database and verify it",
        description="Copy every table of a (possibly running) SQLite deployment, read from one snapshot, into "
        "an empty PostgreSQL database (schema created by the normal migrations), then compare row counts "
        "and a checksum of the chunk vectors on both sides; exit 3 on a mismatch. Uploaded bytes are not "
        "in the database: give the PostgreSQL hosts the upload folder, and the source's secret key "
        "(WEBUI_SECRET_KEY, else DATA_DIR/.webui_secret_key) so sign-in sessions stay valid.")
    cmd.add_argument("--from", dest="source", required=True, metavar="sqlite:///PATH")
    cmd.add_argument("--to", dest="target", required=True, metavar="postgresql://USER:PASS@HOST:PORT/DB")
    cmd.add_argument("--skip", action="append", default=[], metavar="TABLE",
                     help="leave out a table no other table refers to (e.g. signin_attempt); repeatable")
    cmd.add_argument("--batch-size", type=int, default=MIGRATE_BATCH, metavar="ROWS",
                     help=f"rows per insert (default {MIGRATE_BATCH})")
    cmd.add_argument("--verify-only", action="store_true",
                     help="copy nothing: compare the source with an already migrated target")
    cmd.set_defaults(handler=cmd_migrate_to_postgres)
    return parser


# ---------------------------------------------------------------- set-up


def open_services():
    """Settings, database and the per-app objects as the server builds them (no network, no start-up jobs)."""
    from . import db
    from .config import Settings
    from .services import build_services

    settings = Settings.from_env()
    if not os.path.isdir(settings.DATA_DIR):
        raise CliError(f"DATA_DIR {settings.DATA_DIR} does not exist (set DATA_DIR to the server's data dir)")
    db.init_database(settings.DATABASE_URL, settings.database_pool_size, settings.SQLITE_CACHE_MB)
    return build_services(settings)


def find_user(email: str):
    from .db import User

    user = User.get_or_none(User.email == (email or "").strip().lower())
    if user is None:
        raise CliError(f"no account with email {email!r}")
    return user


# ---------------------------------------------------------------- accounts


def cmd_create_admin(args) -> int:
    from .auth import accounts

    ext = open_services()
    password = args.password or os.environ.get("WEBUI_ADMIN_PASSWORD") or read_password()
    user = accounts.add_user(ext.settings, args.name, args.email, password, "admin")
    print(f"created admin {user.email} ({user.id})")
    return EXIT_OK


def read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat password: "):
            raise CliError("the passwords differ")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise CliError("an empty password is not allowed")
    return password


def cmd_set_role(args) -> int:
    from .auth import accounts

    ext = open_services()
    user = accounts.update_user(ext.settings, find_user(args.email).id, {"role": args.role})
    print(f"{user.email} is now {user.role}")
    return EXIT_OK


def cmd_create_api_key(args) -> int:
    from .auth import accounts

    ext = open_services()
    key = accounts.create_api_key(ext.settings, find_user(args.email))
    print(key)  # the only time it is shown: only its hash is stored
    return EXIT_OK


# ---------------------------------------------------------------- progress


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, one line per step otherwise (logs, CI)."""

    def __init__(self, total: int, label: str, stream=None):
        self.total, self.label, self.done = max(total, 0), label, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()

    def step(self, note: str = "") -> None:
        self.done += 1
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        elapsed = time.monotonic() - self.started
        line = f"{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s {note}"
        if self.tty:
            columns = os.get_terminal_size(self.stream.fileno()).columns
            self.stream.write("\r\033[K" + line[:max(20, columns - 1)])
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# ---------------------------------------------------------------- ingest


@dataclass
class IngestTally:
    added: int = 0
    skipped: int = 0
    updated: int = 0
    failed: list[str] = field(default_factory=list)


def cmd_ingest(args) -> int:
    from .db import User

    ext = open_services()
    if args.email:
        owner = find_user(args.email)
    else:
        owner = User.select().where(User.role == "admin").order_by(User.created_at).first()
        if owner is None:
            raise CliError("no admin account exists; create one with `webui-api create-admin` "
                           "or pass --email")
    paths = list(collect_files(args.paths))
    if not paths:
        raise CliError("no files found under the given paths")
    knowledge_id = ensure_knowledge(owner, args.knowledge) if args.knowledge else None
    tally = IngestTally()
    progress = Progress(len(paths), "ingest")
    known = previous_uploads(owner)
    for path in paths:
        progress.step(f"{ingest_one(ext, owner, path, knowledge_id, known, tally)}: {path}")
    print(f"{tally.added} added, {tally.updated} updated, {tally.skipped} unchanged, "
          f"{len(tally.failed)} failed"
          + (f" (knowledge {args.knowledge!r}: {knowledge_id})" if knowledge_id else ""))
    for line in tally.failed:
        print(f"webui-api: failed: {line}", file=sys.stderr)
    return EXIT_ERROR if tally.failed else EXIT_OK


def collect_files(paths: Iterable[str]) -> Iterator[str]:
    """Files named, and files under folders named (recursively, hidden ones left out), sorted, once each."""
    seen: set[str] = set()
    for given in paths:
        if not os.path.exists(given):
            raise CliError(f"no such file or folder: {given}")
        if os.path.isfile(given):
            candidates = [given]
        else:
            candidates = []
            for root, dirs, names in os.walk(given):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                candidates += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
        for path in candidates:
            real = os.path.realpath(path)
            if real not in seen and os.path.isfile(real):
                seen.add(real)
                yield os.path.abspath(path)


def ensure_knowledge(owner, name: str) -> str:
    """The owner's collection of this name, or the collection with this id, or a new one when no collection
    has the name. A name only other accounts use is refused, not guessed at: reusing their collection would
    put the owner's files where someone else decides who reads them, and a second collection of the same
    name would make the name (which `reindex --collection` also takes) ambiguous."""
    from .db import Knowledge
    from .errors import ApiError
    from .rag import knowledge

    named = list(Knowledge.select().where(Knowledge.name == name).order_by(Knowledge.created_at))
    own = [kb for kb in named if kb.user_id == owner.id]
    if own:
        return own[0].id
    if named:
        owners = ", ".join(sorted({kb.user.email for kb in named}))
        raise CliError(f"the collection {name!r} belongs to {owners}, not {owner.email}: pass its owner's "
                       f"--email to add to it, or choose another name for a collection of {owner.email}")
    if knowledge.find(name) is not None:
        try:
            return knowledge.writable(owner, name).id
        except ApiError as exc:
            raise CliError(f"{owner.email} may not add files to collection {name}") from exc
    return knowledge.create(owner, name, "Created by webui-api ingest").id


def collection_named(given: str, collections: Iterable[str]) -> str:
    """The index collection `given` means: itself (a knowledge id or file-<id>), or the one knowledge
    collection of that name."""
    from .db import Knowledge

    collections = set(collections)
    if given in collections:
        return given
    named = [kb.id for kb in Knowledge.select(Knowledge.id).where(Knowledge.name == given)]
    if len(named) > 1:
        raise CliError(f"{len(named)} collections are named {given!r}; give one of their ids: "
                       f"{', '.join(named)}")
    if named and named[0] in collections:
        return named[0]
    if named:
        raise CliError(f"the collection {given!r} ({named[0]}) has no index yet (no processed file)")
    raise CliError(f"no collection {given!r} (give a knowledge name or id, or file-<id> of a processed file)")


def previous_uploads(owner) -> dict[str, object]:
    """This owner's files that came from `webui-api ingest`, by source path (kept in the file's metadata)."""
    from .db import File

    by_path = {}
    for file in File.select().where(File.user == owner.id).order_by(File.created_at):
        source = ((file.meta or {}).get("data") or {}).get("source_path")
        if source:
            by_path[source] = file
    return by_path


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ingest_one(ext, owner, path: str, knowledge_id: str | None, known: dict, tally: IngestTally) -> str:
    """Upload one file unless the same bytes are already searchable; a changed file replaces its previous
    version (also in the collection). Returns a short note for the progress line."""
    from .rag import files, knowledge
    from .errors import ApiError

    try:
        digest = sha256_of(path)
        previous = known.get(path)
        if previous is not None and previous.file_hash == digest and previous.status == "completed":
            note, file_id = "unchanged", previous.id
            tally.skipped += 1
        else:
            resume_abandoned(ext, owner, digest)
            searchable_before = already_searchable(owner, digest)  # e.g. the same bytes uploaded over HTTP
            with open(path, "rb") as handle:
                file, _created = files.upload(ext, owner, handle, os.path.basename(path),
                                              mimetypes.guess_type(path)[0], {"source_path": path})
            file_id = file.id
            if previous is not None and previous.id != file.id:
                files.delete(ext, owner, previous.id)  # the old version leaves the collections too
                note = "updated"
                tally.updated += 1
            elif searchable_before:
                note = "unchanged"
                tally.skipped += 1
            else:
                note = "added"
                tally.added += 1
        if knowledge_id:
            knowledge.add_file(ext, owner, knowledge_id, file_id)
        return note
    except (ApiError, OSError) as exc:
        tally.failed.append(f"{path}: {describe(exc)}")
        return "FAILED"


def already_searchable(owner, digest: str) -> bool:
    from .db import File

    return File.select().where(File.user == owner.id, File.file_hash == digest,
                               File.status == "completed").exists()


def resume_abandoned(ext, owner, digest: str) -> None:
    """Same bytes left pending/processing by an interrupted run and held by nobody: finish them here (an
    upload of the same bytes would otherwise wait for a worker that no longer exists)."""
    from .db import File
    from .rag import pipeline

    for file in File.select().where(File.user == owner.id, File.file_hash == digest,
                                    File.status.in_(pipeline.UNSETTLED)):
        pipeline.finish_unsettled(ext, file.id)  # skipped while a live process, on any host, holds it


def finish_abandoned(ext) -> None:
    """Files a stopped process (on any host) left pending/processing, their lease expired: finish them here,
    so that a check on any live host ends clean."""
    from .errors import ApiError
    from .rag import jobs, pipeline

    for file_id, status in jobs.abandoned_files():
        try:
            if pipeline.finish_unsettled(ext, file_id):
                print(f"file {file_id}: was left {status!r} by a stopped process; processed here")
        except ApiError as exc:
            print(f"file {file_id}: was left {status!r} by a stopped process; processing failed: "
                  f"{describe(exc)}")


# ---------------------------------------------------------------- reindex and check


def cmd_reindex(args) -> int:
    from .rag import index_sync, lexical

    ext = open_services()
    wanted = index_sync.expected_ids()
    names = [collection_named(args.collection, wanted)] if args.collection else list(wanted)
    progress = Progress(len(names), "reindex")
    total, removed = index_sync.repair(ext.vectors, names, progress=lambda name: progress.step(name),
                                       sweep=not args.collection)  # strays only go with a full reindex
    if not args.collection:
        lexical.rebuild()
    print(f"rebuilt {len(names)} collection(s), {total} vectors"
          + (f"; removed {len(removed)} stray file(s)" if removed else "")
          + ("" if args.collection else "; BM25 index rebuilt"))
    return EXIT_OK


def cmd_check(args) -> int:
    from .rag import consistency, index_sync

    ext = open_services()
    finish_abandoned(ext)
    count = len(index_sync.expected_ids())
    progress = Progress(count, "check")
    problems = consistency.find_drift(ext, progress=lambda name: progress.step(name))
    for problem in problems:
        print(f"drift: {problem}")
    if problems and args.repair:
        total, removed = index_sync.repair(ext.vectors)
        print(f"repaired: {total} vectors rebuilt"
              + (f", {len(removed)} stray file(s) removed" if removed else ""))
        return EXIT_OK
    if problems:
        print(f"{len(problems)} problem(s) in {count} collection(s). Repair them with `webui-api check --repair`; "
              "a file left pending is finished by the next `webui-api check` or server start.", file=sys.stderr)
        return EXIT_DRIFT
    print(f"ok: {count} collection(s) match the database")
    return EXIT_OK


def cmd_compact(args) -> int:
    from .rag import index_sync

    ext = open_services()
    names = [collection_named(args.collection, ext.vectors.index_files()[0])] if args.collection else None
    merged = index_sync.compact(ext.vectors, names)
    pruned = index_sync.prune_log(ext.settings.INDEX_LOG_RETENTION)
    print(f"compacted {len(merged)} collection(s); pruned {pruned} index log row(s)")
    return EXIT_OK


# ---------------------------------------------------------------- mock-backend


def cmd_mock_backend(args) -> int:
    """Serve the fake backend until Ctrl-C or SIGTERM."""
    from .mock_backend import OPENAI_KEY, FakeBackend

    try:
        backend = FakeBackend(host=args.host, port=args.port, record=False)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    backend.token_delay = max(args.token_delay, 0.0)
    print(f"mock backend: Ollama API at {backend.url} (models {', '.join(backend.ollama_models)}), "
          f"OpenAI API at {backend.openai_url} with key {OPENAI_KEY} (models {', '.join(backend.openai_models)}).\n"
          f"Replies echo the last message; embeddings are hashed words. Ctrl-C stops it.", flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        backend.stop()
    return EXIT_OK


# ---------------------------------------------------------------- migrate-to-postgres

MIGRATE_BATCH = 1000  # rows per insert: memory stays bounded (a chunk row carries its vector)
CHECKSUM_PAGE = 10_000  # chunk hashes read from PostgreSQL per query (hashed there: 32 bytes per row back)


def cmd_migrate_to_postgres(args) -> int:
    from . import db

    if args.batch_size < 1:
        raise CliError("--batch-size must be at least 1")
    source = open_source_snapshot(args.source)
    try:
        tables = tables_to_copy(args.skip)
        open_target(args.target)
        with db.database.connection_context():
            if not args.verify_only:
                refuse_used_target(tables)
                started = time.monotonic()
                copied = copy_tables(source, tables, args.batch_size)
                elapsed = time.monotonic() - started
                print(f"copied {copied:,} rows in {elapsed:.1f} s ({copied / max(elapsed, 1e-9):,.0f} rows/s)")
            started = time.monotonic()
            mismatches = print_verification(compare_databases(source, tables))
            print(f"verified in {time.monotonic() - started:.1f} s")
    finally:
        source.close()
        db.close_database()
    if mismatches:
        print(f"webui-api: verification failed: {', '.join(mismatches)} differ "
              "(was the target written meanwhile? empty it and migrate again)", file=sys.stderr)
        return EXIT_DRIFT
    return EXIT_OK


def open_source_snapshot(url: str) -> sqlite3.Connection:
    """The source file read-only inside one read transaction, kept open to the end. Under WAL that is a
    snapshot: every table is read as of the same instant while the server goes on writing (its later
    writes are not copied), and no temporary copy of a file that may hold gigabytes of vectors is needed."""
    from . import db
    from .dialect import SqliteDialect

    if not url.startswith("sqlite:///"):
        raise CliError("--from must be sqlite:///<path of the server's database file>")
    path = SqliteDialect(url).path
    if not os.path.isfile(path):
        raise CliError(f"no SQLite database at {path}")
    connection = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True,
                                 isolation_level=None, timeout=30, check_same_thread=False)
    connection.execute("BEGIN")  # the snapshot starts with the first read, just below
    version = source_schema_version(connection)
    if version == 0:
        connection.close()
        raise CliError(f"{path} holds no webui_api database")
    if version != db.SCHEMA_VERSION:
        connection.close()
        raise CliError(f"the source database is at schema version {version} and this webui-api at "
                       f"{db.SCHEMA_VERSION}: run the server of this version on it once, then migrate")
    return connection


def source_schema_version(connection: sqlite3.Connection) -> int:
    try:
        row = connection.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
    except sqlite3.DatabaseError as exc:
        if "no such table" not in str(exc):
            raise CliError(f"the source is not a readable SQLite database: {exc}") from exc
        row = None
    return row[0] if row else connection.execute("PRAGMA user_version").fetchone()[0]


def tables_to_copy(skipped: list[str]) -> list:
    """Every model of db.TABLES, parents before children (foreign keys hold at each insert), less --skip."""
    import peewee as pw
    from . import db

    models = pw.sort_models(db.TABLES)
    names = {model._meta.table_name for model in models}
    for name in skipped:
        if name not in names:
            raise CliError(f"--skip {name}: no such table (tables: {', '.join(sorted(names))})")
        referring = [m._meta.table_name for m in models if any(
            parent._meta.table_name == name for parent in m._meta.refs.values())]
        if referring:
            raise CliError(f"--skip {name}: {', '.join(referring)} refer(s) to it")
    return [model for model in models if model._meta.table_name not in skipped]


def open_target(url: str) -> None:
    """Bind the database proxy to the target and create its schema through the normal migrations."""
    from . import db
    from .dialect import for_url

    if for_url(url).name != "postgres":
        raise CliError("--to must be postgresql://user:pass@host:port/database")
    db.init_database(url, pool_size=2)


def standalone(model) -> bool:
    """A table no other refers to and that refers to none (stamps, revoked tokens, sign-in attempts, logs):
    the migrations may seed it and it means nothing without the users and files it was written about."""
    return not model._meta.refs and not model._meta.backrefs


def refuse_used_target(models: list) -> None:
    used = [model._meta.table_name for model in models
            if not standalone(model) and model.select().exists()]
    if used:
        raise CliError(f"the target database already holds data ({', '.join(used)}): migrate into an empty "
                       "database (drop and re-create it, or give another one)")


def copy_tables(source: sqlite3.Connection, models: list, batch: int) -> int:
    """Copy every table in one target transaction (an interrupted run leaves the target empty again).
    Triggers are off meanwhile: the rows they would write (change stamps, derived logs) are copied as they
    are, instead of being generated a second time."""
    from . import db

    copied = 0
    with db.write_transaction():
        set_triggers(models, "DISABLE")
        for model in models:
            db.execute(f'DELETE FROM "{model._meta.table_name}"')  # only what the migrations seeded
            copied += copy_table(source, model, batch)
        continue_sequences(source, models)
        set_triggers(models, "ENABLE")
    for model in models:  # planner statistics now, not when autovacuum gets to the freshly filled tables
        db.execute(f'ANALYZE "{model._meta.table_name}"')
    return copied


def set_triggers(models: list, action: str) -> None:
    """USER: our triggers only; the foreign key checks stay on."""
    from . import db

    for model in models:
        db.execute(f'ALTER TABLE "{model._meta.table_name}" {action} TRIGGER USER')


def copy_table(source: sqlite3.Connection, model, batch: int) -> int:
    """Stream one table in batches. Each raw SQLite value goes through its field's python_value, and
    insert_rows applies db_value: 0/1 become booleans, JSON is parsed and written again, NUL becomes U+FFFD."""
    from . import db

    table, fields = model._meta.table_name, model._meta.sorted_fields
    total = source.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    progress = Progress(max(1, -(-total // batch)), f"copy {table}")
    cursor = source.execute(select_in_key_order(model))
    copied = 0
    while rows := cursor.fetchmany(batch):
        db.insert_rows(model, [f.name for f in fields],
                       [tuple(f.python_value(value) for f, value in zip(fields, row)) for row in rows])
        copied += len(rows)
        progress.step(f"{copied:,}/{total:,} rows")
    if not total:
        progress.step("0 rows")
    return copied


def select_in_key_order(model) -> str:
    columns = ", ".join(f'"{f.column_name}"' for f in model._meta.sorted_fields)
    keys = ", ".join(f'"{f.column_name}"' for f in model._meta.get_primary_keys()) or "rowid"
    return f'SELECT {columns} FROM "{model._meta.table_name}" ORDER BY {keys}'


def continue_sequences(source: sqlite3.Connection, models: list) -> None:
    """Auto-increment ids go on past the largest the source ever handed out, deleted rows included (SQLite
    AUTOINCREMENT remembers them in sqlite_sequence): chunk ids are FAISS ids and are never reused."""
    import peewee as pw
    from . import db

    for model in models:
        key = model._meta.primary_key
        if not isinstance(key, pw.AutoField):
            continue
        table = model._meta.table_name
        highest = source.execute(f'SELECT max("{key.column_name}") FROM "{table}"').fetchone()[0] or 0
        try:
            row = source.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        except sqlite3.OperationalError:  # no AUTOINCREMENT table in the file at all
            row = None
        last = max(highest, row[0] if row else 0)
        if last:
            db.execute("SELECT setval(pg_get_serial_sequence(?, ?), ?)", (f'"{table}"', key.column_name, last))


# ------------------------------------------------ verification


def compare_databases(source: sqlite3.Connection, models: list) -> list[tuple[str, object, object]]:
    """(what, source value, target value): each table's row count, then the chunk ids and vectors."""
    from . import db

    checks = []
    for model in models:
        table = model._meta.table_name
        checks.append((table, source.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0],
                       db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]))
    if db.Chunk in models:
        source_sum, source_digest = source_chunk_checksum(source)
        target_sum, target_digest = target_chunk_checksum()
        checks += [("chunk id sum", source_sum, target_sum),
                   ("chunk (id, sha256(vector))", source_digest, target_digest)]
    return checks


def chunk_digest_step(digest, chunk_id: int, vector_sha256: bytes) -> None:
    digest.update(chunk_id.to_bytes(8, "big", signed=True) + vector_sha256)


def source_chunk_checksum(source: sqlite3.Connection) -> tuple[int, str]:
    """Sum of chunk ids and a SHA-256 over (id, sha256(vector)) in id order, read from the snapshot."""
    total, digest = 0, hashlib.sha256()
    for chunk_id, vector in source.execute("SELECT id, vector FROM chunk ORDER BY id"):
        total += chunk_id
        chunk_digest_step(digest, chunk_id, hashlib.sha256(vector).digest())
    return total, digest.hexdigest()[:16]


def target_chunk_checksum() -> tuple[int, str]:
    """The same on PostgreSQL, which hashes each vector itself; pages by id so memory stays bounded."""
    from . import db

    total, digest, after = 0, hashlib.sha256(), None
    while True:
        rows = db.execute("SELECT id, sha256(vector) FROM chunk WHERE id > ? ORDER BY id LIMIT ?",
                          (-1 if after is None else after, CHECKSUM_PAGE)).fetchall()
        for chunk_id, vector_sha256 in rows:
            total += chunk_id
            chunk_digest_step(digest, chunk_id, bytes(vector_sha256))
        if len(rows) < CHECKSUM_PAGE:
            return total, digest.hexdigest()[:16]
        after = rows[-1][0]


def print_verification(checks: list[tuple[str, object, object]]) -> list[str]:
    """Print the table of checks; return the names of those that differ."""
    width = max(len(name) for name, _s, _t in checks)
    print(f"{'check':<{width}}  {'source':>18}  {'target':>18}")
    for name, source_value, target_value in checks:
        verdict = "ok" if source_value == target_value else "MISMATCH"
        print(f"{name:<{width}}  {_cell(source_value):>18}  {_cell(target_value):>18}  {verdict}")
    return [name for name, source_value, target_value in checks if source_value != target_value]


def _cell(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


if __name__ == "__main__":
    sys.exit(main())
