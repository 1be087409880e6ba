"""API keys made for services: several named keys per user (rotation without downtime), expiry, model and
endpoint allowlists, per-minute limits counted in the database, Open WebUI's global endpoint restriction, the
default key of the /auths/api_key routes, and the upgrade from one key per user."""
import time

import pytest

from webui_api import db
from webui_api.auth import security
from webui_api.db import ApiKey

HELLO = [{"role": "user", "content": "Hello"}]
SESSION = "/api/v1/auths/"


@pytest.fixture
def settings_overrides(data_dir, fake_backend):
    return {"OLLAMA_BASE_URLS": fake_backend.url, "OPENAI_API_BASE_URLS": fake_backend.openai_url,
            "OPENAI_API_KEYS": fake_backend.openai_key}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def new_key(client, user):
    """POST /api/v1/auths/api_keys (default: with the user's session); returns the created key's JSON."""
    def make(creds_headers=None, **fields) -> dict:
        body = {"name": "service", **fields}
        response = client.post("/api/v1/auths/api_keys", headers=creds_headers or user["headers"], json=body)
        assert response.status_code == 200, response.get_json()
        return response.get_json()
    return make


def status(client, path, key, method="GET", **kwargs) -> int:
    return client.open(path, method=method, headers=bearer(key), **kwargs).status_code


def test_rotation_with_two_live_keys(client, user, new_key):
    old, new = new_key(name="billing"), new_key(name="billing")
    assert old["api_key"].startswith("sk-") and old["api_key"] != new["api_key"]
    assert status(client, SESSION, old["api_key"]) == status(client, SESSION, new["api_key"]) == 200
    listed = client.get("/api/v1/auths/api_keys", headers=user["headers"]).get_json()
    assert {k["id"]: k["masked"][-4:] for k in listed} == {k["id"]: k["api_key"][-4:] for k in (old, new)}
    assert not any("api_key" in k for k in listed)
    assert all(row.key_hash != old["api_key"] for row in ApiKey.select())  # stored as hashes only
    deleted = client.delete(f"/api/v1/auths/api_keys/{old['id']}", headers=bearer(new["api_key"]))
    assert deleted.get_json() is True
    assert status(client, SESSION, old["api_key"]) == 401
    assert status(client, SESSION, new["api_key"]) == 200


def test_default_key_routes_leave_named_keys_alone(client, user, new_key):
    named = new_key()
    first = client.post("/api/v1/auths/api_key", headers=user["headers"]).get_json()["api_key"]
    second = client.post("/api/v1/auths/api_key", headers=user["headers"]).get_json()["api_key"]
    assert status(client, SESSION, first) == 401 and status(client, SESSION, second) == 200
    assert status(client, SESSION, named["api_key"]) == 200
    listed = client.get("/api/v1/auths/api_keys", headers=user["headers"]).get_json()
    assert sorted((k["is_default"], k["name"] or "") for k in listed) == [(False, "service"), (True, "")]
    masked = client.get("/api/v1/auths/api_key", headers=user["headers"]).get_json()["api_key"]
    default = next(k for k in listed if k["is_default"])  # keys made in the same second: no order to rely on
    assert masked == default["masked"] and second.endswith(masked[-4:])
    assert client.delete("/api/v1/auths/api_key", headers=user["headers"]).get_json() is True
    assert status(client, SESSION, second) == 401 and status(client, SESSION, named["api_key"]) == 200
    assert client.get("/api/v1/auths/api_key", headers=user["headers"]).status_code == 404


def test_password_change_revokes_every_key(client, user, new_key):
    named = new_key()
    body = {"password": user["password"], "new_password": "another long password"}
    assert client.post("/api/v1/auths/update/password", headers=user["headers"], json=body).status_code == 200
    assert status(client, SESSION, named["api_key"]) == 401


def test_expiry_refuses_the_key_at_once(client, new_key):
    lasting = new_key(expires_at=int(time.time()) + 3600)
    brief = new_key(expires_in=1)
    assert brief["expires_at"] <= time.time() + 1 and lasting["expires_at"] > time.time() + 3000
    assert status(client, SESSION, brief["api_key"]) == 200
    time.sleep(max(0.0, brief["expires_at"] - time.time()) + 0.05)
    response = client.get(SESSION, headers=bearer(brief["api_key"]))
    assert response.status_code == 401 and response.get_json()["detail"] == "This API key has expired."
    assert status(client, SESSION, lasting["api_key"]) == 200


@pytest.mark.parametrize("fields, status_code, word", [
    ({"name": ""}, 400, "name"), ({"name": "x" * 101}, 400, "name"),
    ({"requests_per_minute": -1}, 400, "requests_per_minute"),
    ({"tokens_per_minute": 0}, 400, "tokens_per_minute"),
    ({"expires_at": 1000}, 400, "expires_at"), ({"expires_in": -5}, 400, "expires_in"),
    ({"expires_at": 2**40, "expires_in": 60}, 400, "not both"),
    ({"allowed_models": []}, 400, "allowed_models"), ({"allowed_models": ["x" * 257]}, 400, "allowed_models"),
    ({"allowed_endpoints": ["api/chat"]}, 400, "allowed_endpoints"),
    ({"allowed_endpoints": ["/a"] * 101}, 400, "allowed_endpoints"),
    ({"requests_per_minute": "5"}, 422, "requests_per_minute"),
    ({"allowed_models": "llama3.2"}, 422, "allowed_models"),
])
def test_bad_key_fields_are_refused(client, user, fields, status_code, word):
    response = client.post("/api/v1/auths/api_keys", headers=user["headers"], json={"name": "svc", **fields})
    assert response.status_code == status_code and word in str(response.get_json()["detail"])


def test_only_the_owner_deletes_a_key(client, user, admin, make_user, new_key):
    key = new_key()
    for other in (make_user("user"), admin):
        response = client.delete(f"/api/v1/auths/api_keys/{key['id']}", headers=other["headers"])
        assert response.status_code == 404 and "detail" in response.get_json()
    assert status(client, SESSION, key["api_key"]) == 200
    assert client.delete("/api/v1/auths/api_keys/no-such-key", headers=user["headers"]).status_code == 404


def test_a_restricted_key_cannot_mint_or_drop_keys(client, user, new_key):
    limited = bearer(new_key(requests_per_minute=100)["api_key"])
    plain = new_key()
    assert client.post("/api/v1/auths/api_keys", headers=limited, json={"name": "escape"}).status_code == 403
    assert client.post("/api/v1/auths/api_key", headers=limited).status_code == 403
    assert client.delete(f"/api/v1/auths/api_keys/{plain['id']}", headers=limited).status_code == 403
    assert client.get("/api/v1/auths/api_keys", headers=limited).status_code == 200
    by_plain = client.post("/api/v1/auths/api_keys", headers=bearer(plain["api_key"]), json={"name": "b"})
    assert by_plain.status_code == 200


def test_endpoint_allowlist_of_a_key(client, new_key):
    key = new_key(allowed_endpoints=["/api/models", "/api/chat/"])["api_key"]
    assert status(client, "/api/models", key) == 200
    chat = {"model": "llama3.2", "messages": HELLO}
    assert client.post("/api/chat/completions", headers=bearer(key), json=chat).status_code == 200
    refused = client.get(SESSION, headers=bearer(key))
    assert refused.status_code == 403 and SESSION in refused.get_json()["detail"]
    assert status(client, "/api/v1/models/", key) == status(client, "/api/v1/files/", key) == 403


@pytest.mark.parametrize("settings_overrides", [{
    "ENABLE_API_KEYS_ENDPOINT_RESTRICTIONS": "true",
    "API_KEYS_ALLOWED_ENDPOINTS": " /api/models , /api/v1/auths/api_key"}])
def test_global_endpoint_restriction(client, user, api_key_headers, settings_overrides):
    key = api_key_headers(user)
    assert client.get("/api/models", headers=key).status_code == 200
    assert client.get("/api/v1/auths/api_key", headers=key).status_code == 200
    for path in ("/api/v1/auths/", "/api/v1/auths/api_keys", "/api/v1/files/"):
        response = client.get(path, headers=key)
        assert response.status_code == 403 and "permission" in response.get_json()["detail"], path
    assert client.get("/api/v1/files/", headers=user["headers"]).status_code == 200  # sessions: no limits


def test_model_allowlist(client, new_key, fake_backend):
    key = bearer(new_key(allowed_models=["llama3.2", "gpt-4o-mini"])["api_key"])
    ids = [m["id"] for m in client.get("/api/models", headers=key).get_json()["data"]]
    assert sorted(ids) == ["gpt-4o-mini", "llama3.2:latest"]
    assert client.post("/api/chat/completions", headers=key,
                       json={"model": "llama3.2:latest", "messages": HELLO}).status_code == 200
    for path, model in (("/api/chat/completions", "llama3.1"), ("/ollama/api/chat", "llama3.1"),
                        ("/ollama/api/chat/0", "llama3.1"), ("/openai/chat/completions", "gpt-4-turbo"),
                        ("/api/embeddings", "nomic-embed-text")):
        response = client.post(path, headers=key, json={"model": model, "messages": HELLO, "input": "x",
                                                        "stream": False})
        assert response.status_code == 403 and f"'{model}'" in response.get_json()["detail"], path
    tags = client.get("/ollama/api/tags", headers=key).get_json()["models"]
    assert [m["model"] for m in tags] == ["llama3.2:latest"]


@pytest.mark.parametrize("settings_overrides", [{"ENABLE_API_KEYS": "false"}])
def test_named_keys_off_with_api_keys(client, user, settings_overrides):
    response = client.post("/api/v1/auths/api_keys", headers=user["headers"], json={"name": "svc"})
    assert response.status_code == 403 and "not allowed" in response.get_json()["detail"]


def test_requests_per_minute(client, new_key):
    key = new_key(requests_per_minute=3)["api_key"]
    assert [status(client, SESSION, key) for _ in range(3)] == [200, 200, 200]
    refused = client.get(SESSION, headers=bearer(key))
    assert refused.status_code == 429 and "requests per minute" in refused.get_json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


@pytest.mark.parametrize("model, stream", [("llama3.2", False), ("llama3.2", True), ("gpt-4o-mini", False),
                                           ("gpt-4o-mini", True)])
def test_tokens_per_minute_counted_from_the_backend_usage(client, new_key, model, stream):
    key = bearer(new_key(tokens_per_minute=10)["api_key"])
    body = {"model": model, "messages": HELLO, "stream": stream}
    first = client.post("/api/chat/completions", headers=key, json=body)
    assert first.status_code == 200
    first.get_data()  # a stream's tokens are charged after its last byte
    first.close()
    refused = client.post("/api/chat/completions", headers=key, json={"model": model, "messages": HELLO})
    assert refused.status_code == 429 and "tokens per minute" in refused.get_json()["detail"]
    assert "Retry-After" in refused.headers
    row = db.execute("SELECT tokens FROM api_key_usage").fetchall()
    assert row and row[0][0] >= 10


@pytest.mark.parametrize("path, body", [
    ("/ollama/api/chat", {"model": "llama3.2", "messages": HELLO, "stream": True}),
    ("/ollama/api/chat", {"model": "llama3.2", "messages": HELLO, "stream": False}),
    ("/openai/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}),
    ("/openai/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})])
def test_tokens_per_minute_on_the_passthroughs(client, new_key, path, body):
    key = bearer(new_key(tokens_per_minute=10)["api_key"])
    first = client.post(path, headers=key, json=body)
    assert first.status_code == 200
    first.get_data()
    first.close()
    assert client.post(path, headers=key, json=body).status_code == 429


def test_upgrade_from_one_key_per_user(app, client, user):
    """A database from before named keys (schema 7, api_key keyed by user) keeps each user's key working as
    their default key."""
    key = security.new_api_key()
    db.execute("DROP TABLE api_key_usage")
    db.execute("DROP TABLE api_key")
    db.execute('CREATE TABLE api_key (user_id TEXT NOT NULL PRIMARY KEY REFERENCES "user" (id) '
               "ON DELETE CASCADE, key_hash TEXT NOT NULL, masked TEXT NOT NULL, created_at INTEGER NOT NULL, "
               "last_used_at INTEGER)")
    db.execute('CREATE UNIQUE INDEX "api_key_key_hash" ON "api_key" ("key_hash")')
    db.execute("INSERT INTO api_key (user_id, key_hash, masked, created_at) VALUES (?, ?, ?, ?)",
               (user["id"], security.hash_api_key(key), security.mask_api_key(key), 100))
    db.execute("UPDATE schema_version SET version = 7")
    assert db.migrate() == db.SCHEMA_VERSION
    assert status(client, SESSION, key) == 200
    listed = client.get("/api/v1/auths/api_keys", headers=user["headers"]).get_json()
    assert [(k["id"], k["is_default"], k["created_at"]) for k in listed] == [(f"key_{user['id']}", True, 100)]
    assert client.delete("/api/v1/auths/api_key", headers=user["headers"]).status_code == 200
    assert status(client, SESSION, key) == 401  # the stamp triggers came back with the table
    assert db.migrate() == db.SCHEMA_VERSION  # idempotent
