"""/api/v1/users and the role matrix: anonymous, pending, user, admin × public, verified, admin routes."""
import pytest

ROUTES = {"public": ("GET", "/health"), "verified": ("GET", "/api/models"),
          "authenticated": ("GET", "/api/v1/auths/"), "admin": ("GET", "/api/v1/users/")}
EXPECTED = {  # caller -> route level -> status
    "anonymous": {"public": 200, "authenticated": 401, "verified": 401, "admin": 401},
    "pending": {"public": 200, "authenticated": 200, "verified": 403, "admin": 403},
    "user": {"public": 200, "authenticated": 200, "verified": 200, "admin": 403},
    "admin": {"public": 200, "authenticated": 200, "verified": 200, "admin": 200},
}


@pytest.mark.parametrize("caller", list(EXPECTED))
@pytest.mark.parametrize("level", list(ROUTES))
def test_role_matrix(client, admin, make_user, caller, level):
    headers = {} if caller == "anonymous" else (admin if caller == "admin" else make_user(caller))["headers"]
    method, path = ROUTES[level]
    response = client.open(path, method=method, headers=headers)
    assert response.status_code == EXPECTED[caller][level], response.get_json()
    if response.status_code >= 400:
        assert isinstance(response.get_json()["detail"], str)


def test_list_and_get_users(client, admin, make_user):
    bob = make_user("user", email="bob@example.com", name="Bob")
    listing = client.get("/api/v1/users/?query=BOB", headers=admin["headers"]).get_json()
    assert listing["total"] == 1 and listing["users"][0]["id"] == bob["id"]
    assert "password_hash" not in listing["users"][0]
    one = client.get(f"/api/v1/users/{bob['id']}", headers=admin["headers"])
    assert one.status_code == 200 and one.get_json()["email"] == "bob@example.com"
    assert client.get("/api/v1/users/missing", headers=admin["headers"]).status_code == 404
    assert client.get("/api/v1/users/?page=0", headers=admin["headers"]).status_code == 422


def test_a_search_with_a_nul_character_finds_the_name_that_stored_it(client, admin, make_user):
    """Found by the fuzz on PostgreSQL: a NUL in `?query=` reached LOWER(name) LIKE ... raw (500); it is
    compared as stored, NUL as U+FFFD, on both engines."""
    nul = make_user("user", name="Nul\x00Name")
    listing = client.get("/api/v1/users/?query=nul%00n", headers=admin["headers"])
    assert listing.status_code == 200 and [u["id"] for u in listing.get_json()["users"]] == [nul["id"]]


def test_update_user_role_name_email_password(client, admin, make_user):
    bob = make_user("pending")
    url = f"/api/v1/users/{bob['id']}/update"
    assert client.get("/api/models", headers=bob["headers"]).status_code == 403
    updated = client.post(url, headers=admin["headers"], json={"role": "user", "name": "Robert",
                                                               "email": "Robert@Example.com"}).get_json()
    assert (updated["role"], updated["name"], updated["email"]) == ("user", "Robert", "robert@example.com")
    assert client.get("/api/models", headers=bob["headers"]).status_code == 200  # role read per request
    assert client.post(url, headers=admin["headers"], json={"role": "root"}).status_code == 422
    assert client.post(url, headers=admin["headers"], json={"email": admin["email"]}).status_code == 409
    client.post(url, headers=admin["headers"], json={"password": "reset-pass"})
    assert client.get("/api/v1/auths/", headers=bob["headers"]).status_code == 401  # reset revokes tokens
    assert client.post("/api/v1/users/nope/update", headers=admin["headers"], json={"name": "X"}).status_code == 404


def test_last_admin_cannot_be_demoted_or_deleted(client, admin, make_user):
    url = f"/api/v1/users/{admin['id']}"
    assert client.post(url + "/update", headers=admin["headers"], json={"role": "user"}).status_code == 403
    assert client.delete(url, headers=admin["headers"]).status_code == 403
    second = make_user("admin")
    assert client.post(url + "/update", headers=second["headers"], json={"role": "user"}).status_code == 200
    assert client.delete(f"/api/v1/users/{second['id']}", headers=second["headers"]).status_code == 403


def test_non_admin_cannot_manage_users(client, user, admin):
    assert client.post(f"/api/v1/users/{admin['id']}/update", headers=user["headers"],
                       json={"role": "user"}).status_code == 403
    assert client.delete(f"/api/v1/users/{admin['id']}", headers=user["headers"]).status_code == 403


def test_deleting_a_user_removes_their_files_vectors_and_collections(client, admin, user, app):
    import os

    from webui_api.db import Chunk, File, Knowledge
    data = {"file": (__import__("io").BytesIO(b"Deleted users leave nothing behind."), "note.txt")}
    upload = client.post("/api/v1/files/", headers=user["headers"], data=data,
                         content_type="multipart/form-data")
    assert upload.status_code == 502  # no embedding backend in this module: the file is kept, failed
    assert File.select().count() == 1
    kb = client.post("/api/v1/knowledge/create", headers=user["headers"],
                     json={"name": "mine", "description": ""}).get_json()
    uploads = os.path.join(app.extensions["webui_api"].settings.DATA_DIR, "uploads")
    assert len(os.listdir(uploads)) >= 1
    assert client.delete(f"/api/v1/users/{user['id']}", headers=admin["headers"]).get_json() is True
    assert File.select().count() == 0 and Chunk.select().count() == 0
    assert Knowledge.get_or_none(Knowledge.id == kb["id"]) is None
    assert [n for n in os.listdir(uploads) if not n.startswith(".")] == []
