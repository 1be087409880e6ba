"""Uploaded files: lookups with access checks, upload with dedup, processing, content, deletion."""
from __future__ import annotations

import logging
import mimetypes
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import BinaryIO

import peewee as pw

from .. import db
from ..auth import policy
from ..db import Chunk, File, KnowledgeFile, User
from ..errors import (EMPTY_CONTENT, FILE_NOT_PROCESSED, ApiError, BadRequest, KeptAsFailed,
                     NotFound, UnusableContent, UpstreamError)
from . import extract, index_sync, pipeline, storage
from .collection_rows import link_row, linked_knowledge

log = logging.getLogger("webui_api.files")

PAGE_SIZE = 50


def listed_columns(content: bool = False) -> list:
    """The columns a listed file renders: the extracted text only when asked for (it can be megabytes)."""
    return [f for f in File._meta.sorted_fields
            if f is not File.storage_name and (content or f is not File.content)]


# ---------------------------------------------------------------- access

def find(file_id) -> File | None:
    return File.get_or_none(File.id == file_id) if isinstance(file_id, str) else None


def readable(user: User, file_id: str) -> File:
    """A file the caller may read (owner, admin, or member of a public collection); anyone else gets 404."""
    return policy.readable_or_404(user, find(file_id))


def writable(user: User, file_id: str) -> File:
    """Owner or admin; a reader who may only see it gets 403."""
    return policy.writable_or_403(user, find(file_id))


@dataclass
class Processed:
    """A file made searchable, and the collection it is searchable in."""

    file: File
    collection_name: str


# ---------------------------------------------------------------- upload

def safe_filename(name: str | None) -> str:
    """The client's base name, for display only (stored bytes use a server-generated name)."""
    name = unicodedata.normalize("NFC", str(name or ""))
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    return name[:255] or "file"


def guess_type(filename: str, given: str | None) -> str:
    given = (given or "").strip()
    if given and given != "application/octet-stream":
        return given
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def check_extension(settings, filename: str) -> None:
    allowed = settings.RAG_ALLOWED_FILE_EXTENSIONS
    ext = extract.extension(filename)
    if allowed and ext not in allowed:
        raise BadRequest(f"[ERROR: File type {ext or '(none)'} is not allowed]")


def upload(ext, user: User, stream: BinaryIO, filename: str | None, content_type: str | None,
           metadata: dict | None, process: bool = True, background: bool = False,
           link_to: str | None = None) -> tuple[File, bool]:
    """Store an upload and (unless `process` is false) make it searchable. Returns (file, created).
    The same user uploading the same bytes again gets the existing file (processed if needed). A new file
    is linked to the knowledge collection `link_to` (checked by the caller) before it is processed."""
    settings = ext.settings
    name = safe_filename(filename)
    if process:
        check_extension(settings, name)
    ctype = guess_type(name, content_type)
    staged = storage.receive(settings, stream)
    try:
        if staged.size == 0:
            raise BadRequest(EMPTY_CONTENT)
        if process:
            extract.check_supported(staged.head, name, ctype)
        existing = _same_upload(user, staged.sha256)
        if existing is None:
            file, created = _first_copy(settings, user, staged, name, ctype, metadata, process)
            existing = None if created else file
    finally:
        staged.discard()
    if existing is not None:
        file = _reuse(ext, existing, process, background)
    elif process:
        if link_to is not None:
            _link_new(ext, link_to, file)  # its vectors join the collection when processing completes
        file = _run(ext, file, background, new=True)
    return file, existing is None


def _link_new(ext, knowledge_id: str, file: File) -> None:
    """A collection deleted while its file was arriving: the upload is refused whole, nothing stays behind."""
    try:
        link_row(knowledge_id, file.id)
    except NotFound:
        _delete(ext, file)
        raise


def _first_copy(settings, user: User, staged, name: str, ctype: str, metadata: dict | None,
                process: bool) -> tuple[File, bool]:
    """(file, created): a new row, or the row of a racing upload of the same bytes that committed first.
    The unique (user, dedup_key) index decides, not the look-up before it."""
    try:
        return storage.store(settings, user.id, staged, name, ctype, metadata or {},
                             "pending" if process else "stored"), True
    except pw.IntegrityError:
        winner = _same_upload(user, staged.sha256)
        if winner is None:  # not the dedup key (the account was deleted meanwhile, ...)
            raise
        return winner, False


def _same_upload(user: User, sha256: str) -> File | None:
    return (File.select().where(File.user == user.id, File.file_hash == sha256)
            .order_by(File.created_at).first())


def _reuse(ext, file: File, process: bool, background: bool) -> File:
    """A repeated upload: finish what the first one left undone, never embed twice."""
    if not process or file.status == "completed":
        return file
    if file.status in pipeline.UNSETTLED:
        return file if background else _settled(ext, file)
    pipeline.set_status(file.id, "pending")  # stored-only or failed: process it now
    return _run(ext, File.get_by_id(file.id), background, new=False)


def _settled(ext, file: File) -> File:
    fresh = pipeline.wait_settled(file.id, ext.settings.AIOHTTP_CLIENT_TIMEOUT)
    if fresh is None:
        raise NotFound()
    if fresh.status == "failed":
        raise BadRequest(f"Processing this file failed: {fresh.error}")
    return fresh


def _run(ext, file: File, background: bool, new: bool) -> File:
    if background:
        ext.jobs.submit(ext, file.id)
        return file
    try:
        return pipeline.process(ext, file.id)
    except ApiError as exc:
        if new and isinstance(exc, UnusableContent):
            _delete(ext, file)  # a file we cannot read is refused outright: nothing stays behind
            raise
        kept = File.get_or_none(File.id == file.id)
        if kept is None or kept.status != "failed" or not isinstance(exc.detail, str):
            raise
        remedy = "the embedding backend is back" if isinstance(exc, UpstreamError) else "the problem is fixed"
        raise KeptAsFailed(exc, file.id, remedy) from exc


# ---------------------------------------------------------------- reading

def list_files(user: User, page: int = 1, content: bool = False) -> tuple[list[File], int]:
    """One page, newest first, with the total count: your own files (admins see everyone's). The extracted
    text is read only when asked for."""
    total = count_files(user)
    query = policy.writable_rows(user, File.select(*listed_columns(content)))
    query = query.order_by(File.updated_at.desc(), File.created_at.desc(), File.id)
    return list(query.paginate(page, PAGE_SIZE)), total


SEARCH_LIMIT = 1000  # Open WebUI's bound on `limit`
NO_MATCH = "No files found matching the pattern."


def search_files(user: User, pattern: str, skip: int = 0, limit: int = 100, content: bool = False) -> list[File]:
    """Your files (admins: everyone's) whose name matches a glob (`*`, `?`; case-insensitive), newest
    first; none is 404, as in Open WebUI."""
    query = policy.writable_rows(user, File.select(*listed_columns(content)))
    query = query.where(pw.Expression(File.filename, pw.OP.ILIKE, _like_pattern(pattern)))
    found = list(query.order_by(File.updated_at.desc(), File.created_at.desc(), File.id)
                 .offset(skip).limit(min(limit, SEARCH_LIMIT)))
    if not found:
        raise NotFound(NO_MATCH)
    return found


def _like_pattern(glob: str) -> pw.NodeList:
    """A glob as a LIKE pattern: the text's own `%`, `_` and `\\` are escaped, `*` and `?` become wildcards."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    like = escaped.replace("*", "%").replace("?", "_")
    return pw.NodeList((pw.Value(like, converter=False), pw.SQL("ESCAPE"), pw.Value("\\", converter=False)))


def count_files(user: User) -> int:
    """How many files `list_files` pages through."""
    return policy.writable_rows(user, File.select()).count()


def original(ext, user: User, file_id: str) -> tuple[str, File]:
    """Path of the stored bytes (for the blueprint to send) and the file."""
    file = readable(user, file_id)
    path = storage.stored_path(ext.settings, file)
    if not os.path.exists(path):
        raise NotFound("Original file is unavailable.")
    return path, file


def current(file_id: str) -> File | None:
    """The file as it is now (a status poll re-reads it); None once deleted."""
    return File.get_or_none(File.id == file_id)


def reprocess(ext, user: User, file_id: str, content: str | None = None) -> File:
    """Run the pipeline again (after a failure, or with replacement text); answers when searchable."""
    file = writable(user, file_id)
    if content is not None and not content.strip():
        raise BadRequest(EMPTY_CONTENT)
    if content is not None:  # refused before the file's state changes
        extract.check_length(content, file.filename, ext.settings.RAG_MAX_EXTRACTED_CHARS)
    return pipeline.process(ext, file.id, content)


def require_processed(file: File) -> None:
    if file.status == "stored":
        raise BadRequest(FILE_NOT_PROCESSED)
    if file.status == "failed":
        raise BadRequest(f"{FILE_NOT_PROCESSED} Its processing failed: {file.error}")


# ---------------------------------------------------------------- deletion

def delete(ext, user: User, file_id: str) -> None:
    _delete(ext, writable(user, file_id))


def delete_all(ext) -> None:
    for file in list(File.select()):
        _delete(ext, file)


def purge_user(ext, user_id: str) -> None:
    """Remove a user's files with their bytes and vectors (call before deleting the account)."""
    for file in list(File.select().where(File.user == user_id)):
        _delete(ext, file)


def _delete(ext, file: File) -> None:
    """Row, chunks and links in one transaction; then vectors everywhere and the stored bytes."""
    with db.write_transaction():
        chunk_ids = [c.id for c in Chunk.select(Chunk.id).where(Chunk.file == file.id)]
        knowledge_ids = linked_knowledge(file.id)
        KnowledgeFile.delete().where(KnowledgeFile.file == file.id).execute()
        Chunk.delete().where(Chunk.file == file.id).execute()
        File.delete().where(File.id == file.id).execute()
    index_sync.forget(ext.vectors, file.id, chunk_ids, knowledge_ids)
    storage.remove_stored(ext.settings, file)
