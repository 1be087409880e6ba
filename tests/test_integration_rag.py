"""Real gunicorn, 2 workers: an index written by one worker is read by the other, and a lost index
directory is rebuilt from SQLite after a restart without re-embedding."""
import shutil

import pytest
import requests

from .servers import Gunicorn
from .test_integration_gunicorn import only_worker, resume

pytestmark = pytest.mark.integration

FIRST = "The secret launch code of project Zephyr is 7-alpha-9."
SECOND = "The backup generator in hangar twelve runs on purple diesel."


def on_worker(server, pid, method, path, headers=None, **kwargs):
    """One request served by worker `pid` alone (the others are paused), on a fresh connection."""
    paused = only_worker(server, pid)
    try:
        with requests.Session() as session:
            return session.request(method, server.url + path, headers=headers, timeout=30, **kwargs)
    finally:
        resume(paused)


def search(server, pid, headers, kb, text):
    response = on_worker(server, pid, "POST", "/api/v1/retrieval/query/collection", headers,
                         json={"collection_names": [kb], "query": text, "k": 1})
    assert response.status_code == 200, response.text
    return response.json()["documents"][0]


def test_index_written_by_one_worker_is_read_by_the_other(tmp_path, fake_backend, database_settings):
    env = {"DATA_DIR": str(tmp_path), **database_settings, "OLLAMA_BASE_URLS": fake_backend.url,
           "OPENAI_API_BASE_URLS": "", "RAG_EMBEDDING_MODEL": "nomic-embed-text"}
    server = Gunicorn(env, workers=2, threads=2).start()
    try:
        a, b = server.ready_workers(2)
        token = on_worker(server, a, "POST", "/api/v1/auths/signup",
                          json={"name": "A", "email": "a@example.com", "password": "pw"}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        kb = on_worker(server, a, "POST", "/api/v1/knowledge/create", headers,
                       json={"name": "KB"}).json()["id"]
        for pid, text in ((a, FIRST), (b, SECOND)):
            upload = on_worker(server, pid, "POST", "/api/v1/files/", headers,
                               files={"file": ("doc.txt", text.encode(), "text/plain")})
            assert upload.status_code == 200 and upload.json()["data"]["status"] == "completed"
            added = on_worker(server, pid, "POST", f"/api/v1/knowledge/{kb}/file/add", headers,
                              json={"file_id": upload.json()["id"]})
            assert added.status_code == 200
            # the worker that did not write sees the write (it had the older index cached after round one)
            other = b if pid == a else a
            assert search(server, other, headers, kb, text) == [text]
    finally:
        server.stop()

    shutil.rmtree(tmp_path / "vector_db")
    embeds_before = len(fake_backend.requests_to("/api/embed"))
    with Gunicorn(env, workers=2, threads=2) as restarted:
        pid = restarted.ready_workers(2)[0]
        assert search(restarted, pid, headers, kb, SECOND) == [SECOND]
        assert search(restarted, pid, headers, kb, FIRST) == [FIRST]
    queries = fake_backend.requests_to("/api/embed")[embeds_before:]
    assert [len(q["json"]["input"]) for q in queries] == [1, 1]  # only the two questions were embedded
