"""Lists that page: /knowledge/{id}, /knowledge/{id}/files and /files/ answer a page, read the extracted
text only when asked, and run the same few queries whatever the page holds (no query per row)."""
from __future__ import annotations

import pytest

from webui_api import db
from webui_api.db import File, Knowledge, KnowledgeFile

TEXT = "extracted words " * 50


def seed(owner_id: str, count: int, name: str = "Big KB", public: bool = False) -> str:
    """A collection of `count` processed files, inserted as rows (what an upload would leave behind)."""
    kid, stamp = db.new_id(), db.now()
    rows = [{"id": f"{kid[:8]}-{n:05d}", "user": owner_id, "filename": f"doc{n:05d}.txt", "storage_name": "x",
             "content_type": "text/plain", "size": 10, "file_hash": f"h{n}", "text_hash": f"t{n}",
             "content": f"{TEXT}{n}", "status": "completed", "meta": {}, "created_at": stamp + n,
             "updated_at": stamp + n} for n in range(count)]
    with db.write_transaction():
        Knowledge.create(id=kid, user=owner_id, name=name, is_public=public)
        File.insert_many(rows).execute()
        KnowledgeFile.insert_many([{"knowledge": kid, "file": r["id"]} for r in rows]).execute()
    return kid


def get(client, headers, path):
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def queries(monkeypatch):
    """Counts the SQL statements the real database runs."""
    seen = []
    execute = db.database.obj.execute_sql

    def counted(sql, params=None, *args, **kwargs):
        seen.append(sql)
        return execute(sql, params, *args, **kwargs)
    monkeypatch.setattr(db.database.obj, "execute_sql", counted)
    return seen


def test_collection_files_page_through_all_of_them(client, user):
    kid = seed(user["id"], 65)
    path = f"/api/v1/knowledge/{kid}/files"
    pages = [get(client, user["headers"], f"{path}?page={n}") for n in (1, 2, 3, 4)]
    assert [len(p["items"]) for p in pages] == [30, 30, 5, 0] and {p["total"] for p in pages} == {65}
    ids = [item["id"] for p in pages for item in p["items"]]
    assert len(set(ids)) == 65 and ids[0].endswith("-00064")  # the newest added first
    item = pages[0]["items"][0]
    assert item["user"]["id"] == user["id"] and item["meta"]["collection_name"] == kid
    assert item["data"] == {"status": "completed"}  # no extracted text unless asked
    by_name = get(client, user["headers"], f"{path}?order_by=name&direction=asc&limit=5")
    assert [i["filename"] for i in by_name["items"]] == [f"doc{n:05d}.txt" for n in range(5)]
    found = get(client, user["headers"], f"{path}?query=doc0004&include_content=true")
    assert found["total"] == 10 and found["items"][0]["data"]["content"].startswith(TEXT)


def test_view_option_separates_own_and_others_files(client, admin, user):
    kid = seed(user["id"], 3)
    path = f"/api/v1/knowledge/{kid}/files"
    assert get(client, user["headers"], f"{path}?view_option=created")["total"] == 3
    assert get(client, user["headers"], f"{path}?view_option=shared")["total"] == 0
    assert get(client, admin["headers"], f"{path}?view_option=shared")["total"] == 3


@pytest.mark.parametrize("query", ["page=0", "page=x", "limit=0", "limit=1001", "order_by=size",
                                   "direction=up", "view_option=all", "include_content=maybe"])
def test_nonsense_paging_is_422(client, user, query):
    kid = seed(user["id"], 1)
    response = client.get(f"/api/v1/knowledge/{kid}/files?{query}", headers=user["headers"])
    assert response.status_code == 422 and response.get_json()["detail"][0]["loc"][0] == "query"


def test_collection_and_its_changes_carry_one_page_of_files(client, user):
    kid = seed(user["id"], 45)
    first = get(client, user["headers"], f"/api/v1/knowledge/{kid}")
    second = get(client, user["headers"], f"/api/v1/knowledge/{kid}?page=2")
    assert len(first["files"]) == 30 and len(second["files"]) == 15
    assert not {f["id"] for f in first["files"]} & {f["id"] for f in second["files"]}
    assert client.get(f"/api/v1/knowledge/{kid}?page=0", headers=user["headers"]).status_code == 422
    updated = client.post(f"/api/v1/knowledge/{kid}/update", headers=user["headers"], json={"name": "New"})
    assert updated.status_code == 200 and [f["id"] for f in updated.get_json()["files"]] == \
        [f["id"] for f in first["files"]]


def test_file_list_pages_and_reads_text_only_when_asked(client, user, queries):
    seed(user["id"], 120)
    del queries[:]
    first = get(client, user["headers"], "/api/v1/files/")
    last = get(client, user["headers"], "/api/v1/files/?page=3")
    assert len(first["items"]) == 50 and len(last["items"]) == 20 and first["total"] == last["total"] == 120
    assert all("content" not in item["data"] for item in first["items"])
    reads_of_text = [sql for sql in queries if sql.startswith("SELECT") and '"content"' in sql]
    assert not reads_of_text
    full = get(client, user["headers"], "/api/v1/files/?content=true&page=3")
    assert all(item["data"]["content"].startswith(TEXT) for item in full["items"])


@pytest.mark.parametrize("path", ["/api/v1/knowledge/{kid}/files?limit={n}", "/api/v1/knowledge/{kid}",
                                  "/api/v1/files/"])
def test_a_page_costs_the_same_queries_however_many_rows_it_holds(client, user, make_user, queries, path):
    counts = []
    for n in (1, 25):
        owner = make_user("user")
        kid = seed(owner["id"], n)
        del queries[:]
        body = get(client, owner["headers"], path.format(kid=kid, n=n))
        assert len(body.get("items") or body.get("files")) == n
        counts.append(len(queries))
    assert counts[0] == counts[1]


def test_the_collection_list_counts_files_in_one_query(client, make_user, queries):
    counts = []
    for n in (1, 6):
        owner = make_user("user")
        for _ in range(n):
            seed(owner["id"], 2)
        del queries[:]
        listing = get(client, owner["headers"], "/api/v1/knowledge/?page=1")
        assert listing["total"] == n and {item["file_count"] for item in listing["items"]} == {2}
        counts.append(len(queries))
    assert counts[0] == counts[1]


def test_a_reader_s_list_of_shared_collections_costs_the_same_queries_at_any_length(client, make_user, queries):
    """Grants and write access are read for the whole page at once, not per collection."""
    counts = []
    for n in (1, 6):
        owner, reader = make_user("user"), make_user("user")
        for permission in ["write"] + ["read"] * (n - 1):
            kid = seed(owner["id"], 2)
            grant = {"principal_type": "user", "principal_id": reader["id"], "permission": permission}
            assert client.post(f"/api/v1/knowledge/{kid}/access/update", headers=owner["headers"],
                               json={"access_grants": [grant]}).status_code == 200
        del queries[:]
        listing = get(client, reader["headers"], "/api/v1/knowledge/?page=1")
        assert listing["total"] == n and [i["write_access"] for i in listing["items"]].count(True) == 1
        assert {len(item["access_grants"]) for item in listing["items"]} == {1}
        counts.append(len(queries))
    assert counts[0] == counts[1]


def test_another_users_collection_stays_hidden(client, user, make_user):
    kid = seed(user["id"], 3)
    other = make_user("user")
    for path in (f"/api/v1/knowledge/{kid}", f"/api/v1/knowledge/{kid}/files?page=1&limit=5"):
        assert client.get(path, headers=other["headers"]).status_code == 404
    assert get(client, other["headers"], "/api/v1/files/")["total"] == 0
