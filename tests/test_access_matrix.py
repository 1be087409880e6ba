"""The access matrix: user B naming user A's private object gets what a missing id gets (404), on every route
that takes an id — found in the app's own route table and OpenAPI document, so a new route cannot escape it."""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Callable

import pytest

from .rag_helpers import _drain_background, rag_settings, upload, upload_ok  # noqa: F401

IGNORED_METHODS = {"HEAD", "OPTIONS"}
# A field that names an existing object, wherever a request carries it (path, query or top-level body).
ID_FIELD_NAMES = {"id", "collection_name", "collection_names", "files", "metadata"}
ID_FIELD = re.compile(r".*_ids?$")


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend, ENV="dev")  # dev serves /openapi.json: the body- and query-carried ids


# ------------------------------------------------------------------------------------------------ the world

@dataclass(frozen=True)
class Ids:
    """The objects a request names: A's private ones, or ids nobody has (the answer B must not tell apart)."""

    file: str
    knowledge: str
    preset: str
    tag: str  # tells apart what B creates while attacking each set
    api_key: str = ""  # the id of one of A's named API keys


@dataclass(frozen=True)
class World:
    a: dict
    b: dict
    private: Ids
    missing: Ids
    b_file: str
    b_knowledge: str
    b_preset: str


A_TEXT = b"alpha private notes about the orchard"


@pytest.fixture
def world(client, admin, make_user) -> World:
    a, b = make_user("user"), make_user("user")
    a_file = upload_ok(client, a["headers"], "a.txt", A_TEXT)["id"]
    a_knowledge = _collection(client, a, "A private")
    _ok(client.post(f"/api/v1/knowledge/{a_knowledge}/file/add", headers=a["headers"], json={"file_id": a_file}))
    _preset(client, a, "a-private-preset")
    b_file = upload_ok(client, b["headers"], "b.txt", b"bravo own notes")["id"]
    a_key = _ok(client.post("/api/v1/auths/api_keys", headers=a["headers"], json={"name": "a-service"}))["id"]
    missing = Ids(str(uuid.uuid4()), str(uuid.uuid4()), "nobody-has-this-preset", "missing", str(uuid.uuid4()))
    return World(a, b, Ids(a_file, a_knowledge, "a-private-preset", "private", a_key), missing, b_file,
                 _collection(client, b, "B own"), _preset(client, b, "b-own-preset"))


def _ok(response):
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _collection(client, creds, name) -> str:
    return _ok(client.post("/api/v1/knowledge/create", headers=creds["headers"], json={"name": name}))["id"]


def _preset(client, creds, preset_id, **form) -> str:
    body = {"id": preset_id, "base_model_id": "llama3.2:latest", "name": preset_id, **form}
    return _ok(client.post("/api/v1/models/create", headers=creds["headers"], json=body))["id"]


# ------------------------------------------------------------------------------------------------ the matrix

FILE = "/api/v1/files/<string:file_id>"
KNOWLEDGE = "/api/v1/knowledge/<string:knowledge_id>"
PRESET = "/api/v1/models/model"
CHATS = ("/api/chat/completions", "/api/v1/chat/completions")
Send = Callable[..., object]  # (client, world, ids) -> the response to B's request


@dataclass(frozen=True)
class Row:
    """One way B names A's object: the route rule, method and field carrying the id; the request; the answer
    (the same for A's private object as for a missing one)."""

    rule: str
    method: str
    field: str
    name: str
    send: Send
    status: int = 404

    @property
    def carrier(self) -> tuple[str, str, str]:
        return self.rule, self.method, self.field


def _b(method, url, **kwargs) -> Send:
    """B's request; `url` and the JSON body may use {file}, {knowledge}, {preset}, {b_file}, {b_knowledge},
    {b_preset}."""
    def send(client, w: World, ids: Ids):
        names = {"file": ids.file, "knowledge": ids.knowledge, "preset": ids.preset, "api_key": ids.api_key,
                 "b_file": w.b_file,
                 "b_knowledge": w.b_knowledge, "b_preset": w.b_preset}
        filled = {**kwargs}
        if "json" in filled:
            filled["json"] = _fill(filled["json"], names)
        return client.open(url.format(**names), method=method, headers=w.b["headers"], **filled)
    return send


def _fill(value, names):
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, list):
        return [_fill(item, names) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, names) for key, item in value.items()}
    return value


def _upload_into(client, w: World, ids: Ids):
    return upload(client, w.b["headers"], f"b-{ids.tag}.txt", f"bravo text {ids.tag}".encode(),
                  metadata=f'{{"knowledge_id": "{ids.knowledge}"}}')


def _chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "what is in the orchard?"}], **extra}


def _preset_on(kind: str) -> Send:
    """B's own preset built on A's object (`base_model_id` on A's preset, or A's collection as its knowledge),
    then B chats with it: a preset never lends B what B may not read."""
    def send(client, w: World, ids: Ids):
        preset_id = f"b-on-{kind}-{ids.tag}"
        if kind == "base":
            _preset(client, w.b, preset_id, base_model_id=ids.preset)
        else:
            _preset(client, w.b, preset_id, meta={"knowledge": [{"type": "collection", "id": ids.knowledge}]})
        return client.post("/api/chat/completions", headers=w.b["headers"], json=_chat(preset_id))
    return send


def _b_preset_update(field_value: str) -> Send:
    return _b("POST", f"{PRESET}/update?id={{b_preset}}",
              json={"name": "b", "base_model_id": field_value})


ROWS = [
    # files/{file_id}: A's private file
    Row(FILE, "GET", "file_id", "read A's file", _b("GET", "/api/v1/files/{file}")),
    Row(FILE, "DELETE", "file_id", "delete A's file", _b("DELETE", "/api/v1/files/{file}")),
    Row(f"{FILE}/content", "GET", "file_id", "download A's bytes", _b("GET", "/api/v1/files/{file}/content")),
    Row(f"{FILE}/data/content", "GET", "file_id", "read A's text", _b("GET", "/api/v1/files/{file}/data/content")),
    Row(f"{FILE}/data/content/update", "POST", "file_id", "rewrite A's text",
        _b("POST", "/api/v1/files/{file}/data/content/update", json={"content": "overwritten"})),
    Row(f"{FILE}/process/status", "GET", "file_id", "poll A's file",
        _b("GET", "/api/v1/files/{file}/process/status")),
    # knowledge/{knowledge_id}: A's private collection
    Row(KNOWLEDGE, "GET", "knowledge_id", "read A's collection", _b("GET", "/api/v1/knowledge/{knowledge}")),
    Row(f"{KNOWLEDGE}/files", "GET", "knowledge_id", "list A's collection",
        _b("GET", "/api/v1/knowledge/{knowledge}/files")),
    Row(f"{KNOWLEDGE}/update", "POST", "knowledge_id", "rename A's collection",
        _b("POST", "/api/v1/knowledge/{knowledge}/update", json={"name": "taken over"})),
    Row(f"{KNOWLEDGE}/access/update", "POST", "knowledge_id", "publish A's collection",
        _b("POST", "/api/v1/knowledge/{knowledge}/access/update", json={"access_grants": [
            {"principal_type": "user", "principal_id": "*", "permission": "read"}]})),
    Row(f"{KNOWLEDGE}/file/add", "POST", "knowledge_id", "add B's file to A's collection",
        _b("POST", "/api/v1/knowledge/{knowledge}/file/add", json={"file_id": "{b_file}"})),
    Row(f"{KNOWLEDGE}/file/add", "POST", "file_id", "add A's file to B's collection",
        _b("POST", "/api/v1/knowledge/{b_knowledge}/file/add", json={"file_id": "{file}"})),
    Row(f"{KNOWLEDGE}/file/remove", "POST", "knowledge_id", "remove A's file from A's collection",
        _b("POST", "/api/v1/knowledge/{knowledge}/file/remove?delete_file=true", json={"file_id": "{file}"})),
    Row(f"{KNOWLEDGE}/file/remove", "POST", "file_id", "remove A's file from B's collection",
        _b("POST", "/api/v1/knowledge/{b_knowledge}/file/remove?delete_file=true", json={"file_id": "{file}"})),
    Row(f"{KNOWLEDGE}/file/update", "POST", "knowledge_id", "re-index a file in A's collection",
        _b("POST", "/api/v1/knowledge/{knowledge}/file/update", json={"file_id": "{b_file}"})),
    Row(f"{KNOWLEDGE}/file/update", "POST", "file_id", "re-index A's file in B's collection",
        _b("POST", "/api/v1/knowledge/{b_knowledge}/file/update", json={"file_id": "{file}"})),
    Row(f"{KNOWLEDGE}/files/batch/add", "POST", "knowledge_id", "batch-add B's file to A's collection",
        _b("POST", "/api/v1/knowledge/{knowledge}/files/batch/add", json=[{"file_id": "{b_file}"}])),
    # the body is an array (no top-level field to enumerate): A's file fails alone, as a missing one does
    Row(f"{KNOWLEDGE}/files/batch/add", "POST", "file_id", "batch-add A's file to B's collection",
        _b("POST", "/api/v1/knowledge/{b_knowledge}/files/batch/add", json=[{"file_id": "{file}"}]),
        status=200),
    Row(f"{KNOWLEDGE}/reset", "POST", "knowledge_id", "empty A's collection",
        _b("POST", "/api/v1/knowledge/{knowledge}/reset")),
    Row(f"{KNOWLEDGE}/delete", "DELETE", "knowledge_id", "delete A's collection",
        _b("DELETE", "/api/v1/knowledge/{knowledge}/delete")),
    # presets: `?id=` (ids contain `/`), or the body's `id` when the query has none
    Row(PRESET, "GET", "id", "read A's preset", _b("GET", f"{PRESET}?id={{preset}}")),
    Row(f"{PRESET}/update", "POST", "id", "rewrite A's preset (query id)",
        _b("POST", f"{PRESET}/update?id={{preset}}", json={"name": "taken over"})),
    Row(f"{PRESET}/update", "POST", "id", "rewrite A's preset (body id)",
        _b("POST", f"{PRESET}/update", json={"id": "{preset}", "name": "taken over"})),
    Row(f"{PRESET}/update", "POST", "base_model_id", "B's preset re-based on A's, then chat",
        lambda client, w, ids: (_b_preset_update(ids.preset)(client, w, ids),
                                client.post("/api/chat/completions", headers=w.b["headers"],
                                            json=_chat(w.b_preset)))[1],
        status=400),
    Row(f"{PRESET}/toggle", "POST", "id", "disable A's preset", _b("POST", f"{PRESET}/toggle?id={{preset}}")),
    Row(f"{PRESET}/access/update", "POST", "id", "publish A's preset (query id)",
        _b("POST", f"{PRESET}/access/update?id={{preset}}", json={"is_public": True})),
    Row(f"{PRESET}/access/update", "POST", "id", "publish A's preset (body id)",
        _b("POST", f"{PRESET}/access/update", json={"id": "{preset}", "is_public": True})),
    Row(f"{PRESET}/delete", "POST", "id", "delete A's preset (query id)",
        _b("POST", f"{PRESET}/delete?id={{preset}}")),
    Row(f"{PRESET}/delete", "POST", "id", "delete A's preset (body id)",
        _b("POST", f"{PRESET}/delete", json={"id": "{preset}"})),
    Row("/api/v1/models/create", "POST", "base_model_id", "B's preset based on A's, then chat",
        _preset_on("base"), status=400),  # chat's answer for any unknown model: 400 "Model not found"
    # retrieval: collection names are a knowledge id or `file-<id>`
    Row("/api/v1/retrieval/query/doc", "POST", "collection_name", "search A's collection",
        _b("POST", "/api/v1/retrieval/query/doc", json={"collection_name": "{knowledge}", "query": "orchard"})),
    Row("/api/v1/retrieval/query/doc", "POST", "collection_name", "search A's file by name",
        _b("POST", "/api/v1/retrieval/query/doc", json={"collection_name": "file-{file}", "query": "orchard"})),
    Row("/api/v1/retrieval/query/collection", "POST", "collection_names", "search A's collection among B's",
        _b("POST", "/api/v1/retrieval/query/collection",
           json={"collection_names": ["{b_knowledge}", "{knowledge}"], "query": "orchard"})),
    Row("/api/v1/retrieval/query/collection", "POST", "collection_names", "search A's file among names",
        _b("POST", "/api/v1/retrieval/query/collection",
           json={"collection_names": ["file-{file}"], "query": "orchard"})),
    Row("/api/v1/retrieval/process/file", "POST", "file_id", "re-process A's file",
        _b("POST", "/api/v1/retrieval/process/file", json={"file_id": "{file}"})),
    Row("/api/v1/retrieval/process/file", "POST", "collection_name", "process B's file into A's collection",
        _b("POST", "/api/v1/retrieval/process/file", json={"file_id": "{b_file}", "collection_name": "{knowledge}"})),
    Row("/api/v1/retrieval/process/text", "POST", "collection_name", "write text into A's collection",
        _b("POST", "/api/v1/retrieval/process/text",
           json={"name": "x.txt", "content": "planted", "collection_name": "{knowledge}"})),
    Row("/api/v1/retrieval/delete", "POST", "collection_name", "delete B's file's vectors from A's collection",
        _b("POST", "/api/v1/retrieval/delete", json={"collection_name": "{knowledge}", "file_id": "{b_file}"})),
    Row("/api/v1/retrieval/delete", "POST", "collection_name", "delete A's file's own collection",
        _b("POST", "/api/v1/retrieval/delete", json={"collection_name": "file-{file}", "file_id": "{file}"})),
    Row("/api/v1/retrieval/delete", "POST", "file_id", "delete A's file's vectors from B's collection",
        _b("POST", "/api/v1/retrieval/delete", json={"collection_name": "{b_knowledge}", "file_id": "{file}"}),
        status=200),  # `{"status": false}`: not in B's collection, as a missing file is not
    # uploads: `metadata.knowledge_id` adds the new file to a collection
    Row("/api/v1/files/", "POST", "metadata", "upload into A's collection", _upload_into),
    # chat: `files` names sources, `model` may be a preset
    *[Row(rule, "POST", "files", f"chat over A's {kind} ({rule})",
          _b("POST", rule, json=_chat("llama3.2", files=[{"type": kind, "id": "{%s}" % ref}])))
      for rule in CHATS for kind, ref in (("collection", "knowledge"), ("file", "file"))],
    *[Row(rule, "POST", "model", f"chat with A's preset ({rule})", _b("POST", rule, json=_chat("{preset}")),
          status=400) for rule in CHATS],
    # a dry run retrieves like chat: it never shows B what A's sources hold
    *[Row(CHATS[0], "POST", "files", f"dry run over A's {kind}", _b("POST", CHATS[0], json=_chat(
        "llama3.2", rag_dry_run=True, files=[{"type": kind, "id": "{%s}" % ref}])))
      for kind, ref in (("collection", "knowledge"), ("file", "file"))],
    Row("/api/v1/completions", "POST", "model", "legacy completion with A's preset",
        _b("POST", "/api/v1/completions", json={"model": "{preset}", "prompt": "orchard"}), status=400),
    # passthroughs and embeddings name models too: a preset is never theirs, A's private one least of all
    Row("/ollama/api/chat", "POST", "model", "Ollama chat with A's preset",
        _b("POST", "/ollama/api/chat", json={"model": "{preset}", "messages": [], "stream": False})),
    Row("/openai/chat/completions", "POST", "model", "OpenAI chat with A's preset",
        _b("POST", "/openai/chat/completions", json=_chat("{preset}"))),
    Row("/openai/responses", "POST", "model", "OpenAI Responses with A's preset",
        _b("POST", "/openai/responses", json={"model": "{preset}", "input": "orchard"})),
    Row("/api/embeddings", "POST", "model", "embed with A's preset",
        _b("POST", "/api/embeddings", json={"model": "{preset}", "input": "orchard"}), status=400),
    Row("/api/v1/models/create", "POST", "meta", "B's preset with A's collection as knowledge, then chat",
        _preset_on("knowledge"), status=200),  # a preset's unreadable knowledge is skipped, never an error
    Row("/api/v1/auths/api_keys/<string:key_id>", "DELETE", "key_id", "delete A's API key",
        _b("DELETE", "/api/v1/auths/api_keys/{api_key}")),
]

ADMIN_ONLY = ("admin-only: a non-admin gets 403 before any lookup, the same for any id "
              "(test_admin_only_routes_refuse_before_looking)")
EXEMPT = {  # (rule, method, field) → why B naming A's object there is not a matrix row
    ("/api/v1/users/<string:user_id>", "GET", "user_id"): ADMIN_ONLY,
    ("/api/v1/users/<string:user_id>", "DELETE", "user_id"): ADMIN_ONLY,
    ("/api/v1/users/<string:user_id>/update", "POST", "user_id"): ADMIN_ONLY,
    **{(f"/api/v1/groups/id/<string:group_id>{tail}", method, field): ADMIN_ONLY
       for tail, method, fields in (("", "GET", ["group_id"]), ("/delete", "DELETE", ["group_id"]),
                                    ("/users", "POST", ["group_id"]),
                                    ("/update", "POST", ["group_id", "user_ids"]),
                                    ("/users/add", "POST", ["group_id", "user_ids"]),
                                    ("/users/remove", "POST", ["group_id", "user_ids"]))
       for field in fields},
    ("/api/v1/models/create", "POST", "id"): (
        "names the preset to create, not an existing object: model ids are one namespace for everyone, as in "
        "Open WebUI, since chat addresses models by id (a taken id is 409)"),
}
EXEMPT_VARIABLES = {  # a route variable that never names an owned object, wherever it appears
    "url_idx": "the index of a configured backend (/ollama/…/<url_idx>, /openai/…/<url_idx>), the same for "
               "every user; the passthrough's own access levels apply",
    "filename": "a Swagger UI asset of the installed bundle (/static/swagger-ui/<path:filename>), public",
}


# ------------------------------------------------------------------------------------------------ enumeration

def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def id_carriers(app, spec: dict) -> set[tuple[str, str, str]]:
    """Every (rule, method, field) where a request names an object: each route variable of the route table,
    and each query parameter or top-level body field the OpenAPI document names like an id."""
    carriers, rules = set(), {}
    for rule in app.url_map.iter_rules():
        rules[_openapi_path(rule.rule)] = rule.rule
        for method in rule.methods - IGNORED_METHODS:
            carriers |= {(rule.rule, method, variable) for variable in rule.arguments}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":  # the path's own variables: counted from the route table above
                continue
            carriers |= {(rules[path], method.upper(), name) for name in _fields(spec, operation)
                         if name in ID_FIELD_NAMES or ID_FIELD.match(name)}
    return carriers


def _fields(spec: dict, operation: dict) -> set[str]:
    names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
    for content in operation.get("requestBody", {}).get("content", {}).values():
        names |= set(_resolved(spec, content["schema"]).get("properties", {}))
    return names


def _resolved(spec: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def unaccounted(app, client) -> tuple[list, list, set]:
    """(carriers with neither a row nor an exemption, rows or exemptions naming what no route takes, all
    carriers)."""
    carriers = id_carriers(app, client.get("/openapi.json").get_json())
    covered = {row.carrier for row in ROWS}
    exempt = set(EXEMPT) | {c for c in carriers if c[2] in EXEMPT_VARIABLES}
    routes = {(rule.rule, method) for rule in app.url_map.iter_rules() for method in rule.methods}
    stale = {c for c in covered if c[:2] not in routes} | (set(EXEMPT) - carriers)
    return sorted(carriers - covered - exempt), sorted(stale), carriers


def test_every_id_taking_route_is_in_the_matrix_or_exempt(app, client):
    missing, stale, carriers = unaccounted(app, client)
    assert not missing, f"id-taking routes with no access-matrix row and no exemption: {missing}"
    assert not stale, f"matrix rows or exemptions for routes that no longer take that id: {stale}"
    exempt = {c for c in carriers if c in EXEMPT or c[2] in EXEMPT_VARIABLES}
    print(f"\naccess matrix: {len(carriers)} id carriers over {len({c[:2] for c in carriers})} route methods: "
          f"{len(carriers - exempt)} covered by {len(ROWS)} rows, {len(exempt)} exempt")


def test_a_new_id_route_fails_the_matrix_by_name(app, client):
    app.add_url_rule("/api/v1/notes/<string:note_id>", "note", lambda note_id: {}, methods=["GET", "DELETE"])
    missing, _stale, _carriers = unaccounted(app, client)
    assert missing == [("/api/v1/notes/<string:note_id>", "DELETE", "note_id"),
                       ("/api/v1/notes/<string:note_id>", "GET", "note_id")]


# ------------------------------------------------------------------------------------------------ the attack

@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_b_cannot_tell_a_private_object_from_a_missing_one(client, world, fake_backend, row):
    before = len(fake_backend.requests)
    against_a = row.send(client, world, world.private)
    against_nothing = row.send(client, world, world.missing)
    assert against_a.status_code == row.status, (row.name, against_a.get_json())
    assert against_nothing.status_code == row.status, (row.name, against_nothing.get_json())
    assert _detail(against_a, world.private) == _detail(against_nothing, world.missing)
    if row.status == 200:  # a skipped source: no trace of A's collection in the answer
        assert "sources" not in against_a.get_json() and A_TEXT not in against_a.data
    assert not [r for r in fake_backend.requests[before:] if A_TEXT.decode() in str(r)], "A's text went upstream"
    _assert_a_untouched(client, world)


def _detail(response, ids: Ids):
    """What the answer says, with the named ids blanked (a missing id is echoed just as A's would be)."""
    body = response.get_json(silent=True)
    text = str(body.get("detail") if isinstance(body, dict) else None)
    for ident in (ids.file, ids.knowledge, ids.preset):
        text = text.replace(ident, "<id>")
    return text


def _assert_a_untouched(client, w: World):
    headers = w.a["headers"]
    assert _ok(client.get(f"/api/v1/files/{w.private.file}/data/content", headers=headers)) == {
        "content": A_TEXT.decode()}
    collection = _ok(client.get(f"/api/v1/knowledge/{w.private.knowledge}", headers=headers))
    assert (collection["name"], collection["access_grants"]) == ("A private", [])
    assert [f["id"] for f in collection["files"]] == [w.private.file]
    preset = _ok(client.get(f"{PRESET}?id={w.private.preset}", headers=headers))
    assert (preset["name"], preset["is_active"], preset["is_public"]) == (w.private.preset, True, False)
    assert [k["id"] for k in _ok(client.get("/api/v1/auths/api_keys", headers=headers))] == [w.private.api_key]


def test_b_may_not_link_a_file_b_can_only_read(client, world):
    """The contrast to the 404 rows: once A's collection is public B may read A's file, but adding it to
    B's own collection is 403 (a link would pass on a right A can take back)."""
    publish = {"access_grants": [{"principal_type": "user", "principal_id": "*", "permission": "read"}]}
    _ok(client.post(f"/api/v1/knowledge/{world.private.knowledge}/access/update", headers=world.a["headers"],
                    json=publish))
    _ok(client.get(f"/api/v1/files/{world.private.file}", headers=world.b["headers"]))
    response = client.post(f"/api/v1/knowledge/{world.b_knowledge}/file/add", headers=world.b["headers"],
                           json={"file_id": world.private.file})
    assert response.status_code == 403, response.get_json()


@pytest.mark.parametrize("route", sorted({c[:2] for c, why in EXEMPT.items() if why == ADMIN_ONLY}),
                         ids=lambda c: f"{c[1]} {c[0]}")
def test_admin_only_routes_refuse_before_looking(client, admin, world, route):
    rule, method = route
    group = _ok(client.post("/api/v1/groups/create", headers=admin["headers"], json={"name": "A's team"}))
    existing = {"user_id": world.a["id"], "group_id": group["id"]}
    body = {"name": "taken over", "user_ids": [world.b["id"]]} if method == "POST" else None
    answers = [client.open(re.sub(r"<string:(\w+)>", lambda m: target or existing[m.group(1)], rule),
                           method=method, headers=world.b["headers"], json=body)
               for target in (None, str(uuid.uuid4()))]
    assert [a.status_code for a in answers] == [403, 403], [a.get_json() for a in answers]
    assert answers[0].get_json() == answers[1].get_json()
    assert _ok(client.get(f"/api/v1/groups/id/{group['id']}", headers=admin["headers"])) == group  # untouched


LISTS = ["/api/v1/files/?content=true", "/api/v1/knowledge/", "/api/v1/knowledge/?page=1", "/api/v1/models/",
         "/api/v1/models/list", "/api/models", "/api/v1/knowledge/{b_knowledge}/files?include_content=true"]


@pytest.mark.parametrize("url", LISTS)
def test_b_lists_show_nothing_of_a(client, world, url):
    """The lists B reads never name A's private objects nor carry A's text."""
    response = client.get(url.format(b_knowledge=world.b_knowledge), headers=world.b["headers"])
    assert response.status_code == 200, response.get_json()
    for secret in (world.private.file, world.private.knowledge, world.private.preset, A_TEXT.decode()):
        assert secret not in response.get_data(as_text=True)
