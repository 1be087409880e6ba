"""Which gunicorn worker class and thread count: measured with the fake backend streaming a token per 50 ms.

For each server shape (sync vs gthread, threads per worker) it starts real gunicorn with gunicorn.conf.py and
measures:
  streams   N clients open a streamed /ollama/api/generate at once (20 tokens x 50 ms ~ 1 s each): wall time
            for all of them, the worst time to first token, and the peak number of streams in flight.
  short     C clients call GET /api/v1/auths/ (API-key auth, one SQLite read) as fast as they can for a few
            seconds: requests per second, p50 and p99 latency.
  mixed     the same short requests while N streams are open: does a health check wait behind generations?

    .venv/bin/python bench/workers_threads.py [--workers 2] [--streams 32] [--shapes sync:1,gthread:4,...]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_backend import FakeBackend  # noqa: E402
from tests.servers import Gunicorn  # noqa: E402

TOKEN_DELAY = 0.05
GENERATE = {"model": "llama3.2", "prompt": "why is the sky blue today", "stream": True,
            "options": {"num_predict": 20}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def one_stream(url: str, headers: dict, out: list, lock: threading.Lock) -> None:
    started = time.perf_counter()
    first = None
    with requests.post(url + "/ollama/api/generate", json=GENERATE, headers=headers, stream=True,
                       timeout=120) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line and first is None:
                first = time.perf_counter()
    with lock:
        out.append((started, first, time.perf_counter()))


def streams(url: str, headers: dict, n: int) -> dict:
    out: list = []
    lock = threading.Lock()
    threads = [threading.Thread(target=one_stream, args=(url, headers, out, lock)) for _ in range(n)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    events = sorted([(s, 1) for s, _f, _e in out] + [(e, -1) for _s, _f, e in out])
    peak = level = 0
    for _t, step in events:
        level += step
        peak = max(peak, level)
    # "in flight" = received its first token and not finished: the streams really being served at once
    served = sorted([(f, 1) for _s, f, _e in out] + [(e, -1) for _s, _f, e in out])
    peak_served = level = 0
    for _t, step in served:
        level += step
        peak_served = max(peak_served, level)
    return {"wall": wall, "ttft_max": max(f - s for s, f, _e in out), "peak": peak_served}


def short_requests(url: str, headers: dict, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client():
        mine = []
        with requests.Session() as session:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                session.get(url + "/api/v1/auths/", headers=headers, timeout=120).raise_for_status()
                mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return {"rps": len(latencies) / elapsed, "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99)}


def mixed(url: str, headers: dict, n_streams: int) -> dict:
    """Short requests, one client, while n streams are being generated."""
    background = threading.Thread(target=streams, args=(url, headers, n_streams))
    background.start()
    time.sleep(0.3)  # let the streams take their seats
    latencies = []
    with requests.Session() as session:
        while background.is_alive() and len(latencies) < 200:
            started = time.perf_counter()
            session.get(url + "/api/v1/auths/", headers=headers, timeout=120).raise_for_status()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
    background.join()
    return {"p50": percentile(latencies, 0.5), "max": max(latencies) if latencies else float("nan"),
            "n": len(latencies)}


def api_key(url: str) -> dict:
    body = {"name": "Bench", "email": "bench@example.com", "password": "bench-password-123"}
    token = requests.post(url + "/api/v1/auths/signup", json=body, timeout=30).json()["token"]
    key = requests.post(url + "/api/v1/auths/api_key", headers={"Authorization": f"Bearer {token}"},
                        timeout=30).json()["api_key"]
    return {"Authorization": f"Bearer {key}"}


def run_shape(backend: FakeBackend, worker_class: str, threads: int, connections: str, workers: int,
              n_streams: int, clients: int, seconds: float) -> dict:
    data_dir = tempfile.mkdtemp(prefix="bench-workers-")
    env = {"DATA_DIR": data_dir, "OLLAMA_BASE_URLS": backend.url, "OPENAI_API_BASE_URLS": "",
           "GUNICORN_WORKER_CLASS": worker_class, "MODELS_CACHE_TTL": "300", "LOG_LEVEL": "warning",
           "GUNICORN_TIMEOUT": "120"}
    if connections:
        env["GUNICORN_WORKER_CONNECTIONS"] = connections
    server = Gunicorn(env, workers=workers, threads=threads, log_path=os.path.join(data_dir, "gunicorn.log"))
    server.start()
    try:
        headers = api_key(server.url)
        requests.get(server.url + "/ollama/api/tags", headers=headers, timeout=30)  # warm the model cache
        return {"streams": streams(server.url, headers, n_streams),
                "short": short_requests(server.url, headers, clients, seconds),
                "mixed": mixed(server.url, headers, n_streams)}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--streams", type=int, default=32, help="concurrent streams")
    parser.add_argument("--clients", type=int, default=16, help="concurrent short-request clients")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of the short-request run")
    parser.add_argument("--shapes", default="sync:1,gthread:4:1000,gthread:4,gthread:16:1000,gthread:16,"
                                            "gthread:32:1000,gthread:32",
                        help="comma-separated worker_class:threads[:worker_connections] "
                             "(without: gunicorn.conf.py's default, threads + max(4, threads // 4))")
    args = parser.parse_args()
    backend = FakeBackend()
    backend.token_delay = TOKEN_DELAY
    print(f"{os.cpu_count()} CPUs; {args.workers} workers; streams: {args.streams} x 20 tokens x "
          f"{TOKEN_DELAY * 1000:.0f} ms (~1 s each); short: {args.clients} clients x {args.seconds:g} s of "
          f"GET /api/v1/auths/ (API key)")
    print(f"{'shape':18} {'streams wall':>12} {'max TTFT':>9} {'in flight':>9} | {'short rps':>9} {'p50':>7} "
          f"{'p99':>7} | {'short during streams p50':>24} {'max':>7}")
    try:
        for shape in args.shapes.split(","):
            worker_class, threads, connections = (shape.split(":") + [""])[:3]
            r = run_shape(backend, worker_class, int(threads), connections, args.workers, args.streams,
                          args.clients, args.seconds)
            default = int(threads) + max(4, int(threads) // 4)
            label = f"{worker_class} x{threads}"
            label += "" if worker_class == "sync" else f" c{connections or default}"
            s, q, m = r["streams"], r["short"], r["mixed"]
            print(f"{label:18} {s['wall']:11.2f}s {s['ttft_max']:8.2f}s {s['peak']:9d} | "
                  f"{q['rps']:9.0f} {q['p50'] * 1000:6.1f}ms {q['p99'] * 1000:6.1f}ms | "
                  f"{m['p50'] * 1000:23.1f}ms {m['max'] * 1000:6.0f}ms", flush=True)
    finally:
        backend.stop()


if __name__ == "__main__":
    main()
