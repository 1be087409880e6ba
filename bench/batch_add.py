"""Batch add at scale: 10,000 already-processed files into one knowledge collection through gunicorn.

The files are made fast, without an embedding backend: their rows and chunk rows (random unit vectors,
384 dims, `--chunks` a file) are inserted in bulk through the project's models and the pipeline's chunk
columns (db.insert_rows, as the pipeline writes them), so they are exactly what processing leaves behind.
Then gunicorn (2 workers) answers POST /api/v1/knowledge/{id}/files/batch/add: all files in one request,
the same request again (all present), and the same files into a second collection 1,000 a request; the
table counts the index segments and vectors each collection holds afterwards. Target: 10,000 files in ≤ 10 s.

    .venv/bin/python bench/batch_add.py [--files 10000] [--chunks 1] [--postgres]
"""
from __future__ import annotations

import argparse
import os
import sys
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.list_scale import start  # noqa: E402
from bench.rag_scale import ADMIN, DIM, MODEL, server_env  # noqa: E402

TARGET_S = 10.0
PER_REQUEST = 1000


def bind(data_dir: str):
    """The services of a process pointed at the server's DATA_DIR and database (as the server sees them)."""
    from webui_api import db
    from webui_api.config import Settings
    from webui_api.services import build_services

    os.environ.update(server_env(data_dir, "http://127.0.0.1:9"))
    settings = Settings.from_env()
    db.init_database(settings.DATABASE_URL, 2)
    return build_services(settings)


def seed(data_dir: str, count: int, chunks: int) -> tuple[list[str], object]:
    """`count` completed files of the bench admin with `chunks` chunk rows each; returns their ids and the
    vector store (to count segments)."""
    from webui_api import db
    from webui_api.auth import accounts
    from webui_api.db import Chunk, File
    from webui_api.rag import pipeline

    services = bind(data_dir)
    owner = accounts.add_user(services.settings, "Bench", ADMIN["email"], ADMIN["password"], "admin")
    rng, stamp = np.random.default_rng(0), db.now()
    files = [{"id": db.new_id(), "user": owner.id, "filename": f"doc-{n:05d}.txt", "storage_name": "absent",
              "content_type": "text/plain", "size": 40, "file_hash": f"bytes-{n}", "dedup_key": f"bytes-{n}",
              "text_hash": f"text-{n}", "content": f"document {n}", "status": "completed", "meta": {},
              "created_at": stamp, "updated_at": stamp} for n in range(count)]
    vectors = rng.standard_normal((count * chunks, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [(f["id"], seq, f"document {n} part {seq}", 0, 10, vectors[n * chunks + seq].tobytes(), DIM, MODEL)
            for n, f in enumerate(files) for seq in range(chunks)]
    started = time.perf_counter()
    with db.write_transaction():
        for start_at in range(0, count, 500):
            File.insert_many(files[start_at:start_at + 500]).execute()
        db.insert_rows(Chunk, pipeline._CHUNK_COLUMNS, rows)
    print(f"seeded {count:,} files, {len(rows):,} chunks in {time.perf_counter() - started:.1f} s", flush=True)
    db.database.close()
    return [f["id"] for f in files], services.vectors


def batch_add(url: str, headers: dict, kid: str, ids: list[str]) -> float:
    started = time.perf_counter()
    response = requests.post(f"{url}/api/v1/knowledge/{kid}/files/batch/add", headers=headers, timeout=600,
                             json=[{"file_id": i} for i in ids])
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    failed = [r for r in response.json()["results"] if r["status"] != "completed"]
    if failed:
        raise RuntimeError(f"{len(failed)} files failed, e.g. {failed[0]}")
    return elapsed


def collection(url: str, headers: dict, name: str) -> str:
    response = requests.post(f"{url}/api/v1/knowledge/create", headers=headers, json={"name": name}, timeout=60)
    response.raise_for_status()
    return response.json()["id"]


def runs(url: str, headers: dict, ids: list[str], store) -> list[tuple]:
    rows = []
    one = collection(url, headers, "one request")
    seconds = batch_add(url, headers, one, ids)
    rows.append(("all in one request", 1, seconds, store.segment_counts(one)[0], store.count(one)))
    seconds = batch_add(url, headers, one, ids)
    rows.append(("  … again (all already in)", 1, seconds, store.segment_counts(one)[0], store.count(one)))
    many = collection(url, headers, "in parts")
    started = time.perf_counter()
    for start_at in range(0, len(ids), PER_REQUEST):
        batch_add(url, headers, many, ids[start_at:start_at + PER_REQUEST])
    seconds = time.perf_counter() - started
    rows.append((f"{PER_REQUEST:,} a request", -(-len(ids) // PER_REQUEST), seconds,
                 store.segment_counts(many)[0], store.count(many)))
    return rows


def postgres_url() -> str:
    from tests import pgcluster  # stopped at exit by its own atexit hook

    reason = pgcluster.available()
    if reason:
        sys.exit(reason)
    return pgcluster.cluster().new_database()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--chunks", type=int, default=1, help="chunks (vectors) a file")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL cluster (tests/pgcluster.py)")
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="batch-add-")
    if args.postgres:
        os.environ["DATABASE_URL"] = postgres_url()
        os.environ.setdefault("WEBUI_SECRET_KEY", "batch-add-bench")  # required with a shared database
    ids, store = seed(data_dir, args.files, args.chunks)
    proc, url, headers = start(data_dir)
    try:
        results = runs(url, headers, ids, store)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    engine = "PostgreSQL" if args.postgres else "SQLite"
    print(f"\n{args.files:,} processed files ({args.chunks} chunk each) into one collection, {engine}, gunicorn "
          f"2 workers (target ≤ {TARGET_S:.0f} s)\n")
    print("| batch add | requests | seconds | files/s | index segments | vectors |\n|---|---:|---:|---:|---:|---:|")
    for label, requests_made, seconds, segments, vectors in results:
        print(f"| {label} | {requests_made} | {seconds:.2f} | {args.files / seconds:,.0f} | {segments} | "
              f"{vectors:,} |")


if __name__ == "__main__":
    main()
