"""/api/models and the preset routes under /api/v1/models: shapes, access and the status scheme."""
from __future__ import annotations

import time

import pytest

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def silent(make_backend):
    """A second Ollama backend that accepts connections and never answers."""
    backend = make_backend()
    backend.fault = {"kind": "hang", "path": "/"}
    return backend


@pytest.fixture
def settings_overrides(data_dir, fake_backend, request):
    ollama = fake_backend.url
    if "silent" in request.fixturenames:
        ollama += ";" + request.getfixturevalue("silent").url
    return {"OLLAMA_BASE_URLS": ollama, "OPENAI_API_BASE_URLS": fake_backend.openai_url,
            "OPENAI_API_KEYS": fake_backend.openai_key, "AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST": 0.5}


@pytest.fixture
def create(client):
    def make(creds: dict, status: int = 200, **form):
        body = {"meta": {}, "params": {}, **form}
        response = client.post("/api/v1/models/create", headers=creds["headers"], json=body)
        assert response.status_code == status, response.get_json()
        return response.get_json()
    return make


def model_ids(client, creds, path="/api/models") -> list[str]:
    response = client.get(path, headers=creds["headers"])
    assert response.status_code == 200, response.get_json()
    return [m["id"] for m in response.get_json()["data"]]


# --- /api/models -----------------------------------------------------------------------------

def test_models_lists_every_base_model_for_users(client, user):
    assert model_ids(client, user) == ["llama3.2:latest", "llama3.1:latest", "nomic-embed-text:latest",
                                       "gpt-4o-mini", "gpt-4-turbo", "text-embedding-3-small"]


def test_v1_alias_and_refresh(client, user, fake_backend):
    assert model_ids(client, user, "/api/v1/models") == model_ids(client, user)
    fake_backend.ollama_models.append("mistral:7b")
    assert "mistral:7b" not in model_ids(client, user)
    assert "mistral:7b" in model_ids(client, user, "/api/models?refresh=true")


def test_models_auth(client, pending):
    assert client.get("/api/models").status_code == 401
    assert client.get("/api/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    response = client.get("/api/models", headers=pending["headers"])
    assert response.status_code == 403 and "detail" in response.get_json()


def test_models_bad_refresh_value_is_422(client, user):
    response = client.get("/api/models?refresh=maybe", headers=user["headers"])
    assert response.status_code == 422 and response.get_json()["detail"]


def test_models_answers_within_timeout_while_a_backend_never_answers(client, user, silent):
    for _ in range(2):
        started = time.monotonic()
        found = model_ids(client, user, "/api/models?refresh=true")
        assert time.monotonic() - started < 1.2  # timeout 0.5 s, plus slack for a loaded CI box
        assert "llama3.1:latest" in found and "gpt-4o-mini" in found
    assert silent.requests_to("/api/tags")  # it was asked, and skipped


def test_models_base_is_admin_only(client, admin, user):
    assert client.get("/api/models/base", headers=user["headers"]).status_code == 403
    response = client.get("/api/models/base", headers=admin["headers"])
    assert response.status_code == 200 and len(response.get_json()["data"]) == 6


# --- create ----------------------------------------------------------------------------------

def test_create_returns_the_stored_object(create, user):
    body = create(user, id="support-bot", base_model_id="llama3.2:latest", name="Support Bot",
                  meta={"description": "Answers", "knowledge": [{"type": "file", "id": "f1", "data": {"x": 1}}]},
                  params={"system": "You help.", "temperature": 0.2})
    assert body["id"] == "support-bot" and body["user_id"] == user["id"] and body["is_active"] is True
    assert body["params"] == {"system": "You help.", "temperature": 0.2}
    assert body["meta"]["knowledge"] == [{"type": "file", "id": "f1"}]
    assert body["access_grants"] == [] and body["is_public"] is False


def test_create_public_with_access_grants(create, user):
    grants = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]
    body = create(user, id="pub", base_model_id="llama3.2", name="Pub", access_grants=grants)
    assert body["is_public"] is True
    assert body["access_grants"][0] | {"id": None, "created_at": None} == {
        "id": None, "resource_type": "model", "resource_id": "pub", "principal_type": "user",
        "principal_id": "*", "permission": "read", "created_at": None}


@pytest.mark.parametrize("form,status", [
    ({"id": "bot", "base_model_id": "llama3.2", "name": "again"}, 409),   # taken by a preset
    ({"id": "llama3.1:latest", "base_model_id": "llama3.2", "name": "x"}, 409),  # a base model id
    ({"id": "llama3.1", "base_model_id": "llama3.2", "name": "x"}, 409),  # its untagged form
    ({"id": "gpt-4o-mini", "base_model_id": "llama3.2", "name": "x"}, 409),
    ({"id": "has space", "base_model_id": "llama3.2", "name": "x"}, 422),
    ({"id": "", "base_model_id": "llama3.2", "name": "x"}, 422),
    ({"base_model_id": "llama3.2", "name": "x"}, 422),
    ({"id": "x" * 257, "base_model_id": "llama3.2", "name": "x"}, 400),
    ({"id": "m", "base_model_id": "llama3.2", "name": "x", "meta": "nope"}, 422),
    ({"id": "m", "base_model_id": "llama3.2", "name": "x", "params": {"system": 5}}, 422),
    ({"id": "m", "base_model_id": None, "name": "x"}, 403),  # only admins configure a base model directly
    ({"id": "m", "base_model_id": 7, "name": "x"}, 422),
    ({"id": "m", "base_model_id": "llama3.2", "name": "x", "access_grants": "all"}, 422),
    ({"id": "m", "base_model_id": "llama3.2", "name": "x",  # no such group
      "access_grants": [{"principal_type": "group", "principal_id": "g1", "permission": "read"}]}, 400),
])
def test_create_errors(client, create, user, form, status):
    create(user, id="bot", base_model_id="llama3.2", name="Bot")
    response = client.post("/api/v1/models/create", headers=user["headers"], json=form)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["detail"]


def test_create_rejects_non_json(client, user):
    response = client.post("/api/v1/models/create", headers={**user["headers"], "Content-Type": "application/json"},
                           data="{not json")
    assert response.status_code == 400 and response.get_json()["detail"]


def test_admin_override_row_shares_base_model_like_open_webui(client, create, admin, user):
    grants = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]
    body = create(admin, id="gpt-4o-mini", base_model_id=None, name="gpt-4o-mini", access_grants=grants)
    assert body["base_model_id"] is None
    entry = next(m for m in client.get("/api/models", headers=user["headers"]).get_json()["data"]
                 if m["id"] == "gpt-4o-mini")
    assert entry["info"]["id"] == "gpt-4o-mini" and entry["urlIdx"] == 0
    response = client.post("/api/chat/completions", headers=user["headers"], json={"model": "gpt-4o-mini",
                                                                                  "messages": MSG})
    assert response.status_code == 200


# --- read ------------------------------------------------------------------------------------

def test_get_model_owner_and_reader_views(client, create, user, make_user):
    other = make_user("user")
    create(user, id="pub", base_model_id="llama3.2", name="Pub", is_public=True, params={"system": "secret"})
    mine = client.get("/api/v1/models/model?id=pub", headers=user["headers"]).get_json()
    assert mine["params"] == {"system": "secret"} and mine["write_access"] is True
    assert mine["user"]["email"] == user["email"]
    theirs = client.get("/api/v1/models/model", query_string={"id": "pub"}, headers=other["headers"]).get_json()
    assert theirs["params"] == {} and theirs["write_access"] is False and "email" not in theirs["user"]


def test_get_model_missing_private_and_bad_id(client, create, user, make_user):
    other = make_user("user")
    create(user, id="priv", base_model_id="llama3.2", name="Priv")
    assert client.get("/api/v1/models/model?id=priv", headers=other["headers"]).status_code == 404
    assert client.get("/api/v1/models/model?id=nothing", headers=user["headers"]).status_code == 404
    assert client.get("/api/v1/models/model", headers=user["headers"]).status_code == 422


def test_ids_with_slashes_and_colons(client, create, user):
    create(user, id="team/bot:v2", base_model_id="llama3.2", name="Slashy")
    response = client.get("/api/v1/models/model", query_string={"id": "team/bot:v2"}, headers=user["headers"])
    assert response.status_code == 200 and response.get_json()["name"] == "Slashy"


def test_list_paging_filters_and_array_form(client, create, admin, user, make_user):
    other = make_user("user")
    for i in range(32):
        create(user, id=f"p{i:02d}", base_model_id="llama3.2", name=f"Preset {i:02d}", meta={"tags": ["t"]})
    create(other, id="shared", base_model_id="llama3.2", name="Shared", is_public=True)
    create(other, id="private", base_model_id="llama3.2", name="Private")
    page1 = client.get("/api/v1/models/list?order_by=name&direction=asc", headers=user["headers"]).get_json()
    assert page1["total"] == 33 and len(page1["items"]) == 30 and page1["items"][0]["id"] == "p00"
    page2 = client.get("/api/v1/models/list?order_by=name&direction=asc&page=2", headers=user["headers"]).get_json()
    assert [m["id"] for m in page2["items"]] == ["p30", "p31", "shared"]
    shared = client.get("/api/v1/models/list?view_option=shared", headers=user["headers"]).get_json()
    assert [m["id"] for m in shared["items"]] == ["shared"]
    found = client.get("/api/v1/models/list?query=PRESET%2031", headers=user["headers"]).get_json()
    assert [m["id"] for m in found["items"]] == ["p31"]
    assert client.get("/api/v1/models/list?tag=t", headers=user["headers"]).get_json()["total"] == 32
    assert client.get("/api/v1/models/list?page=0", headers=user["headers"]).status_code == 422
    array = client.get("/api/v1/models/", headers=user["headers"]).get_json()
    assert isinstance(array, list) and len(array) == 33
    assert client.get("/api/v1/models/list", headers=admin["headers"]).get_json()["total"] == 34


# --- update / toggle / delete ------------------------------------------------------------------

def test_update_replaces_config_and_keeps_absent_fields(client, create, user):
    create(user, id="bot", base_model_id="llama3.2", name="Bot", params={"system": "a", "model_controls": {"x": 1}},
           meta={"profile_image_url": "/p.png", "description": "old"}, is_public=True)
    response = client.post("/api/v1/models/model/update?id=bot", headers=user["headers"],
                           json={"id": "bot", "name": "Bot 2", "meta": {"description": "new"},
                                 "params": {"system": "b"}})
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["name"] == "Bot 2" and body["base_model_id"] == "llama3.2" and body["is_public"] is True
    assert body["params"] == {"system": "b", "model_controls": {"x": 1}}
    assert body["meta"] == {"profile_image_url": "/p.png", "description": "new"}


def test_update_id_from_body_and_access_change(client, create, user):
    create(user, id="bot", base_model_id="llama3.2", name="Bot", is_public=True)
    response = client.post("/api/v1/models/model/update", headers=user["headers"],
                           json={"id": "bot", "name": "Bot", "access_grants": []})
    assert response.status_code == 200 and response.get_json()["is_public"] is False


def test_write_status_scheme(client, create, admin, user, make_user):
    other = make_user("user")
    create(other, id="pub", base_model_id="llama3.2", name="Pub", is_public=True)
    create(other, id="priv", base_model_id="llama3.2", name="Priv")
    for path in ("update", "toggle", "delete", "access/update"):
        url = f"/api/v1/models/model/{path}"
        body = {"name": "x", "is_public": True}
        assert client.post(f"{url}?id=pub", headers=user["headers"], json=body).status_code == 403, path
        assert client.post(f"{url}?id=priv", headers=user["headers"], json=body).status_code == 404, path
        assert client.post(f"{url}?id=none", headers=user["headers"], json=body).status_code == 404, path
    response = client.post("/api/v1/models/model/update?id=priv", headers=admin["headers"], json={"name": "By admin"})
    assert response.status_code == 200 and response.get_json()["name"] == "By admin"


def test_non_admin_cannot_clear_base(client, create, user):
    create(user, id="bot", base_model_id="llama3.2", name="Bot")
    response = client.post("/api/v1/models/model/update?id=bot", headers=user["headers"],
                           json={"name": "Bot", "base_model_id": None})
    assert response.status_code == 403


def test_toggle_takes_effect_in_listing_and_chat_at_once(client, create, user):
    create(user, id="bot", base_model_id="llama3.2", name="Bot")
    chat = {"model": "bot", "messages": MSG}
    assert client.post("/api/chat/completions", headers=user["headers"], json=chat).status_code == 200
    response = client.post("/api/v1/models/model/toggle?id=bot", headers=user["headers"])
    assert response.status_code == 200 and response.get_json()["is_active"] is False
    assert "bot" not in model_ids(client, user)
    response = client.post("/api/chat/completions", headers=user["headers"], json=chat)
    assert response.status_code == 400 and response.get_json()["detail"] == "Model not found"
    listed = client.get("/api/v1/models/list", headers=user["headers"]).get_json()
    assert listed["items"][0]["is_active"] is False  # still listed for its owner


def test_delete_with_query_or_body(client, create, user):
    create(user, id="a", base_model_id="llama3.2", name="A")
    create(user, id="b", base_model_id="llama3.2", name="B")
    assert client.post("/api/v1/models/model/delete?id=a", headers=user["headers"]).get_json() is True
    assert client.post("/api/v1/models/model/delete", headers=user["headers"], json={"id": "b"}).get_json() is True
    assert client.get("/api/v1/models/model?id=a", headers=user["headers"]).status_code == 404
    assert client.post("/api/v1/models/model/delete", headers=user["headers"]).status_code == 422
    assert client.post("/api/chat/completions", headers=user["headers"],
                       json={"model": "b", "messages": MSG}).status_code == 400


def test_access_update(client, create, user, make_user):
    other = make_user("user")
    create(user, id="bot", base_model_id="llama3.2", name="Bot")
    grants = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]
    response = client.post("/api/v1/models/model/access/update", headers=user["headers"],
                           json={"id": "bot", "access_grants": grants})
    assert response.status_code == 200 and response.get_json()["is_public"] is True
    assert "bot" in model_ids(client, other)
    assert client.post("/api/v1/models/model/access/update?id=bot", headers=user["headers"],
                       json={}).status_code == 422


def test_override_rows_listing_is_admin_only(client, create, admin, user):
    create(admin, id="llama3.1:latest", base_model_id=None, name="Llama")
    assert client.get("/api/v1/models/base", headers=user["headers"]).status_code == 403
    rows = client.get("/api/v1/models/base", headers=admin["headers"]).get_json()
    assert [r["id"] for r in rows] == ["llama3.1:latest"]
