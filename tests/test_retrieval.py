"""/api/v1/retrieval: query routes (shapes, ranking, validation, access) and process routes."""
from __future__ import annotations

import pytest

from webui_api.db import File

from .rag_helpers import _drain_background, embed_calls, rag_settings, upload_ok  # noqa: F401

DOCS = {
    "fruit.txt": "Apples and pears grow in the orchard behind the old farmhouse.",
    "space.txt": "The rocket launch was delayed because the launch window closed early.",
    "code.txt": "The secret launch code of project Zephyr is 7-alpha-9.",
    "sea.txt": "Whales and dolphins swim in the cold northern sea near the harbor.",
}


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend)


@pytest.fixture
def corpus(client, user):
    """Two collections and the files in them: {name: file id}, (kb1, kb2)."""
    headers = user["headers"]
    ids = {name: upload_ok(client, headers, name, text.encode())["id"] for name, text in DOCS.items()}
    kbs = []
    for label, members in (("A", ["fruit.txt", "code.txt"]), ("B", ["space.txt", "sea.txt"])):
        kb = client.post("/api/v1/knowledge/create", headers=headers, json={"name": label}).get_json()
        for name in members:
            client.post(f"/api/v1/knowledge/{kb['id']}/file/add", headers=headers,
                        json={"file_id": ids[name]})
        kbs.append(kb["id"])
    return ids, kbs


def post(client, headers, path, body):
    return client.post(f"/api/v1/retrieval/{path}", headers=headers, json=body)


def test_query_collection_ranks_across_collections(client, user, corpus):
    ids, kbs = corpus
    body = post(client, user["headers"], "query/collection",
                {"collection_names": kbs, "query": "secret launch code of project Zephyr", "k": 3}).get_json()
    assert list(body) == ["ids", "distances", "documents", "metadatas"]
    assert body["documents"][0][0] == DOCS["code.txt"]
    assert body["metadatas"][0][0]["file_id"] == ids["code.txt"]
    assert body["metadatas"][0][0]["collection_name"] == kbs[0]
    assert len(body["documents"][0]) == 3
    assert body["distances"][0] == sorted(body["distances"][0], reverse=True)
    second = post(client, user["headers"], "query/collection",
                  {"collection_names": kbs, "query": "rocket launch window delayed", "k": 1}).get_json()
    assert second["metadatas"][0][0]["name"] == "space.txt"


def test_query_doc_on_a_file_collection(client, user, corpus):
    ids, _ = corpus
    body = post(client, user["headers"], "query/doc",
                {"collection_name": f"file-{ids['sea.txt']}", "query": "whales", "k": 5}).get_json()
    assert body["documents"] == [[DOCS["sea.txt"]]]
    meta = body["metadatas"][0][0]
    assert (meta["start_index"], meta["end_index"]) == (0, len(DOCS["sea.txt"]))


def test_query_validation(client, user, corpus):
    _, kbs = corpus
    h = user["headers"]
    assert post(client, h, "query/doc", {"query": "x"}).status_code == 422
    assert post(client, h, "query/collection", {"collection_names": [], "query": "x"}).status_code == 422
    for body in ({"collection_names": kbs, "query": "  "}, {"collection_names": kbs, "query": "x", "k": 0},
                 {"collection_names": ["bad/../name"], "query": "x"}):
        response = post(client, h, "query/collection", body)
        assert response.status_code in (400, 404) and response.get_json()["detail"], body
    missing = post(client, h, "query/doc", {"collection_name": "knowledge-bases", "query": "x"})
    assert missing.status_code == 404


def test_query_other_users_collections_is_404(client, corpus, make_user):
    ids, kbs = corpus
    other = make_user("user")["headers"]
    for name in (kbs[0], f"file-{ids['code.txt']}"):
        response = post(client, other, "query/doc", {"collection_name": name, "query": "launch code"})
        assert response.status_code == 404


def test_process_text_makes_searchable_text_and_can_join_a_collection(client, user, corpus):
    _, kbs = corpus
    response = post(client, user["headers"], "process/text",
                    {"name": "memo", "content": "Quarterly budget review moved to Friday.",
                     "collection_name": kbs[1]})
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] is True and body["collection_name"] == kbs[1]
    found = post(client, user["headers"], "query/doc",
                 {"collection_name": kbs[1], "query": "quarterly budget review", "k": 1}).get_json()
    assert found["metadatas"][0][0]["file_id"] == body["file_id"]
    empty = post(client, user["headers"], "process/text", {"name": "x", "content": "   "})
    assert empty.status_code == 400


def test_process_text_into_someone_elses_collection_stores_nothing(client, corpus, make_user):
    _, kbs = corpus
    count = File.select().count()
    other = make_user("user")["headers"]
    response = post(client, other, "process/text", {"name": "x", "content": "intrusion",
                                                    "collection_name": kbs[0]})
    assert response.status_code == 404 and File.select().count() == count


def test_process_file_with_replacement_content_and_collection(client, user, corpus, fake_backend):
    ids, kbs = corpus
    calls = embed_calls(fake_backend)
    response = post(client, user["headers"], "process/file",
                    {"file_id": ids["fruit.txt"], "content": "Cherries ripen in June.",
                     "collection_name": kbs[1]})
    assert response.status_code == 200
    body = response.get_json()
    assert body == {"status": True, "collection_name": kbs[1], "filename": "fruit.txt",
                    "content": "Cherries ripen in June."}
    assert embed_calls(fake_backend) == calls + 1
    for kb in kbs:  # the new text replaced the old one in both collections
        found = post(client, user["headers"], "query/doc", {"collection_name": kb, "query": "cherries june"})
        documents = found.get_json()["documents"][0]
        assert "Cherries ripen in June." in documents and DOCS["fruit.txt"] not in documents


def test_process_file_unknown_is_404(client, user):
    response = post(client, user["headers"], "process/file", {"file_id": "nope"})
    assert response.status_code == 404
