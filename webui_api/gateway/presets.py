"""Workspace models ("presets"): stored rows, their shapes and the create/update/toggle/delete service."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from .. import db
from ..auth import policy
from ..errors import BadRequest, Conflict, Forbidden, Unprocessable

MAX_ID_LENGTH = 256
PAGE_SIZE = 30
ID_TOO_LONG = ("The model id is too long. Please make sure your model id is less than 256 characters "
               "long.")
ID_TAKEN = "Uh-oh! This model id is already registered. Please choose another model id string."
# Params a reader of a shared preset may see; everything else (system prompt, sampling) stays private.
PUBLIC_PARAM_KEYS = ("model_controls", "compact_token_threshold")
_ID_RE = re.compile(r"^\S+$")
_ORDER_KEYS = {"name": lambda r: r.name.lower(), "created_at": lambda r: r.created_at,
               "updated_at": lambda r: r.updated_at}


# --- visibility --------------------------------------------------------------------------------

def get_row(preset_id: str) -> db.Preset | None:
    return db.Preset.get_or_none(db.Preset.id == preset_id)


_cached_rows = db.StampedCache("presets")  # every write to the preset table bumps the stamp


def lookup(preset_id: str) -> db.Preset | None:
    """get_row for the chat path, from this worker's cache: shared between threads, so never change it."""
    return _cached_rows.get(preset_id, lambda: get_row(preset_id))


def usable_presets(user) -> list[db.Preset]:
    """Active presets (rows with a base model) the user may chat with, in creation order."""
    query = db.Preset.select().where(db.Preset.is_active == True,  # noqa: E712 (peewee expression)
                                     db.Preset.base_model_id.is_null(False))
    return policy.load_grants(list(policy.readable_rows(user, query).order_by(db.Preset.created_at, db.Preset.id)))


def overrides() -> dict[str, db.Preset]:
    """Rows without a base model: they rename, hide or configure the base model with the same id."""
    query = db.Preset.select().where(db.Preset.base_model_id.is_null(True))
    return {row.id: row for row in policy.load_grants(list(query))}


def _readable(user) -> Iterable[db.Preset]:
    return policy.readable_rows(user, db.Preset.select(db.Preset, db.User).join(db.User))


def _visible_or_404(user, preset_id: str) -> db.Preset:
    return policy.readable_or_404(user, get_row(preset_id) if isinstance(preset_id, str) else None)


def _writable(user, preset_id: str) -> db.Preset:
    return policy.writable_or_403(user, get_row(preset_id) if isinstance(preset_id, str) else None)


# --- shapes ------------------------------------------------------------------------------------

@dataclass
class Seen:
    """A preset as one caller sees it: without write access, its params and its owner's email stay hidden."""

    row: db.Preset
    write_access: bool

    def __getattr__(self, name):
        if name == "row":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.row, name)


def seen_by(user, row: db.Preset) -> Seen:
    return Seen(row, policy.can_write(user, row))


def public_info(row: db.Preset) -> dict:
    """What `GET /api/models` shows under `info` (the stored object): no system prompt, no sampling values."""
    return {
        "id": row.id, "user_id": row.user_id, "base_model_id": row.base_model_id, "name": row.name,
        "params": {k: v for k, v in (row.params or {}).items() if k in PUBLIC_PARAM_KEYS},
        "meta": {k: v for k, v in (row.meta or {}).items() if k != "profile_image_url"},
        "access_grants": policy.render_grants(row), "is_public": bool(row.is_public),
        "is_active": bool(row.is_active), "updated_at": row.updated_at, "created_at": row.created_at,
    }


def tags(row: db.Preset) -> list[dict]:
    raw = (row.meta or {}).get("tags") or []
    out = []
    for tag in raw if isinstance(raw, list) else []:
        name = tag.get("name") if isinstance(tag, dict) else tag
        if isinstance(name, str) and name:
            out.append({"name": name})
    return out


# --- form handling -----------------------------------------------------------------------------

def wanted_sharing(form: dict) -> policy.Sharing | None:
    """Who the form shares the preset with: `is_public` (public read on or off, named grants kept) or Open
    WebUI's `access_grants` (the whole list); None = not given. Reads the database: call in the transaction."""
    if form.get("is_public") is not None:
        return policy.Sharing(bool(form["is_public"]), None)
    grants = form.get("access_grants")
    return None if grants is None else policy.sharing_from_grants(grants)


def check_id(preset_id: Any) -> str:
    if not isinstance(preset_id, str) or not _ID_RE.match(preset_id):
        raise Unprocessable("`id` must be a non-empty string without whitespace.")
    if len(preset_id) > MAX_ID_LENGTH:
        raise BadRequest(ID_TOO_LONG)
    return preset_id


def _check_form(form: dict) -> None:
    for key in ("meta", "params"):
        if form.get(key) is not None and not isinstance(form[key], dict):
            raise Unprocessable(f"`{key}` must be an object.")
    system = (form.get("params") or {}).get("system")
    if system is not None and not isinstance(system, str):
        raise Unprocessable("`params.system` must be a string.")
    base = form.get("base_model_id")
    if base is not None and (not isinstance(base, str) or not base.strip()):
        raise Unprocessable("`base_model_id` must be a model id or null.")


def _clean_meta(meta: dict) -> dict:
    """Drop inline file content from knowledge items: it is read from storage at chat time."""
    meta = dict(meta)
    knowledge = meta.get("knowledge")
    if isinstance(knowledge, list):
        meta["knowledge"] = [{k: v for k, v in item.items() if k != "data"} if isinstance(item, dict)
                             else item for item in knowledge]
    return meta


# --- service -----------------------------------------------------------------------------------

def create(user, form: dict, taken_ids: Iterable[str] = ()) -> db.Preset:
    """Store a new preset owned by `user`. `taken_ids`: base model ids a preset may not shadow."""
    preset_id = check_id(form.get("id"))
    _check_form(form)
    base = form.get("base_model_id")
    if base == preset_id:
        base = None
    if base is None and not policy.is_admin(user):
        raise Forbidden("Only administrators may configure a base model directly; set `base_model_id`.")
    if base is not None and preset_id in set(taken_ids):
        raise Conflict(ID_TAKEN)
    now = db.now()
    with db.write_transaction():
        if get_row(preset_id) is not None:
            raise Conflict(ID_TAKEN)
        sharing = wanted_sharing(form) or policy.Sharing(False)
        row = db.Preset.create(
            id=preset_id, user=user.id, base_model_id=base, name=form.get("name") or preset_id,
            meta=_clean_meta(form.get("meta") or {}), params=dict(form.get("params") or {}),
            is_public=sharing.public, is_active=form.get("is_active", True) is not False,
            created_at=now, updated_at=now)
        policy.store_sharing(row, sharing)
    return row


def get(user, preset_id: str) -> Seen:
    return seen_by(user, _visible_or_404(user, preset_id))


def update(user, preset_id: str, form: dict) -> db.Preset:
    """Replace name/meta/params (as Open WebUI does); absent base, access and is_active are kept."""
    _check_form(form)
    with db.write_transaction():
        row = _writable(user, preset_id)
        if "base_model_id" in form:
            base = form["base_model_id"]
            base = None if base == row.id else base
            if base is None and row.base_model_id is not None and not policy.is_admin(user):
                raise Forbidden("Only administrators may clear `base_model_id`.")
            row.base_model_id = base
        if form.get("name"):
            row.name = form["name"]
        if form.get("meta") is not None:
            kept = {k: v for k, v in (row.meta or {}).items()
                    if k in ("profile_image_url", "background_image_url", "voice_avatar")}
            row.meta = {**kept, **_clean_meta(form["meta"])}
        if form.get("params") is not None:
            params = dict(form["params"])
            if "model_controls" not in params and "model_controls" in (row.params or {}):
                params["model_controls"] = row.params["model_controls"]
            row.params = params
        sharing = wanted_sharing(form)
        if sharing is not None:
            policy.store_sharing(row, sharing)
        if form.get("is_active") is not None:
            row.is_active = bool(form["is_active"])
        row.updated_at = db.now()
        row.save()
    return row


def set_access(user, preset_id: str, form: dict) -> db.Preset:
    """Replace the access level (`access_grants` list or `is_public`); `[]` makes the model private."""
    if form.get("is_public") is None and form.get("access_grants") is None:
        raise Unprocessable("Give `access_grants` (a list) or `is_public`.")
    with db.write_transaction():
        row = _writable(user, preset_id)
        policy.store_sharing(row, wanted_sharing(form))
        row.updated_at = db.now()
        row.save()
    return row


def toggle(user, preset_id: str) -> db.Preset:
    with db.write_transaction():
        row = _writable(user, preset_id)
        row.is_active = not row.is_active
        row.updated_at = db.now()
        row.save()
    return row


def delete(user, preset_id: str) -> bool:
    with db.write_transaction():
        row = _writable(user, preset_id)
        row.delete_instance()
    return True


def list_page(user, query: str | None = None, view_option: str | None = None, tag: str | None = None,
              order_by: str | None = None, direction: str | None = None, page: int | None = 1
              ) -> tuple[list[Seen], int]:
    """`/api/v1/models/list`: presets (rows with a base) the caller owns or may read, inactive included."""
    rows = [r for r in _readable(user) if r.base_model_id is not None]
    rows = _filter(rows, user, query, view_option, tag)
    key = _ORDER_KEYS.get(order_by or "", _ORDER_KEYS["updated_at"])
    rows.sort(key=lambda r: (key(r), r.id), reverse=(direction or "").lower() != "asc")
    total = len(rows)
    page = max(1, page or 1)
    return _seen_by(user, rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]), total


def list_all(user) -> list[Seen]:
    """Every preset the caller may read, oldest first (the older `GET /api/v1/models/` array)."""
    rows = [r for r in _readable(user) if r.base_model_id is not None]
    rows.sort(key=lambda r: (r.created_at, r.id))
    return _seen_by(user, rows)


def _seen_by(user, rows: list[db.Preset]) -> list[Seen]:
    """seen_by for a listing: grants and write access read in one query each, not one per row."""
    writable = policy.writable_ids(user, policy.load_grants(rows))
    return [Seen(row, row.id in writable) for row in rows]


def list_overrides() -> list[db.Preset]:
    """Rows without a base model (admin view, `GET /api/v1/models/base`)."""
    return sorted(overrides().values(), key=lambda r: r.id)


def _filter(rows: list, user, query, view_option, tag) -> list:
    if view_option == "created":
        rows = [r for r in rows if r.user_id == user.id]
    elif view_option == "shared":
        rows = [r for r in rows if r.user_id != user.id]
    if tag:
        rows = [r for r in rows if tag.lower() in (t["name"].lower() for t in tags(r))]
    if query:
        needle = query.lower()
        rows = [r for r in rows if any(needle in (v or "").lower()
                                       for v in (r.name, r.base_model_id, r.id, r.user.name, r.user.email))]
    return rows
