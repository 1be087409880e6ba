"""Reranking through an external reranker speaking the common `/v1/rerank` shape (Jina, Cohere, Infinity,
vLLM, llama.cpp): `{model, query, documents, top_n}` → `{results: [{index, relevance_score}]}`."""
from __future__ import annotations

from ..errors import ServiceUnavailable, UpstreamError
from ..upstream import Backend, error_message

ENGINES = ("", "external")


def enabled(settings) -> bool:
    """Whether hybrid results go through a reranker (Open WebUI: RAG_RERANKING_ENGINE=external)."""
    engine = (settings.RAG_RERANKING_ENGINE or "").strip().lower()
    if engine not in ENGINES:
        raise ServiceUnavailable(f"RAG_RERANKING_ENGINE={engine!r} is not supported here; use 'external' "
                                 "(with RAG_EXTERNAL_RERANKER_URL) or leave it empty.")
    return engine == "external"


def relevance(ext, query: str, documents: list[str], top_n: int) -> list[tuple[int, float]]:
    """(index into documents, relevance score) for the best `top_n`, best first. Reranker down, slow or
    answering nonsense → 502 (504 on timeout), naming the reranker."""
    settings = ext.settings
    if not settings.RAG_EXTERNAL_RERANKER_URL:
        raise ServiceUnavailable("RAG_RERANKING_ENGINE=external needs RAG_EXTERNAL_RERANKER_URL.")
    backend = Backend("reranker", 0, settings.RAG_EXTERNAL_RERANKER_URL.rstrip("/"),
                      settings.RAG_EXTERNAL_RERANKER_API_KEY or "")
    body = {"model": settings.RAG_RERANKING_MODEL, "query": query, "documents": documents, "top_n": top_n}
    response = ext.upstream.request(backend, "POST", "", json=body,
                                    timeout=(ext.upstream.connect_timeout,
                                             settings.RAG_EXTERNAL_RERANKER_TIMEOUT))
    if response.status_code >= 400:
        raise UpstreamError(f"{backend.label} failed (HTTP {response.status_code}): "
                            f"{error_message(response)}")
    return _results(response, backend, len(documents), top_n)


def _results(response, backend, count: int, top_n: int) -> list[tuple[int, float]]:
    try:
        results = [(int(item["index"]), float(item["relevance_score"]))
                   for item in response.json()["results"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UpstreamError(f"{backend.label} returned an unreadable answer.") from None
    if any(not 0 <= index < count for index, _ in results):
        raise UpstreamError(f"{backend.label} returned an index outside the documents sent.")
    return sorted(dict(results).items(), key=lambda item: -item[1])[:top_n]


def rerank_hits(ext, query: str, hits: list, top_n: int) -> list:
    """Retrieval hits reordered by the reranker, its score as theirs; the best `top_n` are kept."""
    if not hits:
        return hits
    ranked = []
    for index, score in relevance(ext, query, [hit.chunk.text for hit in hits], top_n):
        hit = hits[index]
        hit.score, hit.scores = score, {**hit.scores, "rerank_score": score}
        ranked.append(hit)
    return ranked
