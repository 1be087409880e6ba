"""Per-request overhead of the gateway versus calling the fake backend directly (chat, plain and streamed).

Starts the fake Ollama/OpenAI backend from tests/fake_backend.py and the gateway under real gunicorn
(tests/servers.py; falls back to a werkzeug threaded server if gunicorn cannot start), then for each backend
kind sends N identical non-stream chat requests straight to the backend and N through
`/api/chat/completions`, and the same for time-to-first-token of a stream. Prints p50/p95 and the difference.

    .venv/bin/python bench/gateway_overhead.py [-n 200] [--server gunicorn|werkzeug]
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

QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def timed_post(session: requests.Session, url: str, body: dict, headers: dict, stream: bool) -> float:
    """Seconds until the whole reply (non-stream) or its first data line (stream) arrived."""
    started = time.perf_counter()
    with session.post(url, json=body, headers=headers, stream=stream, timeout=30) as response:
        response.raise_for_status()
        if stream:
            elapsed = None
            for line in response.iter_lines(chunk_size=None):  # one iterator: read to the end (keep-alive)
                if elapsed is None and (line.startswith(b"data: ") or line.startswith(b"{")):
                    elapsed = time.perf_counter() - started
            if elapsed is None:
                raise RuntimeError("stream ended without data")
            return elapsed
        response.content  # noqa: B018  (read the whole body)
    return time.perf_counter() - started


def measure(session, url, body, headers, stream, n) -> list[float]:
    for _ in range(5):  # warm-up: connections, model registry cache, first-request imports
        timed_post(session, url, body, headers, stream)
    return [timed_post(session, url, body, headers, stream) for _ in range(n)]


class WerkzeugServer:
    def __init__(self, env: dict):
        from werkzeug.serving import make_server

        from webui_api import create_app

        config = {k: v for k, v in env.items() if k.isupper()}
        self.server = make_server("127.0.0.1", 0, create_app(config), threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()


def start_gateway(kind: str, env: dict):
    if kind == "gunicorn":
        try:
            from tests.servers import Gunicorn

            server = Gunicorn(env, workers=2, threads=8, log_path=os.path.join(env["DATA_DIR"], "gunicorn.log"))
            return server.start(), "gunicorn (gthread, 2 workers x 8 threads)"
        except Exception as exc:  # no gunicorn here: say so and measure the threaded dev server instead
            print(f"gunicorn could not start ({exc}); falling back to werkzeug", file=sys.stderr)
    return WerkzeugServer(env).start(), "werkzeug threaded server (in-process)"


def signup(url: str) -> dict:
    body = {"name": "Bench", "email": "bench@example.com", "password": "bench-password-123"}
    response = requests.post(f"{url}/api/v1/auths/signup", json=body, timeout=30)
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['token']}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="requests per measurement")
    parser.add_argument("--server", choices=["gunicorn", "werkzeug"], default="gunicorn")
    args = parser.parse_args()

    backend = FakeBackend()
    data_dir = tempfile.mkdtemp(prefix="bench-gateway-")
    env = {"DATA_DIR": data_dir, "OLLAMA_BASE_URLS": backend.url, "OPENAI_API_BASE_URLS": backend.openai_url,
           "OPENAI_API_KEYS": backend.openai_key, "MODELS_CACHE_TTL": "300", "PASSWORD_HASH_COST": "1024",
           "LOG_LEVEL": "warning"}
    server, label = start_gateway(args.server, env)
    try:
        headers = signup(server.url)
        print(f"gateway: {label}; backend: tests/fake_backend.py (no token delay); n={args.n} per row")
        print(f"{'measurement':44} {'direct p50':>10} {'p95':>8} {'gateway p50':>12} {'p95':>8} "
              f"{'overhead p50':>13} {'p95':>8}")
        direct = {"ollama": (backend.url + "/api/chat", {}),
                  "openai": (backend.openai_url + "/chat/completions",
                             {"Authorization": f"Bearer {backend.openai_key}"})}
        models = {"ollama": "llama3.2:latest", "openai": "gpt-4o-mini"}
        session = requests.Session()
        for kind in ("ollama", "openai"):
            for stream in (False, True):
                body = {"model": models[kind], "messages": QUESTION, "stream": stream}
                url, direct_headers = direct[kind]
                plain = measure(session, url, body, direct_headers, stream, args.n)
                via = measure(session, server.url + "/api/chat/completions", body, headers, stream, args.n)
                name = f"{kind} chat, {'time to first token' if stream else 'full reply (non-stream)'}"
                row = [percentile(v, q) * 1000 for v in (plain, via) for q in (0.5, 0.95)]
                print(f"{name:44} {row[0]:9.2f}ms {row[1]:7.2f}ms {row[2]:11.2f}ms {row[3]:7.2f}ms "
                      f"{row[2] - row[0]:12.2f}ms {row[3] - row[1]:7.2f}ms")
        print("overhead = gateway minus direct (auth, model resolution, body conversion, a second HTTP hop)")
    finally:
        server.stop()
        backend.stop()


if __name__ == "__main__":
    main()
