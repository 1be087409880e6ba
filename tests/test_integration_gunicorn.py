"""Real gunicorn, 2 workers: a JWT from one worker works on the other, and the secret survives a restart."""
import os
import signal
import stat

import jwt
import pytest
import requests

from .servers import Gunicorn

pytestmark = pytest.mark.integration


def only_worker(server, pid):
    """Pause every other worker so `pid` is the only one accepting connections."""
    others = [p for p in server.worker_pids() if p != pid]
    for other in others:
        os.kill(other, signal.SIGSTOP)
    return others


def resume(pids):
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def call_on_fresh_connection(url, headers=None):
    with requests.Session() as session:
        return session.get(url, headers=headers, timeout=10)


def test_two_workers_share_tokens_and_the_secret_survives_restart(tmp_path):
    env = {"DATA_DIR": str(tmp_path), "OLLAMA_BASE_URLS": "http://127.0.0.1:9"}
    server = Gunicorn(env, workers=2, threads=2).start()
    try:
        workers = server.worker_pids()
        assert len(workers) == 2
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

    secret_file = tmp_path / ".webui_secret_key"
    secret = secret_file.read_text().strip()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert jwt.decode(session["token"], secret, algorithms=["HS256"])["id"] == session["id"]

    with Gunicorn(env, workers=2, threads=2) as restarted:
        signin = requests.post(restarted.url + "/api/v1/auths/signin", timeout=10,
                               json={"email": "a@example.com", "password": "pw"}).json()
        assert call_on_fresh_connection(restarted.url + "/api/v1/auths/",
                                        {"Authorization": f"Bearer {signin['token']}"}).status_code == 200
    assert secret_file.read_text().strip() == secret
