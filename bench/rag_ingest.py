"""RAG timings: upload-to-searchable for a 1 MB text file, and search time over the largest collection.

Starts the fake Ollama backend from tests/fake_backend.py and the app on a werkzeug threaded server, both
in-process, with a temporary DATA_DIR. Uploads a generated 1 MB text file (synchronous mode: the answer
comes when the file is searchable) and checks that it is found; then puts --files such files into one
knowledge collection (their stored vectors are reused: no new embedding) and times /query/collection
(query embedding + FAISS + SQLite) and the bare FAISS search.

    .venv/bin/python bench/rag_ingest.py [--mb 1] [--files 4] [-n 50]
"""
from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import fake_backend as fake  # noqa: E402

WORDS = ("river mountain lantern copper violin meadow harbor pebble thunder glacier orchard canyon falcon "
         "ember willow saddle quartz maple cedar amber basalt cobalt delta echo fjord gravel hollow island "
         "jasper kestrel lagoon marsh nectar onyx prairie quill reef summit tundra umber valley wharf yarrow "
         "zephyr").split()


def text_of_size(size: int, seed: int) -> str:
    """Paragraphs of 3-8 sentences of 6-16 words: realistic splitting work for the chunker."""
    rng, parts, length = random.Random(seed), [], 0
    while length < size:
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))).capitalize() + "."
                     for _ in range(rng.randint(3, 8))]
        paragraph = " ".join(sentences)
        parts.append(paragraph)
        length += len(paragraph) + 2
    return "\n\n".join(parts)[:size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=1.0, help="size of each text file in MB")
    parser.add_argument("--files", type=int, default=4, help="files in the searched collection")
    parser.add_argument("-n", type=int, default=50, help="queries to time")
    args = parser.parse_args()
    for name in ("webui_api", "werkzeug"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from webui_api.auth import accounts
    from webui_api import create_app
    from webui_api.db import Chunk

    backend = fake.FakeBackend()
    data_dir = tempfile.mkdtemp(prefix="rag-bench-")
    app = create_app({"DATA_DIR": data_dir, "OLLAMA_BASE_URLS": backend.url, "OPENAI_API_BASE_URLS": "",
                      "RAG_EMBEDDING_MODEL": "nomic-embed-text", "PASSWORD_HASH_COST": 1024,
                      "RAG_FILE_MAX_SIZE": str(max(2.0, args.mb * 2))})
    ext = app.extensions["webui_api"]
    admin = accounts.add_user(ext.settings, "Bench", "bench@example.com", "correct horse battery staple",
                              "admin")
    token = accounts.issue_session(ext.settings, admin).token
    server = fake.LiveServer(app)
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    size = int(args.mb * 1024 * 1024)
    print(f"settings: CHUNK_SIZE={ext.settings.CHUNK_SIZE} CHUNK_OVERLAP={ext.settings.CHUNK_OVERLAP} "
          f"RAG_EMBEDDING_BATCH_SIZE={ext.settings.RAG_EMBEDDING_BATCH_SIZE}")
    try:
        kb = session.post(server.url + "/api/v1/knowledge/create", headers=headers,
                          json={"name": "bench"}).json()
        upload_times, file_ids = [], []
        for i in range(max(1, args.files)):
            text = text_of_size(size, seed=i)
            if i == 0:
                beacon = ("# Beacon\n\nThe unique beacon sentence mentions a zebra named Quillon.\n\n"
                          "# Notes\n\n")
                text = beacon + text[len(beacon):]
            started = time.perf_counter()
            response = session.post(server.url + "/api/v1/files/", headers=headers,
                                    files={"file": (f"doc{i}.txt", text.encode(), "text/plain")})
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            body = response.json()
            assert body["data"]["status"] == "completed", body
            upload_times.append(elapsed)
            file_ids.append(body["id"])
            add = session.post(server.url + f"/api/v1/knowledge/{kb['id']}/file/add", headers=headers,
                               json={"file_id": body["id"]})
            add.raise_for_status()
        chunks = Chunk.select().where(Chunk.file == file_ids[0]).count()
        calls = len(backend.requests_to("/api/embed"))
        first, median = upload_times[0] * 1000, statistics.median(upload_times) * 1000
        per_file = calls // len(file_ids)
        print(f"upload-to-searchable, {args.mb:g} MB text ({chunks} chunks, {per_file} embed calls each): "
              f"first {first:.0f} ms, median {median:.0f} ms over {len(upload_times)} files")
        found = session.post(server.url + "/api/v1/retrieval/query/doc", headers=headers,
                             json={"collection_name": f"file-{file_ids[0]}", "query": "zebra named Quillon",
                                   "k": 1}).json()
        assert "Quillon" in found["documents"][0][0], found
        total = ext.vectors.count(kb["id"])
        query = {"collection_names": [kb["id"]], "query": "copper lantern by the frozen harbor", "k": 5}
        http_times = []
        for _ in range(args.n + 3):
            started = time.perf_counter()
            session.post(server.url + "/api/v1/retrieval/query/collection", headers=headers, json=query) \
                .raise_for_status()
            http_times.append(time.perf_counter() - started)
        vector = ext.embedder.embed([query["query"]])[0]
        faiss_times = []
        for _ in range(args.n):
            started = time.perf_counter()
            ext.vectors.search([kb["id"]], vector, 5)
            faiss_times.append(time.perf_counter() - started)
        print(f"search over the largest collection ({total} vectors, dim {ext.vectors.dim(kb['id'])}): "
              f"/query/collection p50 {statistics.median(http_times[3:]) * 1000:.1f} ms "
              f"(incl. query embedding), FAISS alone p50 {statistics.median(faiss_times) * 1000:.2f} ms")
    finally:
        server.stop()
        backend.stop()


if __name__ == "__main__":
    main()
