"""Two hosts on one PostgreSQL database: cold vs warm cache, cross-host visibility, throughput 1 vs 2 hosts.

Starts a throwaway PostgreSQL cluster (tests/pgcluster.py), the fake LLM backend, two gunicorn hosts with
their own DATA_DIR and a shared UPLOAD_DIR, and nginx round-robin in front; prints tables.

    .venv/bin/python bench/multi_host.py [--files 60] [--seconds 8] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import pgcluster  # noqa: E402
from tests.fake_backend import FakeBackend  # noqa: E402
from tests.servers import Gunicorn, Nginx  # noqa: E402

SECRET = "bench-multi-host-secret-0123456789abcdef0123456789"
WORDS = "glacier fjord tundra moraine basalt delta estuary lagoon atoll plateau canyon mesa dune".split()


def document(i: int) -> str:
    return "\n\n".join(f"Survey {i}-{p}: the {WORDS[(i + p) % len(WORDS)]} near station s{i}p{p} was "
                       f"mapped in season {p} with {i * p % 97} markers." for p in range(40))


def call(base, method, path, token=None, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, base + path, headers=headers, timeout=120, **kwargs)


def hits(base, token, collection, query) -> str:
    response = call(base, "POST", "/api/v1/retrieval/query/doc", token,
                    json={"collection_name": collection, "query": query, "k": 5})
    return " ".join(response.json()["documents"][0]) if response.status_code == 200 else ""


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def start_host(env: dict, name: str, base: Path) -> Gunicorn:
    env = {**env, "DATA_DIR": str(base / name)}
    os.makedirs(env["DATA_DIR"], exist_ok=True)
    return Gunicorn(env, workers=2, threads=8, log_path=str(base / f"{name}.log")).start()


def seed(host, token, files: int) -> str:
    kid = call(host.url, "POST", "/api/v1/knowledge/create", token, json={"name": "bench"}).json()["id"]
    for i in range(files):
        file = call(host.url, "POST", "/api/v1/files/", token,
                    files={"file": (f"s{i}.txt", document(i).encode(), "text/plain")}).json()
        call(host.url, "POST", f"/api/v1/knowledge/{kid}/file/add", token, json={"file_id": file["id"]})
    return kid


def cold_and_warm(base: Path, env: dict, token: str, kid: str, repeats: int) -> tuple[list, list]:
    """A host started on an empty DATA_DIR: its first query (fills the cache from the database) vs later."""
    cold, warm = [], []
    for r in range(repeats):
        host = start_host(env, f"cold{r}", base)
        cold.append(timed(lambda: hits(host.url, token, kid, "glacier station markers")))
        warm += [timed(lambda: hits(host.url, token, kid, f"{WORDS[i % 13]} markers")) for i in range(30)]
        host.stop()
        shutil.rmtree(base / f"cold{r}", ignore_errors=True)
    return cold, warm


def visibility(a, b, token, kid: str, rounds: int) -> tuple[list, list]:
    """ms from the writer's 200 to the first query on the other host that finds the write."""
    upload_delay, link_delay = [], []
    for i in range(rounds):
        marker = f"zq{i}x{os.getpid()}"
        file = call(a.url, "POST", "/api/v1/files/", token,
                    files={"file": (f"v{i}.txt", f"The {marker} beacon blinks twice.".encode(), "text/plain")}).json()
        upload_delay.append(_until_found(b, token, f"file-{file['id']}", marker))
        call(b.url, "POST", f"/api/v1/knowledge/{kid}/file/add", token, json={"file_id": file["id"]})
        link_delay.append(_until_found(a, token, kid, marker))
    return upload_delay, link_delay


FIRST_QUERY_FOUND = []  # whether the very first query on the other host already found the write


def _until_found(host, token, collection, marker) -> float:
    start, attempts = time.perf_counter(), 0
    while marker not in hits(host.url, token, collection, f"{marker} beacon"):
        attempts += 1
        if time.perf_counter() - start > 10:
            return float("inf")
    FIRST_QUERY_FOUND.append(attempts == 0)
    return (time.perf_counter() - start) * 1000


def throughput(url: str, token: str, body_of, path: str, seconds: float, clients: int = 16) -> tuple:
    done, latencies, stop = [0], [], threading.Event()
    lock = threading.Lock()

    def client(n):
        session = requests.Session()
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            response = session.post(url + path, headers={"Authorization": f"Bearer {token}"},
                                    json=body_of(n, i), timeout=60)
            with lock:
                if response.status_code == 200:
                    done[0] += 1
                    latencies.append((time.perf_counter() - t) * 1000)
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return done[0] / seconds, statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    reason = pgcluster.available()
    if reason:
        sys.exit(reason)
    base = Path(tempfile.mkdtemp(prefix="multi-host-"))
    backend = FakeBackend()
    url = pgcluster.cluster().new_database()
    env = {"DATABASE_URL": url, "WEBUI_SECRET_KEY": SECRET, "UPLOAD_DIR": str(base / "uploads"),
           "OLLAMA_BASE_URLS": backend.url, "OPENAI_API_BASE_URLS": "", "RAG_EMBEDDING_MODEL": "nomic-embed-text",
           "CHUNK_SIZE": "200", "CHUNK_OVERLAP": "20", "LOG_LEVEL": "WARNING"}
    a, b = start_host(env, "a", base), start_host(env, "b", base)
    try:
        token = call(a.url, "POST", "/api/v1/auths/signup",
                     json={"name": "B", "email": "bench@example.com", "password": "bench-pw"}).json()["token"]
        kid = seed(a, token, args.files)
        print(f"collection: {args.files} files (~{args.files * 40} chunks), fake embeddings, "
              f"2 hosts × 2 workers × 8 threads, one 2-core machine\n")
        cold, warm = cold_and_warm(base, env, token, kid, args.repeats)
        up, link = visibility(a, b, token, kid, 20)
        print("| measure | p50 ms | max ms | n |\n|---|---|---|---|")
        for label, xs in (("query, cold cache (empty DATA_DIR, first query)", cold),
                          ("query, warm cache", warm),
                          ("upload on A → found by a query on B", up),
                          ("file/add on B → found by a query on A", link)):
            print(f"| {label} | {statistics.median(xs):.1f} | {max(xs):.1f} | {len(xs)} |")
        print(f"\nthe first query on the other host found the write in {sum(FIRST_QUERY_FOUND)} of "
              f"{len(FIRST_QUERY_FOUND)} cases (the times above are that query's round trip)")
        chat = lambda n, i: {"model": "llama3.2:latest", "messages": [{"role": "user", "content": f"hi {i}"}]}
        query = lambda n, i: {"collection_name": kid, "query": f"{WORDS[(n + i) % 13]} station", "k": 5}
        rows = {}
        for r in range(args.repeats):  # interleaved: 1 host, 2 hosts, 1 host, ...
            for count in (1, 2):
                nginx = Nginx([h.port for h in (a, b)][:count], base / f"nginx{r}{count}").start()
                for name, body, path in (("chat", chat, "/api/chat/completions"),
                                         ("retrieval", query, "/api/v1/retrieval/query/doc")):
                    rows.setdefault((name, count), []).append(
                        throughput(nginx.url, token, body, path, args.seconds))
                nginx.stop()
        print("\n| through nginx, 16 clients | hosts | req/s (median) | p50 ms |\n|---|---|---|---|")
        for (name, count), runs in sorted(rows.items()):
            print(f"| {name} | {count} | {statistics.median(r[0] for r in runs):.0f} | "
                  f"{statistics.median(r[1] for r in runs):.1f} |")
    finally:
        a.stop()
        b.stop()
        backend.stop()
        pgcluster.cluster().drop_database(url)
        pgcluster.shutdown()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
