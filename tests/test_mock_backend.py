"""`webui-api mock-backend` on its own: the README's tour (chat, a stream, embeddings, RAG) through real gunicorn
to the fake backend running as a separate process, no model anywhere."""
import json
import os
import re
import signal
import subprocess

import pytest
import requests

from .servers import BIN, Gunicorn

pytestmark = pytest.mark.integration


@pytest.fixture
def mock_backend():
    """The console script as a user runs it (port 0: any free one), its URL read from its first line."""
    process = subprocess.Popen([str(BIN / "webui-api"), "mock-backend", "--port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        banner = process.stdout.readline()
        yield re.search(r"Ollama API at (http://127\.0\.0\.1:\d+)", banner).group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0 and "Traceback" not in process.stderr.read()


def test_the_whole_api_against_the_standalone_mock_backend(tmp_path, database_settings, mock_backend):
    env = {"DATA_DIR": str(tmp_path), **database_settings, "OLLAMA_BASE_URLS": mock_backend}
    with Gunicorn(env, workers=1, threads=4) as server:
        api = requests.Session()
        signup = api.post(server.url + "/api/v1/auths/signup", timeout=10,
                          json={"name": "Ada", "email": "ada@example.com", "password": "change-me"}).json()
        api.headers["Authorization"] = f"Bearer {signup['token']}"
        assert "llama3.1:latest" in {m["id"] for m in api.get(server.url + "/api/models", timeout=10).json()["data"]}

        question = [{"role": "user", "content": "Why is the sky blue?"}]
        chat = api.post(server.url + "/api/chat/completions", timeout=10,
                        json={"model": "llama3.1:latest", "messages": question}).json()
        assert "echo: Why is the sky blue?" in chat["choices"][0]["message"]["content"]
        stream = api.post(server.url + "/api/chat/completions", timeout=10, stream=True,
                          json={"model": "llama3.1:latest", "messages": question, "stream": True})
        events = [line[6:] for line in stream.iter_lines(decode_unicode=True) if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and len(events) > 10
        assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                       if json.loads(e)["choices"]).startswith("[msgs=1")
        embedded = api.post(server.url + "/api/embeddings", timeout=10,
                            json={"model": "nomic-embed-text:latest", "input": ["sky", "sea"]}).json()
        assert len(embedded["data"]) == 2 and len(embedded["data"][0]["embedding"]) == 64

        uploaded = api.post(server.url + "/api/v1/files/", timeout=30,
                            files={"file": ("notes.md", b"The launch code of project Zephyr is 7-4-1.")}).json()
        rag = api.post(server.url + "/api/chat/completions", timeout=10, json={
            "model": "llama3.1:latest", "files": [{"type": "file", "id": uploaded["id"]}],
            "messages": [{"role": "user", "content": "What is the launch code of project Zephyr?"}]}).json()
        assert "7-4-1" in rag["choices"][0]["message"]["content"]
        assert rag["sources"][0]["source"]["id"] == uploaded["id"]
