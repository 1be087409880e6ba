"""Sharing with people: access grants to users and groups on collections, files reached through them and
presets, the /api/v1/groups routes, and revocation that counts on the very next request."""
from __future__ import annotations

import pytest

from .rag_helpers import _drain_background, rag_settings, upload_ok  # noqa: F401

SECRET = b"Team notes.\n\nThe launch code of project Zephyr is 7-alpha-9.\n"
PUBLIC = {"principal_type": "user", "principal_id": "*", "permission": "read"}


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend)


def ok(response):
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def grant(kind: str, ident: str, permission: str = "read") -> dict:
    return {"principal_type": kind, "principal_id": ident, "permission": permission}


@pytest.fixture
def team(client, admin, make_user):
    """A owns a collection holding a file with the secret; B is a second user; `group` is an empty group."""
    a, b = make_user("user"), make_user("user")
    kb = ok(client.post("/api/v1/knowledge/create", headers=a["headers"], json={"name": "Team A docs"}))
    file = upload_ok(client, a["headers"], "zephyr.txt", SECRET)
    ok(client.post(f"/api/v1/knowledge/{kb['id']}/file/add", headers=a["headers"], json={"file_id": file["id"]}))
    group = ok(client.post("/api/v1/groups/create", headers=admin["headers"], json={"name": "Service B"}))
    return {"a": a, "b": b, "kb": kb["id"], "file": file["id"], "group": group["id"], "admin": admin}


def share(client, team, *grants):
    url = f"/api/v1/knowledge/{team['kb']}/access/update"
    return ok(client.post(url, headers=team["a"]["headers"], json={"access_grants": list(grants)}))


def reads(client, team, headers) -> list[int]:
    """B's answers on every read path of A's collection: get, files, the file, retrieval, chat `files`."""
    kb, file = team["kb"], team["file"]
    chat = {"model": "llama3.2:latest", "messages": [{"role": "user", "content": "launch code?"}]}
    answers = [
        client.get(f"/api/v1/knowledge/{kb}", headers=headers),
        client.get(f"/api/v1/knowledge/{kb}/files", headers=headers),
        client.get(f"/api/v1/files/{file}/data/content", headers=headers),
        client.post("/api/v1/retrieval/query/collection", headers=headers,
                    json={"collection_names": [kb], "query": "launch code"}),
        client.post("/api/chat/completions", headers=headers, json={**chat, "files": [{"type": "collection",
                                                                                         "id": kb}]}),
        client.post("/api/chat/completions", headers=headers, json={**chat, "files": [{"type": "file",
                                                                                         "id": file}]}),
    ]
    for answer in answers[3:4]:
        if answer.status_code == 200:
            assert "7-alpha-9" in answer.get_json()["documents"][0][0]
    return [answer.status_code for answer in answers]


def listed(client, headers) -> list[str]:
    return [item["id"] for item in ok(client.get("/api/v1/knowledge/", headers=headers))["items"]]


def test_a_read_grant_to_a_key_shares_the_collection_read_only_until_revoked(client, team, api_key_headers):
    b_key = api_key_headers(team["b"])  # "team A's collection readable by service B's key"
    assert reads(client, team, b_key) == [404] * 6
    shown = share(client, team, grant("user", team["b"]["id"]))
    assert [(g["principal_type"], g["principal_id"], g["permission"]) for g in shown["access_grants"]] == [
        ("user", team["b"]["id"], "read")]
    assert reads(client, team, b_key) == [200] * 6 and team["kb"] in listed(client, b_key)
    assert ok(client.get(f"/api/v1/knowledge/{team['kb']}", headers=b_key))["write_access"] is False
    [item] = ok(client.get("/api/v1/knowledge/", headers=b_key))["items"]
    assert item["write_access"] is False and "email" not in item["user"]  # a reader learns no owner email
    b_file = upload_ok(client, team["b"]["headers"], "b.txt", b"bravo")["id"]
    for path, body in ((f"/api/v1/knowledge/{team['kb']}/update", {"name": "taken"}),
                       (f"/api/v1/knowledge/{team['kb']}/file/add", {"file_id": b_file}),
                       (f"/api/v1/knowledge/{team['kb']}/access/update", {"access_grants": [PUBLIC]})):
        assert client.post(path, headers=b_key, json=body).status_code == 403
    share(client, team)  # [] revokes
    assert reads(client, team, b_key) == [404] * 6 and team["kb"] not in listed(client, b_key)


def test_a_write_grant_lets_b_add_b_s_files_and_its_revocation_hides_them(client, team):
    b = team["b"]["headers"]
    share(client, team, grant("user", team["b"]["id"], "write"))
    b_file = upload_ok(client, b, "b.txt", b"Bravo adds the orbit table.")["id"]
    added = ok(client.post(f"/api/v1/knowledge/{team['kb']}/file/add", headers=b, json={"file_id": b_file}))
    assert added["write_access"] is True and {f["id"] for f in added["files"]} == {team["file"], b_file}
    ok(client.post(f"/api/v1/knowledge/{team['kb']}/update", headers=b, json={"name": "Team A+B docs"}))
    a_view = ok(client.get(f"/api/v1/knowledge/{team['kb']}/files", headers=team["a"]["headers"]))
    assert {f["id"] for f in a_view["items"]} == {team["file"], b_file}
    ok(client.get(f"/api/v1/files/{b_file}", headers=team["a"]["headers"]))  # A reads it through the collection
    assert client.delete(f"/api/v1/files/{b_file}", headers=team["a"]["headers"]).status_code == 403
    share(client, team, grant("user", team["b"]["id"], "read"))  # down to read: B's link no longer shows
    a_view = ok(client.get(f"/api/v1/knowledge/{team['kb']}/files", headers=team["a"]["headers"]))
    assert [f["id"] for f in a_view["items"]] == [team["file"]]
    assert client.get(f"/api/v1/files/{b_file}", headers=team["a"]["headers"]).status_code == 404


def test_a_group_grant_follows_membership(client, team):
    admin, b, group = team["admin"]["headers"], team["b"]["headers"], team["group"]
    share(client, team, grant("group", group))
    assert reads(client, team, b) == [404] * 6
    members = ok(client.post(f"/api/v1/groups/id/{group}/users/add", headers=admin,
                             json={"user_ids": [team["b"]["id"]]}))
    assert members["member_count"] == 1
    assert reads(client, team, b) == [200] * 6
    assert [g["id"] for g in ok(client.get("/api/v1/groups/", headers=b))] == [group]  # B sees B's groups
    ok(client.post(f"/api/v1/groups/id/{group}/users/remove", headers=admin, json={"user_ids": [team["b"]["id"]]}))
    assert reads(client, team, b) == [404] * 6
    ok(client.post(f"/api/v1/groups/id/{group}/update", headers=admin, json={"user_ids": [team["b"]["id"]]}))
    assert reads(client, team, b) == [200] * 6
    assert ok(client.delete(f"/api/v1/groups/id/{group}/delete", headers=admin)) is True
    assert reads(client, team, b) == [404] * 6
    shown = ok(client.get(f"/api/v1/knowledge/{team['kb']}", headers=team["a"]["headers"]))
    assert shown["access_grants"] == []  # the group's grants went with it


def test_a_preset_shared_with_a_group(client, team, fake_backend):
    a, b, admin, group = team["a"]["headers"], team["b"]["headers"], team["admin"]["headers"], team["group"]
    preset = {"id": "team-helper", "base_model_id": "llama3.2:latest", "name": "Helper",
              "params": {"system": "Team secret prompt."}, "access_grants": [grant("group", group)]}
    ok(client.post("/api/v1/models/create", headers=a, json=preset))
    chat = {"model": "team-helper", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/api/chat/completions", headers=b, json=chat).status_code == 400
    ok(client.post(f"/api/v1/groups/id/{group}/users/add", headers=admin, json={"user_ids": [team["b"]["id"]]}))
    ok(client.post("/api/chat/completions", headers=b, json=chat))
    assert "team-helper" in [m["id"] for m in ok(client.get("/api/models", headers=b))["data"]]
    seen = ok(client.get("/api/v1/models/model?id=team-helper", headers=b))
    assert seen["params"] == {} and seen["access_grants"][0]["principal_id"] == group  # a reader: no prompt
    assert client.post("/api/v1/models/model/update?id=team-helper", headers=b,
                       json={"name": "taken"}).status_code == 403
    ok(client.post("/api/v1/models/model/access/update?id=team-helper", headers=a, json={"access_grants": []}))
    assert client.post("/api/chat/completions", headers=b, json=chat).status_code == 400
    assert "team-helper" not in [m["id"] for m in ok(client.get("/api/models", headers=b))["data"]]


@pytest.mark.parametrize("grants, detail", [
    ([grant("user", "no-such-user")], "no such user: no-such-user"),
    ([grant("group", "no-such-group")], "no such group: no-such-group"),
    ([grant("team", "x")], "principal_type"),
    ([grant("user", "*", "write")], "everyone"),
    ([PUBLIC] * 101, "At most 100"),
])
def test_grants_naming_what_does_not_exist_are_refused(client, team, grants, detail):
    url = f"/api/v1/knowledge/{team['kb']}/access/update"
    response = client.post(url, headers=team["a"]["headers"], json={"access_grants": grants})
    assert response.status_code == 400 and detail in response.get_json()["detail"]
    assert ok(client.get(f"/api/v1/knowledge/{team['kb']}", headers=team["a"]["headers"]))["access_grants"] == []


def test_groups_routes_are_for_admins(client, team):
    admin, b, group = team["admin"]["headers"], team["b"]["headers"], team["group"]
    for method, path, body in (("POST", "/api/v1/groups/create", {"name": "mine"}),
                               ("GET", f"/api/v1/groups/id/{group}", None),
                               ("POST", f"/api/v1/groups/id/{group}/users", None),
                               ("POST", f"/api/v1/groups/id/{group}/update", {"name": "mine"}),
                               ("POST", f"/api/v1/groups/id/{group}/users/add", {"user_ids": [team["b"]["id"]]}),
                               ("DELETE", f"/api/v1/groups/id/{group}/delete", None)):
        assert client.open(path, method=method, headers=b, json=body).status_code == 403, path
    assert ok(client.get("/api/v1/groups/", headers=b)) == []  # not a member of any
    assert ok(client.get(f"/api/v1/groups/id/{group}", headers=admin))["member_count"] == 0


def test_groups_crud_and_validation(client, team):
    admin, users = team["admin"]["headers"], [team["a"]["id"], team["b"]["id"]]
    made = ok(client.post("/api/v1/groups/create", headers=admin,
                          json={"name": "Ops", "description": "On call", "permissions": {"chat": True}}))
    assert {k: made[k] for k in ("name", "description", "permissions", "member_count")} == {
        "name": "Ops", "description": "On call", "permissions": {"chat": True}, "member_count": 0}
    group = made["id"]
    assert ok(client.post(f"/api/v1/groups/id/{group}/users/add", headers=admin,
                          json={"user_ids": users + users}))["member_count"] == 2
    assert sorted(u["id"] for u in ok(client.post(f"/api/v1/groups/id/{group}/users", headers=admin))) == \
        sorted(users)
    renamed = ok(client.post(f"/api/v1/groups/id/{group}/update", headers=admin, json={"name": "Ops 2"}))
    assert (renamed["name"], renamed["description"], renamed["member_count"]) == ("Ops 2", "On call", 2)
    unknown = client.post(f"/api/v1/groups/id/{group}/users/add", headers=admin, json={"user_ids": ["ghost"]})
    assert unknown.status_code == 400 and "ghost" in unknown.get_json()["detail"]
    too_many = client.post(f"/api/v1/groups/id/{group}/users/add", headers=admin,
                           json={"user_ids": [f"u{i}" for i in range(1001)]})
    assert too_many.status_code == 422
    assert client.post("/api/v1/groups/create", headers=admin, json={"name": ""}).status_code == 422
    assert {g["id"] for g in ok(client.get("/api/v1/groups/", headers=admin))} == {group, team["group"]}
    ok(client.delete(f"/api/v1/groups/id/{group}/delete", headers=admin))
    for method, path in (("GET", f"/api/v1/groups/id/{group}"), ("DELETE", f"/api/v1/groups/id/{group}/delete")):
        missing = client.open(path, method=method, headers=admin)
        assert missing.status_code == 404 and missing.get_json()["detail"]
