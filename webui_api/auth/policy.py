"""Who may read and change files, knowledge collections and presets; how sharing is read, stored and shown."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import peewee as pw

from ..db import AccessGrant, File, Group, GroupMember, Knowledge, KnowledgeFile, Preset, User
from ..errors import BadRequest, Forbidden, NotFound
from ..upstream import without_locations

# Open WebUI's grant shape. Everyone-may-read is the `*` grant, kept as the row's `is_public`; grants to a
# user or a group (read, or write, which includes read here) are rows of `access_grant`. No grant = private.
PUBLIC_GRANT = {"principal_type": "user", "principal_id": "*", "permission": "read"}
PRINCIPAL_TYPES = ("user", "group")
PERMISSIONS = ("read", "write")
MAX_GRANTS = 100  # per collection or preset: each is checked against the users and groups that exist
UNSUPPORTED_GRANT = ('An access grant is {"principal_type": "user" or "group", "principal_id": <user or group '
                     'id>, "permission": "read" or "write"}; everyone ("*") may be granted read only.')
# Open WebUI's grant ids are UUIDs; the public grant's is derived from the resource so it stays the same.
_GRANT_IDS = uuid.UUID("6f1c1d52-8f0e-4d0a-9b7e-3a2f4c5d6e7f")
_RESOURCE_TYPE = {Knowledge: "knowledge", Preset: "model"}
_READ_ONLY = {  # the 403 a reader gets when trying to change what they may only see
    File: "Only the file's owner or an admin may change or delete it.",
    Knowledge: "This knowledge collection is read-only for you; only its owner, an admin or a holder of a "
               "write grant may change it.",
    Preset: "Only the owner, an administrator or a holder of a write grant may change this model.",
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
    """Owner, admin, or a write grant to the user or one of their groups. Files have no grants of their
    own: a file is changed by its owner only, and read through the collections it is in."""
    if _owns(user, resource):
        return True
    return not isinstance(resource, File) and _granted_ids(user, type(resource), ("write",)).where(
        AccessGrant.resource_id == resource.id).exists()


def can_read(user: User, resource: File | Knowledge | Preset) -> bool:
    """The rule `readable_rows` applies in SQL, for one row: owned, public, granted (read or write), or a file
    shown by such a collection. Asked of the database each time, so a revoked grant or membership counts at
    once."""
    if _owns(user, resource):
        return True
    if isinstance(resource, File):  # through the file's own links (an index look-up), not all readable files
        readable_collections = readable_rows(user, Knowledge.select(Knowledge.id))
        return _files_shown_by(readable_collections).where(KnowledgeFile.file == resource.id).exists()
    return bool(resource.is_public) or _granted_ids(user, type(resource), PERMISSIONS).where(
        AccessGrant.resource_id == resource.id).exists()


def _owns(user: User, resource) -> bool:
    return is_admin(user) or resource.user_id == user.id


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
        return _files_shown_by(Knowledge.select(Knowledge.id).where(Knowledge.is_public == True)).where(  # noqa: E712
            KnowledgeFile.file == resource.id).exists()
    return bool(resource.is_public)


# ---------------------------------------------------------------- many rows (the same rules in SQL)

def readable_rows(user: User, query):
    """`query` (a select of File, Knowledge or Preset) narrowed to the rows the user may read: the rule
    `can_read` asks of one row."""
    if is_admin(user):
        return query
    model = query.model
    if model is File:
        return query.where((File.user == user.id) |
                           File.id.in_(_files_shown_by(readable_rows(user, Knowledge.select(Knowledge.id)))))
    return query.where((model.user == user.id) | (model.is_public == True) |  # noqa: E712
                       model.id.in_(_granted_ids(user, model, PERMISSIONS)))


def writable_rows(user: User, query):
    """`query` narrowed to the rows `can_write` allows: the caller's own, granted for writing, or all for
    an admin."""
    if is_admin(user):
        return query
    model = query.model
    owned = model.user == user.id
    return query.where(owned if model is File else owned | model.id.in_(_granted_ids(user, model, ("write",))))


def writable_ids(user: User, rows: list) -> set[str]:
    """The ids among `rows` (collections or presets of one kind) that `can_write` allows, in one query at
    most: a listing's `write_access` without a query per row."""
    unowned = [row.id for row in rows if not _owns(user, row)]
    if not unowned:
        return {row.id for row in rows}
    granted = {row.resource_id for row in _granted_ids(user, type(rows[0]), ("write",))
               .where(AccessGrant.resource_id.in_(unowned))}
    return {row.id for row in rows if _owns(user, row) or row.id in granted}


def _granted_ids(user: User, model, permissions: tuple[str, ...]):
    """Ids of the `model` rows granted to the user, directly or through a group, with one of `permissions`."""
    groups = GroupMember.select(GroupMember.group).where(GroupMember.user == user.id)
    to_user = (AccessGrant.principal_type == "user") & (AccessGrant.principal_id == user.id)
    to_groups = (AccessGrant.principal_type == "group") & AccessGrant.principal_id.in_(groups)
    return AccessGrant.select(AccessGrant.resource_id).where(
        AccessGrant.resource_type == _RESOURCE_TYPE[model], AccessGrant.permission.in_(permissions),
        to_user | to_groups)


def exposed(query):
    """`query` (over KnowledgeFile) narrowed to the links that show their file to the collection's readers:
    those whose file owner could make them today — the collection's owner, a holder of a write grant on it —
    or whose collection an admin owns (`linkable_or_403`); re-checked at every read, so a link made before
    that rule, by an admin since demoted, or under a write grant since revoked shows nothing."""
    linked, holder, admin = File.alias(), Knowledge.alias(), User.alias()
    file_owner = linked.select(linked.user).where(linked.id == KnowledgeFile.file)  # per link: index look-ups
    collection_owner = holder.select(holder.user).where(holder.id == KnowledgeFile.knowledge)
    admins = admin.select(admin.id).where(admin.role == "admin")
    return query.where(pw.Expression(file_owner, "=", collection_owner) |
                       pw.Expression(collection_owner, "IN", admins) |
                       pw.fn.EXISTS(_write_grants_of(file_owner)))


def _write_grants_of(file_owner):
    """The write grants on the link's collection held by the link's file owner, directly or by group."""
    grant, member = AccessGrant.alias(), GroupMember.alias()
    groups = member.select(member.group).where(pw.Expression(member.user, "=", file_owner))
    to_owner = (grant.principal_type == "user") & pw.Expression(grant.principal_id, "=", file_owner)
    to_groups = (grant.principal_type == "group") & grant.principal_id.in_(groups)
    return grant.select(grant.id).where(grant.resource_type == "knowledge", grant.permission == "write",
                                        grant.resource_id == KnowledgeFile.knowledge, to_owner | to_groups)


def _files_shown_by(knowledge_ids):
    """File ids (a select over KnowledgeFile) that the collections `knowledge_ids` show their readers."""
    return exposed(KnowledgeFile.select(KnowledgeFile.file).where(KnowledgeFile.knowledge.in_(knowledge_ids)))


# ---------------------------------------------------------------- sharing on the wire and in the database

@dataclass(frozen=True)
class Sharing:
    """Who a collection or preset is shared with: everyone (read), and named grants as (principal_type,
    principal_id, permission); `grants` None leaves the stored ones as they are (`is_public` alone)."""

    public: bool
    grants: tuple[tuple[str, str, str], ...] | None = ()


def sharing_from_grants(grants) -> Sharing:
    """An `access_grants` request list → Sharing. `None` or `[]` is private; malformed grants and unknown
    users or groups are refused (400) rather than silently dropped. Keys other than the three that define a
    grant (an echoed `id`, `resource_type`, ...) are ignored."""
    if grants is None:
        return Sharing(False)
    if not isinstance(grants, list):
        raise BadRequest("access_grants must be a list.")
    if len(grants) > MAX_GRANTS:
        raise BadRequest(f"At most {MAX_GRANTS} access grants per object.")
    keys = {_grant_key(grant) for grant in grants}
    named = tuple(sorted(key for key in keys if key != tuple(PUBLIC_GRANT.values())))
    _check_principals(named)
    return Sharing(len(named) < len(keys), named)


def _grant_key(grant) -> tuple[str, str, str]:
    if not isinstance(grant, dict):
        raise BadRequest("Each access grant must be an object.")
    key = tuple(grant.get(name) for name in PUBLIC_GRANT)
    principal_type, principal_id, permission = key
    if (principal_type not in PRINCIPAL_TYPES or permission not in PERMISSIONS or not isinstance(principal_id, str)
            or not principal_id or (principal_id == "*" and key != tuple(PUBLIC_GRANT.values()))):
        raise BadRequest(UNSUPPORTED_GRANT)
    return key


def _check_principals(grants) -> None:
    for principal_type, model in (("user", User), ("group", Group)):
        wanted = {principal_id for kind, principal_id, _ in grants if kind == principal_type}
        if not wanted:
            continue
        unknown = sorted(wanted - {row.id for row in model.select(model.id).where(model.id.in_(wanted))})
        if unknown:
            raise BadRequest(f"access_grants name no such {principal_type}: {', '.join(unknown[:10])}")


def store_sharing(resource: Knowledge | Preset, sharing: Sharing) -> None:
    """Make `sharing` the resource's, in the caller's write transaction: `is_public` on the row, and the
    named grants replacing the stored ones (unchanged grants keep their ids)."""
    model, kind = type(resource), _RESOURCE_TYPE[type(resource)]
    model.update(is_public=sharing.public).where(model.id == resource.id).execute()
    resource.is_public = sharing.public
    if sharing.grants is None:
        return
    stored = {(g.principal_type, g.principal_id, g.permission): g.id for g in _stored_grants(kind, resource.id)}
    gone = [grant_id for key, grant_id in stored.items() if key not in sharing.grants]
    if gone:
        AccessGrant.delete().where(AccessGrant.id.in_(gone)).execute()
    new = [key for key in sharing.grants if key not in stored]
    if new:
        AccessGrant.insert_many([{"id": str(uuid.uuid4()), "resource_type": kind, "resource_id": resource.id,
                                  "principal_type": t, "principal_id": i, "permission": p} for t, i, p in new]
                                ).execute()


def load_grants(rows: list) -> list:
    """Fetch the named grants of `rows` (freshly read collections or presets of one kind, never cached rows
    other threads share) in one query and keep them on each row for `render_grants`; returns `rows`."""
    if not rows:
        return rows
    by_id: dict[str, list] = {row.id: [] for row in rows}
    for grant in AccessGrant.select().where(AccessGrant.resource_type == _RESOURCE_TYPE[type(rows[0])],
                                            AccessGrant.resource_id.in_(list(by_id))) \
            .order_by(AccessGrant.created_at, AccessGrant.id):
        by_id[grant.resource_id].append(grant)
    for row in rows:
        row._named_grants = by_id[row.id]
    return rows


def _stored_grants(kind: str, resource_id: str):
    return AccessGrant.select().where(AccessGrant.resource_type == kind, AccessGrant.resource_id == resource_id) \
        .order_by(AccessGrant.created_at, AccessGrant.id)


def render_grants(resource: Knowledge | Preset) -> list[dict]:
    """Open WebUI's `access_grants` response list: the public read grant if public, then the named ones."""
    kind = _RESOURCE_TYPE[type(resource)]
    shown = [{"id": grant.id, "resource_type": kind, "resource_id": resource.id,
              "principal_type": grant.principal_type, "principal_id": grant.principal_id,
              "permission": grant.permission, "created_at": grant.created_at}
             for grant in _named_grants(kind, resource)]
    if not resource.is_public:
        return shown
    grant_id = str(uuid.uuid5(_GRANT_IDS, f"{kind}:{resource.id}:public-read"))
    return [{"id": grant_id, "resource_type": kind, "resource_id": resource.id, **PUBLIC_GRANT,
             "created_at": resource.created_at}, *shown]


def _named_grants(kind: str, resource) -> list:
    preloaded = getattr(resource, "_named_grants", None)  # a listing's load_grants
    return list(_stored_grants(kind, resource.id)) if preloaded is None else preloaded
