"""Passwords (scrypt), HS256 JWTs (signed with itsdangerous) and API keys (stored as SHA-256)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import time
import uuid

from itsdangerous import BadSignature, Signer
from itsdangerous.signer import HMACAlgorithm

from ..errors import BadRequest

API_KEY_PREFIX = "sk-"
_JWT_HEADER = {"alg": "HS256", "typ": "JWT"}
MAX_PASSWORD_BYTES = 1024


# --- passwords ------------------------------------------------------------------------------

def hash_password(password: str, cost: int = 2**14) -> str:
    """Salted scrypt; the parameters travel with the hash so the cost can change later."""
    _check_password(password)
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=cost, r=8, p=1, maxmem=64 * 1024 * 1024)
    return f"scrypt${cost}$8$1${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, digest = stored.split("$")
        if algo != "scrypt":
            return False
        actual = hashlib.scrypt(password.encode()[:MAX_PASSWORD_BYTES], salt=_unb64(salt), n=int(n), r=int(r),
                                p=int(p), maxmem=64 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, _unb64(digest))


def _check_password(password: str) -> None:
    if not password:
        raise BadRequest("The password must not be empty.")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise BadRequest(f"The password is too long; use at most {MAX_PASSWORD_BYTES} bytes.")


# --- JWT ------------------------------------------------------------------------------------

def _signer(secret: str) -> Signer:
    # JWS compact form is `header.payload.signature` where signature = b64url(HMAC-SHA256(header.payload)):
    # exactly what an itsdangerous Signer produces with '.' as separator and no key derivation.
    return Signer(secret, sep=".", key_derivation="none", digest_method=hashlib.sha256,
                  algorithm=HMACAlgorithm(hashlib.sha256))


def issue_jwt(secret: str, user_id: str, expires_in: float | None) -> tuple[str, dict]:
    """A standard HS256 JWT with `id`, `iat`, `exp` (unless it never expires) and `jti`."""
    issued = math.floor(time.time() * 1000) / 1000  # ms precision so a password change can cut at an instant
    claims = {"id": user_id, "iat": issued, "jti": str(uuid.uuid4())}
    if expires_in is not None:
        claims["exp"] = int(issued + expires_in)
    signing_input = f"{_b64_json(_JWT_HEADER)}.{_b64_json(claims)}"
    return _signer(secret).sign(signing_input).decode(), claims


def decode_jwt(secret: str, token: str) -> dict | None:
    """The claims of a valid, unexpired HS256 token; None for anything else (alg none, bad signature...)."""
    try:
        header_b64, payload_b64, signature_b64 = token.split(".")
        if not all(map(_is_canonical_b64, (header_b64, payload_b64, signature_b64))):
            return None  # one token, one spelling: no padding, stray characters or unused bits set
        header = json.loads(_unb64(header_b64))
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            return None
        signed = _signer(secret).unsign(token.encode()).decode()
        claims = json.loads(_unb64(signed.split(".")[1]))
    except (ValueError, BadSignature, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("id"), str):
        return None
    exp = claims.get("exp")
    if exp is not None and (not isinstance(exp, (int, float)) or exp <= time.time()):
        return None
    return claims


# --- the first sign-up from another machine -------------------------------------------------

def setup_token(secret: str) -> str:
    """The token a first sign-up from another machine must show (printed in the start-up log). Derived from
    the secret key rather than stored: every worker and host already shares the key, so all agree on it
    without a table, and it is worthless once the first account exists."""
    return hmac.new(secret.encode(), b"webui-api first sign-up", hashlib.sha256).hexdigest()[:32]


def is_setup_token(secret: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(setup_token(secret).encode(), presented.strip().encode())


# --- API keys -------------------------------------------------------------------------------

def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_hex(16)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def mask_api_key(key: str) -> str:
    return f"{key[:7]}...{key[-4:]}"


def is_api_key(token: str) -> bool:
    return token.startswith(API_KEY_PREFIX)


# --- helpers --------------------------------------------------------------------------------

def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64_json(obj: dict) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _is_canonical_b64(text: str) -> bool:
    """Whether `text` is exactly how _b64 writes some bytes (base64 decoders also take padding, skip stray
    characters and ignore a last character's unused bits, so many spellings decode alike)."""
    try:
        return _B64URL.fullmatch(text) is not None and _b64(_unb64(text)) == text
    except ValueError:
        return False
