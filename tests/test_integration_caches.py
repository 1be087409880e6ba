"""Per-worker caches of keys, users and presets: a change made through one gunicorn worker is obeyed by the
other worker on its very next request (the database's change stamps), while unchanged reads stay cached."""
import pytest

from . import engine
from .servers import Gunicorn
from .test_integration_workers import call, only, post

pytestmark = pytest.mark.integration

CHAT = {"model": "llama3.2:latest", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def two_workers(request, module_backend, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    env = {"DATA_DIR": str(data), **engine.database_settings(request), "OLLAMA_BASE_URLS": module_backend.url,
           "OPENAI_API_BASE_URLS": ""}
    server = Gunicorn(env, workers=2, threads=4, log_path=str(data / "gunicorn.log")).start()
    try:
        workers = server.ready_workers(2)
        admin = post(server.url, "/api/v1/auths/signup", None,
                     {"name": "Admin", "email": "admin@example.com", "password": "admin-password"})
        yield server, workers, {"Authorization": f"Bearer {admin['token']}"}
    finally:
        server.stop()


def on_each(server, workers, method, path, headers, body=None) -> list[int]:
    """The status every worker answers (each in turn alone, so each one's cache is exercised)."""
    statuses = []
    for pid in workers:
        with only(server, pid):
            statuses.append(call(server.url, method, path, headers, body).status_code)
    return statuses


def new_user(server, admin, email: str) -> dict:
    post(server.url, "/api/v1/auths/add", admin, {"name": email, "email": email, "password": "pw-123456",
                                                  "role": "user"})
    session = post(server.url, "/api/v1/auths/signin", None, {"email": email, "password": "pw-123456"})
    return session


def test_a_deleted_key_is_refused_by_the_other_worker_at_once(two_workers):
    server, (first, second), admin = two_workers
    user = new_user(server, admin, "keys@example.com")
    key = post(server.url, "/api/v1/auths/api_key", {"Authorization": f"Bearer {user['token']}"})["api_key"]
    by_key = {"Authorization": f"Bearer {key}"}
    assert on_each(server, [first, second], "GET", "/api/v1/auths/", by_key) == [200, 200]  # both cached
    with only(server, first):
        assert call(server.url, "DELETE", "/api/v1/auths/api_key", by_key).status_code == 200
    assert on_each(server, [second, first], "GET", "/api/v1/auths/", by_key) == [401, 401]


def test_a_deleted_user_is_refused_by_the_other_worker_at_once(two_workers):
    server, (first, second), admin = two_workers
    user = new_user(server, admin, "gone@example.com")
    bearer = {"Authorization": f"Bearer {user['token']}"}
    assert on_each(server, [first, second], "GET", "/api/v1/auths/", bearer) == [200, 200]
    with only(server, first):
        assert call(server.url, "DELETE", f"/api/v1/users/{user['id']}", admin).status_code == 200
    assert on_each(server, [second, first], "GET", "/api/v1/auths/", bearer) == [401, 401]


def test_a_signed_out_token_is_refused_by_the_other_worker_at_once(two_workers):
    server, (first, second), admin = two_workers
    user = new_user(server, admin, "out@example.com")
    bearer = {"Authorization": f"Bearer {user['token']}"}
    assert on_each(server, [first, second], "GET", "/api/v1/auths/", bearer) == [200, 200]
    with only(server, first):
        assert call(server.url, "GET", "/api/v1/auths/signout", bearer).status_code == 200
    assert on_each(server, [second, first], "GET", "/api/v1/auths/", bearer) == [401, 401]


def test_a_disabled_preset_is_refused_by_the_other_worker_at_once(two_workers):
    server, (first, second), admin = two_workers
    preset = {"id": "cached-helper", "base_model_id": "llama3.2:latest", "name": "Helper", "meta": {},
              "params": {"system": "Be brief."}}
    post(server.url, "/api/v1/models/create", admin, preset)
    chat = {**CHAT, "model": "cached-helper"}
    assert on_each(server, [first, second], "POST", "/api/chat/completions", admin, chat) == [200, 200]
    with only(server, first):
        toggle = call(server.url, "POST", "/api/v1/models/model/toggle?id=cached-helper", admin)
        assert toggle.status_code == 200
    assert on_each(server, [second, first], "POST", "/api/chat/completions", admin, chat) == [400, 400]


def test_a_disabled_base_model_override_is_obeyed_by_the_other_worker_at_once(two_workers):
    server, (first, second), admin = two_workers
    assert on_each(server, [first, second], "POST", "/api/chat/completions", admin, CHAT) == [200, 200]
    override = {"id": "llama3.2:latest", "base_model_id": None, "name": "Llama", "meta": {}, "params": {}}
    with only(server, first):
        post(server.url, "/api/v1/models/create", admin, override)
        assert call(server.url, "POST", "/api/v1/models/model/toggle?id=llama3.2:latest",
                    admin).status_code == 200
    assert on_each(server, [second, first], "POST", "/api/chat/completions", admin, CHAT) == [400, 400]


def test_public_routes_answer_whatever_token_is_sent(two_workers):
    server, workers, _ = two_workers
    for token in ("sk-not-a-key", "not.a.jwt"):
        assert on_each(server, workers, "GET", "/health", {"Authorization": f"Bearer {token}"}) == [200, 200]


def test_a_user_taken_out_of_a_group_loses_its_preset_on_the_other_worker_at_once(two_workers):
    """Grants and memberships are read from the database on each check (no worker caches them): a preset
    shared with a group stops answering a removed member on every worker from the next request."""
    server, (first, second), admin = two_workers
    member = new_user(server, admin, "member@example.com")
    group = post(server.url, "/api/v1/groups/create", admin, {"name": "Helpers"})["id"]
    post(server.url, "/api/v1/groups/id/" + group + "/users/add", admin, {"user_ids": [member["id"]]})
    post(server.url, "/api/v1/models/create", admin, {
        "id": "group-helper", "base_model_id": "llama3.1:latest",  # another test here switches 3.2 off
        "name": "Group helper",
        "access_grants": [{"principal_type": "group", "principal_id": group, "permission": "read"}]})
    bearer, chat = {"Authorization": f"Bearer {member['token']}"}, {**CHAT, "model": "group-helper"}
    assert on_each(server, [first, second], "POST", "/api/chat/completions", bearer, chat) == [200, 200]
    with only(server, first):
        post(server.url, f"/api/v1/groups/id/{group}/users/remove", admin, {"user_ids": [member["id"]]})
    assert on_each(server, [second, first], "POST", "/api/chat/completions", bearer, chat) == [400, 400]
