"""The RAG embedder against the fake backend over real HTTP: engines, batching, fallbacks, failures."""
from __future__ import annotations

import numpy as np
import pytest

from webui_api.config import Settings
from webui_api.errors import ServiceUnavailable, UpstreamError
from webui_api.rag.embed import Embedder
from webui_api.upstream import Upstream

from .fake_backend import OPENAI_KEY, embed_text


def make_embedder(tmp_path, **overrides):
    base = {"DATA_DIR": str(tmp_path), "OLLAMA_BASE_URLS": "", "OPENAI_API_BASE_URLS": ""}
    settings = Settings.from_env(env={}, overrides={**base, **overrides})
    return Embedder(settings, Upstream(settings))


def test_ollama_batches_and_normalises(tmp_path, fake_backend):
    embedder = make_embedder(tmp_path, RAG_OLLAMA_BASE_URL=fake_backend.url, RAG_EMBEDDING_BATCH_SIZE="2",
                             RAG_EMBEDDING_MODEL="nomic-embed-text")
    texts = ["alpha beta", "beta gamma", "line one\nline two", "delta"]
    vectors = embedder.embed(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (4, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    calls = fake_backend.requests_to("/api/embed")
    assert [len(c["json"]["input"]) for c in calls] == [2, 2]
    assert calls[0]["json"]["model"] == "nomic-embed-text" and calls[0]["json"]["truncate"] is True
    assert calls[1]["json"]["input"][0] == "line one line two"  # newlines flattened for the model
    assert np.allclose(vectors[0], embed_text("alpha beta"), atol=1e-5)


def test_falls_back_to_first_gateway_backend(tmp_path, fake_backend, make_backend):
    other = make_backend()
    embedder = make_embedder(tmp_path, OLLAMA_BASE_URLS=f"{fake_backend.url};{other.url}",
                             RAG_EMBEDDING_MODEL="nomic-embed-text")
    embedder.embed(["x"])
    assert len(fake_backend.requests_to("/api/embed")) == 1 and not other.requests_to("/api/embed")


def test_openai_engine_uses_gateway_key_and_sorts_by_index(tmp_path, fake_backend):
    embedder = make_embedder(tmp_path, RAG_EMBEDDING_ENGINE="openai",
                             RAG_EMBEDDING_MODEL="text-embedding-3-small",
                             OPENAI_API_BASE_URLS=fake_backend.openai_url, OPENAI_API_KEYS=OPENAI_KEY)
    vectors = embedder.embed(["one two", "three"])
    assert vectors.shape == (2, 64)
    call = fake_backend.last("/v1/embeddings")
    assert call["headers"]["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert np.allclose(vectors[1], embed_text("three"), atol=1e-5)


def test_openai_engine_with_own_url_and_wrong_key_is_502(tmp_path, fake_backend):
    embedder = make_embedder(tmp_path, RAG_EMBEDDING_ENGINE="openai",
                             RAG_EMBEDDING_MODEL="text-embedding-3-small",
                             RAG_OPENAI_API_BASE_URL=fake_backend.openai_url, RAG_OPENAI_API_KEY="sk-wrong")
    with pytest.raises(UpstreamError) as err:
        embedder.embed(["x"])
    assert err.value.status == 502 and "sk-wrong" not in err.value.detail


def test_backend_down_is_502_naming_the_backend(tmp_path, fake_backend):
    embedder = make_embedder(tmp_path, RAG_OLLAMA_BASE_URL=fake_backend.url)
    fake_backend.stop()
    with pytest.raises(UpstreamError) as err:
        embedder.embed(["x"])
    assert err.value.status == 502 and "Ollama backend" in err.value.detail


def test_unknown_model_is_502_with_backend_message(tmp_path, fake_backend):
    embedder = make_embedder(tmp_path, RAG_OLLAMA_BASE_URL=fake_backend.url,
                             RAG_EMBEDDING_MODEL="missing-model")
    with pytest.raises(UpstreamError) as err:
        embedder.embed(["x"])
    assert "missing-model" in err.value.detail and "not found" in err.value.detail


def test_no_backend_configured_is_503(tmp_path):
    with pytest.raises(ServiceUnavailable) as err:
        make_embedder(tmp_path).embed(["x"])
    assert "RAG_OLLAMA_BASE_URL" in err.value.detail


def test_empty_input_makes_no_call(tmp_path, fake_backend):
    embedder = make_embedder(tmp_path, RAG_OLLAMA_BASE_URL=fake_backend.url)
    assert embedder.embed([]).shape[0] == 0
    assert fake_backend.requests == []


def test_model_dimension_follows_backend(tmp_path, fake_backend):
    fake_backend.embed_dims = {"nomic-embed-text:latest": 16}
    embedder = make_embedder(tmp_path, RAG_OLLAMA_BASE_URL=fake_backend.url,
                             RAG_EMBEDDING_MODEL="nomic-embed-text")
    assert embedder.embed(["a b"]).shape == (1, 16)
