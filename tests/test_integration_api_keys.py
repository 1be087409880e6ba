"""A key's per-minute limits under a real gunicorn with 2 workers: requests and tokens counted through one
worker bind the other, and a deleted key is refused by both at once."""
import time

import pytest

from . import engine
from .servers import Gunicorn
from .test_integration_workers import call, only, post

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Hello"}]
SESSION = "/api/v1/auths/"


@pytest.fixture(scope="module")
def server(request, module_backend, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    env = {"DATA_DIR": str(data), **engine.database_settings(request), "OLLAMA_BASE_URLS": module_backend.url,
           "OPENAI_API_BASE_URLS": ""}
    gunicorn = Gunicorn(env, workers=2, threads=2, log_path=str(data / "gunicorn.log")).start()
    try:
        gunicorn.ready_workers(2)
        yield gunicorn
    finally:
        gunicorn.stop()


@pytest.fixture(scope="module")
def session(server) -> dict:
    body = {"name": "Admin", "email": "admin@example.com", "password": "admin-password"}
    return {"Authorization": f"Bearer {post(server.url, '/api/v1/auths/signup', None, body)['token']}"}


def new_key(server, session, **limits) -> tuple[str, dict]:
    created = post(server.url, "/api/v1/auths/api_keys", session, {"name": "svc", **limits})
    return created["id"], {"Authorization": f"Bearer {created['api_key']}"}


def well_inside_a_minute() -> None:
    """Counters are per minute: start where the whole test fits before the next one (no timing asserted)."""
    into = time.time() % 60
    if into > 40:
        time.sleep(60 - into + 0.2)


def test_requests_per_minute_hold_across_workers(server, session):
    first, second = server.ready_workers(2)
    _, key = new_key(server, session, requests_per_minute=4)
    well_inside_a_minute()
    with only(server, first):
        assert [call(server.url, "GET", SESSION, key).status_code for _ in range(2)] == [200, 200]
    with only(server, second):
        assert [call(server.url, "GET", SESSION, key).status_code for _ in range(2)] == [200, 200]
        refused = call(server.url, "GET", SESSION, key)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    with only(server, first):
        assert call(server.url, "GET", SESSION, key).status_code == 429


def test_tokens_per_minute_hold_across_workers(server, session):
    first, second = server.ready_workers(2)
    _, key = new_key(server, session, tokens_per_minute=10)
    well_inside_a_minute()
    with only(server, first):
        streamed = call(server.url, "POST", "/api/chat/completions", key,
                        {"model": "llama3.2", "messages": HELLO, "stream": True})
        assert streamed.status_code == 200 and b"[DONE]" in streamed.content
    with only(server, second):
        body = {"model": "llama3.2", "messages": HELLO}
        refused = call(server.url, "POST", "/api/chat/completions", key, body)
        assert refused.status_code == 429 and "tokens" in refused.json()["detail"]


def test_a_deleted_key_is_refused_by_every_worker(server, session):
    first, second = server.ready_workers(2)
    key_id, key = new_key(server, session, requests_per_minute=1000)
    for pid in (first, second):
        with only(server, pid):
            assert call(server.url, "GET", SESSION, key).status_code == 200  # cached by both workers
    with only(server, first):
        assert call(server.url, "DELETE", f"/api/v1/auths/api_keys/{key_id}", session).status_code == 200
    for pid in (first, second):
        with only(server, pid):
            assert call(server.url, "GET", SESSION, key).status_code == 401
