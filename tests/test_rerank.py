"""Reranking through an external `/v1/rerank` (the fake backend's, by term overlap): order, cut, threshold,
timeout and failure."""
from __future__ import annotations

import pytest

from .fake_backend import overlap_score
from .rag_helpers import _drain_background  # noqa: F401
from .test_hybrid import DOCS, QUERY, kb, query, settings_overrides  # noqa: F401  (fixtures too)


@pytest.fixture
def reranker(make_backend):
    return make_backend()


@pytest.fixture
def extra_settings(reranker):
    return {"RAG_RERANKING_ENGINE": "external", "RAG_EXTERNAL_RERANKER_URL": reranker.openai_url + "/rerank",
            "RAG_EXTERNAL_RERANKER_API_KEY": reranker.openai_key, "RAG_RERANKING_MODEL": "bge-reranker",
            "RAG_EXTERNAL_RERANKER_TIMEOUT": "1"}


def test_reranker_orders_and_cuts_hybrid_hits(client, user, kb, reranker):
    status, body = query(client, user, kb, hybrid=True, k=6, k_reranker=2)
    assert status == 200 and len(body["documents"][0]) == 2
    expected = sorted((overlap_score(QUERY, text) for text in DOCS.values()), reverse=True)[:2]
    assert body["distances"][0] == pytest.approx(expected, abs=1e-6)
    assert [m["rerank_score"] for m in body["metadatas"][0]] == body["distances"][0]
    sent = reranker.last("/v1/rerank")
    assert sent["json"]["model"] == "bge-reranker" and sent["json"]["query"] == QUERY
    assert sent["json"]["top_n"] == 2 and len(sent["json"]["documents"]) == 6
    assert sent["headers"]["Authorization"] == f"Bearer {reranker.openai_key}"


def test_reranker_scores_are_what_r_judges(client, user, kb, reranker):
    _, body = query(client, user, kb, hybrid=True, k=6, k_reranker=6, r=0.5)
    assert body["distances"][0] and min(body["distances"][0]) >= 0.5


def test_vector_only_queries_do_not_call_the_reranker(client, user, kb, reranker):
    status, _ = query(client, user, kb, hybrid=False)
    assert status == 200 and reranker.requests_to("/v1/rerank") == []


def test_reranker_timeout_is_504_and_failure_502(client, user, kb, reranker):
    reranker.fault = {"kind": "slow", "path": "/v1/rerank", "delay": 3}
    status, body = query(client, user, kb, hybrid=True)
    assert status == 504 and "reranker" in body["detail"]
    reranker.fault = {"kind": "http500", "path": "/v1/rerank", "message": "model not loaded"}
    status, body = query(client, user, kb, hybrid=True)
    assert status == 502 and "reranker" in body["detail"] and "model not loaded" in body["detail"]
    reranker.stop()
    status, body = query(client, user, kb, hybrid=True)
    assert status == 502 and "reranker" in body["detail"]
