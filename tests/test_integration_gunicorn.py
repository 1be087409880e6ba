"""Real gunicorn, 2 workers: a JWT from one worker works on the other, and the secret survives a restart."""
import json
import os
import re
import socket
import stat
import subprocess
import time

import jwt
import pytest
import requests

from . import engine
from .servers import BIN, ROOT, Gunicorn, pause, resume

pytestmark = pytest.mark.integration


def only_worker(server, pid):
    """Pause every other worker so `pid` is the only one accepting connections."""
    return pause(p for p in server.worker_pids() if p != pid)


def call_on_fresh_connection(url, headers=None):
    with requests.Session() as session:
        return session.get(url, headers=headers, timeout=10)


def test_two_workers_share_tokens_and_the_secret_survives_restart(tmp_path, database_settings):
    env = {"DATA_DIR": str(tmp_path), **database_settings, "OLLAMA_BASE_URLS": "http://127.0.0.1:9"}
    server = Gunicorn(env, workers=2, threads=2).start()
    try:
        workers = server.ready_workers(2)
        paused = only_worker(server, workers[0])
        try:
            session = requests.post(server.url + "/api/v1/auths/signup", timeout=10,
                                    json={"name": "A", "email": "a@example.com", "password": "pw"}).json()
        finally:
            resume(paused)
        headers = {"Authorization": f"Bearer {session['token']}"}
        paused = only_worker(server, workers[1])  # the worker that did not issue the token
        try:
            response = call_on_fresh_connection(server.url + "/api/v1/auths/", headers)
        finally:
            resume(paused)
        assert response.status_code == 200 and response.json()["id"] == session["id"]
        # signout on one worker is seen by the other
        paused = only_worker(server, workers[0])
        try:
            requests.post(server.url + "/api/v1/auths/signout", headers=headers, timeout=10)
        finally:
            resume(paused)
        paused = only_worker(server, workers[1])
        try:
            assert call_on_fresh_connection(server.url + "/api/v1/auths/", headers).status_code == 401
        finally:
            resume(paused)
    finally:
        server.stop()

    secret = signing_secret(env)
    assert jwt.decode(session["token"], secret, algorithms=["HS256"])["id"] == session["id"]

    with Gunicorn(env, workers=2, threads=2) as restarted:
        signin = requests.post(restarted.url + "/api/v1/auths/signin", timeout=10,
                               json={"email": "a@example.com", "password": "pw"}).json()
        assert call_on_fresh_connection(restarted.url + "/api/v1/auths/",
                                        {"Authorization": f"Bearer {signin['token']}"}).status_code == 200
    assert signing_secret(env) == secret


def signing_secret(env: dict) -> str:
    """The key tokens are signed with: the configured one (required on PostgreSQL), else the one the
    service generated in DATA_DIR, private to its user."""
    if env.get("WEBUI_SECRET_KEY"):
        return env["WEBUI_SECRET_KEY"]
    secret_file = os.path.join(env["DATA_DIR"], ".webui_secret_key")
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    with open(secret_file) as handle:
        return handle.read().strip()


def test_gunicorn_binds_loopback_unless_host_says_otherwise(tmp_path):
    """A fresh instance belongs to its first sign-up, so by default nothing off this machine reaches it."""
    def resolved_bind(**env):
        base = {k: v for k, v in os.environ.items() if k != "HOST"}
        out = subprocess.run([str(BIN / "gunicorn"), "--print-config", "-c", "gunicorn.conf.py"], cwd=ROOT,
                             env={**base, "DATA_DIR": str(tmp_path), **env}, capture_output=True, text=True,
                             timeout=60).stdout
        return next(line.split("=", 1)[1].strip() for line in out.splitlines() if line.startswith("bind "))

    assert resolved_bind() == "['127.0.0.1:8080']"
    assert resolved_bind(HOST="0.0.0.0", PORT="9000") == "['0.0.0.0:9000']"


def test_master_logs_backends_and_warns_once_while_no_account_exists(tmp_path, module_backend,
                                                                     database_settings):
    """Start-up names each backend and whether it answered (a silent one costs ~2 s, not its whole timeout),
    and warns loudly, once for all workers, while the first sign-up would become admin."""
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = {"DATA_DIR": str(tmp_path), **database_settings, "AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST": "30",
               "OLLAMA_BASE_URLS": f"{module_backend.url};http://127.0.0.1:{silent.getsockname()[1]}"}
        log = tmp_path / "gunicorn.log"
        started = time.monotonic()
        with Gunicorn(env, workers=2, threads=2, log_path=str(log)) as server:
            elapsed = time.monotonic() - started
            requests.post(server.url + "/api/v1/auths/signup", timeout=10,
                          json={"name": "A", "email": "a@example.com", "password": "pw"}).raise_for_status()
        first = log.read_text()
        with Gunicorn(env, workers=2, threads=2, log_path=str(log)):
            pass
    print(f"\nstart-up with a silent backend: {elapsed:.1f} s")
    assert elapsed < 10
    assert first.count("NO ACCOUNT EXISTS YET") == 1 and "first sign-up becomes admin" in first
    assert re.search(r"Ollama backend 0 \(http://127\.0\.0\.1:\d+\): answered in", first)
    assert re.search(r"Ollama backend 1 \(http://127\.0\.0\.1:\d+\): did not answer at start-up", first)
    assert log.read_text().count("NO ACCOUNT EXISTS YET") == 1  # the restart, with an admin, stays quiet


def test_a_remote_first_signup_needs_the_token_from_the_start_up_log(tmp_path, database_settings):
    """Behind a trusted proxy (the test plays nginx: TRUSTED_PROXY_HOPS=1), a remote client cannot claim the
    fresh instance on either worker until it shows the token the master printed."""
    env = {"DATA_DIR": str(tmp_path), **database_settings, "TRUSTED_PROXY_HOPS": "1"}
    log = tmp_path / "gunicorn.log"
    body = {"name": "Ops", "email": "ops@example.com", "password": "pw"}
    remote = {"X-Forwarded-For": "203.0.113.9"}
    with Gunicorn(env, workers=2, threads=2, log_path=str(log)) as server:
        for pid in server.worker_pids():
            paused = only_worker(server, pid)
            try:
                with requests.Session() as session:
                    refused = session.post(server.url + "/api/v1/auths/signup", json=body, headers=remote,
                                           timeout=10)
            finally:
                resume(paused)
            assert refused.status_code == 403 and "X-Setup-Token" in refused.json()["detail"]
        token = re.search(r"'X-Setup-Token: (\w+)'", log.read_text()).group(1)
        claimed = requests.post(server.url + "/api/v1/auths/signup", json=body, timeout=10,
                                headers={**remote, "X-Setup-Token": token})
        assert claimed.status_code == 200 and claimed.json()["role"] == "admin"


def raw_exchange(port: int, request: bytes) -> tuple[int, dict, bytes]:
    """Send raw bytes, read the whole answer (gunicorn closes after its own errors)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),                     # request line
    (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 101 + b"\r\n", 431),   # too many headers
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n", 431),  # one huge header
    (b"\x16\x03\x01 not http at all\r\n\r\n", 400),                                      # TLS to a plain port
])
def test_gunicorn_own_refusals_are_json(gunicorn_server, request_bytes, status):
    """Refusals gunicorn makes before the app sees the request keep the API's {"detail": ...} shape."""
    code, headers, body = raw_exchange(gunicorn_server.port, request_bytes)
    assert code == status and headers["content-type"] == "application/json"
    assert isinstance(json.loads(body)["detail"], str)


@pytest.fixture(scope="module")
def gunicorn_server(request, tmp_path_factory):
    env = {"DATA_DIR": str(tmp_path_factory.mktemp("data")), **engine.database_settings(request),
           "OLLAMA_BASE_URLS": "http://127.0.0.1:9"}
    with Gunicorn(env, workers=1, threads=2) as server:
        yield server
