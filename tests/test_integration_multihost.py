"""Two hosts (two gunicorn servers, each its own DATA_DIR) on one PostgreSQL database behind nginx
round-robin behave as one service: what one host writes, the other serves at once; killing one loses
nothing it acknowledged; `webui-api check` is clean on both."""
import os
import signal
import subprocess
import threading
import time

import pytest
import requests

from . import pgcluster
from .fake_backend import FakeBackend
from .servers import BIN, Gunicorn, Nginx, nginx_binary

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(pgcluster.available() is not None, reason=pgcluster.available() or ""),
              pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")]

SECRET = "multi-host-test-secret-0123456789abcdef0123456789"
PASSWORD = "multi-host-pw"
VISIBLE_WITHIN = 1.0  # seconds: a write on one host must be served by the other within this
LEASE_SECONDS = 4
TAKE_OVER_WITHIN = 3 * LEASE_SECONDS  # expiry, then the next sweep (every half lease), then processing


class Hosts:
    def __init__(self, a: Gunicorn, b: Gunicorn, nginx: Nginx, envs: dict, backend: FakeBackend):
        self.a, self.b, self.nginx, self.envs, self.backend = a, b, nginx, envs, backend


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    base = tmp_path_factory.mktemp("hosts")
    backend = FakeBackend()
    url = pgcluster.cluster().new_database()
    shared = {"DATABASE_URL": url, "WEBUI_SECRET_KEY": SECRET, "UPLOAD_DIR": str(base / "shared-uploads"),
              "OLLAMA_BASE_URLS": backend.url, "OPENAI_API_BASE_URLS": "", "ENABLE_SIGNUP": "true",
              "DEFAULT_USER_ROLE": "user", "RAG_EMBEDDING_MODEL": "nomic-embed-text", "CHUNK_SIZE": "200",
              "CHUNK_OVERLAP": "20", "INGEST_LEASE_SECONDS": str(LEASE_SECONDS)}
    envs = {name: {**shared, "DATA_DIR": str(base / name)} for name in ("a", "b")}
    servers = [Gunicorn(envs[name], workers=2, threads=4, log_path=str(base / f"{name}.log")) for name in envs]
    for server, env in zip(servers, envs.values()):
        os.makedirs(env["DATA_DIR"], exist_ok=True)
        server.start()
    nginx = Nginx([s.port for s in servers], base / "nginx").start()
    yield Hosts(servers[0], servers[1], nginx, envs, backend)
    nginx.stop()
    for server in servers:
        server.stop()
    backend.stop()
    pgcluster.cluster().drop_database(url)


def call(base: str, method: str, path: str, token: str | None = None, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, base + path, headers=headers, timeout=60, **kwargs)


def ok(response: requests.Response) -> dict:
    assert response.status_code == 200, f"{response.status_code} {response.text[:300]}"
    return response.json()


@pytest.fixture(scope="module")
def admin(hosts):
    """The first account, signed up through A: admin everywhere."""
    body = {"name": "Admin", "email": "admin@example.com", "password": PASSWORD}
    session = ok(call(hosts.a.url, "POST", "/api/v1/auths/signup", json=body))
    assert session["role"] == "admin"
    return session["token"]


def upload(base: str, token: str, name: str, text: str) -> dict:
    return ok(call(base, "POST", "/api/v1/files/", token, files={"file": (name, text.encode(), "text/plain")}))


def found(base: str, token: str, collection: str, query: str) -> str:
    body = {"collection_name": collection, "query": query, "k": 20}
    response = call(base, "POST", "/api/v1/retrieval/query/doc", token, json=body)
    return " ".join(response.json()["documents"][0]) if response.status_code == 200 else ""


def within(seconds: float, predicate) -> float:
    """Seconds until predicate() held (asserting it held within `seconds`)."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < seconds, "not visible in time"
        time.sleep(0.02)
    return time.monotonic() - start


def test_sign_up_through_a_then_sign_in_through_b(hosts, admin):
    body = {"name": "User", "email": "user@example.com", "password": PASSWORD}
    ok(call(hosts.a.url, "POST", "/api/v1/auths/signup", json=body))
    session = ok(call(hosts.b.url, "POST", "/api/v1/auths/signin", json={"email": body["email"],
                                                                         "password": PASSWORD}))
    assert session["role"] == "user"
    assert ok(call(hosts.a.url, "GET", "/api/v1/auths/", session["token"]))["email"] == body["email"]


def test_a_key_created_on_a_works_on_b_and_a_revoked_one_nowhere(hosts, admin):
    key = ok(call(hosts.a.url, "POST", "/api/v1/auths/api_key", admin))["api_key"]
    assert call(hosts.b.url, "GET", "/api/v1/auths/", key).status_code == 200
    ok(call(hosts.b.url, "DELETE", "/api/v1/auths/api_key", admin))
    assert [call(h.url, "GET", "/api/v1/auths/", key).status_code for h in (hosts.a, hosts.b)] == [401, 401]


def test_a_sign_out_on_a_is_refused_on_b(hosts, admin):
    token = ok(call(hosts.a.url, "POST", "/api/v1/auths/signin",
                    json={"email": "admin@example.com", "password": PASSWORD}))["token"]
    assert call(hosts.b.url, "GET", "/api/v1/auths/", token).status_code == 200
    ok(call(hosts.a.url, "GET", "/api/v1/auths/signout", token))
    assert [call(h.url, "GET", "/api/v1/auths/", token).status_code for h in (hosts.b, hosts.a)] == [401, 401]


def test_an_upload_through_a_is_searchable_through_b_within_a_second(hosts, admin):
    file = upload(hosts.a.url, admin, "fjord.txt", "The fjord ferry crosses at dawn with seventeen cars.")
    collection = f"file-{file['id']}"
    within(VISIBLE_WITHIN, lambda: "seventeen cars" in found(hosts.b.url, admin, collection, "fjord ferry"))
    content = call(hosts.b.url, "GET", f"/api/v1/files/{file['id']}/content", admin)
    assert content.status_code == 200 and b"seventeen cars" in content.content


def test_knowledge_edits_on_both_hosts_are_seen_by_both(hosts, admin):
    kid = ok(call(hosts.a.url, "POST", "/api/v1/knowledge/create", admin,
                  json={"name": "Shared", "description": "both hosts"}))["id"]
    first = upload(hosts.a.url, admin, "glacier.txt", "The glacier retreats nine metres every summer.")
    second = upload(hosts.b.url, admin, "tundra.txt", "Tundra lichen grows three millimetres a year.")
    ok(call(hosts.b.url, "POST", f"/api/v1/knowledge/{kid}/file/add", admin, json={"file_id": first["id"]}))
    ok(call(hosts.a.url, "POST", f"/api/v1/knowledge/{kid}/file/add", admin, json={"file_id": second["id"]}))
    for host in (hosts.a, hosts.b):
        within(VISIBLE_WITHIN, lambda: "nine metres" in found(host.url, admin, kid, "glacier retreat"))
        within(VISIBLE_WITHIN, lambda: "three millimetres" in found(host.url, admin, kid, "tundra lichen"))
    ok(call(hosts.a.url, "POST", f"/api/v1/knowledge/{kid}/file/remove", admin, json={"file_id": first["id"]}))
    within(VISIBLE_WITHIN, lambda: "nine metres" not in found(hosts.b.url, admin, kid, "glacier retreat"))


def test_a_file_deleted_through_b_is_gone_on_a(hosts, admin):
    file = upload(hosts.a.url, admin, "moraine.txt", "A moraine of granite boulders blocks the valley.")
    collection = f"file-{file['id']}"
    assert "granite boulders" in found(hosts.a.url, admin, collection, "moraine granite")
    ok(call(hosts.b.url, "DELETE", f"/api/v1/files/{file['id']}", admin))
    assert call(hosts.a.url, "GET", f"/api/v1/files/{file['id']}", admin).status_code == 404
    assert "granite boulders" not in found(hosts.a.url, admin, collection, "moraine granite")


def test_a_preset_created_on_a_is_usable_on_b(hosts, admin):
    preset = {"id": "fjord-guide", "base_model_id": "llama3.2:latest", "name": "Fjord guide", "meta": {},
              "params": {"system": "Answer as a ferry captain."}}
    ok(call(hosts.a.url, "POST", "/api/v1/models/create", admin, json=preset))
    chat = {"model": "fjord-guide", "messages": [{"role": "user", "content": "When does it leave?"}]}
    assert ok(call(hosts.b.url, "POST", "/api/chat/completions", admin, json=chat))["choices"]


def test_round_robin_through_nginx_sees_one_service(hosts, admin):
    file = upload(hosts.nginx.url, admin, "sound.txt", "The sound freezes over in the third week of January.")
    collection = f"file-{file['id']}"
    hits = [found(hosts.nginx.url, admin, collection, "sound freezes") for _ in range(6)]
    assert all("third week" in hit for hit in hits)  # six answers, alternating between the two hosts


def test_kill_9_of_a_during_uploads_loses_nothing_acknowledged(hosts, admin):
    """Worker 0 uploads in the background (acknowledged when stored: B must finish what A left), the others
    wait for processing (acknowledged when searchable)."""
    acknowledged, stop = [], threading.Event()

    def keep_uploading(worker: int) -> None:
        for i in range(1000):
            if stop.is_set():
                return
            text = f"Manifest {worker}-{i}: crate w{worker}n{i} holds salted herring for the winter."
            try:
                response = call(hosts.a.url, "POST", "/api/v1/files/", admin,
                                params={"process_in_background": str(worker == 0).lower()},
                                files={"file": (f"m{worker}-{i}.txt", text.encode(), "text/plain")})
            except requests.RequestException:
                return
            if response.status_code == 200:
                acknowledged.append((response.json()["id"], f"w{worker}n{i}"))

    hosts.backend.fault = {"kind": "slow", "path": "/api/embed", "delay": 1}  # A dies mid-embedding
    threads = [threading.Thread(target=keep_uploading, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    within(60, lambda: sum(m.startswith("w0") for _, m in acknowledged) >= 4 and
           sum(not m.startswith("w0") for _, m in acknowledged) >= 2)
    os.killpg(hosts.a.proc.pid, signal.SIGKILL)  # master and workers at once: the host is gone
    stop.set()
    hosts.backend.fault = None
    for thread in threads:
        thread.join(60)
    assert call(hosts.b.url, "GET", "/health").status_code == 200
    assert any(marker.startswith("w0") for _, marker in acknowledged)
    for file_id, marker in acknowledged:  # A's leases die with it: B's sweep takes its files over
        within(TAKE_OVER_WITHIN, lambda: marker in found(hosts.b.url, admin, f"file-{file_id}",
                                                         f"crate {marker} herring"))


def test_a_host_that_comes_back_catches_up_and_check_is_clean_on_each(hosts, admin):
    """A restarts on its old DATA_DIR (its start-up clears what its killed writes left) and serves what B
    wrote meanwhile; then `webui-api check` exits 0 with either host's settings."""
    hosts.a.proc.wait(30)
    hosts.a.start()
    file = upload(hosts.b.url, admin, "return.txt", "The returning ferry docks at pier eleven.")
    assert "pier eleven" in found(hosts.a.url, admin, f"file-{file['id']}", "returning ferry")
    for name, env in hosts.envs.items():
        check = subprocess.run([str(BIN / "webui-api"), "check"], capture_output=True, text=True, timeout=300,
                               env={**os.environ, **env})
        assert check.returncode == 0, f"host {name}: {check.stdout}{check.stderr}"
