"""Soak: N minutes of mixed traffic against gunicorn (4 gthread workers), then kill -9 of the whole server.

Starts the fake backend (tests/fake_backend.py, a real HTTP server in this process) and gunicorn with
gunicorn.conf.py (tests/servers.py's Gunicorn helper) on SQLite in a temp DATA_DIR, or on PostgreSQL
(`--database-url URL`, or `--postgres` for a throwaway cluster from tests/pgcluster.py). 32 client threads,
each signed in as one of 8 users, loop over a weighted mix: chat (`/api/chat/completions`, `/ollama/api/chat`,
streamed and not), model lists, uploads (distinct text files, each with a unique marker word), retrieval
queries, knowledge edits (create, update, file add/remove, delete) and sign-ins. Every 10 s a row: elapsed,
requests, per-status counts, 5xx, and per-worker RSS (MB) / threads / open fds from /proc.

At the end, mid-traffic, the whole server (master and workers) gets SIGKILL; it is restarted, `webui-api check`
runs (its exit code is printed), and every upload that was acknowledged (200) is looked up by its marker word
in its file collection: acknowledged / found / lost. Summary: each worker's RSS at 10 %, 50 % and 100 % of the
run (minutes 1, 5, 10 of the default run) and whether it stayed within 10 % from the middle to the end.

    .venv/bin/python bench/soak.py [--minutes 10] [--clients 32] [--workers 4] [--database-url URL | --postgres]
"""
from __future__ import annotations

import argparse
import collections
import itertools
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import engine  # noqa: E402
from tests.fake_backend import FakeBackend  # noqa: E402
from tests.servers import BIN, Gunicorn  # noqa: E402

USERS = 8
PASSWORD = "soak-password-123"
CHAT_MODEL = "llama3.2:latest"
WORDS = ("harbour ledger cargo crate quay tide anchor signal lantern compass rope sail barrel manifest storm "
         "gull pier voyage keel rudder mast chart beacon reef current fathom galley hatch hull").split()
# (operation, weight): roughly what a busy Open WebUI front end sends
MIX = (("chat", 14), ("chat_stream", 14), ("ollama_chat", 8), ("ollama_chat_stream", 8), ("models", 10),
       ("upload", 10), ("retrieve", 14), ("knowledge", 14), ("signin", 4), ("lists", 4))


class Tally:
    """Request counts by status (exceptions count as "err"), shared by every client thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.statuses: collections.Counter = collections.Counter()

    def add(self, status) -> None:
        with self.lock:
            self.statuses[status] += 1

    def snapshot(self) -> collections.Counter:
        with self.lock:
            return collections.Counter(self.statuses)


class Uploads:
    """Acknowledged uploads: (file id, marker word, owner index)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acknowledged: list[tuple[str, str, int]] = []
        self.counter = itertools.count()

    def add(self, file_id: str, marker: str, owner: int) -> None:
        with self.lock:
            self.acknowledged.append((file_id, marker, owner))

    def pick(self, rng: random.Random, owner: int):
        with self.lock:
            mine = [u for u in self.acknowledged[-400:] if u[2] == owner]
        return rng.choice(mine) if mine else None


def document(marker: str, rng: random.Random) -> bytes:
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(6)]
    lines.insert(rng.randrange(len(lines)), f"The marker of this note is {marker} and nothing else.")
    return "\n".join(lines).encode()


class Client:
    """One client thread: its own HTTP session, one user, its own knowledge collections."""

    def __init__(self, url: str, index: int, user: int, tokens: list[str], tally: Tally, uploads: Uploads,
                 stop: threading.Event):
        self.url, self.index, self.user, self.tokens = url, index, user, tokens
        self.tally, self.uploads, self.stop = tally, uploads, stop
        self.rng = random.Random(index)
        self.session = requests.Session()
        self.collections: list[str] = []
        self.members: dict[str, set[str]] = collections.defaultdict(set)
        ops, weights = zip(*MIX)
        self.ops, self.weights = ops, weights

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.tokens[self.user]}"}

    def call(self, method: str, path: str, stream: bool = False, **kwargs):
        try:
            response = self.session.request(method, self.url + path, headers=self.headers, timeout=120,
                                            stream=stream, **kwargs)
            if stream:
                for _line in response.iter_lines():
                    pass
            self.tally.add(response.status_code)
            return response
        except requests.RequestException:
            self.tally.add("err")
            return None

    def run(self) -> None:
        while not self.stop.is_set():
            op = self.rng.choices(self.ops, self.weights)[0]
            getattr(self, op)()

    def _messages(self) -> list[dict]:
        return [{"role": "user", "content": " ".join(self.rng.choice(WORDS) for _ in range(8))}]

    def chat(self, stream=False):
        self.call("POST", "/api/chat/completions", stream=stream,
                  json={"model": CHAT_MODEL, "messages": self._messages(), "stream": stream})

    def chat_stream(self):
        self.chat(stream=True)

    def ollama_chat(self, stream=False):
        self.call("POST", "/ollama/api/chat", stream=stream,
                  json={"model": CHAT_MODEL, "messages": self._messages(), "stream": stream})

    def ollama_chat_stream(self):
        self.ollama_chat(stream=True)

    def models(self):
        self.call("GET", self.rng.choice(("/api/models", "/ollama/api/tags", "/api/v1/models/")))

    def lists(self):
        self.call("GET", self.rng.choice(("/api/v1/files/", "/api/v1/knowledge/")))

    def signin(self):
        response = self.call("POST", "/api/v1/auths/signin",
                             json={"email": f"soak{self.user}@example.com", "password": PASSWORD})
        if response is not None and response.status_code == 200:
            self.tokens[self.user] = response.json()["token"]

    def upload(self):
        marker = f"mk{secrets.token_hex(5)}z{next(self.uploads.counter)}"
        response = self.call("POST", "/api/v1/files/",
                             files={"file": (f"{marker}.txt", document(marker, self.rng), "text/plain")})
        if response is not None and response.status_code == 200:
            self.uploads.add(response.json()["id"], marker, self.user)

    def retrieve(self):
        picked = self.uploads.pick(self.rng, self.user)
        if picked is None:
            return self.models()
        file_id, marker, _owner = picked
        if self.rng.random() < 0.5 or not self.collections:
            self.call("POST", "/api/v1/retrieval/query/doc",
                      json={"collection_name": f"file-{file_id}", "query": marker, "k": 3})
        else:
            self.call("POST", "/api/v1/retrieval/query/collection",
                      json={"collection_names": self.collections, "query": f"{marker} cargo", "k": 5})

    def knowledge(self):
        if len(self.collections) < 3:
            return self._create()
        kb = self.rng.choice(self.collections)
        action = self.rng.random()
        if action < 0.3:
            self.call("POST", f"/api/v1/knowledge/{kb}/update",
                      json={"name": f"soak {self.index} {self.rng.randrange(1000)}",
                            "description": " ".join(self.rng.sample(WORDS, 5))})
        elif action < 0.6:
            self._add(kb)
        elif action < 0.9 and self.members[kb]:
            file_id = self.members[kb].pop()
            self.call("POST", f"/api/v1/knowledge/{kb}/file/remove", json={"file_id": file_id})
        else:  # churn: collections come and go
            self.call("DELETE", f"/api/v1/knowledge/{kb}/delete")
            self.collections.remove(kb)
            self.members.pop(kb, None)

    def _create(self):
        response = self.call("POST", "/api/v1/knowledge/create",
                             json={"name": f"soak {self.index}", "description": "soak collection"})
        if response is not None and response.status_code == 200:
            self.collections.append(response.json()["id"])

    def _add(self, kb: str):
        picked = self.uploads.pick(self.rng, self.user)
        if picked is None:
            return
        response = self.call("POST", f"/api/v1/knowledge/{kb}/file/add", json={"file_id": picked[0]})
        if response is not None and response.status_code == 200:
            self.members[kb].add(picked[0])


# ----------------------------------------------------------------------------- /proc

def proc_stats(pid: int) -> tuple[float, int, int] | None:
    """(RSS MB, threads, open fds) of a live process, None once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"]), fds


class Monitor:
    """Every `interval` s: one row of counts and per-worker /proc figures; keeps RSS samples for the summary."""

    def __init__(self, server: Gunicorn, backend: FakeBackend, tally: Tally, interval: float):
        self.server, self.backend, self.tally, self.interval = server, backend, tally, interval
        self.samples: dict[int, list[tuple[float, float]]] = collections.defaultdict(list)  # pid -> (t, MB)
        self.started = time.monotonic()
        self.previous = 0

    def row(self) -> None:
        elapsed = time.monotonic() - self.started
        counts = self.tally.snapshot()
        total = sum(counts.values())
        fivexx = sum(n for status, n in counts.items() if isinstance(status, int) and status >= 500)
        statuses = " ".join(f"{s}:{n}" for s, n in sorted(counts.items(), key=lambda kv: str(kv[0])))
        workers = []
        for pid in sorted(self.server.worker_pids()):
            stats = proc_stats(pid)
            if stats:
                self.samples[pid].append((elapsed, stats[0]))
                workers.append(f"{pid}:{stats[0]:.0f}MB/{stats[1]}t/{stats[2]}fd")
        print(f"{elapsed:6.0f}s {total:8d} {total - self.previous:6d} {fivexx:4d}  {statuses}  |  "
              + "  ".join(workers), flush=True)
        self.previous = total
        self.backend.reset()  # its record of every request would grow this process for nothing

    def run(self, stop: threading.Event) -> None:
        print(f"{'elapsed':>7} {'requests':>8} {'new':>6} {'5xx':>4}  statuses  |  worker pid:RSS/threads/fds",
              flush=True)
        while not stop.wait(self.interval - (time.monotonic() - self.started) % self.interval):
            self.row()


# ----------------------------------------------------------------------------- the run

def make_env(args, backend: FakeBackend, data_dir: str) -> dict:
    env = {"DATA_DIR": data_dir, "OLLAMA_BASE_URLS": backend.url, "OPENAI_API_BASE_URLS": "",
           "RAG_EMBEDDING_MODEL": "nomic-embed-text", "ENABLE_SIGNUP": "true", "DEFAULT_USER_ROLE": "user",
           "WEBUI_ADMIN_EMAIL": "soak0@example.com", "WEBUI_ADMIN_PASSWORD": PASSWORD, "LOG_LEVEL": "warning",
           "SIGNIN_RATE_LIMIT": "1000000"}
    env.update(item.split("=", 1) for item in args.env)
    if args.tracemalloc:
        env.update(TRACEMALLOC_DIR=data_dir, TRACEMALLOC_INTERVAL=str(args.interval * 3))
    if args.database_url:
        env.update(DATABASE_URL=args.database_url, WEBUI_SECRET_KEY=secrets.token_hex(32))
    return env


def start(env: dict, args, log: str) -> Gunicorn:
    """gunicorn up and answering /health; after a kill, start-up recovery comes first and can take minutes."""
    server = Gunicorn(env, workers=args.workers, threads=args.threads,
                      log_path=os.path.join(env["DATA_DIR"], log))
    return server.start(timeout=900)


def sign_up(url: str) -> list[str]:
    tokens = []
    for user in range(USERS):
        body = {"email": f"soak{user}@example.com", "password": PASSWORD}
        path = "/api/v1/auths/signin" if user == 0 else "/api/v1/auths/signup"
        response = requests.post(url + path, json={**body, "name": f"Soak {user}"}, timeout=60)
        response.raise_for_status()
        tokens.append(response.json()["token"])
    return tokens


def run_check(env: dict) -> int:
    check = subprocess.run([str(BIN / "webui-api"), "check"], capture_output=True, text=True, timeout=600,
                           env={**os.environ, **engine.storage_of(env)})
    lines = (check.stdout + check.stderr).replace("\r", "\n").strip().splitlines()
    print("\n".join(line for line in lines[-8:] if not line.startswith("check [")))
    return check.returncode


def verify(server: Gunicorn, uploads: Uploads) -> tuple[int, int, list]:
    """(acknowledged, found, lost ids): each acknowledged upload's marker looked up in its file collection."""
    tokens = sign_up_again(server.url)

    def lookup(upload: tuple[str, str, int]) -> tuple[str, int] | None:
        file_id, marker, owner = upload
        response = requests.post(server.url + "/api/v1/retrieval/query/doc", timeout=60,
                                 headers={"Authorization": f"Bearer {tokens[owner]}"},
                                 json={"collection_name": f"file-{file_id}", "query": marker, "k": 3})
        hit = response.status_code == 200 and any(marker in d for d in response.json()["documents"][0])
        return None if hit else (file_id, response.status_code)

    with ThreadPoolExecutor(8) as pool:
        lost = [miss for miss in pool.map(lookup, uploads.acknowledged) if miss]
    return len(uploads.acknowledged), len(uploads.acknowledged) - len(lost), lost


def sign_up_again(url: str) -> list[str]:
    return [requests.post(url + "/api/v1/auths/signin", timeout=60,
                          json={"email": f"soak{user}@example.com", "password": PASSWORD}).json()["token"]
            for user in range(USERS)]


def rss_at(samples: list[tuple[float, float]], moment: float) -> float | None:
    return min(samples, key=lambda s: abs(s[0] - moment))[1] if samples else None


def summary(monitor: Monitor, seconds: float) -> None:
    moments = (0.1 * seconds, 0.5 * seconds, seconds)
    print(f"\nRSS per worker (MB) at {' / '.join(f'{m / 60:.1f}' for m in moments)} min; flat = end within 10 % "
          f"of the middle (after warm-up)")
    for pid, samples in sorted(monitor.samples.items()):
        values = [rss_at(samples, m) for m in moments]
        growth = (values[2] - values[1]) / values[1] * 100
        print(f"  worker {pid}: " + " / ".join(f"{v:.0f}" for v in values)
              + f"   middle->end {growth:+.1f} %  {'flat' if abs(growth) <= 10 else 'NOT FLAT'}"
              + f"   (start->end {(values[2] - values[0]) / values[0] * 100:+.1f} %)")


def soak(args, env: dict, backend: FakeBackend) -> None:
    os.makedirs(env["DATA_DIR"], exist_ok=True)
    server = start(env, args, "gunicorn.log")
    tally, uploads, stop = Tally(), Uploads(), threading.Event()
    tokens = sign_up(server.url)
    clients = [Client(server.url, i, i % USERS, tokens, tally, uploads, stop) for i in range(args.clients)]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    monitor = Monitor(server, backend, tally, args.interval)
    monitor_stop = threading.Event()
    watcher = threading.Thread(target=monitor.run, args=(monitor_stop,), daemon=True)
    print(f"{args.clients} clients, {args.workers} workers x {args.threads} threads, {args.minutes:g} min, "
          f"database {'PostgreSQL' if 'DATABASE_URL' in env else 'SQLite'}; DATA_DIR {env['DATA_DIR']}",
          flush=True)
    watcher.start()
    for thread in threads:
        thread.start()
    seconds = args.minutes * 60
    try:
        time.sleep(max(0.0, seconds - (time.monotonic() - monitor.started)) + 0.5)
    except BaseException:  # interrupted: no server left behind (it runs in a session of its own)
        server.stop(signal.SIGKILL)
        raise
    monitor_stop.set()
    watcher.join()
    before = tally.snapshot()
    server.stop(signal.SIGKILL)  # master and every worker, with the clients still sending
    print(f"\nkill -9 of the whole server (master {server.proc.pid}) after {sum(before.values())} requests, "
          f"traffic running", flush=True)
    stop.set()
    for thread in threads:
        thread.join(timeout=150)
    counts = tally.snapshot()
    fivexx = sum(n for status, n in counts.items() if isinstance(status, int) and status >= 500)
    print(f"requests {sum(counts.values())} (before the kill {sum(before.values())}), 5xx {fivexx}, "
          f"statuses {dict(sorted(counts.items(), key=lambda kv: str(kv[0])))}")
    summary(monitor, seconds)
    restarted = time.monotonic()
    server = start(env, args, "restart.log")
    print(f"\nrestarted: /health answered after {time.monotonic() - restarted:.1f} s (start-up recovery)")
    try:
        acknowledged, found, lost = verify(server, uploads)
        print(f"\nafter restart: uploads acknowledged {acknowledged}, found by marker {found}, lost {len(lost)}"
              + (f" {lost[:10]}" if lost else ""))
    finally:
        server.stop()
    print(f"webui-api check (after the restarted server stopped) exit code: {run_check(env)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=32, help="gthread threads per worker")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between rows")
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (an empty database)")
    parser.add_argument("--postgres", action="store_true", help="a throwaway cluster (tests/pgcluster.py)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="workers dump their allocation growth to DATA_DIR/tracemalloc-<pid>.txt (slow)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra server setting, e.g. SQLITE_CACHE_MB=16 (repeatable)")
    parser.add_argument("--data-dir", default="", help="DATA_DIR (default: a new temp dir)")
    args = parser.parse_args()
    backend = FakeBackend()
    backend.token_delay = 0.02  # streams take ~0.2 s, so threads hold them a while as real ones do
    cluster = url = None
    try:
        if args.postgres:
            from tests import pgcluster

            cluster = pgcluster.cluster()
            url = args.database_url = cluster.new_database()
        data_dir = args.data_dir or tempfile.mkdtemp(prefix="soak-")
        soak(args, make_env(args, backend, data_dir), backend)
    finally:
        backend.stop()
        if cluster is not None:
            cluster.drop_database(url)


if __name__ == "__main__":
    main()
