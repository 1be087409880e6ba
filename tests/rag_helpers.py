"""Helpers shared by the RAG test modules: app settings aimed at the fake backend, upload shortcuts."""
from __future__ import annotations

import io

import pytest


def rag_settings(backend, **extra) -> dict:
    """Overrides pointing chat and embeddings at the fake backend."""
    return {"OLLAMA_BASE_URLS": backend.url, "OPENAI_API_BASE_URLS": backend.openai_url,
            "OPENAI_API_KEYS": backend.openai_key, "RAG_EMBEDDING_MODEL": "nomic-embed-text",
            "RAG_EMBEDDING_ENGINE": "ollama", **extra}


@pytest.fixture(autouse=True)
def _drain_background(app):
    """Background ingest threads must not outlive the test's database."""
    yield
    app.extensions["webui_api"].jobs.drain(30)


def upload(client, headers, name="notes.txt", data=b"hello world", ctype="text/plain", query="", **form):
    body = {"file": (io.BytesIO(data), name, ctype), **form}
    return client.post(f"/api/v1/files/{query}", headers=headers, data=body,
                       content_type="multipart/form-data")


def upload_ok(client, headers, name="notes.txt", data=b"hello world", **kwargs) -> dict:
    response = upload(client, headers, name, data, **kwargs)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def embed_calls(backend) -> int:
    return len(backend.requests_to("/api/embed"))
