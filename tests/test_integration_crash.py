"""kill -9 in the middle of ingesting (one worker, or the whole server), then restart: every file ends
completed and searchable, or failed with a reason and re-processable; the database and index files agree."""
import os
import random
import signal
import subprocess
import threading
import time

import pytest
import requests

from . import engine
from .servers import BIN, Gunicorn, pause, resume

pytestmark = pytest.mark.integration

SETTLED = ("completed", "failed")


@pytest.fixture
def backend(fake_backend):
    return fake_backend  # the shared per-test fake backend (tests/fake_backend.py), under this module's name


@pytest.fixture
def env(backend, tmp_path, database_settings):
    return {"DATA_DIR": str(tmp_path / "data"), "OLLAMA_BASE_URLS": backend.url, "OPENAI_API_BASE_URLS": "",
            "RAG_EMBEDDING_MODEL": "nomic-embed-text", "RAG_EMBEDDING_BATCH_SIZE": "4", "CHUNK_SIZE": "200",
            "CHUNK_OVERLAP": "20", "WEBUI_ADMIN_EMAIL": "admin@example.com",
            "WEBUI_ADMIN_PASSWORD": "admin-pw", **database_settings}


def start(env, workers=2, log="gunicorn.log") -> Gunicorn:
    server = Gunicorn(env, workers=workers, threads=4, log_path=os.path.join(env["DATA_DIR"], log))
    os.makedirs(env["DATA_DIR"], exist_ok=True)
    return server.start()


def admin_headers(server) -> dict:
    token = requests.post(server.url + "/api/v1/auths/signin", timeout=30,
                          json={"email": "admin@example.com", "password": "admin-pw"}).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def document(i: int) -> str:
    return "\n\n".join(f"Ledger {i} page {p}: the cargo of crate{i}x{p} was weighed and sealed at the quay."
                       for p in range(12))


def send(server, headers, i: int, background: bool) -> None:
    """Upload document i; errors are expected (the server may be killed under the request)."""
    try:
        requests.post(server.url + "/api/v1/files/", headers=headers, timeout=60,
                      params={"process_in_background": str(background).lower()},
                      files={"file": (f"ledger-{i}.txt", document(i).encode(), "text/plain")})
    except requests.RequestException:
        pass


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def all_files(server, headers) -> list[dict]:
    response = requests.get(server.url + "/api/v1/files/", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["items"] if isinstance(body, dict) else body


def settled(server, headers, expected: int) -> list[dict]:
    files = all_files(server, headers)
    ready = len(files) >= expected and all(f["data"].get("status") in SETTLED for f in files)
    return files if ready else []


def searchable(server, headers, file: dict) -> bool:
    """Every page of the document comes back from the file's collection (all its chunks are indexed)."""
    i = int(file["filename"].split("-")[1].split(".")[0])
    body = {"collection_name": f"file-{file['id']}", "query": f"crate{i}x3 cargo", "k": 50}
    response = requests.post(server.url + "/api/v1/retrieval/query/doc", headers=headers, timeout=30,
                             json=body)
    if response.status_code != 200:
        return False
    found = " ".join(response.json()["documents"][0])
    return all(f"crate{i}x{p} " in found for p in range(12))


def statuses_on_disk(env) -> dict:
    """File statuses as the killed server left them (read straight from the database)."""
    return dict(engine.query(env, "SELECT status, COUNT(*) FROM file GROUP BY status"))


def consistent(env) -> None:
    """`webui-api check`: index files readable, ids == chunk rows, no stray temp files, nothing abandoned."""
    check = subprocess.run([str(BIN / "webui-api"), "check"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, **engine.storage_of(env)})
    assert check.returncode == 0, check.stdout + check.stderr
    index_dir = os.path.join(env["DATA_DIR"], "vector_db")
    assert not [n for _dir, _subdirs, names in os.walk(index_dir) for n in names if ".tmp-" in n]


def test_kill_9_of_a_worker_mid_ingest_is_recovered(backend, env):
    server = start(env)
    try:
        headers = admin_headers(server)
        victim, *others = server.ready_workers(2)
        backend.fault = {"kind": "slow", "path": "/api/embed", "delay": 5}
        pause(others)  # only the victim accepts the upload
        try:
            threading.Thread(target=send, args=(server, headers, 1, False), daemon=True).start()
            wait_for(lambda: backend.requests_to("/api/embed"), 10, "the embedding call")
            backend.fault = None
            os.kill(victim, signal.SIGKILL)  # mid-embedding: the file row says "processing"
        finally:
            resume(others)
        started = time.monotonic()
        files = wait_for(lambda: settled(server, headers, 1), 30, "the respawned worker to recover the file")
        print(f"\nworker {victim} killed mid-embedding; file {files[0]['data']['status']} "
              f"{time.monotonic() - started:.1f} s later (recovered by the respawned worker)")
        assert [f["data"]["status"] for f in files] == ["completed"] and searchable(server, headers, files[0])
        assert victim not in server.worker_pids()
    finally:
        server.stop()
    consistent(env)


def test_kill_9_of_the_whole_server_then_failed_files_are_reprocessable(backend, env):
    server = start(env)
    headers = admin_headers(server)
    backend.fault = {"kind": "slow", "path": "/api/embed", "delay": 5}
    for i in range(4):
        threading.Thread(target=send, args=(server, headers, i, i % 2 == 0), daemon=True).start()
    wait_for(lambda: len(backend.requests_to("/api/embed")) >= 2, 10, "embedding calls")
    server.stop(signal.SIGKILL)  # master and every worker, mid-ingest

    backend.fault = {"kind": "http500", "path": "/api/embed", "message": "model not loaded"}
    server = start(env, log="restart.log")  # start-up recovery meets a failing embedding backend
    try:
        headers = admin_headers(server)
        files = wait_for(lambda: settled(server, headers, 4), 30, "recovery to settle every file")
        print("\nafter kill -9 of the server, restart with the backend failing: "
              + ", ".join(f"{f['filename']}={f['data']['status']}" for f in files))
        assert {f["data"]["status"] for f in files} == {"failed"}
        assert all("model not loaded" in f["data"]["error"] for f in files)

        backend.fault = None
        for file in files:
            response = requests.post(server.url + "/api/v1/retrieval/process/file", headers=headers,
                                     timeout=60, json={"file_id": file["id"]})
            assert response.status_code == 200, response.text
        files = all_files(server, headers)
        assert {f["data"]["status"] for f in files} == {"completed"}
        assert all(searchable(server, headers, f) for f in files)
    finally:
        server.stop()
    consistent(env)


def test_random_kill_9_during_bulk_ingest_leaves_nothing_half_done(backend, env):
    """Kill the whole server at random moments of a busy ingest (uploads, knowledge links), three times. A kill
    between a knowledge link's commit and its index write is repaired by start-up reconciliation."""
    rng = random.Random()
    backend.token_delay = 0.0
    uploaded, caught = 0, []
    for round_ in range(3):
        server = start(env, log=f"round-{round_}.log")
        headers = admin_headers(server)
        kb = requests.post(server.url + "/api/v1/knowledge/create", headers=headers, timeout=30,
                           json={"name": f"round {round_}"}).json()["id"]
        backend.fault = {"kind": "slow", "path": "/api/embed", "delay": 0.2}  # spread the work out in time

        def work(i: int) -> None:
            send(server, headers, i, background=(i % 3 == 0))
            try:
                for file in all_files(server, headers):
                    if file["filename"] == f"ledger-{i}.txt":
                        requests.post(server.url + f"/api/v1/knowledge/{kb}/file/add", headers=headers,
                                      timeout=60, json={"file_id": file["id"]})
            except (requests.RequestException, AssertionError, ValueError):
                pass

        for i in range(uploaded, uploaded + 8):
            threading.Thread(target=work, args=(i,), daemon=True).start()
        uploaded += 8
        time.sleep(rng.uniform(0.4, 1.5))
        server.stop(signal.SIGKILL)
        caught.append(statuses_on_disk(env))

    backend.fault = None
    server = start(env, log="final.log")
    try:
        headers = admin_headers(server)
        files = wait_for(lambda: settled(server, headers, 1), 60, "every interrupted file to settle")
        statuses = [f["data"]["status"] for f in files]
        print(f"\n3 random kills during {uploaded} uploads; statuses on disk at each kill: {caught}; "
              f"after restart {len(files)} files: {statuses.count('completed')} completed, "
              f"{statuses.count('failed')} failed")
        for file in files:
            assert file["data"]["status"] == "completed" or file["data"]["error"], file
            if file["data"]["status"] == "completed":
                assert searchable(server, headers, file)
    finally:
        server.stop()
    consistent(env)
