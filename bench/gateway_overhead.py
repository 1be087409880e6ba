"""The gateway side by side with a raw-WSGI floor (bench/floor.py) and the backend itself, in one run.

Starts the fake backend (tests/fake_backend.py, no token delay) in its own process, the project and the floor
under the same `gunicorn -c gunicorn.conf.py` settings (2 workers), then for Ollama- and OpenAI-backed chat:
  * added latency: N sequential non-stream chats, p50/p99 minus the same through nobody (direct);
  * time to first token: N sequential streamed chats, p50 to the first data line;
  * throughput at 16 and 64 connections (closed loops of non-stream chats for a few seconds) and the CPU
    per request those cost the server (user+system time of gunicorn's master and workers, from /proc).
The project is called with an API key, as services do. Load, backend and servers share this machine.

    .venv/bin/python bench/gateway_overhead.py [-n 300] [--seconds 3] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import BIN, free_port, wait_until_listening, wait_until_up  # noqa: E402

QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
MODELS = {"ollama": "llama3.2:latest", "openai": "gpt-4o-mini"}
TICK = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Target:
    """Where chats go: a URL for each kind, the headers to send, and the server processes to charge."""

    def __init__(self, name: str, urls: dict, headers: dict, proc: subprocess.Popen | None = None):
        self.name, self.urls, self.headers, self.proc = name, urls, headers, proc

    def cpu_seconds(self) -> float | None:
        if self.proc is None:
            return None
        pids = [self.proc.pid] + [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()]
        total = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / TICK


def chat(session, target: Target, kind: str, stream: bool) -> float:
    """Seconds until the whole reply (non-stream) or its first data line (stream) arrived."""
    body = {"model": MODELS[kind], "messages": QUESTION, "stream": stream}
    started = time.perf_counter()
    with session.post(target.urls[kind], json=body, headers=target.headers.get(kind), stream=stream,
                      timeout=60) as response:
        response.raise_for_status()
        if not stream:
            response.content  # noqa: B018
            return time.perf_counter() - started
        first = None
        for line in response.iter_lines(chunk_size=None):
            if first is None and (line.startswith(b"data: ") or line.startswith(b"{")):
                first = time.perf_counter() - started
        return first


def sequential(target, kind, stream, n) -> list[float]:
    with requests.Session() as session:
        for _ in range(10):
            chat(session, target, kind, stream)
        return [chat(session, target, kind, stream) for _ in range(n)]


def closed_loop(target, kind, clients: int, seconds: float) -> tuple[float, float | None, int]:
    """(requests per second, server CPU ms per request, failures) with `clients` busy connections."""
    done, failed, stop = [0], [0], threading.Event()
    lock = threading.Lock()

    def client():
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    chat(session, target, kind, False)
                    ok = True
                except Exception:
                    ok = False
                with lock:
                    done[0] += ok
                    failed[0] += not ok

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # warm: every connection open, every worker busy
    with lock:
        start_done = done[0]
    cpu0, t0 = target.cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    cpu1, t1 = target.cpu_seconds(), time.perf_counter()
    with lock:
        count = done[0] - start_done
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    cpu = (cpu1 - cpu0) * 1000 / count if cpu0 is not None and count else None
    return count / (t1 - t0), cpu, failed[0]


def start(cmd: list[str], env: dict, port: int, log: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_until_listening(port, timeout=30, proc=proc)
    return proc


def gunicorn(app: str | None, env: dict, data: str, name: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": "2",
           "PYTHONPATH": str(ROOT)}
    cmd = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"] + ([app] if app else [])
    url = f"http://127.0.0.1:{port}"
    return start(cmd, env, port, os.path.join(data, f"{name}.log")), url


def fake_backend() -> tuple[subprocess.Popen, str]:
    """tests/fake_backend.py in a process of its own (so its CPU and GIL are not the load generator's)."""
    code = ("import sys, time\nfrom tests.fake_backend import FakeBackend\n"
            "print(FakeBackend().url, flush=True)\ntime.sleep(10**9)\n")
    proc = subprocess.Popen([str(BIN / "python"), "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    url = proc.stdout.readline().decode().strip()
    wait_until_up(url + "/api/version", proc=proc)
    return proc, url


def api_key(url: str) -> str:
    body = {"name": "Bench", "email": "bench@example.com", "password": "bench-password-123"}
    token = requests.post(f"{url}/api/v1/auths/signup", json=body, timeout=30).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    reply = requests.post(f"{url}/api/v1/auths/api_key", headers=bearer, timeout=30)
    return reply.json()["api_key"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="sequential requests per latency measurement")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds taking the targets in turn")
    args = parser.parse_args()
    data = tempfile.mkdtemp(prefix="bench-gateway-")
    procs = []
    try:
        backend_proc, backend = fake_backend()
        procs.append(backend_proc)
        fake_key = "sk-fake-openai-key"
        env = {"DATA_DIR": data, "OLLAMA_BASE_URLS": backend, "OPENAI_API_BASE_URLS": backend + "/v1",
               "OPENAI_API_KEYS": fake_key, "MODELS_CACHE_TTL": "300", "PASSWORD_HASH_COST": "1024",
               "LOG_LEVEL": "warning", "FLOOR_BACKEND_URL": backend, "FLOOR_OPENAI_KEY": fake_key}
        project_proc, project = gunicorn(None, env, data, "project")
        procs.append(project_proc)
        floor_proc, floor = gunicorn("bench.floor:app", env, data, "floor")
        procs.append(floor_proc)
        key = api_key(project)
        auth = {"Authorization": f"Bearer {key}"}
        targets = [
            Target("direct", {"ollama": backend + "/api/chat", "openai": backend + "/v1/chat/completions"},
                   {"openai": {"Authorization": f"Bearer {fake_key}"}}),
            Target("floor", {k: floor + "/" for k in MODELS}, {}, floor_proc),
            Target("project", {k: project + "/api/chat/completions" for k in MODELS},
                   {k: auth for k in MODELS}, project_proc),
        ]
        report(targets, args)
    finally:
        for proc in reversed(procs):
            stop(proc)


def measure(targets: list[Target], kind: str, args) -> dict:
    """Every measurement for every target, in `args.repeat` rounds that take the targets in turn, so a
    change in the machine's load (other processes) falls on all of them alike. CPU: median of the rounds."""
    found = {t.name: {"plain": [], "ttft": [], "loads": {16: [], 64: []}} for t in targets}
    for _ in range(args.repeat):
        for target in targets:
            into = found[target.name]
            into["plain"] += sequential(target, kind, False, args.n // args.repeat)
            into["ttft"] += sequential(target, kind, True, max(20, args.n // args.repeat // 3))
            for clients in (16, 64):
                into["loads"][clients].append(closed_loop(target, kind, clients, args.seconds))
    return found


def report(targets: list[Target], args) -> None:
    print(f"2 gunicorn workers each (gunicorn.conf.py defaults); fake backend in its own process; "
          f"n={args.n} sequential, {args.repeat} rounds of {args.seconds:g} s per throughput cell "
          f"(medians); {os.cpu_count()} CPUs")
    head = (f"{'kind':7} {'target':8} {'p50 ms':>7} {'p99 ms':>7} {'+p50':>6} {'+p99':>6} {'TTFT p50':>9} "
            f"{'req/s@16':>9} {'cpu ms@16':>9} {'req/s@64':>9} {'cpu ms@64':>9}")
    print(head)
    print("-" * len(head))
    summary = []
    for kind in MODELS:
        found, base, seen = measure(targets, kind, args), None, {}
        for target in targets:
            into = found[target.name]
            p50, p99 = percentile(into["plain"], 0.5) * 1000, percentile(into["plain"], 0.99) * 1000
            base = base or (p50, p99)
            cells, cpus = [], []
            for clients in (16, 64):
                runs = into["loads"][clients]
                rate = statistics.median(r for r, _, _ in runs)
                cpu = statistics.median(c for _, c, _ in runs) if runs[0][1] is not None else None
                failed = sum(f for _, _, f in runs)
                cpus.append(cpu)
                cells += [f"{rate:9.0f}", f"{cpu:9.2f}" if cpu is not None else f"{'-':>9}"]
                if failed:
                    cells[-2] += f" ({failed} failed)"
            seen[target.name] = (p50, cpus)
            print(f"{kind:7} {target.name:8} {p50:7.2f} {p99:7.2f} {p50 - base[0]:6.2f} {p99 - base[1]:6.2f} "
                  f"{percentile(into['ttft'], 0.5) * 1000:9.2f} " + " ".join(cells), flush=True)
        (floor_p50, floor_cpu), (project_p50, project_cpu) = seen["floor"], seen["project"]
        ratios = " and ".join(f"{p / f:.2f}x" for p, f in zip(project_cpu, floor_cpu))
        summary.append(f"{kind}: CPU per chat {ratios} the floor's at 16 and 64 connections (target <= 1.5x); "
                       f"p50 {project_p50 - floor_p50:+.2f} ms over the floor's (target <= 1 ms)")
    print("+p50/+p99: added over direct. cpu ms: server CPU (master + workers, user + system) per request.")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
