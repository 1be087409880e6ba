"""`webui-api` command line: accounts, bulk ingest, index rebuild and database/index consistency check."""
from __future__ import annotations

import argparse
import getpass
import hashlib
import logging
import mimetypes
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DRIFT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


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
    from .errors import ApiError

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
                     help="add every file to this collection (created if missing)")
    cmd.add_argument("--email", help="owner of the files (default: the first admin)")
    cmd.set_defaults(handler=cmd_ingest)

    cmd = sub.add_parser("reindex", help="rebuild vector index files from the database (no embedding calls)")
    cmd.add_argument("--collection", metavar="NAME", help="only this collection: a knowledge id or file-<id>")
    cmd.set_defaults(handler=cmd_reindex)

    cmd = sub.add_parser("check", help="verify database <-> vector index consistency; exit 3 on drift")
    cmd.add_argument("--repair", action="store_true",
                     help="rebuild the drifted collections from the database")
    cmd.set_defaults(handler=cmd_check)

    cmd = sub.add_parser("compact", help="merge each collection's index segments, drop deleted vectors and "
                                          "prune the index log (INDEX_LOG_RETENTION)")
    cmd.add_argument("--collection", metavar="NAME", help="only this collection: a knowledge id or file-<id>")
    cmd.set_defaults(handler=cmd_compact)
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
    db.init_database(settings.DATABASE_URL, settings.database_pool_size)
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
    from .rag import knowledge
    from .db import Knowledge

    found = Knowledge.select().where(Knowledge.user == owner.id, Knowledge.name == name) \
        .order_by(Knowledge.created_at).first()
    if found is not None:
        return found.id
    return knowledge.create(owner, name, "Created by webui-api ingest").id


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
            with open(path, "rb") as handle:
                file, _created = files.upload(ext, owner, handle, os.path.basename(path),
                                              mimetypes.guess_type(path)[0], {"source_path": path})
            file_id = file.id
            if previous is not None and previous.id != file.id:
                files.delete(ext, owner, previous.id)  # the old version leaves the collections too
                note = "updated"
                tally.updated += 1
            else:
                note = "added"
                tally.added += 1
        if knowledge_id:
            knowledge.add_file(ext, owner, knowledge_id, file_id)
        return note
    except (ApiError, OSError) as exc:
        tally.failed.append(f"{path}: {describe(exc)}")
        return "FAILED"


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
    if args.collection:
        if args.collection not in wanted:
            raise CliError(f"no collection {args.collection!r} "
                           "(use a knowledge id or file-<id> of a processed file)")
        names = [args.collection]
    else:
        names = list(wanted)
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
        print(f"{len(problems)} problem(s) in {count} collection(s); repair with "
              "`webui-api check --repair` (files "
              "left pending: restart the server or POST /api/v1/retrieval/process/file)", file=sys.stderr)
        return EXIT_DRIFT
    print(f"ok: {count} collection(s) match the database")
    return EXIT_OK


def cmd_compact(args) -> int:
    from .rag import index_sync

    ext = open_services()
    merged = index_sync.compact(ext.vectors, [args.collection] if args.collection else None)
    pruned = index_sync.prune_log(ext.settings.INDEX_LOG_RETENTION)
    print(f"compacted {len(merged)} collection(s); pruned {pruned} index log row(s)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
