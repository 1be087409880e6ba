"""Hostile request input, sent the way the audit sent it: huge, deeply nested, non-finite, unpaired-surrogate
JSON; look-alike emails, unbounded names, script URLs; loose booleans; static routes shadowed by `{id}`."""
from __future__ import annotations

import io
import json

import pytest
import requests

from webui_api.api import PathSegmentConverter, api
from webui_api.api.json_input import MAX_JSON_DEPTH
from webui_api.db import File, Knowledge, User

from .rag_helpers import _drain_background, rag_settings, upload, upload_ok  # noqa: F401
from .servers import Gunicorn

NESTED = "[" * 1000 + "]" * 1000
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend, MAX_JSON_BODY_MB="1")


def post_raw(client, path, text: str | bytes, headers=None):
    """A body sent exactly as written (the test client's `json=` could not carry NaN or a lone surrogate)."""
    return client.post(path, data=text, headers=headers or {}, content_type="application/json")


def json_operations() -> list[tuple[str, str]]:
    """Every (method, path) of the spec taking a JSON body, with path parameters filled in."""
    found = []
    for path, item in api.spec.to_dict()["paths"].items():
        for method, operation in item.items():
            if method != "parameters" and "application/json" in operation.get("requestBody", {}).get("content", {}):
                found.append((method.upper(), path.replace("{url_idx}", "0").replace("{", "").replace("}", "")))
    return found


# --- item 4: body size and stored text length ----------------------------------------------------

def test_a_body_over_max_json_body_mb_is_413_before_it_is_parsed(client, user):
    not_json = b"{" * (1024 * 1024 + 1)  # parsing it would be a 400: a 413 proves it was never parsed
    for path in ("/api/v1/auths/signin", "/api/v1/knowledge/create", "/api/chat/completions"):
        response = post_raw(client, path, not_json, user["headers"])
        assert response.status_code == 413, (path, response.get_json())
        assert "MAX_JSON_BODY_MB" in response.get_json()["detail"]
    big = json.dumps({"name": "big", "description": "x" * (1024 * 1024)})
    assert post_raw(client, "/api/v1/knowledge/create", big, user["headers"]).status_code == 413
    assert not Knowledge.select().exists()


def test_a_chunked_body_over_the_limit_is_413_too(client, user):
    body = io.BytesIO(b'{"email": "' + b"a" * (1024 * 1024) + b'", "password": "x"}')
    response = client.post("/api/v1/auths/signin", input_stream=body, content_type="application/json",
                           headers={"Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})  # as gunicorn marks chunked
    assert response.status_code == 413 and "MAX_JSON_BODY_MB" in response.get_json()["detail"]


def test_uploads_keep_their_own_limit(client, user):
    body = upload_ok(client, user["headers"], "notes.txt", b"hello world " * 120_000)  # 1.4 MB > 1 MB
    assert body["meta"]["size"] == 1_440_000


@pytest.mark.parametrize("path,body,field", [
    ("/api/v1/knowledge/create", {"name": "n" * 256}, "name"),
    ("/api/v1/knowledge/create", {"name": "kb", "description": "d" * 10_001}, "description"),
    ("/api/v1/models/create", {"id": "m", "base_model_id": "llama3.2", "name": "n" * 256}, "name"),
])
def test_stored_text_fields_are_bounded(client, user, path, body, field):
    response = client.post(path, headers=user["headers"], json=body)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["detail"][0]["loc"] == ["body", field]
    assert not Knowledge.select().exists()


def test_a_knowledge_update_cannot_grow_past_the_bounds(client, user):
    kb = client.post("/api/v1/knowledge/create", headers=user["headers"], json={"name": "kb"}).get_json()
    response = client.post(f"/api/v1/knowledge/{kb['id']}/update", headers=user["headers"],
                           json={"description": "d" * 10_001})
    assert response.status_code == 422
    assert Knowledge.get_by_id(kb["id"]).description == ""


# --- item 6: nesting -----------------------------------------------------------------------------

def test_nested_json_is_400_on_every_json_route(client, admin):
    operations = json_operations()
    assert len(operations) > 40  # the spec was read, not an empty list
    for method, path in operations:
        response = client.open(path, method=method, data=NESTED, headers=admin["headers"],
                               content_type="application/json")
        assert response.status_code == 400, (method, path, response.status_code, response.get_json())
        assert "nested too deeply" in response.get_json()["detail"], (method, path)


def test_nesting_is_refused_at_the_documented_depth_and_accepted_below(client, user):
    def nested(depth):  # `depth` objects in all: {"meta": {"a": {"a": ... {}}}}
        return '{"name": "kb", "meta": ' + '{"a": ' * (depth - 2) + "{}" + "}" * (depth - 2) + "}"
    assert post_raw(client, "/api/v1/knowledge/create", nested(MAX_JSON_DEPTH), user["headers"]).status_code == 200
    deeper = post_raw(client, "/api/v1/knowledge/create", nested(MAX_JSON_DEPTH + 1), user["headers"])
    assert deeper.status_code == 400 and str(MAX_JSON_DEPTH) in deeper.get_json()["detail"]


def test_nested_upload_metadata_is_400_and_stores_nothing(client, user):
    response = upload(client, user["headers"], metadata=NESTED)
    assert response.status_code == 400 and "nested too deeply" in response.get_json()["detail"]
    assert not File.select().exists()


def test_nested_sign_in_without_a_login_is_400(client, admin):
    response = post_raw(client, "/api/v1/auths/signin", '{"email": ' + NESTED + "}")
    assert response.status_code == 400 and "nested too deeply" in response.get_json()["detail"]


# --- item 7: lone surrogates ---------------------------------------------------------------------

LONE = '"a\\ud800b"'


@pytest.mark.parametrize("path,template", [
    ("/api/v1/auths/signin", '{"email": %s, "password": "x"}'),
    ("/api/v1/knowledge/create", '{"name": %s}'),
    ("/api/v1/knowledge/create", '{"name": "kb", "meta": {%s: 1}}'),  # in a key too
    ("/api/chat/completions", '{"model": "llama3.2", "messages": [{"role": "user", "content": %s}]}'),
    ("/ollama/api/chat", '{"model": "llama3.2", "messages": [{"role": "user", "content": %s}]}'),
])
def test_a_lone_surrogate_is_400(client, user, fake_backend, path, template):
    response = post_raw(client, path, template % LONE, user["headers"])
    assert response.status_code == 400 and "surrogate" in response.get_json()["detail"]
    assert not Knowledge.select().exists() and not fake_backend.requests_to("/api/chat")


def test_a_lone_surrogate_content_update_leaves_the_file_as_it_was(client, user):
    body = upload_ok(client, user["headers"], "z.txt", b"Zephyr launch notes.")
    response = post_raw(client, f"/api/v1/files/{body['id']}/data/content/update",
                        '{"content": %s}' % LONE, user["headers"])
    assert response.status_code == 400 and "surrogate" in response.get_json()["detail"]
    kept = File.get_by_id(body["id"])
    assert kept.status == "completed" and kept.content == "Zephyr launch notes."


def test_a_surrogate_pair_is_ordinary_text(client, user):
    response = post_raw(client, "/api/v1/knowledge/create", '{"name": "rocket \\ud83d\\ude80"}', user["headers"])
    assert response.status_code == 200 and response.get_json()["name"] == "rocket \N{ROCKET}"


# --- item 11: numbers ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/chat/completions", "/ollama/api/chat", "/openai/chat/completions"])
@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "9" * 5000])
def test_non_finite_or_endless_numbers_are_400_and_never_forwarded(client, user, fake_backend, path, number):
    text = '{"model": "llama3.2", "messages": %s, "temperature": %s}' % (json.dumps(HELLO), number)
    response = post_raw(client, path, text, user["headers"])
    assert response.status_code == 400, response.get_json()
    assert not fake_backend.requests_to("/api/chat") and not fake_backend.requests_to("/v1/chat/completions")


@pytest.mark.parametrize("field,value", [("temperature", 2.5), ("temperature", -1), ("top_p", 1.5),
                                         ("max_tokens", 0), ("max_tokens", 10**30), ("max_tokens", "5"),
                                         ("seed", 2**64), ("presence_penalty", 3), ("top_k", 10**9)])
def test_chat_numbers_out_of_range_are_422(client, user, fake_backend, field, value):
    response = client.post("/api/chat/completions", headers=user["headers"],
                           json={"model": "llama3.2", "messages": HELLO, field: value})
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["detail"][0]["loc"] == ["body", field]
    assert not fake_backend.requests_to("/api/chat")


def test_chat_params_numbers_out_of_range_are_422(client, user, fake_backend):
    response = client.post("/api/chat/completions", headers=user["headers"],
                           json={"model": "llama3.2", "messages": HELLO, "params": {"temperature": 9, "system": "x"}})
    assert response.status_code == 422
    assert response.get_json()["detail"][0]["loc"] == ["body", "params", "temperature"]
    assert not fake_backend.requests_to("/api/chat")


def test_chat_numbers_in_range_are_forwarded(client, user, fake_backend):
    response = client.post("/api/chat/completions", headers=user["headers"], json={
        "model": "llama3.2", "messages": HELLO, "stream": False, "temperature": 2, "max_tokens": 2**31 - 1})
    assert response.status_code == 200, response.get_json()
    assert fake_backend.requests_to("/api/chat")[-1]["json"]["options"]["num_predict"] == 2**31 - 1


# --- item 17: emails, names, profile images ------------------------------------------------------

@pytest.mark.parametrize("email", ["ada\x00@example.com", "ada\u200b@example.com", "ad\u202ea@example.com",
                                   "ada\ufeff@example.com", "a" * 250 + "@example.com"])
def test_invisible_or_endless_emails_are_400(client, admin, email):
    response = client.post("/api/v1/auths/add", headers=admin["headers"],
                           json={"name": "Ada", "email": email, "password": "pw"})
    assert response.status_code == 400 and "email" in response.get_json()["detail"]
    assert User.select().count() == 1


def test_emails_are_nfkc_lower_case_so_look_alikes_collide(client, admin):
    fullwidth = "\uff22\uff2f\uff22@Example.com"  # ＢＯＢ@Example.com
    added = client.post("/api/v1/auths/add", headers=admin["headers"],
                        json={"name": "Bob", "email": fullwidth, "password": "pw"})
    assert added.status_code == 200 and added.get_json()["email"] == "bob@example.com"
    again = client.post("/api/v1/auths/add", headers=admin["headers"],
                        json={"name": "Bob", "email": "bob@example.com", "password": "pw"})
    assert again.status_code == 400 and "already registered" in again.get_json()["detail"]
    signin = client.post("/api/v1/auths/signin", json={"email": fullwidth, "password": "pw"})
    assert signin.status_code == 200, signin.get_json()


@pytest.mark.parametrize("url,status", [("javascript:alert(1)", 422), ("JaVaScRiPt:alert(1)", 422),
                                        ("data:text/html,<script>", 422), ("file:///etc/passwd", 422),
                                        ("https://example.com/me.png", 200),
                                        ("data:image/png;base64,iVBORw0KGgo=", 200)])
def test_profile_image_urls_are_http_or_data_image_only(client, admin, make_user, url, status):
    bob = make_user("user")
    added = client.post("/api/v1/auths/add", headers=admin["headers"],
                        json={"name": "Eve", "email": "eve@example.com", "password": "pw", "profile_image_url": url})
    updated = client.post(f"/api/v1/users/{bob['id']}/update", headers=admin["headers"],
                          json={"profile_image_url": url})
    assert (added.status_code, updated.status_code) == (status, status)
    stored = User.get_by_id(bob["id"]).profile_image_url
    assert stored == (url if status == 200 else None)


def test_names_are_bounded(client, admin, make_user):
    bob = make_user("user")
    too_long = "n" * 256
    added = client.post("/api/v1/auths/add", headers=admin["headers"],
                        json={"name": too_long, "email": "eve@example.com", "password": "pw"})
    updated = client.post(f"/api/v1/users/{bob['id']}/update", headers=admin["headers"], json={"name": too_long})
    assert added.status_code == updated.status_code == 422
    assert updated.get_json()["detail"][0]["loc"] == ["body", "name"]
    assert User.get_by_id(bob["id"]).name != too_long


# --- item 20: routing and loose values -----------------------------------------------------------

@pytest.mark.parametrize("path,allowed", [("/api/v1/knowledge/create", {"POST", "OPTIONS"}),
                                          ("/api/v1/files/all", {"DELETE", "OPTIONS"})])
def test_static_routes_answer_for_their_own_methods(client, admin, path, allowed):
    options = client.options(path, headers=admin["headers"])
    assert set(options.headers["Allow"].split(", ")) == allowed
    for method in {"GET", "POST", "DELETE", "PUT"} - allowed:
        response = client.open(path, method=method, headers=admin["headers"])
        assert response.status_code == 405, (method, response.get_json())
        assert set(response.headers["Allow"].split(", ")) == allowed


def test_every_static_route_beside_an_id_route_is_kept_from_it(app):
    """A new `/x/<string:id>` beside a new static `/x/name` cannot shadow it: the name must be listed."""
    rules = [rule.rule for rule in app.url_map.iter_rules()]
    split = [rule.rsplit("/", 1) for rule in rules]
    shadowed = {name for parent, name in split if name and "<" not in name
                and any(other.startswith(f"{parent}/<string:") for other in rules)}
    assert {"create", "all"} <= shadowed <= set(PathSegmentConverter.STATIC_SIBLINGS)


def test_id_routes_still_take_other_ids(client, user):
    kb = client.post("/api/v1/knowledge/create", headers=user["headers"], json={"name": "kb"}).get_json()
    assert client.get(f"/api/v1/knowledge/{kb['id']}", headers=user["headers"]).status_code == 200
    assert client.get("/api/v1/knowledge/created", headers=user["headers"]).status_code == 404


@pytest.mark.parametrize("kwargs", [{}, {"json": {}}, {"data": "", "content_type": "application/json"}])
def test_a_user_update_without_changes_is_422(client, admin, make_user, kwargs):
    bob = make_user("user")
    response = client.post(f"/api/v1/users/{bob['id']}/update", headers=admin["headers"], **kwargs)
    assert response.status_code == 422, response.get_json()
    assert isinstance(response.get_json()["detail"], list)


@pytest.mark.parametrize("stream", ["yes", "true", 1, 0, None])
def test_stream_must_be_a_boolean(client, user, fake_backend, stream):
    response = client.post("/api/chat/completions", headers=user["headers"],
                           json={"model": "llama3.2", "messages": HELLO, "stream": stream})
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["detail"][0]["loc"] == ["body", "stream"]
    assert not fake_backend.requests_to("/api/chat")


# --- the same attacks over real HTTP, through gunicorn ------------------------------------------

def test_hostile_json_over_real_http(tmp_path, database_settings):
    env = {"DATA_DIR": str(tmp_path), **database_settings, "OLLAMA_BASE_URLS": "http://127.0.0.1:9",
           "MAX_JSON_BODY_MB": "1"}
    with Gunicorn(env, workers=1, threads=2) as server:
        signin = server.url + "/api/v1/auths/signin"
        big = b'{"email": "' + b"a" * (2 * 1024 * 1024) + b'", "password": "x"}'
        chunked = (big[i:i + 65536] for i in range(0, len(big), 65536))  # no Content-Length
        for body in (big, chunked):
            response = requests.post(signin, data=body, headers={"Content-Type": "application/json"}, timeout=30)
            assert response.status_code == 413 and "MAX_JSON_BODY_MB" in response.json()["detail"]
        for text, words in (('{"email": ' + NESTED + "}", "nested too deeply"),
                            ('{"email": %s, "password": "x"}' % LONE, "surrogate"),
                            ('{"email": "a@b.co", "password": NaN}', "not finite")):
            response = requests.post(signin, data=text, headers={"Content-Type": "application/json"}, timeout=30)
            assert response.status_code == 400 and words in response.json()["detail"]
        assert requests.get(server.url + "/health", timeout=10).status_code == 200
