"""/api/v1/auths: sign-up gating (the setup token of a first sign-up from elsewhere), sign-in, tokens, API
keys, rate limit."""
import re
import time

import jwt
import pytest

from webui_api.db import User
from webui_api.gateway.readiness import startup_notes

from .conftest import PASSWORD


def signup(client, email, name="Someone", password=PASSWORD):
    return client.post("/api/v1/auths/signup", json={"name": name, "email": email, "password": password})


def signin(client, email, password=PASSWORD):
    return client.post("/api/v1/auths/signin", json={"email": email, "password": password})


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_first_signup_is_admin_with_session_shape(client):
    response = signup(client, "First@Example.com")
    body = response.get_json()
    assert response.status_code == 200
    assert body["role"] == "admin" and body["email"] == "first@example.com"
    assert body["token_type"] == "Bearer" and body["expires_at"] > time.time()
    assert set(body) >= {"token", "id", "name", "profile_image_url", "permissions"}


def test_signup_closes_after_first_account(client, admin):
    response = signup(client, "second@example.com")
    assert response.status_code == 403
    assert "permission" in response.get_json()["detail"]


@pytest.mark.parametrize("settings_overrides", [{"ENABLE_SIGNUP": "true", "DEFAULT_USER_ROLE": "user"}])
def test_open_signup_gives_default_role(client, admin, settings_overrides):
    response = signup(client, "second@example.com")
    assert response.status_code == 200 and response.get_json()["role"] == "user"


@pytest.mark.parametrize("settings_overrides", [{"ENABLE_SIGNUP": "true"}])
def test_signup_defaults_to_pending_and_rejects_taken_email(client, admin, settings_overrides):
    assert signup(client, "p@example.com").get_json()["role"] == "pending"
    taken = signup(client, "P@example.com")
    assert taken.status_code == 400 and "already registered" in taken.get_json()["detail"]


@pytest.mark.parametrize("body", [{"name": "x", "email": "nope", "password": "pw"},
                                  {"name": "", "email": "a@b.co", "password": "pw"},
                                  {"name": "x", "email": "a@b.co", "password": ""}])
def test_signup_rejects_bad_fields(client, body):
    response = client.post("/api/v1/auths/signup", json=body)
    assert response.status_code == 400 and isinstance(response.get_json()["detail"], str)


def test_signup_validation_errors_keep_field_messages(client):
    response = client.post("/api/v1/auths/signup", json={"email": 5})
    detail = response.get_json()["detail"]
    assert response.status_code == 422
    assert {tuple(item["loc"]) for item in detail} == {("body", "name"), ("body", "email"), ("body", "password")}


def test_signin_and_wrong_password(client, admin):
    assert signin(client, "ADMIN@example.com").status_code == 200
    wrong = signin(client, "admin@example.com", "nope")
    assert wrong.status_code == 400 and "incorrect" in wrong.get_json()["detail"]
    assert signin(client, "ghost@example.com").status_code == 400


def test_current_user_with_jwt_and_api_key(client, admin, api_key_headers):
    assert client.get("/api/v1/auths/", headers=admin["headers"]).get_json()["id"] == admin["id"]
    via_key = client.get("/api/v1/auths/", headers=api_key_headers(admin))
    assert via_key.status_code == 200 and via_key.get_json()["email"] == "admin@example.com"
    assert via_key.get_json()["token"] is None  # never echo a key back


def test_signout_revokes_the_jwt_only(client, admin, api_key_headers):
    key_headers = api_key_headers(admin)
    assert client.post("/api/v1/auths/signout", headers=admin["headers"]).get_json() == {"status": True}
    assert client.get("/api/v1/auths/", headers=admin["headers"]).status_code == 401
    assert client.get("/api/v1/auths/", headers=key_headers).status_code == 200
    fresh = signin(client, admin["email"]).get_json()["token"]
    assert client.get("/api/v1/auths/", headers=bearer(fresh)).status_code == 200


def test_signout_without_token_is_harmless(client):
    assert client.post("/api/v1/auths/signout").get_json() == {"status": True}


def test_password_change_revokes_jwts_and_api_key(client, user, api_key_headers):
    key_headers = api_key_headers(user)
    wrong = client.post("/api/v1/auths/update/password", headers=user["headers"],
                        json={"password": "bad", "new_password": "new-pass"})
    assert wrong.status_code == 400
    ok = client.post("/api/v1/auths/update/password", headers=user["headers"],
                     json={"password": PASSWORD, "new_password": "new-pass"})
    assert ok.status_code == 200 and ok.get_json() is True
    assert client.get("/api/v1/auths/", headers=user["headers"]).status_code == 401
    assert client.get("/api/v1/auths/", headers=key_headers).status_code == 401
    assert signin(client, user["email"], "new-pass").status_code == 200


def test_api_key_lifecycle(client, user):
    assert client.get("/api/v1/auths/api_key", headers=user["headers"]).status_code == 404
    key = client.post("/api/v1/auths/api_key", headers=user["headers"]).get_json()["api_key"]
    assert key.startswith("sk-") and len(key) == 35
    masked = client.get("/api/v1/auths/api_key", headers=user["headers"]).get_json()["api_key"]
    assert masked != key and masked.endswith(key[-4:])
    assert User.get_by_id(user["id"]).api_keys.get().key_hash != key  # stored as a hash only
    assert client.get("/api/v1/auths/", headers=bearer(key)).status_code == 200
    rotated = client.post("/api/v1/auths/api_key", headers=bearer(key)).get_json()["api_key"]
    assert client.get("/api/v1/auths/", headers=bearer(key)).status_code == 401
    assert client.delete("/api/v1/auths/api_key", headers=bearer(rotated)).get_json() is True
    assert client.get("/api/v1/auths/", headers=bearer(rotated)).status_code == 401


@pytest.mark.parametrize("settings_overrides", [{"ENABLE_API_KEYS": "false"}])
def test_api_keys_can_be_disabled(client, user, settings_overrides):
    response = client.post("/api/v1/auths/api_key", headers=user["headers"])
    assert response.status_code == 403 and "not allowed" in response.get_json()["detail"]


def test_token_cases(client, app, user):
    secret = app.extensions["webui_api"].settings.WEBUI_SECRET_KEY
    now = int(time.time())
    minted = jwt.encode({"id": user["id"], "iat": now, "exp": now + 60, "jti": "x1"}, secret, algorithm="HS256")
    assert client.get("/api/v1/auths/", headers=bearer(minted)).status_code == 200
    for bad in (jwt.encode({"id": user["id"], "exp": now - 1}, secret, algorithm="HS256"),
                jwt.encode({"id": user["id"]}, "x" * 40, algorithm="HS256"),
                jwt.encode({"id": user["id"]}, None, algorithm="none"),
                "sk-" + "0" * 32, "garbage"):
        response = client.get("/api/v1/auths/", headers=bearer(bad))
        assert response.status_code == 401 and "detail" in response.get_json()
    # PyJWT decodes ours
    assert jwt.decode(user["token"], secret, algorithms=["HS256"])["id"] == user["id"]


def test_deleted_user_token_is_refused(client, admin, user):
    assert client.delete(f"/api/v1/users/{user['id']}", headers=admin["headers"]).status_code == 200
    assert client.get("/api/v1/auths/", headers=user["headers"]).status_code == 401


def test_only_bearer_scheme_counts(client, admin):
    for header in (f"Token {admin['token']}", f"Basic {admin['token']}", admin["token"]):
        assert client.get("/api/v1/auths/", headers={"Authorization": header}).status_code == 401
    assert client.get("/api/v1/auths/", headers={"Authorization": f"bearer {admin['token']}"}).status_code == 200


@pytest.mark.parametrize("settings_overrides", [{"SIGNIN_RATE_LIMIT": "15", "SIGNIN_RATE_WINDOW": "180"}])
def test_signin_rate_limit(client, admin, settings_overrides):
    for _ in range(15):
        assert signin(client, admin["email"], "wrong").status_code == 400
    limited = signin(client, admin["email"])  # even the right password waits out the window
    assert limited.status_code == 429 and limited.get_json() == {"detail": "API rate limit exceeded"}
    assert limited.headers["Retry-After"] == "180"
    assert signin(client, "other@example.com", "x").status_code == 400  # per email


def test_admin_add_returns_no_impersonation_token(client, admin):
    body = {"name": "Bob", "email": "bob@example.com", "password": "pw", "role": "user"}
    response = client.post("/api/v1/auths/add", headers=admin["headers"], json=body)
    assert response.status_code == 200
    assert response.get_json()["role"] == "user" and response.get_json()["token"] is None
    assert signin(client, "bob@example.com", "pw").status_code == 200
    bad_role = client.post("/api/v1/auths/add", headers=admin["headers"], json={**body, "role": "root"})
    assert bad_role.status_code == 400


@pytest.mark.parametrize("settings_overrides", [{"WEBUI_ADMIN_EMAIL": "ops@example.com",
                                                 "WEBUI_ADMIN_PASSWORD": "ops-pass"}])
def test_headless_admin_from_environment(client, settings_overrides):
    response = signin(client, "ops@example.com", "ops-pass")
    assert response.status_code == 200 and response.get_json()["role"] == "admin"
    assert signup(client, "late@example.com").status_code == 403



def startup_warning(app) -> str | None:
    """The master's start-up line about the unclaimed instance, if it would print one now."""
    notes = startup_notes(app.extensions["webui_api"].settings, "http://127.0.0.1:8080")
    return next((line for _level, line in notes if "NO ACCOUNT EXISTS YET" in line), None)


def setup_token_from_the_log(app) -> str:
    return re.search(r"'X-Setup-Token: (\w+)'", startup_warning(app)).group(1)


REMOTE = {"X-Forwarded-For": "203.0.113.9"}  # a remote client, as the trusted nginx hop reports it


def remote_signup(client, email, headers=REMOTE, **environ):
    body = {"name": "Someone", "email": email, "password": PASSWORD}
    return client.post("/api/v1/auths/signup", json=body, headers=headers, environ_overrides=environ)


@pytest.mark.parametrize("settings_overrides", [{"TRUSTED_PROXY_HOPS": "1"}])
def test_first_signup_from_another_machine_needs_the_setup_token(app, client, settings_overrides):
    refused = remote_signup(client, "eve@example.com")
    assert refused.status_code == 403 and "X-Setup-Token" in refused.get_json()["detail"]
    wrong = remote_signup(client, "eve@example.com", {**REMOTE, "X-Setup-Token": "0" * 32})
    assert wrong.status_code == 403 and not User.select().exists()

    claimed = remote_signup(client, "ops@example.com", {**REMOTE, "X-Setup-Token": setup_token_from_the_log(app)})
    assert claimed.status_code == 200 and claimed.get_json()["role"] == "admin"
    assert startup_warning(app) is None  # claimed: the log stops offering a token


@pytest.mark.parametrize("settings_overrides", [{"TRUSTED_PROXY_HOPS": "0"}])
@pytest.mark.parametrize("peer, headers", [
    ("198.51.100.4", {"X-Forwarded-For": "127.0.0.1"}),  # a remote client pretending to be relayed locally
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}),  # nginx on loopback, TRUSTED_PROXY_HOPS forgotten
    ("127.0.0.1", {"X-Real-IP": "203.0.113.9"}),
    ("127.0.0.1", {"Forwarded": "for=203.0.113.9"}),
    ("198.51.100.4", {}),  # HOST=0.0.0.0, no proxy
])
def test_a_forwarded_or_remote_address_never_counts_as_this_machine(client, settings_overrides, peer, headers):
    response = remote_signup(client, "eve@example.com", headers, REMOTE_ADDR=peer)
    assert response.status_code == 403 and "setup token" in response.get_json()["detail"]


@pytest.mark.parametrize("peer, headers", [("127.0.0.1", {}), ("::1", {}),
                                           ("127.0.0.1", {"X-Forwarded-For": "127.0.0.1"})])
def test_signup_from_this_machine_needs_no_token(client, peer, headers):
    response = remote_signup(client, "local@example.com", headers, REMOTE_ADDR=peer)
    assert response.status_code == 200 and response.get_json()["role"] == "admin"


@pytest.mark.parametrize("settings_overrides", [{"TRUSTED_PROXY_HOPS": "1", "ENABLE_SIGNUP": "true"}])
def test_the_setup_token_only_guards_the_first_account(client, admin, settings_overrides):
    later = remote_signup(client, "later@example.com")
    assert later.status_code == 200 and later.get_json()["role"] == "pending"
