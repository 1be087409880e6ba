"""Lists at scale: 10,000 files in one collection, each list route timed for one page through gunicorn.

Inserts the file rows (about 1.5 KB of extracted text each, like small documents) and their collection
links in bulk through the project's models, starts gunicorn (2 workers), then calls every list route in
turn, round after round, and prints the median and p95 latency and the body size of each. Target: a page
in at most 100 ms.

    .venv/bin/python bench/list_scale.py [--files 10000] [--rounds 30] [--data DIR]
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import peewee as pw
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rag_scale import ADMIN, bind, server_env  # noqa: E402
from tests.servers import BIN, free_port  # noqa: E402

TEXT = "A paragraph of an ordinary document, long enough to be worth searching for later on. " * 18
TARGET_MS = 100


def seed(data_dir: str, count: int) -> str:
    """A collection of `count` processed files owned by the bench admin; returns its id."""
    from webui_api import db
    from webui_api.auth import accounts
    from webui_api.db import File, Knowledge, KnowledgeFile

    services = bind(data_dir)
    owner = accounts.add_user(services.settings, "Bench", ADMIN["email"], ADMIN["password"], "admin")
    kid, stamp = db.new_id(), db.now()
    files = [{"id": db.new_id(), "user": owner.id, "filename": f"doc-{n:05d}.txt", "storage_name": "absent",
              "content_type": "text/plain", "size": len(TEXT), "file_hash": f"bytes-{n}",
              "text_hash": f"text-{n}", "content": f"{TEXT}{n}", "status": "completed", "meta": {},
              "created_at": stamp, "updated_at": stamp} for n in range(count)]
    with db.write_transaction():
        Knowledge.create(id=kid, user=owner.id, name="ten thousand files")
        for batch in pw.chunked(files, 500):
            File.insert_many(batch).execute()
        for batch in pw.chunked([{"knowledge": kid, "file": f["id"]} for f in files], 500):
            KnowledgeFile.insert_many(batch).execute()
    db.database.close()
    return kid


def start(data_dir: str) -> tuple[subprocess.Popen, str, dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **server_env(data_dir, "http://127.0.0.1:9"), "HOST": "127.0.0.1", "PORT": str(port)}
    log = open(os.path.join(data_dir, "gunicorn.log"), "ab")
    proc = subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            token = requests.post(url + "/api/v1/auths/signin", json=ADMIN, timeout=30).json()["token"]
            return proc, url, {"Authorization": f"Bearer {token}"}
        except (requests.ConnectionError, KeyError, ValueError):
            time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer; see {data_dir}/gunicorn.log")


def routes(kid: str, count: int) -> list[tuple[str, str, str]]:
    last_member, last_file = -(-count // 30), -(-count // 50)
    return [
        ("GET", "/api/v1/knowledge/", "GET /knowledge/"),
        ("GET", f"/api/v1/knowledge/{kid}", "GET /knowledge/{id}"),
        ("GET", f"/api/v1/knowledge/{kid}/files", "GET /knowledge/{id}/files"),
        ("GET", f"/api/v1/knowledge/{kid}/files?page={last_member}", f"  … ?page={last_member} (last)"),
        ("GET", f"/api/v1/knowledge/{kid}/files?order_by=name&direction=asc", "  … ?order_by=name"),
        ("GET", f"/api/v1/knowledge/{kid}/files?query=doc-0999", "  … ?query=doc-0999"),
        ("GET", "/api/v1/files/", "GET /files/"),
        ("GET", f"/api/v1/files/?page={last_file}", f"  … ?page={last_file} (last)"),
        ("GET", "/api/v1/files/?content=true", "  … ?content=true"),
        ("POST", f"/api/v1/knowledge/{kid}/update", "POST /knowledge/{id}/update"),
    ]


def measure(url: str, headers: dict, calls: list, rounds: int) -> dict:
    session = requests.Session()
    times = {label: [] for _, _, label in calls}
    sizes = {}
    for _ in range(rounds + 1):  # the first round warms the workers and is dropped
        for method, path, label in calls:
            started = time.perf_counter()
            response = session.request(method, url + path, headers=headers, timeout=120,
                                       json={"description": "benched"} if method == "POST" else None)
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            times[label].append(elapsed)
            sizes[label] = len(response.content)
    return {label: (statistics.median(t[1:]), sorted(t[1:])[int(0.95 * (len(t) - 2))], sizes[label])
            for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--data", default=None, help="data directory (default: a new temporary one)")
    args = parser.parse_args()
    data_dir = args.data or tempfile.mkdtemp(prefix="list-scale-")
    kid = seed(data_dir, args.files)
    proc, url, headers = start(data_dir)
    try:
        results = measure(url, headers, routes(kid, args.files), args.rounds)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    print(f"\n{args.files} files in one collection, gunicorn 2 workers, {args.rounds} rounds "
          f"(target ≤ {TARGET_MS} ms a page)\n")
    print("| route (one page) | p50 ms | p95 ms | body KB |\n|---|---:|---:|---:|")
    for label, (p50, p95, size) in results.items():
        print(f"| {label} | {p50:.1f} | {p95:.1f} | {size / 1024:.1f} |")


if __name__ == "__main__":
    main()
