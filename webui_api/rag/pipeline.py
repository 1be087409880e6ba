"""The processing pipeline of one file, under its lease: extract, chunk, embed, write chunk rows, index."""
from __future__ import annotations

import hashlib
import logging
import time

import numpy as np

from .. import db
from ..db import Chunk, File
from ..errors import EMPTY_CONTENT, ApiError, Conflict, NotFound, UnusableContent
from ..upstream import without_locations
from . import index_sync, lease
from .chunk import split_text
from .collection_rows import linked_knowledge
from .extract import Extracted, extract
from .storage import read_bytes

log = logging.getLogger("webui_api.rag")

UNSETTLED = ("pending", "processing")
_CHUNK_COLUMNS = ("file", "seq", "text", "start", "end", "vector", "dim", "model")


def process(ext, file_id: str, content: str | None = None) -> File:
    """Run the whole pipeline now (waiting while another process holds the file); returns the completed
    File. On failure the file is marked `failed` with its error and the error is raised (UnusableContent
    when the file itself cannot be used)."""
    with lease.held(ext.settings, file_id) as acquired:
        if not acquired:
            raise NotFound()
        return process_locked(ext, file_id, content)


def finish_unsettled(ext, file_id: str) -> bool:
    """Process a pending/processing file unless another process, on any host, holds its lease (then it is
    theirs to finish). True when this call processed it; failures are recorded on the file and raised."""
    with lease.held(ext.settings, file_id, blocking=False) as acquired:
        file = File.get_or_none(File.id == file_id) if acquired else None
        if file is None or file.status not in UNSETTLED:  # nobody's, or somebody finished it first
            return False
        process_locked(ext, file_id, None)
        return True


def process_locked(ext, file_id: str, content: str | None) -> File:
    """`process` for a caller already holding the file's lease."""
    file = File.get_or_none(File.id == file_id)
    if file is None:
        raise NotFound()
    before = (file.status, file.error)
    set_status(file_id, "processing")
    try:
        extracted, pieces, vectors = _embed(ext, file, content)
        refusal = _dimension_refusal(ext, file_id, vectors.shape[1])
        if refusal is None:
            new_ids, old_ids = _write_chunks(file_id, extracted, pieces, vectors, ext.embedder.model)
            _index(ext, file_id, new_ids, old_ids, vectors)
    except ApiError as exc:
        set_status(file_id, "failed", _failure_text(exc))
        raise
    except Exception as exc:
        log.exception("processing file %s failed", file_id)
        set_status(file_id, "failed", f"Processing failed unexpectedly ({type(exc).__name__}).")
        raise ApiError(f"Processing the file failed unexpectedly ({type(exc).__name__}).") from exc
    if refusal is not None:
        _settle_refused(file_id, before, refusal)
        raise refusal
    set_status(file_id, "completed")
    _index_late_links(ext, file_id, new_ids, vectors)
    return File.get_or_none(File.id == file_id) or file


def _embed(ext, file: File, content: str | None):
    """(extracted text, chunks, their vectors): everything before anything is written."""
    extracted = _extract(ext.settings, file, content)
    pieces = split_text(extracted.text, ext.settings.CHUNK_SIZE, ext.settings.CHUNK_OVERLAP,
                        extracted.markdown)
    if not pieces:
        raise UnusableContent(EMPTY_CONTENT)
    return extracted, pieces, ext.embedder.embed([piece.text for piece in pieces])


def _extract(settings, file: File, content: str | None) -> Extracted:
    if content is not None:
        if not content.strip():
            raise UnusableContent(EMPTY_CONTENT)
        return Extracted(content, "text")
    try:
        return extract(read_bytes(settings, file), file.filename, file.content_type,
                       max_chars=settings.RAG_MAX_EXTRACTED_CHARS)
    except ApiError as exc:
        raise UnusableContent.because(exc) from exc


def _failure_text(exc: ApiError) -> str:
    """The reason stored on a failed file, shown to its (non-admin) owner: backends named, never located."""
    return without_locations(exc.detail if isinstance(exc.detail, str) else str(exc.detail))


def _dimension_refusal(ext, file_id: str, dim: int) -> Conflict | None:
    """A linked collection holding other-sized vectors refuses the file up front (nothing touched yet)."""
    try:
        for kid in linked_knowledge(file_id):
            index_sync.check_dimension(ext.vectors, kid, dim)
    except Conflict as conflict:
        return conflict
    return None


def _settle_refused(file_id: str, before: tuple, refusal: Conflict) -> None:
    if before[0] == "completed":
        set_status(file_id, *before)  # nothing was touched: the file is as it was
    else:
        set_status(file_id, "failed", _failure_text(refusal))


def _write_chunks(file_id, extracted: Extracted, pieces, vectors: np.ndarray, model: str):
    """Replace the file's chunk rows and extracted text in one transaction; returns (new ids, old ids)."""
    text_hash = hashlib.sha256(extracted.text.encode("utf-8", "surrogatepass")).hexdigest()
    dim = int(vectors.shape[1])
    with db.write_transaction():
        file = File.get_or_none(File.id == file_id)
        if file is None:
            raise NotFound("The file was deleted while it was being processed.")
        old_ids = [row[0] for row in Chunk.select(Chunk.id).where(Chunk.file == file_id).tuples()]
        Chunk.delete().where(Chunk.file == file_id).execute()
        rows = [(file_id, i, piece.text, piece.start, piece.end, vectors[i].tobytes(), dim, model)
                for i, piece in enumerate(pieces)]
        db.insert_rows(Chunk, _CHUNK_COLUMNS, rows)
        meta = dict(file.meta or {})
        meta["pages"] = extracted.pages or None
        File.update(content=extracted.text, text_hash=text_hash, meta=meta, updated_at=db.now()) \
            .where(File.id == file_id).execute()
        new_ids = [row[0] for row in Chunk.select(Chunk.id).where(Chunk.file == file_id).order_by(Chunk.seq)
                   .tuples()]
    return new_ids, old_ids


def _index(ext, file_id: str, new_ids, old_ids, vectors) -> None:
    index_sync.reindex_file(ext.vectors, file_id, new_ids, old_ids, vectors)
    if File.get_or_none(File.id == file_id) is None:  # deleted meanwhile: undo what we just wrote
        index_sync.forget(ext.vectors, file_id, new_ids, linked_knowledge(file_id))
        raise NotFound("The file was deleted while it was being processed.")


def _index_late_links(ext, file_id: str, new_ids, vectors) -> None:
    """Collections linked while we were embedding: file/add saw the file unfinished and left it to us."""
    for kid in linked_knowledge(file_id):
        try:
            index_sync.link(ext.vectors, kid, file_id, new_ids, vectors)
        except ApiError as exc:  # the file itself is fine; the collection says why (e.g. other dimension)
            log.warning("file %s could not join collection %s linked meanwhile: %s", file_id, kid, exc.detail)


def set_status(file_id: str, status: str, error: str | None = None) -> None:
    File.update(status=status, error=error, updated_at=db.now()).where(File.id == file_id).execute()


def wait_settled(file_id: str, timeout: float, poll: float = 0.1) -> File | None:
    """Wait until the file is no longer pending/processing (or `timeout` passes); returns the fresh row."""
    deadline = time.monotonic() + timeout
    while True:
        file = File.get_or_none(File.id == file_id)
        if file is None or file.status not in UNSETTLED or time.monotonic() >= deadline:
            return file
        time.sleep(poll)


