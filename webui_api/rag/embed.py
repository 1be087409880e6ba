"""Embeddings for RAG from an Ollama (`/api/embed`) or OpenAI-compatible (`/embeddings`) backend, or from a
local model (`local_embed`)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from ..errors import ApiError, ServiceUnavailable, UpstreamError
from . import local_embed

log = logging.getLogger("webui_api.rag")

ENGINES = ("ollama", "openai")
LOCAL = ("local", "")  # Open WebUI names its local sentence-transformers engine with the empty string


class Embedder:
    """Turns texts into L2-normalised float32 vectors, RAG_EMBEDDING_BATCH_SIZE texts per backend call.
    Cheap to build: the backend is resolved on first use, nothing touches the network before."""

    def __init__(self, settings, upstream):
        self.settings = settings
        self.upstream = upstream

    @property
    def engine(self) -> str:
        engine = self.settings.RAG_EMBEDDING_ENGINE.strip().lower()
        return "local" if engine in LOCAL else engine

    @property
    def model(self) -> str:
        return self.settings.RAG_EMBEDDING_MODEL

    @property
    def config(self) -> dict:
        """What chunk metadata records about how its vector was made."""
        return {"engine": self.engine, "model": self.model}

    def hosts(self) -> list:
        """The embedding backends: the RAG_* URL when set, else the gateway's backends of that kind (the
        first healthy one serves; the others stand in when it fails)."""
        from ..upstream import Backend

        settings, engine = self.settings, self.engine
        if engine not in ENGINES:
            raise ServiceUnavailable(f"RAG_EMBEDDING_ENGINE={engine!r} is not supported here; "
                                     "use 'ollama', 'openai' or 'local'.")
        own_url = settings.RAG_OLLAMA_BASE_URL if engine == "ollama" else settings.RAG_OPENAI_API_BASE_URL
        own_key = settings.RAG_OLLAMA_API_KEY if engine == "ollama" else settings.RAG_OPENAI_API_KEY
        if own_url:
            return [Backend(engine, 0, own_url.rstrip("/"), own_key or "")]
        pool = self.upstream.ollama if engine == "ollama" else self.upstream.openai
        if not pool:
            hint = "RAG_OLLAMA_BASE_URL or OLLAMA_BASE_URLS" if engine == "ollama" else \
                "RAG_OPENAI_API_BASE_URL or OPENAI_API_BASE_URLS"
            raise ServiceUnavailable(f"No {engine} backend is configured for embeddings: set {hint}.")
        return [dataclasses.replace(backend, key=own_key or backend.key) for backend in pool]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised. Backend down → 502; bad answers → 502 too."""
        texts = [(text or " ").replace("\n", " ") for text in texts]
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        size = max(1, int(self.settings.RAG_EMBEDDING_BATCH_SIZE or 1))
        if self.engine == "local":
            model = local_embed.model_for(self.model)
            return _normalise(np.vstack([model.embed(texts[i:i + size]) for i in range(0, len(texts), size)]))
        hosts = self.hosts()
        parts = [self._batch(hosts, texts[i:i + size]) for i in range(0, len(texts), size)]
        dims = {part.shape[1] for part in parts}
        if len(dims) != 1:
            raise UpstreamError(f"{hosts[0].label} returned embeddings of different sizes {sorted(dims)} "
                                f"for model {self.model!r}.")
        return _normalise(np.vstack(parts))

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def _batch(self, hosts: list, texts: list[str]) -> np.ndarray:
        if hosts[0].kind == "ollama":
            body, path = {"model": self.model, "input": texts, "truncate": True}, "/api/embed"
        else:
            body, path = {"model": self.model, "input": texts}, "/embeddings"
        response = self.upstream.send(hosts, "POST", path, json=body, spread=False)
        backend = response.backend
        if response.status_code >= 400:
            raise UpstreamError(f"{backend.label} could not embed with model {self.model!r} "
                                f"(HTTP {response.status_code}): {_message(response)}")
        try:
            payload = response.json()
            vectors = payload["embeddings"] if backend.kind == "ollama" else \
                [item["embedding"] for item in sorted(payload["data"], key=lambda item: item.get("index", 0))]
            matrix = np.asarray(vectors, dtype=np.float32)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UpstreamError(f"{backend.label} returned an unreadable embedding answer for model "
                                f"{self.model!r}.") from None
        if matrix.ndim != 2 or matrix.shape[0] != len(texts) or matrix.shape[1] == 0:
            got = matrix.shape[0] if matrix.ndim else 0
            raise UpstreamError(f"{backend.label} returned {got} embeddings for {len(texts)} texts "
                                f"(model {self.model!r}).")
        if not np.isfinite(matrix).all():
            raise UpstreamError(f"{backend.label} returned non-finite embedding values.")
        return matrix


def _normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0  # an all-zero vector stays zero: it simply never matches
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)


def _message(response) -> str:
    try:
        from ..upstream import error_message
        return error_message(response)
    except ApiError:
        raise
    except Exception:  # an odd body must not hide the real failure
        return f"HTTP {response.status_code}"
