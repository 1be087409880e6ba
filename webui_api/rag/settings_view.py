"""Open WebUI's read-only views of the RAG settings (GET /api/v1/retrieval/config and /embedding)."""
from __future__ import annotations

from ..auth.security import mask_api_key
from .retrieve import DEFAULT_TEMPLATE


def _masked(key: str) -> str:
    """A configured key as the admin may see it: enough to tell which, never the key ("" when unset)."""
    return mask_api_key(key) if key else ""


def embedding_view(settings, embedder) -> dict:
    """`GET /embedding`: the engine, model and backend the RAG_* environment settings chose."""
    return {"status": True, "RAG_EMBEDDING_ENGINE": embedder.engine, "RAG_EMBEDDING_MODEL": embedder.model,
            "RAG_EMBEDDING_BATCH_SIZE": settings.RAG_EMBEDDING_BATCH_SIZE, "ENABLE_ASYNC_EMBEDDING": False,
            "RAG_EMBEDDING_CONCURRENT_REQUESTS": 1,
            "openai_config": {"url": settings.RAG_OPENAI_API_BASE_URL,
                              "key": _masked(settings.RAG_OPENAI_API_KEY)},
            "ollama_config": {"url": settings.RAG_OLLAMA_BASE_URL, "key": _masked(settings.RAG_OLLAMA_API_KEY)},
            "azure_openai_config": {"url": "", "key": "", "version": ""}}


def retrieval_view(settings) -> dict:
    """`GET /config`: Open WebUI's retrieval keys this service has, with the values in force."""
    return {"status": True, "RAG_TEMPLATE": settings.RAG_TEMPLATE or DEFAULT_TEMPLATE,
            "TOP_K": settings.RAG_TOP_K, "BYPASS_EMBEDDING_AND_RETRIEVAL": False, "RAG_FULL_CONTEXT": False,
            "ENABLE_RAG_HYBRID_SEARCH": settings.ENABLE_RAG_HYBRID_SEARCH,
            "TOP_K_RERANKER": settings.RAG_TOP_K_RERANKER, "RELEVANCE_THRESHOLD": settings.RAG_RELEVANCE_THRESHOLD,
            "HYBRID_BM25_WEIGHT": settings.RAG_HYBRID_BM25_WEIGHT,
            "RAG_RERANKING_ENGINE": settings.RAG_RERANKING_ENGINE, "RAG_RERANKING_MODEL": settings.RAG_RERANKING_MODEL,
            "RAG_EXTERNAL_RERANKER_URL": settings.RAG_EXTERNAL_RERANKER_URL,
            "RAG_EXTERNAL_RERANKER_API_KEY": _masked(settings.RAG_EXTERNAL_RERANKER_API_KEY),
            "CONTENT_EXTRACTION_ENGINE": "", "TEXT_SPLITTER": "", "ENABLE_MARKDOWN_HEADER_TEXT_SPLITTER": True,
            "CHUNK_SIZE": settings.CHUNK_SIZE, "CHUNK_OVERLAP": settings.CHUNK_OVERLAP,
            "FILE_MAX_SIZE": settings.RAG_FILE_MAX_SIZE, "FILE_MAX_COUNT": None,
            "ALLOWED_FILE_EXTENSIONS": list(settings.RAG_ALLOWED_FILE_EXTENSIONS)}
