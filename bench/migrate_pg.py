"""`webui-api migrate-to-postgres` timed on a SQLite deployment of --chunks chunks.

Builds the source in a temporary DATA_DIR: a few real uploads through the app (fake Ollama backend from
tests/fake_backend.py, so their vectors and text are real pipeline output), then --files files holding
--chunks chunks of random 384-dimension float32 vectors inserted directly through db.insert_rows. Creates
an empty mig_bench_* database on the PostgreSQL server of --admin-url, runs the real command as a
subprocess, prints its verification table and the elapsed time, and drops the database.

    .venv/bin/python bench/migrate_pg.py [--chunks 20000] [--files 200] \
        [--admin-url postgresql://user@host:port/postgres]   (default: a throwaway cluster)
"""
from __future__ import annotations

import argparse
import io
import logging
import resource
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import fake_backend as fake  # noqa: E402

DIM = 384
REAL_UPLOADS = 5


def build_source(data_dir: str, files: int, chunks: int) -> None:
    """The app's own schema and a few real uploads, then synthetic files and chunks in bulk."""
    from webui_api import create_app, db
    from webui_api.auth import accounts

    backend = fake.FakeBackend()
    app = create_app({"DATA_DIR": data_dir, "OLLAMA_BASE_URLS": backend.url, "OPENAI_API_BASE_URLS": "",
                      "RAG_EMBEDDING_MODEL": "nomic-embed-text", "PASSWORD_HASH_COST": 1024,
                      "WEBUI_SECRET_KEY": "bench-secret"})
    try:
        ext = app.extensions["webui_api"]
        owner = accounts.add_user(ext.settings, "Bench", "bench@example.com", "correct horse battery", "admin")
        headers = {"Authorization": f"Bearer {accounts.issue_session(ext.settings, owner).token}"}
        client = app.test_client()
        kb = client.post("/api/v1/knowledge/create", headers=headers, json={"name": "Reports"}).get_json()
        for i in range(REAL_UPLOADS):
            text = f"Report {i}.\n\n" + " ".join(f"River {i} passes mill {j}." for j in range(400))
            response = client.post("/api/v1/files/", headers=headers, content_type="multipart/form-data",
                                   data={"file": (io.BytesIO(text.encode()), f"r{i}.txt")})
            assert response.status_code == 200, response.get_json()
            ok(client.post(f"/api/v1/knowledge/{kb['id']}/file/add", headers=headers,
                           json={"file_id": response.get_json()["id"]}))
        ok(client.post("/api/v1/auths/api_key", headers=headers))
        ok(client.post("/api/v1/models/create", headers=headers, json={
            "id": "reports-bot", "base_model_id": "llama3.2:latest", "name": "Reports", "meta": {},
            "params": {}}))
        insert_synthetic(owner.id, files, chunks)
        ext.jobs.drain(30)
    finally:
        app.extensions["webui_api"].close()
        backend.stop()
        db.close_database()


def ok(response) -> None:
    assert response.status_code == 200, response.get_json()


def insert_synthetic(owner_id: str, files: int, chunks: int) -> None:
    from webui_api import db

    rng = np.random.default_rng(7)
    per_file = -(-chunks // files)
    with db.database.connection_context(), db.write_transaction():
        file_ids = [db.new_id() for _ in range(files)]
        db.insert_rows(db.File, ["id", "user", "filename", "storage_name", "size", "file_hash", "content",
                                 "status", "meta", "content_type", "created_at", "updated_at"],
                       [(fid, owner_id, f"synthetic-{n}.txt", fid, 0, f"{n:064x}", "", "completed",
                         {"synthetic": True}, "text/plain", db.now(), db.now()) for n, fid in enumerate(file_ids)])
        left = chunks
        for fid in file_ids:
            count = min(per_file, left)
            vectors = rng.standard_normal((count, DIM), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            db.insert_rows(db.Chunk, ["file", "seq", "text", "start", "end", "vector", "dim", "model"],
                           [(fid, seq, f"synthetic chunk {seq} of {fid}", 0, 0, vectors[seq].tobytes(), DIM,
                             "synthetic") for seq in range(count)])
            left -= count


def create_database(admin_url: str) -> str:
    import psycopg2

    name = f"mig_bench_{uuid.uuid4().hex[:8]}"
    server = psycopg2.connect(admin_url)
    server.autocommit = True
    server.cursor().execute(f'CREATE DATABASE "{name}"')
    server.close()
    return urlsplit(admin_url)._replace(path=f"/{name}").geturl()


def drop_database(admin_url: str, url: str) -> None:
    import psycopg2

    server = psycopg2.connect(admin_url)
    server.autocommit = True
    server.cursor().execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')
    server.close()


def _throwaway_cluster() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests import pgcluster  # stopped at exit by its own atexit hook

    reason = pgcluster.available()
    if reason:
        sys.exit(reason)
    return pgcluster.cluster().url("postgres")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=20_000, help="synthetic chunks (plus the real uploads')")
    parser.add_argument("--files", type=int, default=200, help="synthetic files holding them")
    parser.add_argument("--admin-url", default=os.environ.get("WEBUI_TEST_POSTGRES_ADMIN_URL"),
                        help="a PostgreSQL server to use (default: a throwaway cluster, tests/pgcluster.py)")
    args = parser.parse_args()
    args.admin_url = args.admin_url or _throwaway_cluster()
    logging.getLogger("webui_api").setLevel(logging.WARNING)
    data_dir = tempfile.mkdtemp(prefix="migrate-bench-")
    target = create_database(args.admin_url)
    try:
        started = time.perf_counter()
        build_source(data_dir, args.files, args.chunks)
        source = f"sqlite:///{data_dir}/webui.db"
        size = os.path.getsize(f"{data_dir}/webui.db")
        print(f"source: {size / 1e6:.1f} MB SQLite file built in {time.perf_counter() - started:.1f} s")
        command = [str(Path(sys.executable).parent / "webui-api"), "migrate-to-postgres", "--from", source,
                   "--to", target]
        print("$ " + " ".join(command))
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        print(result.stdout, end="")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"exit {result.returncode}; wall time of the whole command (start-up, schema, copy, "
              f"verification): {elapsed:.1f} s; peak RSS {peak:.0f} MB")
        if result.returncode:
            print(result.stderr[-2000:], file=sys.stderr)
        print(f"$ {' '.join(command)} --verify-only")
        started = time.perf_counter()
        verify = subprocess.run(command + ["--verify-only"], capture_output=True, text=True)
        print(f"exit {verify.returncode}; verification alone: {time.perf_counter() - started:.1f} s")
    finally:
        drop_database(args.admin_url, target)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
