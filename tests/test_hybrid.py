"""Hybrid search and reranking through the retrieval routes and chat: Open WebUI's `hybrid`,
`hybrid_bm25_weight`, `k_reranker` and `r`, the settings behind them, and an external reranker's failures."""
from __future__ import annotations

import pytest

from .rag_helpers import _drain_background, rag_settings, upload_ok  # noqa: F401

# Many passages share the everyday words of the query; one alone holds the rare code. The fake embedding is
# a bag of words, so vector search favours the wordy ones and BM25 the code.
DOCS = {
    "code.txt": "Fault E4711 is rare.",
    **{f"pump{i}.txt": f"When the pump shows an error, check what the pump error means for pump {i}."
       for i in range(5)},
    "weather.txt": "Rain is expected tomorrow over the northern hills.",
}
QUERY = "what does pump error E4711 mean"


@pytest.fixture
def extra_settings():
    return {}


@pytest.fixture
def settings_overrides(fake_backend, extra_settings):
    return rag_settings(fake_backend, **extra_settings)


@pytest.fixture
def kb(client, user):
    headers = user["headers"]
    kb = client.post("/api/v1/knowledge/create", headers=headers, json={"name": "hybrid"}).get_json()["id"]
    for name, text in DOCS.items():
        file = upload_ok(client, headers, name, text.encode())
        client.post(f"/api/v1/knowledge/{kb}/file/add", headers=headers, json={"file_id": file["id"]})
    return kb


def query(client, user, kb, **params):
    response = client.post("/api/v1/retrieval/query/collection", headers=user["headers"],
                           json={"collection_names": [kb], "query": QUERY, "k": 3, **params})
    return response.status_code, response.get_json()


def names(body) -> list[str]:
    return [meta["name"] for meta in body["metadatas"][0]]


def test_vector_search_misses_the_exact_term_that_bm25_and_hybrid_find_first(client, user, kb):
    status, vector = query(client, user, kb, hybrid=False)
    assert status == 200 and "code.txt" not in names(vector)
    assert "vector_score" not in vector["metadatas"][0][0]  # vector-only answers keep their old shape
    _, bm25 = query(client, user, kb, hybrid=True, hybrid_bm25_weight=1.0)
    assert names(bm25)[0] == "code.txt"
    _, mixed = query(client, user, kb, hybrid=True, hybrid_bm25_weight=0.5)
    assert "code.txt" in names(mixed) and names(mixed) != names(bm25)


def test_hybrid_hits_report_both_scores_and_keep_their_offsets(client, user, kb):
    _, body = query(client, user, kb, hybrid=True, hybrid_bm25_weight=0.7)
    metas = body["metadatas"][0]
    top_bm25 = next(m["bm25_score"] for m in metas if m["name"] == "code.txt")  # the rare term: highest BM25
    for meta, text, distance in zip(metas, body["documents"][0], body["distances"][0]):
        assert 0 <= meta["vector_score"] <= 1 and 0 <= meta["bm25_score"] <= top_bm25
        assert distance == meta["score"]
        assert distance == pytest.approx(0.3 * meta["vector_score"] + 0.7 * meta["bm25_score"] / top_bm25,
                                         abs=1e-5)
        assert (meta["start_index"], meta["end_index"]) == (0, len(text))
    assert body["distances"][0] == sorted(body["distances"][0], reverse=True)


def test_threshold_r_drops_weaker_hits_in_both_modes(client, user, kb):
    for hybrid in (False, True):
        _, everything = query(client, user, kb, hybrid=hybrid, k=8)
        cut = sorted(everything["distances"][0])[len(everything["distances"][0]) // 2] - 1e-6  # reported: rounded
        _, kept = query(client, user, kb, hybrid=hybrid, k=8, r=cut)
        assert kept["distances"][0] and min(kept["distances"][0]) >= cut
        assert len(kept["distances"][0]) < len(everything["distances"][0])
        _, none = query(client, user, kb, hybrid=hybrid, r=0.99)
        assert none == {"ids": [[]], "distances": [[]], "documents": [[]], "metadatas": [[]]}


@pytest.mark.parametrize("params", [{"r": 1.5}, {"r": -0.1}, {"hybrid_bm25_weight": 2}, {"k_reranker": 0}])
def test_out_of_range_ranking_params_are_400(client, user, kb, params):
    status, body = query(client, user, kb, hybrid=True, **params)
    assert status == 400 and body["detail"]


@pytest.mark.parametrize("extra_settings", [{"ENABLE_RAG_HYBRID_SEARCH": "true", "RAG_HYBRID_BM25_WEIGHT": "1"}])
def test_settings_make_hybrid_the_default_for_routes_and_chat(client, user, kb, fake_backend):
    _, body = query(client, user, kb)
    assert names(body)[0] == "code.txt" and "bm25_score" in body["metadatas"][0][0]
    chat = client.post("/api/chat/completions", headers=user["headers"], json={
        "model": "llama3.2:latest", "stream": False, "top_k": 1, "files": [{"type": "collection", "id": kb}],
        "messages": [{"role": "user", "content": QUERY}]})
    assert chat.status_code == 200
    assert chat.get_json()["sources"][0]["document"] == [DOCS["code.txt"]]


@pytest.mark.parametrize("extra_settings", [{"RAG_HYBRID_FUSION": "rrf"}])
def test_reciprocal_rank_fusion_is_selectable(client, user, kb):
    _, body = query(client, user, kb, hybrid=True, hybrid_bm25_weight=1.0)
    assert names(body)[0] == "code.txt"
    assert body["distances"][0][0] == pytest.approx(2 / 61, abs=1e-6)
