"""POST /api/embeddings: Ollama /api/embed converted to OpenAI's list shape, OpenAI passed through."""
from __future__ import annotations

import base64
import struct

import pytest

from .fake_backend import embed_text

URL = "/api/embeddings"


@pytest.fixture
def settings_overrides(data_dir, fake_backend):
    return {"OLLAMA_BASE_URLS": fake_backend.url, "OPENAI_API_BASE_URLS": fake_backend.openai_url,
            "OPENAI_API_KEYS": fake_backend.openai_key}


@pytest.fixture
def embed(client, user):
    def post(body, path=URL):
        return client.post(path, headers=user["headers"], json=body)
    return post


def test_ollama_model_converted_to_openai_list(embed, fake_backend):
    response = embed({"model": "nomic-embed-text:latest", "input": ["hello world", "second"]})
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["object"] == "list" and body["model"] == "nomic-embed-text:latest"
    assert [d["index"] for d in body["data"]] == [0, 1] and body["data"][0]["object"] == "embedding"
    assert body["data"][0]["embedding"] == pytest.approx(embed_text("hello world"))
    assert fake_backend.last("/api/embed")["json"] == {"model": "nomic-embed-text:latest",
                                                       "input": ["hello world", "second"]}
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"]


def test_untagged_name_and_single_string_and_options(embed, fake_backend):
    response = embed({"model": "nomic-embed-text", "input": "just one", "truncate": True, "keep_alive": "5m"})
    assert response.status_code == 200 and len(response.get_json()["data"]) == 1
    assert fake_backend.last("/api/embed")["json"] == {"model": "nomic-embed-text:latest", "input": "just one",
                                                       "truncate": True, "keep_alive": "5m"}


def test_base64_encoding_for_ollama(embed):
    body = embed({"model": "nomic-embed-text", "input": "hello world", "encoding_format": "base64"}).get_json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(embed_text("hello world"), abs=1e-6)


def test_openai_model_passes_through(embed, fake_backend):
    response = embed({"model": "text-embedding-3-small", "input": ["a b", "c"], "dimensions": 64, "user": "u"},
                     path="/api/v1/embeddings")
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["model"] == "text-embedding-3-small" and len(body["data"]) == 2
    sent = fake_backend.last("/v1/embeddings")
    assert sent["json"] == {"model": "text-embedding-3-small", "input": ["a b", "c"], "dimensions": 64, "user": "u"}
    assert sent["headers"]["Authorization"] == f"Bearer {fake_backend.openai_key}"


def test_openai_accepts_token_arrays(embed, fake_backend):
    assert embed({"model": "text-embedding-3-small", "input": [[1, 2], [3]]}).status_code == 200


@pytest.mark.parametrize("body,status", [
    ({"model": "nope", "input": "x"}, 400),
    ({"input": "x"}, 422),
    ({"model": "nomic-embed-text"}, 422),
    ({"model": "nomic-embed-text", "input": []}, 422),
    ({"model": "nomic-embed-text", "input": [1, 2]}, 422),
    ({"model": "nomic-embed-text", "input": {"a": 1}}, 422),
    ({"model": "text-embedding-3-small", "input": [1, "a"]}, 422),
    ({"model": "nomic-embed-text", "input": "x", "encoding_format": "hex"}, 422),
])
def test_bad_input(embed, fake_backend, body, status):
    response = embed(body)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["detail"]
    assert not fake_backend.requests_to("/api/embed") and not fake_backend.requests_to("/v1/embeddings")


def test_auth_required(client):
    assert client.post(URL, json={"model": "nomic-embed-text", "input": "x"}).status_code == 401


@pytest.mark.parametrize("model,path", [("nomic-embed-text", "/api/embed"), ("text-embedding-3-small", "/v1/embeddings")])
def test_backend_faults(embed, fake_backend, model, path):
    fake_backend.fault = {"kind": "http500", "path": path}
    response = embed({"model": model, "input": "x"})
    assert response.status_code == 502 and "upstream exploded" in response.get_json()["detail"]
    fake_backend.fault = None
    fake_backend.stop()
    assert embed({"model": model, "input": "x"}).status_code == 502
