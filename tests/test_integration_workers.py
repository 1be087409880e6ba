"""Many gunicorn workers, one truth: writes through any worker are seen by every worker at once, 32
concurrent clients neither lock nor lose anything, metrics sum over workers, long streams outlive the worker
timeout and survive a graceful stop."""
import json
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest
import requests

from . import engine
from .servers import BIN, Gunicorn, pause, resume

pytestmark = pytest.mark.integration

WORKERS, THREADS, CLIENTS = 4, 4, 32


@pytest.fixture(scope="module")
def backend(module_backend):
    return module_backend


@pytest.fixture(scope="module")
def cluster(request, backend, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    env = {"DATA_DIR": str(data), **engine.database_settings(request), "OLLAMA_BASE_URLS": backend.url,
           "OPENAI_API_BASE_URLS": "", "RAG_EMBEDDING_MODEL": "nomic-embed-text", "CHUNK_SIZE": "200",
           "CHUNK_OVERLAP": "20"}
    server = Gunicorn(env, workers=WORKERS, threads=THREADS, log_path=str(data / "gunicorn.log")).start()
    try:
        server.ready_workers(WORKERS)
        session = post(server.url, "/api/v1/auths/signup", None,
                       {"name": "Admin", "email": "admin@example.com", "password": "admin-password"})
        bearer = {"Authorization": f"Bearer {session['token']}"}
        key = post(server.url, "/api/v1/auths/api_key", bearer)["api_key"]
        yield {"server": server, "headers": {"Authorization": f"Bearer {key}"}, "data": data, "env": env}
    finally:
        server.stop()


def call(url: str, method: str, path: str, headers=None, body=None, **kwargs) -> requests.Response:
    with requests.Session() as session:  # a fresh connection, so the worker that accepts it is the one served
        return session.request(method, url + path, headers=headers, json=body, timeout=120, **kwargs)


def post(url, path, headers=None, body=None, **kwargs) -> dict:
    response = call(url, "POST", path, headers, body, **kwargs)
    assert response.status_code == 200, (path, response.status_code, response.text)
    return response.json()


@contextmanager
def only(server, pid: int):
    """Freeze every other worker, so `pid` is the one that accepts the next connections."""
    others = pause(p for p in server.worker_pids() if p != pid)
    try:
        yield
    finally:
        resume(others)


def upload(url, headers, name: str, text: str) -> dict:
    return post(url, "/api/v1/files/", headers, files={"file": (name, text.encode(), "text/plain")})


def top_document(url, headers, collection: str, query: str) -> str:
    """The best hit's text ("" when none)."""
    answer = post(url, "/api/v1/retrieval/query/collection", headers,
                  {"collection_names": [collection], "query": query, "k": 1})
    return answer["documents"][0][0] if answer["documents"] and answer["documents"][0] else ""


FILLER = ("Harbour logbook entry: the tide turned at dawn, gulls circled the breakwater and the ferry left "
          "on time. ") * 3
QUESTION = "brass astrolabe chapel organ quartermaster"


def test_a_write_through_any_worker_is_seen_by_every_worker_at_once(cluster):
    server, headers, url = cluster["server"], cluster["headers"], cluster["server"].url
    workers = server.ready_workers(WORKERS)
    kb = post(url, "/api/v1/knowledge/create", headers, {"name": "Shared", "description": "workers"})["id"]
    base = upload(url, headers, "base.txt", FILLER)
    post(url, f"/api/v1/knowledge/{kb}/file/add", headers, {"file_id": base["id"]})
    for pid in workers:  # every worker loads (and caches) the collection's index
        with only(server, pid):
            assert "Harbour" in top_document(url, headers, kb, "harbour tide ferry")

    secret = "The quartermaster hid the brass astrolabe beneath the chapel organ."
    with only(server, workers[0]):
        added = upload(url, headers, "secret.txt", FILLER + "\n\n" + secret)
        post(url, f"/api/v1/knowledge/{kb}/file/add", headers, {"file_id": added["id"]})
    for pid in workers:  # no waiting, no retry: the very next request on each worker sees it
        with only(server, pid):
            assert "astrolabe" in top_document(url, headers, kb, QUESTION)
            assert "astrolabe" in top_document(url, headers, f"file-{added['id']}", "astrolabe")

    with only(server, workers[-1]):
        assert call(url, "DELETE", f"/api/v1/files/{added['id']}", headers).status_code == 200
    for pid in workers:
        with only(server, pid):
            assert "astrolabe" not in top_document(url, headers, kb, QUESTION)
            assert call(url, "GET", f"/api/v1/files/{added['id']}", headers).status_code == 404
            gone = call(url, "POST", "/api/v1/retrieval/query/doc", headers,
                        {"collection_name": f"file-{added['id']}", "query": "astrolabe", "k": 1})
            assert gone.status_code == 404 or not any(gone.json()["documents"][0]), gone.text


def test_32_clients_uploading_editing_and_signing_in_lose_nothing(cluster):
    admin, url = cluster["headers"], cluster["server"].url
    kb = post(url, "/api/v1/knowledge/create", admin, {"name": "Crowd", "description": "v0"})["id"]
    users = [post(url, "/api/v1/auths/add", admin, {"name": f"C{i}", "email": f"c{i}@example.com",
                                                   "password": f"pw-{i}-pw", "role": "user"})
             for i in range(CLIENTS)]
    failures: list[str] = []
    barrier = threading.Barrier(CLIENTS)

    def client(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(2):
                session = post(url, "/api/v1/auths/signin", None, {"email": users[i]["email"],
                                                                   "password": f"pw-{i}-pw"})
            mine = {"Authorization": f"Bearer {session['token']}"}
            for n in range(2):
                word = f"zebra{i:02d}x{n}"
                text = f"Client {i} note {n}: the {word} crossed the river."
                file = upload(url, mine, f"c{i}-{n}.txt", text)
                post(url, f"/api/v1/knowledge/{kb}/file/add", admin, {"file_id": file["id"]})
            post(url, f"/api/v1/knowledge/{kb}/update", admin,
                 {"name": "Crowd", "description": f"edited by {i}"})
            own = post(url, "/api/v1/knowledge/create", mine, {"name": f"own-{i}"})["id"]
            post(url, f"/api/v1/knowledge/{own}/file/add", mine, {"file_id": file["id"]})
        except BaseException as exc:  # collected and asserted below, with every client's story
            failures.append(f"client {i}: {exc!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    print(f"\n{CLIENTS} clients x (2 sign-ins, 2 uploads, 3 knowledge edits): "
          f"{time.monotonic() - started:.1f} s")
    assert not failures, "\n".join(failures)

    members = call(url, "GET", f"/api/v1/knowledge/{kb}/files?limit=1000", admin).json()
    assert len(members["items"]) == members["total"] == 2 * CLIENTS  # no lost update on the membership
    for i in range(CLIENTS):
        for n in range(2):  # the exact sentence embeds to the same vector: it must be among the best hits
            text = f"Client {i} note {n}: the zebra{i:02d}x{n} crossed the river."
            found = post(url, "/api/v1/retrieval/query/collection", admin,
                         {"collection_names": [kb], "query": text, "k": 3})["documents"][0]
            assert text in found
    log = (cluster["data"] / "gunicorn.log").read_text()
    assert "database is locked" not in log and "Traceback" not in log
    check = subprocess.run([str(BIN / "webui-api"), "check"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, **engine.storage_of(cluster["env"])})
    assert check.returncode == 0, check.stdout + check.stderr  # every index file matches the database


def scrape(url, headers, name: str, **labels) -> float:
    response = call(url, "GET", "/metrics", headers)
    assert response.status_code == 200, response.text
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "} "
    line = next((line for line in response.text.splitlines() if line.startswith(wanted)), None)
    return float(line.split()[-1]) if line else 0.0


def test_metrics_count_every_worker_s_requests(cluster):
    server, headers, url = cluster["server"], cluster["headers"], cluster["server"].url
    labels = {"method": "GET", "route": "/api/version", "status": "200"}
    before = scrape(url, headers, "webui_api_http_requests_total", **labels)
    workers = server.ready_workers(WORKERS)
    for pid in workers:  # 10 requests served by each worker in turn
        with only(server, pid):
            for _ in range(10):
                assert call(url, "GET", "/api/version").status_code == 200
    for pid in (workers[0], workers[-1]):  # any worker's scrape sums them all
        with only(server, pid):
            assert scrape(url, headers, "webui_api_http_requests_total", **labels) == before + 10 * WORKERS
            assert scrape(url, headers, "webui_api_http_request_duration_seconds_count",
                          **labels) == before + 10 * WORKERS


# --- streams: the worker timeout and a graceful stop -----------------------------------------------

@pytest.fixture
def short_fuse(backend, tmp_path, database_settings):
    """2 workers whose `timeout` (2 s) is shorter than the generations they serve."""
    env = {"DATA_DIR": str(tmp_path), **database_settings, "OLLAMA_BASE_URLS": backend.url,
           "OPENAI_API_BASE_URLS": "", "GUNICORN_TIMEOUT": "2", "GUNICORN_GRACEFUL_TIMEOUT": "10"}
    server = Gunicorn(env, workers=2, threads=4, log_path=str(tmp_path / "gunicorn.log")).start()
    session = post(server.url, "/api/v1/auths/signup", None,
                   {"name": "A", "email": "a@example.com", "password": "a-password"})
    backend.token_delay = 0.05
    yield server, {"Authorization": f"Bearer {session['token']}"}
    backend.token_delay = 0.0
    server.stop()


def generate(url, headers, words: int, on_first=None) -> list[dict]:
    body = {"model": "llama3.2", "prompt": " ".join(["wave"] * words), "stream": True}
    lines = []
    with requests.post(url + "/ollama/api/generate", json=body, headers=headers, stream=True,
                       timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                lines.append(json.loads(line))
                if len(lines) == 1 and on_first:
                    on_first()
    return lines


def test_a_generation_longer_than_the_worker_timeout_completes(short_fuse):
    server, headers = short_fuse
    started = time.monotonic()
    lines = generate(server.url, headers, words=60)  # ~70 tokens x 50 ms = 3.5 s > timeout 2 s
    assert time.monotonic() - started > 3 and lines[-1]["done"] is True
    assert "WORKER TIMEOUT" not in open(server.log_path).read()


def test_sigterm_lets_the_stream_in_flight_finish(short_fuse):
    server, headers = short_fuse
    stopped_at = []
    def stop_server():
        stopped_at.append(time.monotonic())
        server.proc.send_signal(signal.SIGTERM)

    lines = generate(server.url, headers, words=30, on_first=stop_server)  # ~40 tokens: 2 s after SIGTERM
    assert lines[-1]["done"] is True and len(lines) > 30
    assert time.monotonic() - stopped_at[0] > 1.5  # the stream really went on after SIGTERM
    assert server.proc.wait(15) == 0
    with pytest.raises(requests.ConnectionError):  # and the server is gone afterwards
        requests.get(server.url + "/health", timeout=2)
