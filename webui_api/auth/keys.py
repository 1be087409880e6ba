"""API keys made for services: named keys with an expiry, model and endpoint allowlists, per-minute limits."""
from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass
from typing import Any

import peewee as pw

from . import security
from .. import db, telemetry
from ..config import Settings
from ..db import ApiKey, User, write_transaction
from ..errors import ACCESS_PROHIBITED, BadRequest, Forbidden, NotFound, RateLimited, Unauthorized

log = logging.getLogger("webui_api.keys")

MAX_KEYS_PER_USER = 100
MAX_NAME_LENGTH = 100
MAX_LIST_ENTRIES = 100      # models or endpoints on one key
MAX_ENTRY_LENGTH = 256
MAX_PER_MINUTE = 2**31 - 1  # fits PostgreSQL's INTEGER
LATEST_EXPIRY = 253402300799  # 9999-12-31: later is a typo, not a plan
EXPIRED = "This API key has expired."
RESTRICTED_KEY = ("A restricted API key (expiry, allowlists or limits) cannot create, replace or delete API "
                  "keys; use a session or an unrestricted key.")
KEYS_DISABLED = "API key creation is not allowed in the environment."


@dataclass(frozen=True)
class Grant:
    """What one key may do, as this worker last read it (shared by threads, never changed)."""

    id: str
    user_id: str
    expires_at: int | None = None
    models: frozenset | None = None     # model ids as given; None: every model the user may use
    endpoints: tuple | None = None      # path prefixes; None: every route
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @classmethod
    def of(cls, row: ApiKey) -> "Grant":
        models = frozenset(row.allowed_models) if row.allowed_models is not None else None
        endpoints = tuple(row.allowed_endpoints) if row.allowed_endpoints is not None else None
        return cls(row.id, row.user_id, row.expires_at, models, endpoints, row.requests_per_minute,
                   row.tokens_per_minute)

    @property
    def limited(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute)

    @property
    def restricted(self) -> bool:
        return self.limited or any(v is not None for v in (self.expires_at, self.models, self.endpoints))


# --- checks on each request ----------------------------------------------------------------------

def path_allowed(path: str, prefixes) -> bool:
    """Open WebUI's endpoint rule: the path is an entry or lies under one (`/api/chat` allows
    `/api/chat/completions`, not `/api/chatter`); a trailing slash on an entry changes nothing."""
    for prefix in prefixes:
        prefix = prefix.rstrip("/")
        if path == prefix or path.startswith(prefix + "/"):
            return True
    return False


def check_key(settings: Settings, grant: Grant, path: str | None) -> None:
    """Refuse an expired key (401), or a path outside the global or the key's own allowlist (403)."""
    if grant.expires_at is not None and grant.expires_at <= time.time():
        raise Unauthorized(EXPIRED)
    if path is None:
        return
    restricted = settings.ENABLE_API_KEYS_ENDPOINT_RESTRICTIONS
    if restricted and not path_allowed(path, settings.API_KEYS_ALLOWED_ENDPOINTS):
        raise Forbidden(ACCESS_PROHIBITED)
    if grant.endpoints is not None and not path_allowed(path, grant.endpoints):
        raise Forbidden(f"This API key may not call {path}.")


# The key of the request being served (None: a JWT or no credential). Set on every request by the API
# layer, read by the model catalogue: every route that names a model goes through it.
_current: contextvars.ContextVar[Grant | None] = contextvars.ContextVar("webui_api_key", default=None)


def use(grant: Grant | None) -> None:
    _current.set(grant)


def counts_tokens() -> bool:
    """Whether the current key has a tokens-per-minute limit (answers must then be read for their usage)."""
    grant = _current.get()
    return grant is not None and bool(grant.tokens_per_minute)


def model_allowlist() -> frozenset | None:
    """The current key's allowed model ids, or None when every model the user may use is allowed."""
    grant = _current.get()
    return grant.models if grant is not None else None


# --- rate limits: one counter row per key and minute ---------------------------------------------

_COUNT_REQUEST = ("INSERT INTO api_key_usage (key_id, minute, requests, tokens) VALUES (?, ?, 1, 0) "
                  "ON CONFLICT (key_id, minute) DO UPDATE SET requests = api_key_usage.requests + 1 "
                  "RETURNING requests, tokens")
_COUNT_TOKENS = ("INSERT INTO api_key_usage (key_id, minute, requests, tokens) VALUES (?, ?, 0, ?) "
                 "ON CONFLICT (key_id, minute) DO UPDATE SET tokens = api_key_usage.tokens + excluded.tokens")
_FORGET_OLDER = "DELETE FROM api_key_usage WHERE key_id = ? AND minute < ?"


def admit(grant: Grant) -> None:
    """Count this request against the key's minute (one atomic UPSERT, so every worker and host shares the
    count); 429 with Retry-After beyond requests_per_minute, or once the minute's tokens reach the limit.
    Tokens are charged as the backend reports them (streams: before the last byte)."""
    if not grant.limited:
        return
    clock = time.time()
    minute = int(clock // 60)
    # fetchall: SQLite finishes (and commits) a RETURNING statement only once every row was read
    requests, tokens = db.execute(_COUNT_REQUEST, (grant.id, minute)).fetchall()[0]
    if requests == 1:
        db.execute(_FORGET_OLDER, (grant.id, minute))  # a new minute: the key's earlier rows are done with
    if grant.tokens_per_minute:
        telemetry.on_tokens(lambda used: charge_tokens(grant.id, used))
    over = ("requests" if grant.requests_per_minute and requests > grant.requests_per_minute else
            "tokens" if grant.tokens_per_minute and tokens >= grant.tokens_per_minute else None)
    if over:
        raise RateLimited(f"API rate limit exceeded: this key's {over} per minute are used up.",
                          headers={"Retry-After": str(60 - int(clock) % 60)})


def charge_tokens(key_id: str, tokens: int) -> None:
    """Add tokens the backend reported to the key's current minute."""
    if tokens <= 0:
        return
    try:
        db.execute(_COUNT_TOKENS, (key_id, int(time.time() // 60), int(tokens)))
    except pw.DatabaseError:  # the key was deleted meanwhile: nothing left to charge
        log.info("tokens of deleted key %s not charged", key_id)
    finally:
        db.close_request_connection()  # a stream runs after the request gave its connection back


# --- managing keys -----------------------------------------------------------------------------

def require_api_keys(settings: Settings) -> None:
    if not settings.ENABLE_API_KEYS:
        raise Forbidden(KEYS_DISABLED)


def require_unrestricted(grant: Grant | None) -> None:
    """A restricted key must not mint or drop keys: a new key would escape its limits."""
    if grant is not None and grant.restricted:
        raise Forbidden(RESTRICTED_KEY)


def create_key(settings: Settings, user: User, grant: Grant | None, form: dict) -> tuple[ApiKey, str]:
    """A named key; returns the row and the key itself, shown this once (only its hash is stored)."""
    require_api_keys(settings)
    require_unrestricted(grant)
    fields = _validated(form)
    key = security.new_api_key()
    with write_transaction():
        if ApiKey.select().where(ApiKey.user == user.id).count() >= MAX_KEYS_PER_USER:
            raise BadRequest(f"At most {MAX_KEYS_PER_USER} API keys per account; delete one first.")
        row = ApiKey.create(user=user.id, key_hash=security.hash_api_key(key),
                            masked=security.mask_api_key(key), **fields)
    return row, key


def list_keys(settings: Settings, user: User) -> list[ApiKey]:
    require_api_keys(settings)
    return list(ApiKey.select().where(ApiKey.user == user.id).order_by(ApiKey.created_at, ApiKey.id))


def delete_key(settings: Settings, user: User, grant: Grant | None, key_id: str) -> None:
    """Delete one of the caller's keys; another user's key is 404, as if it did not exist."""
    require_api_keys(settings)
    require_unrestricted(grant)
    if not ApiKey.delete().where(ApiKey.id == key_id, ApiKey.user == user.id).execute():
        raise NotFound("API key not found.")


def _validated(form: dict) -> dict:
    name = (form.get("name") or "").strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise BadRequest(f"name: give the key a name of 1 to {MAX_NAME_LENGTH} characters.")
    return {"name": name, "expires_at": _expiry(form.get("expires_at"), form.get("expires_in")),
            "allowed_models": _entries("allowed_models", form.get("allowed_models")),
            "allowed_endpoints": _endpoints(form.get("allowed_endpoints")),
            "requests_per_minute": _limit("requests_per_minute", form.get("requests_per_minute")),
            "tokens_per_minute": _limit("tokens_per_minute", form.get("tokens_per_minute"))}


def _expiry(expires_at: Any, expires_in: Any) -> int | None:
    if expires_at is not None and expires_in is not None:
        raise BadRequest("Give expires_at or expires_in, not both.")
    if expires_in is not None:
        if expires_in < 1:
            raise BadRequest("expires_in: a number of seconds, at least 1.")
        expires_at = int(time.time()) + expires_in
    if expires_at is not None and not time.time() < expires_at <= LATEST_EXPIRY:
        raise BadRequest("expires_at: epoch seconds in the future (before the year 10000).")
    return expires_at


def _entries(field: str, values: Any) -> list[str] | None:
    if values is None:
        return None
    entries = [value.strip() for value in values]
    if not entries or len(entries) > MAX_LIST_ENTRIES:
        raise BadRequest(f"{field}: 1 to {MAX_LIST_ENTRIES} entries, or null for no restriction.")
    if any(not entry or len(entry) > MAX_ENTRY_LENGTH for entry in entries):
        raise BadRequest(f"{field}: each entry must have 1 to {MAX_ENTRY_LENGTH} characters.")
    return list(dict.fromkeys(entries))


def _endpoints(values: Any) -> list[str] | None:
    entries = _entries("allowed_endpoints", values)
    if entries is not None and any(not entry.startswith("/") for entry in entries):
        raise BadRequest("allowed_endpoints: each entry is a path starting with / (e.g. /api/chat).")
    return entries


def _limit(field: str, value: Any) -> int | None:
    if value is not None and not 1 <= value <= MAX_PER_MINUTE:
        raise BadRequest(f"{field}: at least 1 (or null for no limit), at most {MAX_PER_MINUTE}.")
    return value
