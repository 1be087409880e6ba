"""Knowledge collections: access, CRUD, and linking files whose stored vectors join the collection's index."""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import BinaryIO

from peewee import fn

from .. import db
from ..auth import policy
from . import files
from ..db import Chunk, File, Knowledge, KnowledgeFile, Preset, User
from ..errors import EMPTY_CONTENT, ApiError, BadRequest, NotFound
from . import collection_rows, extract, index_sync, pipeline
from .collection_rows import FILE_PREFIX
from .vectors import dimension_conflict

log = logging.getLogger("webui_api.knowledge")

PAGE_SIZE = 30
MEMBER_PAGE_SIZE = 30
MAX_MEMBER_PAGE = 1000
# Files one batch/add names at most: a bulk ingest of 50,000 files is five requests of a few seconds each,
# and no request holds the write lock (or a worker) for long.
MAX_BATCH_FILES = 10_000
STILL_PROCESSING = "The file is still being processed; add it once its status is completed."
NOT_A_MEMBER = "This file is not in the knowledge collection."


# ---------------------------------------------------------------- access

def find(knowledge_id) -> Knowledge | None:
    return Knowledge.get_or_none(Knowledge.id == knowledge_id) if isinstance(knowledge_id, str) else None


def readable(user: User, knowledge_id: str) -> Knowledge:
    """A collection the caller may read (owner, admin, or public); otherwise 404 (existence is not revealed)."""
    return policy.readable_or_404(user, find(knowledge_id))


def writable(user: User, knowledge_id: str) -> Knowledge:
    return policy.writable_or_403(user, find(knowledge_id))


# ---------------------------------------------------------------- shapes

@dataclass
class Collection:
    """A collection as one caller sees it: the row's columns, whether they may change it, and (when the
    answer lists them) a page of its files, their count, or both."""

    kb: Knowledge
    write_access: bool
    files: list[File] | None = None
    file_count: int | None = None

    def __getattr__(self, name):
        if name == "kb":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.kb, name)


@dataclass
class BatchAdded(Collection):
    """A batch/add answer: the collection, and what became of each file named (in request order)."""

    results: list[dict] = field(default_factory=list)


@dataclass
class MemberQuery:
    """Which page of a collection's files, in which order (Open WebUI's `/{id}/files` parameters)."""

    page: int = 1
    limit: int = MEMBER_PAGE_SIZE
    query: str | None = None
    view_option: str | None = None
    order_by: str | None = None
    direction: str | None = None
    include_content: bool = False


def seen_by(user: User, kb: Knowledge, page: int = 1) -> Collection:
    """The collection with one page of its files (every answer that carries `files` pages them)."""
    return Collection(kb, policy.can_write(user, kb), member_page(user, kb.id, MemberQuery(page=page))[0])


SORTABLE = {"name": File.filename, "created_at": File.created_at, "updated_at": File.updated_at}


def member_page(user: User, knowledge_id: str, ask: MemberQuery) -> tuple[list[File], int]:
    """One page of a collection's files with their uploaders (one joined query) and the filtered total
    (one count): newest link first unless `order_by` says otherwise."""
    rows = (File.select(*files.listed_columns(ask.include_content), User.id, User.name, User.role)
            .join(KnowledgeFile, on=(KnowledgeFile.file == File.id))
            .switch(File).join(User, on=(File.user == User.id)))
    rows = _member_filter(user, policy.exposed(rows.where(KnowledgeFile.knowledge == knowledge_id)), ask)
    total = _member_filter(user, policy.exposed(KnowledgeFile.select().join(File).where(
        KnowledgeFile.knowledge == knowledge_id)), ask).count()
    return list(rows.order_by(*_member_order(ask)).paginate(ask.page, ask.limit)), total


def _member_filter(user: User, query, ask: MemberQuery):
    if ask.query:
        query = query.where(File.filename.contains(ask.query))
    if ask.view_option == "created":
        query = query.where(File.user == user.id)
    elif ask.view_option == "shared":
        query = query.where(File.user != user.id)
    return query


def _member_order(ask: MemberQuery) -> list:
    if ask.order_by not in SORTABLE:
        return [KnowledgeFile.id.desc()]
    column = SORTABLE[ask.order_by]
    return [column.asc() if ask.direction == "asc" else column.desc(), KnowledgeFile.id.desc()]


# ---------------------------------------------------------------- CRUD

def create(user: User, name: str, description: str = "", access_grants=None, meta=None) -> Knowledge:
    name = (name or "").strip()
    if not name:
        raise BadRequest("A knowledge collection needs a name.")
    with db.write_transaction():
        sharing = policy.sharing_from_grants(access_grants)
        kb = Knowledge.create(id=db.new_id(), user=user.id, name=name, description=description or "",
                              meta=meta, is_public=sharing.public)
        policy.store_sharing(kb, sharing)
    return kb


def list_for(user: User, page: int | None = None) -> tuple[list[Collection], int]:
    total = policy.readable_rows(user, Knowledge.select()).count()
    query = policy.readable_rows(user, Knowledge.select(Knowledge, User.id, User.name, User.role, User.email)
                                 .join(User, on=(Knowledge.user == User.id)))
    query = query.order_by(Knowledge.updated_at.desc(), Knowledge.created_at.desc(), Knowledge.id)
    if page:
        query = query.paginate(page, PAGE_SIZE)
    rows = policy.load_grants(list(query))
    counts, writable = _file_counts([kb.id for kb in rows]), policy.writable_ids(user, rows)
    return [Collection(kb, kb.id in writable, file_count=counts.get(kb.id, 0)) for kb in rows], total


def _file_counts(knowledge_ids: list[str]) -> dict[str, int]:
    """Each collection's number of files, in one grouped query."""
    return dict(policy.exposed(KnowledgeFile.select(KnowledgeFile.knowledge, fn.COUNT(KnowledgeFile.id))
                               .where(KnowledgeFile.knowledge.in_(knowledge_ids)))
                .group_by(KnowledgeFile.knowledge).tuples())


def get(user: User, knowledge_id: str, page: int = 1) -> Collection:
    """The collection with one page of its files."""
    return seen_by(user, readable(user, knowledge_id), page)


def files_of(user: User, knowledge_id: str, ask: MemberQuery) -> Collection:
    """`/{id}/files`: the page asked for, with `file_count` the total matching it."""
    kb = readable(user, knowledge_id)
    page, total = member_page(user, kb.id, ask)
    return Collection(kb, policy.can_write(user, kb), page, total)


def update(user: User, knowledge_id: str, body: dict) -> Collection:
    kb = writable(user, knowledge_id)
    changes = {"updated_at": db.now()}
    if body.get("name") is not None:
        if not str(body["name"]).strip():
            raise BadRequest("A knowledge collection needs a name.")
        changes["name"] = str(body["name"]).strip()
    if body.get("description") is not None:
        changes["description"] = body["description"]
    if "meta" in body:
        changes["meta"] = body["meta"]
    with db.write_transaction():
        if body.get("access_grants") is not None:
            policy.store_sharing(kb, policy.sharing_from_grants(body["access_grants"]))
        Knowledge.update(**changes).where(Knowledge.id == kb.id).execute()
    return seen_by(user, Knowledge.get_by_id(kb.id))


def update_access(user: User, knowledge_id: str, access_grants) -> Collection:
    """Replace who the collection is shared with (`[]`: private); a revoked grant counts at once."""
    kb = writable(user, knowledge_id)
    with db.write_transaction():
        policy.store_sharing(kb, policy.sharing_from_grants(access_grants or []))
        Knowledge.update(updated_at=db.now()).where(Knowledge.id == kb.id).execute()
    return seen_by(user, Knowledge.get_by_id(kb.id))


def delete(ext, user: User, knowledge_id: str) -> bool:
    """Drop the collection and its index; its files stay. Presets stop referring to it."""
    kb = writable(user, knowledge_id)
    with db.write_transaction():
        KnowledgeFile.delete().where(KnowledgeFile.knowledge == kb.id).execute()
        Knowledge.delete().where(Knowledge.id == kb.id).execute()
        _forget_in_presets(kb.id)
    index_sync.drop(ext.vectors, kb.id)
    return True


def purge_user(ext, user: User) -> None:
    """Delete every collection a user owns, with its index (call before deleting the account)."""
    for kb in list(Knowledge.select().where(Knowledge.user == user.id)):
        delete(ext, user, kb.id)


def reset(ext, user: User, knowledge_id: str) -> Collection:
    """Unlink every file and empty the index (the files themselves are kept)."""
    kb = writable(user, knowledge_id)
    with db.write_transaction():
        KnowledgeFile.delete().where(KnowledgeFile.knowledge == kb.id).execute()
        Knowledge.update(updated_at=db.now()).where(Knowledge.id == kb.id).execute()
    index_sync.drop(ext.vectors, kb.id)
    return seen_by(user, Knowledge.get_by_id(kb.id))


def _forget_in_presets(knowledge_id: str) -> None:
    """A deleted collection named in a preset would make every chat with it fail with 404."""
    for preset in Preset.select(Preset.id, Preset.meta):
        meta = dict(preset.meta or {})
        items = meta.get("knowledge")
        if not isinstance(items, list):
            continue
        kept = [i for i in items if not (isinstance(i, dict) and i.get("id") == knowledge_id)]
        if len(kept) != len(items):
            meta["knowledge"] = kept
            Preset.update(meta=meta).where(Preset.id == preset.id).execute()


# ---------------------------------------------------------------- membership

def add_file(ext, user: User, knowledge_id: str, file_id: str) -> Collection:
    """Link a file and put its stored vectors into the collection's index: idempotent, no embedding call.
    A file still processing is waited for; if it is not done in time it is linked and joins the index
    when its processing completes."""
    kb = writable(user, knowledge_id)
    file = policy.linkable_or_403(user, files.find(file_id))
    if file.status in pipeline.UNSETTLED:
        file = pipeline.wait_settled(file.id, ext.settings.AIOHTTP_CLIENT_TIMEOUT) or file
    files.require_processed(file)
    index_sync.check_dimension(ext.vectors, kb.id, _file_dim(file.id))
    collection_rows.link_row(kb.id, file.id)
    fresh = File.get_or_none(File.id == file.id)
    if fresh is not None and fresh.status == "completed":  # else the pipeline adds them when it completes
        index_sync.link(ext.vectors, kb.id, file.id)
    return seen_by(user, Knowledge.get_by_id(kb.id))


def add_files(ext, user: User, knowledge_id: str, file_ids: list[str]) -> BatchAdded:
    """Link many processed files in one write transaction; their stored vectors join the collection's
    index as one segment (no embedding). A file that cannot be added (missing or not yours to read, not
    yours to share, not processed, of another vector size) fails alone, with its reason."""
    kb = writable(user, knowledge_id)
    check_batch_size(len(file_ids))
    wanted = list(dict.fromkeys(file_ids))
    errors = _unlinkable(user, wanted)
    accepted = [f for f in wanted if f not in errors]
    errors.update(_other_dimension(ext, kb.id, accepted))
    accepted = [f for f in accepted if f not in errors]
    linked = collection_rows.link_rows(kb.id, accepted) if accepted else set()
    errors.update({f: "The file was deleted." for f in accepted if f not in linked})
    if linked:
        index_sync.link_many(ext.vectors, kb.id, [f for f in accepted if f in linked])
    shown = seen_by(user, Knowledge.get_by_id(kb.id))
    return BatchAdded(shown.kb, shown.write_access, shown.files, results=[
        {"file_id": f, "status": "failed", "error": errors[f]} if f in errors else
        {"file_id": f, "status": "completed"} for f in wanted])


def check_batch_size(count: int) -> None:
    if count > MAX_BATCH_FILES:
        raise BadRequest(f"At most {MAX_BATCH_FILES} files can be added in one request.")


def _unlinkable(user: User, file_ids: list[str]) -> dict[str, str]:
    """Why each file that may not join a collection cannot (file/add's rules: policy, processed)."""
    rows = collection_rows.rows_for_ids("SELECT id, user_id, status, error FROM file WHERE id IN ({ids})",
                                        file_ids)
    found = {row[0]: File(id=row[0], user=row[1], status=row[2], error=row[3]) for row in rows}
    errors = {}
    for file_id in file_ids:
        try:
            file = policy.linkable_or_403(user, found.get(file_id))
            if file.status in pipeline.UNSETTLED:
                raise BadRequest(STILL_PROCESSING)
            files.require_processed(file)
        except ApiError as exc:
            errors[file_id] = exc.detail
    return errors


def _other_dimension(ext, knowledge_id: str, file_ids: list[str]) -> dict[str, str]:
    """Files whose vectors differ in size from the collection's (an empty one takes the batch's majority)."""
    dims = collection_rows.dims_of(file_ids)
    have = index_sync.dimension(ext.vectors, knowledge_id) or collection_rows.majority_dim(dims.values())
    return {f: dimension_conflict(knowledge_id, have, dim).detail for f, dim in dims.items() if dim != have}


def update_file(ext, user: User, knowledge_id: str, file_id: str) -> Collection:
    """Open WebUI's re-index of a member file: its stored vectors are put in the collection's index again
    where missing (no embedding; a file's new text reaches its collections when it is processed)."""
    kb = writable(user, knowledge_id)
    _require_member(kb.id, file_id)
    index_sync.link(ext.vectors, kb.id, file_id)
    return seen_by(user, Knowledge.get_by_id(kb.id))


def _require_member(knowledge_id: str, file_id) -> None:
    if not _is_member(knowledge_id, file_id):
        raise NotFound(NOT_A_MEMBER)


def _is_member(knowledge_id: str, file_id) -> bool:
    return isinstance(file_id, str) and KnowledgeFile.select().where(
        KnowledgeFile.knowledge == knowledge_id, KnowledgeFile.file == file_id).exists()


def _file_dim(file_id: str) -> int | None:
    row = Chunk.select(Chunk.dim).where(Chunk.file == file_id).first()
    return None if row is None else row.dim


def remove_file(ext, user: User, knowledge_id: str, file_id: str, delete_file: bool = False) -> Collection:
    """Unlink a file and drop its vectors from the collection; delete the file itself only when asked
    (and only when the caller may delete it)."""
    kb = writable(user, knowledge_id)
    _require_member(kb.id, file_id)
    with db.write_transaction():
        KnowledgeFile.delete().where(KnowledgeFile.knowledge == kb.id,
                                     KnowledgeFile.file == file_id).execute()
        Knowledge.update(updated_at=db.now()).where(Knowledge.id == kb.id).execute()
    index_sync.unlink(ext.vectors, kb.id)
    if delete_file:
        file = File.get_or_none(File.id == file_id)
        if file is not None and policy.can_write(user, file):
            files.delete(ext, user, file_id)
    return seen_by(user, Knowledge.get_by_id(kb.id))


def delete_from_collection(ext, user: User, collection_name: str, file_id: str) -> bool:
    """POST /retrieval/delete: a file's vectors leave a knowledge collection, i.e. the file leaves it (the
    file is kept); False when it was not there. A file's own `file-<id>` collection goes only with the
    file."""
    if collection_name.startswith(FILE_PREFIX):
        files.writable(user, collection_name[len(FILE_PREFIX):])
        raise BadRequest("A file's own collection goes with the file: DELETE /api/v1/files/{id}.")
    kb = writable(user, collection_name)
    if not _is_member(kb.id, file_id):
        return False
    remove_file(ext, user, kb.id, file_id)
    return True


# ---------------------------------------------------------------- files arriving with a collection

def upload(ext, user: User, stream: BinaryIO, filename: str | None, content_type: str | None,
           metadata: dict | None, process: bool = True, background: bool = False) -> tuple[File, bool]:
    """files.upload with Open WebUI's auto-link: `metadata.knowledge_id` names a collection the file joins."""
    target = (metadata or {}).get("knowledge_id") if process else None
    if target is not None:
        writable(user, target)  # refused before anything is stored
    file, created = files.upload(ext, user, stream, filename, content_type, metadata, process, background,
                                 link_to=target)
    if target is not None and file.status == "completed":
        add_file(ext, user, target, file.id)
    return file, created


def process_again(ext, user: User, file_id: str, content: str | None = None,
                  collection_name: str | None = None) -> files.Processed:
    """POST /retrieval/process/file: re-run the pipeline, optionally adding the file to a collection."""
    file = files.reprocess(ext, user, file_id, content)
    collection = collection_rows.collection_name(file.id)
    if collection_name:
        add_file(ext, user, collection_name, file.id)
        collection = collection_name
    return files.Processed(file, collection)


def create_from_text(ext, user: User, name: str, content: str, collection_name: str | None = None
                     ) -> files.Processed:
    """POST /retrieval/process/text: the text becomes a (deduplicated) file, searchable on return."""
    if not content.strip():
        raise BadRequest(EMPTY_CONTENT)
    extract.check_length(content, name, ext.settings.RAG_MAX_EXTRACTED_CHARS)
    if collection_name:
        writable(user, collection_name)  # refuse before storing anything
    data = io.BytesIO(content.encode("utf-8"))
    file, _ = files.upload(ext, user, data, files.safe_filename(name), "text/plain", None, process=False)
    if file.status != "completed":  # the text is used as is: no type sniffing or extraction
        file = pipeline.process(ext, file.id, content)
    collection = collection_rows.collection_name(file.id)
    if collection_name:
        add_file(ext, user, collection_name, file.id)
        collection = collection_name
    return files.Processed(file, collection)
