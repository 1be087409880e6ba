"""Accounts: sign-up, sign-in, tokens, API keys and admin user management."""
from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass

import peewee as pw

from . import keys, security
from ..config import Settings
from ..db import ApiKey, RevokedToken, SigninAttempt, StampedCache, User, now, write_transaction
from ..errors import (ACCESS_PROHIBITED, INVALID_TOKEN, BadRequest, Conflict, Forbidden, NotFound,
                     RateLimited, Unauthorized)

ROLES = ("pending", "user", "admin")
MAX_EMAIL_LENGTH = 254
_EMAIL = re.compile(r"^[^@\s]+@([^@\s]+\.[^@\s]+|localhost)$")
EMAIL_TAKEN = ("Uh-oh! This email is already registered. Sign in with your existing account or "
               "choose another email to start anew.")
WRONG_CREDENTIALS = ("The email or password provided is incorrect. Please check for typos and try "
                     "logging in again.")
WRONG_PASSWORD = "The password provided is incorrect. Please check for typos and try again."
SETUP_TOKEN_HEADER = "X-Setup-Token"
SETUP_TOKEN_REQUIRED = ("No account exists yet and the first one becomes admin: from another machine, sign up "
                        f"with the setup token printed in the server's start-up log in the {SETUP_TOKEN_HEADER} "
                        "header, or sign up from the server itself.")
LAST_ADMIN = "The last admin account cannot be demoted or deleted; promote another admin first."
# Users, key hashes and revoked token ids as this worker last read them; any change to those tables
# bumps the "auth" stamp (db.STAMP_TRIGGERS), so a revoked key or deleted user is refused at once.
_auth_rows = StampedCache("auth")


@dataclass
class Caller:
    """Who is making a request, and with which credential."""

    user: User
    claims: dict | None = None  # JWT claims; None when an API key was used
    key: keys.Grant | None = None  # the API key's rights; None with a JWT

    @property
    def via_api_key(self) -> bool:
        return self.claims is None


# --- sessions --------------------------------------------------------------------------------

@dataclass
class Session:
    """A signed-in user: the token (None when an API key was used), its expiry, and what they may do."""

    user: User
    token: str | None
    expires_at: int | None
    permissions: dict

    def __getattr__(self, name):
        if name == "user":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.user, name)


def session_of(settings: Settings, user: User, token: str | None, claims: dict) -> Session:
    return Session(user, token, claims.get("exp"), permissions(settings, user))


def permissions(settings: Settings, user: User) -> dict:
    return {
        "workspace": {"models": True, "knowledge": True, "prompts": False, "tools": False},
        "sharing": {"models": True, "public_models": True, "knowledge": True, "public_knowledge": True},
        "chat": {"controls": True, "file_upload": True, "delete": True, "edit": True},
        "features": {"api_keys": settings.ENABLE_API_KEYS, "web_search": False, "image_generation": False,
                     "code_interpreter": False},
    }


def issue_session(settings: Settings, user: User) -> Session:
    token, claims = security.issue_jwt(settings.WEBUI_SECRET_KEY, user.id, settings.JWT_EXPIRES_IN)
    return session_of(settings, user, token, claims)


# --- sign-up / sign-in -------------------------------------------------------------------------

def canonical_email(email: str) -> str:
    """The one form of an address (NFKC, lower-case): `ＢＯＢ@Example.com` is `bob@example.com`."""
    return unicodedata.normalize("NFKC", email or "").strip().lower()


def normalise_email(email: str) -> str:
    """An address to store, in its canonical form; refused with invisible or control characters (look-alike
    accounts) or past 254 characters (RFC 5321)."""
    email = canonical_email(email)
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.match(email) or any(map(_invisible, email)):
        raise BadRequest("The email format you entered is invalid. Please double-check and make sure "
                         "you're using a valid email address (e.g., yourname@domain.com).")
    return email


def _invisible(char: str) -> bool:
    # Cc control (NUL), Cf format (zero-width space/joiner, bidi marks), Cs/Co/Cn surrogate, private, unassigned
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn")


def signup_open(settings: Settings) -> bool:
    """Sign-up is open for the first account, and afterwards only when ENABLE_SIGNUP=true."""
    return settings.ENABLE_SIGNUP is True or awaiting_first_account()


def awaiting_first_account() -> bool:
    return not User.select().exists()


def signup(settings: Settings, name: str, email: str, password: str,
           profile_image_url: str | None = None, *, may_claim: bool) -> User:
    """A new account; the first becomes admin, so it is made only when `may_claim` (see may_claim_instance)."""
    email = normalise_email(email)
    password_hash = security.hash_password(password, settings.PASSWORD_HASH_COST)
    with write_transaction():  # the first-user check and the insert must not interleave across workers
        first = not User.select().exists()
        if not first and settings.ENABLE_SIGNUP is not True:
            raise Forbidden(ACCESS_PROHIBITED)
        if first and not may_claim:
            raise Forbidden(SETUP_TOKEN_REQUIRED)
        role = "admin" if first else settings.DEFAULT_USER_ROLE
        return _insert_user(name, email, password_hash, role, profile_image_url)


def may_claim_instance(settings: Settings, from_this_machine: bool, presented_token: str | None) -> bool:
    """Whoever makes the first account owns the instance: a sign-up from the server's own machine may, one
    from elsewhere only with the setup token from the start-up log."""
    return from_this_machine or security.is_setup_token(settings.WEBUI_SECRET_KEY, presented_token)


def _insert_user(name: str, email: str, password_hash: str, role: str, profile_image_url: str | None) -> User:
    if not (name or "").strip():
        raise BadRequest("The name must not be empty.")
    if User.select().where(User.email == email).exists():
        raise BadRequest(EMAIL_TAKEN)
    try:
        return User.create(name=name.strip(), email=email, password_hash=password_hash, role=role,
                           profile_image_url=profile_image_url)
    except pw.IntegrityError as exc:
        raise BadRequest(EMAIL_TAKEN) from exc


def signin(settings: Settings, email: str, password: str) -> User:
    email = canonical_email(email)
    _check_rate_limit(settings, email)
    user = User.get_or_none(User.email == email)
    # Hash even for unknown emails so response time does not reveal which accounts exist.
    stored = user.password_hash if user else _DUMMY_HASH.get(settings)
    if not security.verify_password(password or "", stored) or user is None:
        SigninAttempt.create(email=email, at=time.time())
        raise BadRequest(WRONG_CREDENTIALS)
    return user


def _check_rate_limit(settings: Settings, email: str) -> None:
    """Failed sign-ins per email in a rolling window, counted in SQLite so every worker sees them."""
    cutoff = time.time() - settings.SIGNIN_RATE_WINDOW
    SigninAttempt.delete().where(SigninAttempt.at < cutoff).execute()
    recent = SigninAttempt.select().where(SigninAttempt.email == email, SigninAttempt.at >= cutoff).count()
    if recent >= settings.SIGNIN_RATE_LIMIT:
        raise RateLimited("API rate limit exceeded",
                          headers={"Retry-After": str(int(settings.SIGNIN_RATE_WINDOW))})


class _DummyHash:
    """One throwaway hash per cost, computed lazily, to equalise timing for unknown emails."""

    def __init__(self):
        self._by_cost: dict[int, str] = {}

    def get(self, settings: Settings) -> str:
        cost = settings.PASSWORD_HASH_COST
        if cost not in self._by_cost:
            self._by_cost[cost] = security.hash_password("not-a-password", cost)
        return self._by_cost[cost]


_DUMMY_HASH = _DummyHash()


def signout(caller: Caller | None) -> None:
    """Revoke the JWT's jti for every worker; an API key stays valid (delete it to revoke it)."""
    if caller is None or caller.claims is None:
        return
    jti = caller.claims.get("jti")
    if jti:
        RevokedToken.insert(jti=jti, expires_at=caller.claims.get("exp")).on_conflict_ignore().execute()
    RevokedToken.delete().where(RevokedToken.expires_at < now()).execute()


def change_password(settings: Settings, user: User, current: str, new: str) -> None:
    if not security.verify_password(current or "", user.password_hash):
        raise BadRequest(WRONG_PASSWORD)
    set_password(settings, user, new)


def set_password(settings: Settings, user: User, new: str) -> None:
    """Store a new password and cut off every earlier JWT and the API key."""
    with write_transaction():
        user.password_hash = security.hash_password(new, settings.PASSWORD_HASH_COST)
        user.tokens_valid_after = time.time()
        user.updated_at = now()
        user.save()
        ApiKey.delete().where(ApiKey.user == user.id).execute()


# --- authentication ----------------------------------------------------------------------------

def authenticate(settings: Settings, token: str, path: str | None = None) -> Caller:
    """The caller behind a Bearer credential, or Unauthorized/Forbidden. `path`: the route asked for, which
    an API key must be allowed to call (endpoint allowlists)."""
    if security.is_api_key(token):
        return _authenticate_api_key(settings, token, path)
    claims = security.decode_jwt(settings.WEBUI_SECRET_KEY, token)
    if claims is None:
        raise Unauthorized(INVALID_TOKEN)
    rows = _auth_rows.current()
    user = _cached_user(claims["id"], rows)
    if user is None or float(claims.get("iat") or 0) < user.tokens_valid_after:
        raise Unauthorized(INVALID_TOKEN)
    jti = claims.get("jti")
    if jti and _auth_rows.get(("revoked", jti), lambda: RevokedToken.select().where(
            RevokedToken.jti == jti).exists(), rows):
        raise Unauthorized(INVALID_TOKEN)
    _touch(user)
    return Caller(user=user, claims=claims)


def _authenticate_api_key(settings: Settings, key: str, path: str | None) -> Caller:
    key_hash, rows = security.hash_api_key(key), _auth_rows.current()
    grant = _auth_rows.get(("key", key_hash), lambda: _grant_of(key_hash), rows)
    user = _cached_user(grant.user_id, rows) if grant else None
    if user is None:
        raise Unauthorized(INVALID_TOKEN)
    if not settings.ENABLE_API_KEYS:
        raise Forbidden("Use of API key is not enabled in the environment.")
    keys.check_key(settings, grant, path)
    _touch(user)
    return Caller(user=user, key=grant)


def _grant_of(key_hash: str) -> keys.Grant | None:
    row = ApiKey.get_or_none(ApiKey.key_hash == key_hash)
    return keys.Grant.of(row) if row is not None else None


def _cached_user(user_id: str, rows: dict) -> User | None:
    """The user row as this worker last read it (shared by threads: never changed without saving)."""
    return _auth_rows.get(("user", user_id), lambda: User.get_or_none(User.id == user_id), rows)


def _touch(user: User) -> None:
    """Record activity at most once a minute, so reads do not turn into writes."""
    stamp = now()
    if stamp - (user.last_active_at or 0) >= 60:
        User.update(last_active_at=stamp).where(User.id == user.id).execute()
        user.last_active_at = stamp


# --- the default API key (Open WebUI's /auths/api_key); named keys are in keys.py -------------------

def create_api_key(settings: Settings, user: User, grant: keys.Grant | None = None) -> str:
    """A new default key replaces the old default key (named keys stay); only its hash is stored, so this is
    the one time it is shown."""
    keys.require_api_keys(settings)
    keys.require_unrestricted(grant)
    key = security.new_api_key()
    with write_transaction():
        ApiKey.delete().where(_default_key(user)).execute()
        ApiKey.create(user=user.id, is_default=True, key_hash=security.hash_api_key(key),
                      masked=security.mask_api_key(key))
    return key


def get_api_key(settings: Settings, user: User) -> str:
    keys.require_api_keys(settings)
    row = ApiKey.get_or_none(_default_key(user))
    if row is None:
        raise NotFound("No API key exists for this account. Create one with POST /api/v1/auths/api_key.")
    return row.masked


def delete_api_key(settings: Settings, user: User, grant: keys.Grant | None = None) -> None:
    keys.require_api_keys(settings)
    keys.require_unrestricted(grant)
    ApiKey.delete().where(_default_key(user)).execute()


def _default_key(user: User):
    return (ApiKey.user == user.id) & (ApiKey.is_default == True)  # noqa: E712


# --- admin user management ---------------------------------------------------------------------

def add_user(settings: Settings, name: str, email: str, password: str, role: str = "pending",
             profile_image_url: str | None = None) -> User:
    _check_role(role)
    email = normalise_email(email)
    password_hash = security.hash_password(password, settings.PASSWORD_HASH_COST)
    with write_transaction():
        return _insert_user(name, email, password_hash, role, profile_image_url)


def ensure_initial_admin(settings: Settings) -> User | None:
    """Create the admin from WEBUI_ADMIN_EMAIL/PASSWORD when the database has no user yet."""
    if not (settings.WEBUI_ADMIN_EMAIL and settings.WEBUI_ADMIN_PASSWORD):
        return None
    email = normalise_email(settings.WEBUI_ADMIN_EMAIL)
    password_hash = security.hash_password(settings.WEBUI_ADMIN_PASSWORD, settings.PASSWORD_HASH_COST)
    with write_transaction():
        if User.select().exists():
            return None
        return _insert_user(settings.WEBUI_ADMIN_NAME, email, password_hash, "admin", None)


def list_users(query: str | None = None, page: int = 1, per_page: int = 30) -> tuple[list[User], int]:
    select = User.select()
    if query:
        needle = User.name.db_value(f"%{query.lower()}%")  # LOWER() hides the field: apply its NUL rule here
        select = select.where(pw.fn.LOWER(User.name) ** needle | (User.email ** needle))
    total = select.count()
    rows = select.order_by(User.created_at.desc(), User.id).paginate(max(page, 1), per_page)
    return list(rows), total


def get_user(user_id: str) -> User:
    user = User.get_or_none(User.id == user_id)
    if user is None:
        raise NotFound("User not found.")
    return user


def update_user(settings: Settings, user_id: str, changes: dict) -> User:
    """Apply an admin's changes (role, name, email, password, profile_image_url) to one account."""
    with write_transaction():
        user = get_user(user_id)
        if "role" in changes and changes["role"] is not None:
            _check_role(changes["role"])
            if user.role == "admin" and changes["role"] != "admin":
                _forbid_last_admin(user)
            user.role = changes["role"]
        if changes.get("email") is not None:
            _change_email(user, changes["email"])
        for key in ("name", "profile_image_url"):
            if changes.get(key) is not None:
                setattr(user, key, changes[key])
        user.updated_at = now()
        user.save()
    if changes.get("password"):
        set_password(settings, user, changes["password"])
    return user


def _change_email(user: User, email: str) -> None:
    email = normalise_email(email)
    if email != user.email and User.select().where(User.email == email).exists():
        raise Conflict(EMAIL_TAKEN)
    user.email = email


def delete_user(user_id: str, purge=None) -> None:
    """Delete an account; `purge(user)` first removes what lives outside SQLite (uploads, vectors)."""
    user = get_user(user_id)
    if user.role == "admin":
        _forbid_last_admin(user)
    if purge is not None:
        purge(user)
    with write_transaction():
        user = get_user(user_id)
        if user.role == "admin":
            _forbid_last_admin(user)
        user.delete_instance(recursive=False)  # rows the user owns go by ON DELETE CASCADE


def _forbid_last_admin(user: User) -> None:
    others = User.select().where(User.role == "admin", User.id != user.id).count()
    if others == 0:
        raise Forbidden(LAST_ADMIN)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise BadRequest(f"Unknown role {role!r}; use one of: {', '.join(ROLES)}.")
