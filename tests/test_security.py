"""Password hashing, HS256 JWTs interoperable with PyJWT, API key format."""
import base64
import json
import time

import jwt
import pytest

from webui_api.auth import security
from webui_api.errors import BadRequest

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
SECRET = "s3cret-for-tests-that-is-long-enough-for-hs256"


def test_password_hash_is_salted_and_verifies():
    first = security.hash_password("hunter2", cost=1024)
    second = security.hash_password("hunter2", cost=1024)
    assert first != second and first.startswith("scrypt$1024$")
    assert security.verify_password("hunter2", first)
    assert not security.verify_password("hunter3", first)
    assert not security.verify_password("hunter2", "garbage")


def test_empty_or_huge_password_is_rejected():
    with pytest.raises(BadRequest):
        security.hash_password("", cost=1024)
    with pytest.raises(BadRequest):
        security.hash_password("x" * 2000, cost=1024)


def test_our_jwt_decodes_with_pyjwt():
    token, claims = security.issue_jwt(SECRET, "user-1", 3600)
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert decoded["id"] == "user-1" and decoded["jti"] == claims["jti"]
    assert decoded["exp"] - decoded["iat"] == pytest.approx(3600, abs=1)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}


def test_pyjwt_minted_token_is_accepted():
    token = jwt.encode({"id": "user-2", "iat": int(time.time()), "exp": int(time.time()) + 60, "jti": "j"},
                       SECRET, algorithm="HS256")
    assert security.decode_jwt(SECRET, token)["id"] == "user-2"


def test_token_without_expiry_never_expires():
    token, claims = security.issue_jwt(SECRET, "u", None)
    assert "exp" not in claims
    assert security.decode_jwt(SECRET, token)["id"] == "u"


def _b64(obj):
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("token", [
    jwt.encode({"id": "u", "exp": int(time.time()) - 5}, SECRET, algorithm="HS256"),        # expired
    jwt.encode({"id": "u"}, "another-secret-" + "k" * 40, algorithm="HS256"),               # wrong key
    jwt.encode({"id": "u"}, SECRET, algorithm="HS512"),                                     # wrong algorithm
    _b64({"alg": "none", "typ": "JWT"}) + "." + _b64({"id": "u"}) + ".",                    # alg none
    jwt.encode({"sub": "u"}, SECRET, algorithm="HS256"),                                    # no id claim
    "not-a-token", "a.b.c", "",
])
def test_invalid_tokens_are_refused(token):
    assert security.decode_jwt(SECRET, token) is None


def test_tampered_payload_is_refused():
    token, _ = security.issue_jwt(SECRET, "user-1", 3600)
    header, _, signature = token.split(".")
    forged = f"{header}.{_b64({'id': 'admin', 'iat': 0})}.{signature}"
    assert security.decode_jwt(SECRET, forged) is None


def test_api_key_format_hash_and_mask():
    key = security.new_api_key()
    assert key.startswith("sk-") and len(key) == 35 and int(key[3:], 16) >= 0
    assert security.hash_api_key(key) != key and len(security.hash_api_key(key)) == 64
    masked = security.mask_api_key(key)
    assert masked.startswith("sk-") and key[-4:] in masked and key not in masked


def _respell_last_char(part: str) -> str:
    """The same bytes spelled differently: the last character's unused low bits set."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare_bits = {2: 4, 3: 2}[len(part) % 4]  # chars in the last group -> bits the decoder ignores
    index = alphabet.index(part[-1])
    return part[:-1] + alphabet[index | ((1 << spare_bits) - 1)]


@pytest.mark.parametrize("respell", [
    lambda h, p, s: (h, p, s + "="),                      # padding on the signature (the audit's case)
    lambda h, p, s: (h, p, s + "=="),
    lambda h, p, s: (h + "=", p, s),                      # padding on the header
    lambda h, p, s: (h, p[:4] + "!" + p[4:], s),           # a character base64 decoders skip
    lambda h, p, s: (h, p, s[:10] + "\n" + s[10:]),
    lambda h, p, s: (h, p, _respell_last_char(s)),        # unused bits set: decodes to the same signature
])
def test_only_the_canonical_spelling_of_a_valid_token_is_accepted(respell):
    token, _ = security.issue_jwt(SECRET, "user-1", 3600)
    assert security.decode_jwt(SECRET, token)["id"] == "user-1"
    respelled = ".".join(respell(*token.split(".")))
    assert respelled != token
    assert security.decode_jwt(SECRET, respelled) is None
