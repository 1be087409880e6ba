"""Who may read and change files, knowledge collections and presets; how sharing is read and shown."""
from __future__ import annotations

import uuid
from typing import Any

import peewee as pw

from ..db import File, Knowledge, KnowledgeFile, Preset, User
from ..errors import BadRequest, Forbidden, NotFound
from ..upstream import without_locations

# The one grant we support, in Open WebUI's shape: everyone may read. No grant at all = private.
PUBLIC_GRANT = {"principal_type": "user", "principal_id": "*", "permission": "read"}
UNSUPPORTED_GRANT = ('Only public read access can be granted: {"principal_type": "user", '
                     '"principal_id": "*", "permission": "read"} (or [] for private).')
# Open WebUI's grant ids are UUIDs; ours are derived from the resource so they stay the same on every read.
_GRANT_IDS = uuid.UUID("6f1c1d52-8f0e-4d0a-9b7e-3a2f4c5d6e7f")
_RESOURCE_TYPE = {Knowledge: "knowledge", Preset: "model"}
_READ_ONLY = {  # the 403 a reader gets when trying to change what they may only see
    File: "Only the file's owner or an admin may change or delete it.",
    Knowledge: "This knowledge collection is read-only for you; only its owner or an admin may change it.",
    Preset: "Only the owner or an administrator may change this model.",
}
NOT_YOUR_FILE = ("Only your own files can be added to a knowledge collection (a file shared with you stays "
                 "its owner's to share or un-share).")


# ---------------------------------------------------------------- one row

def is_admin(user: User) -> bool:
    return getattr(user, "role", None) == "admin"


def as_shown_to(user: User | None, detail: Any) -> Any:
    """A caller-facing text as this caller may read it: an admin learns where each backend lives (as on
    /health/ready), anyone else only its kind and index ("Ollama backend 0")."""
    if is_admin(user) or not isinstance(detail, str):
        return detail
    return without_locations(detail)


def can_write(user: User, resource: File | Knowledge | Preset) -> bool:
    """Owner or admin: sharing grants read, never write."""
    return is_admin(user) or resource.user_id == user.id


def can_read(user: User, resource: File | Knowledge | Preset) -> bool:
    """Whoever may write it, and everyone when it is public."""
    return can_write(user, resource) or is_public(resource)


def readable_or_404(user: User, resource):
    """The row if the caller may read it; missing and unreadable rows are both 404 (existence hidden)."""
    if resource is None or not can_read(user, resource):
        raise NotFound()
    return resource


def writable_or_403(user: User, resource):
    """The row if the caller may change it; 404 as above, 403 for someone who may only read it."""
    readable_or_404(user, resource)
    if not can_write(user, resource):
        raise Forbidden(_READ_ONLY[type(resource)])
    return resource


def linkable_or_403(user: User, file: File | None) -> File:
    """A file the caller may put into a knowledge collection: only one they may write (their own; any for
    an admin). A link shows the file to the collection's readers, so it must not pass on a read right the
    caller holds only through someone else's sharing, which its owner may take back."""
    readable_or_404(user, file)
    if not can_write(user, file):
        raise Forbidden(NOT_YOUR_FILE)
    return file


def is_public(resource: File | Knowledge | Preset) -> bool:
    """A collection or preset shared with everyone; a file is public through a public collection."""
    if isinstance(resource, File):
        return _public_files().where(KnowledgeFile.file == resource.id).exists()
    return bool(resource.is_public)


# ---------------------------------------------------------------- many rows (the same rules in SQL)

def readable_rows(user: User, query):
    """`query` (a select of File, Knowledge or Preset) narrowed to the rows `can_read` allows."""
    if is_admin(user):
        return query
    model = query.model
    public = model.id.in_(_public_files()) if model is File else (model.is_public == True)  # noqa: E712
    return query.where((model.user == user.id) | public)


def writable_rows(user: User, query):
    """`query` narrowed to the rows `can_write` allows: the caller's own, or all for an admin."""
    return query if is_admin(user) else query.where(query.model.user == user.id)


def exposed(query):
    """`query` (over KnowledgeFile) narrowed to the links that show their file to the collection's readers:
    those whose collection owner may write the file (`linkable_or_403`), re-checked at every read, so a link
    made before that rule (or by an admin since demoted) shows nothing."""
    linked, holder, admin = File.alias(), Knowledge.alias(), User.alias()
    file_owner = linked.select(linked.user).where(linked.id == KnowledgeFile.file)  # per link: index look-ups
    collection_owner = holder.select(holder.user).where(holder.id == KnowledgeFile.knowledge)
    admins = admin.select(admin.id).where(admin.role == "admin")
    return query.where(pw.Expression(file_owner, "=", collection_owner) |
                       pw.Expression(collection_owner, "IN", admins))


def _public_files():
    return exposed(KnowledgeFile.select(KnowledgeFile.file).join(Knowledge)
                   .where(Knowledge.is_public == True))  # noqa: E712


# ---------------------------------------------------------------- sharing on the wire

def public_from_grants(grants) -> bool:
    """An `access_grants` request list → public? `None` or `[]` is private; the public read grant makes
    it public; any other grant is refused (400) rather than silently dropped. Keys other than the three
    that define a grant (an echoed `id`, `resource_type`, ...) are ignored."""
    if grants is None:
        return False
    if not isinstance(grants, list):
        raise BadRequest("access_grants must be a list.")
    for grant in grants:
        if not isinstance(grant, dict):
            raise BadRequest("Each access grant must be an object.")
        if {key: grant.get(key) for key in PUBLIC_GRANT} != PUBLIC_GRANT:
            raise BadRequest(UNSUPPORTED_GRANT)
    return bool(grants)


def render_grants(resource: Knowledge | Preset) -> list[dict]:
    """Open WebUI's `access_grants` response list: the public read grant, or `[]` when private."""
    if not resource.is_public:
        return []
    kind = _RESOURCE_TYPE[type(resource)]
    grant_id = str(uuid.uuid5(_GRANT_IDS, f"{kind}:{resource.id}:public-read"))
    return [{"id": grant_id, "resource_type": kind, "resource_id": resource.id, **PUBLIC_GRANT,
             "created_at": resource.created_at}]
