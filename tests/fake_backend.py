"""The fake LLM backend's test fixtures; the backend itself is webui_api/mock_backend.py (also runnable on its own
as `webui-api mock-backend`), re-exported here so tests keep importing it from tests.fake_backend."""
from __future__ import annotations

import threading

import pytest

from webui_api.mock_backend import (  # noqa: F401  (re-exported)
    DEFAULT_OLLAMA_MODELS, DEFAULT_OPENAI_MODELS, OPENAI_KEY, FakeBackend, embed_text, overlap_score, plan_reply,
    text_of)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture
def make_backend():
    """Factory: make_backend(**FakeBackend kwargs) -> a started FakeBackend; all are stopped at teardown."""
    made: list[FakeBackend] = []

    def factory(**kwargs) -> FakeBackend:
        backend = FakeBackend(**kwargs)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.stop()


@pytest.fixture
def fake_backend(make_backend) -> FakeBackend:
    """A fresh fake Ollama + OpenAI backend on 127.0.0.1 (random port) for one test."""
    return make_backend()


# ----------------------------------------------------------------------------- the app over real HTTP

class LiveServer:
    """A WSGI app served by werkzeug on 127.0.0.1 (random port, one thread per request) in a daemon thread."""

    def __init__(self, app):
        from werkzeug.serving import make_server
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="live-app", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def module_backend():
    """One fake backend for a whole module (integration tests that start servers once per module)."""
    server = FakeBackend()
    yield server
    server.stop()


@pytest.fixture
def live_server(app):
    """The test `app` over real HTTP (for official clients and streaming timing); yields its base URL."""
    server = LiveServer(app)
    yield server.url
    server.stop()
