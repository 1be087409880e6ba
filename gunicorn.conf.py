"""gunicorn settings for a streaming gateway; every value can be set from the environment.

Chosen by measurement (bench/workers_threads.py: 2 CPUs, 2 workers, fake backend streaming 20 tokens x 50 ms,
32 streams opened at once; "c" = worker_connections; short = GET /api/v1/auths/ with an API key):

    shape              32 streams: wall  worst TTFT  in flight | short req/s | short during streams p50  max
    sync                 13.8 s     12.9 s         2           |   726       |              13498 ms  13498 ms
    gthread x4  c1000     6.9 s      6.0 s         4           |   894       |                  3 ms      7 ms
    gthread x16 c1000     1.8 s      0.90 s       16           |   983       |                  3 ms    610 ms
    gthread x32 c1000     1.0 s      0.13 s       32           |   935       |                  3 ms     10 ms
    gthread x32 c40       0.93 s     0.06 s       32           |  1030       |                  3 ms      4 ms

A sync worker is pinned by one stream, so every other request (even a health check) waits behind whole
generations. gthread holds one *thread* per stream and heart-beats from the worker's main loop, so `timeout`
never kills a long generation. Threads must exceed the concurrent streams you expect, or short requests queue
behind them: 32 per worker by default (cheap: the threads mostly wait on sockets). Throughput of short
requests is CPU-bound (700-1000 req/s on 2 cores for any thread count), so add processes (WEB_CONCURRENCY,
about one per core) for CPU and threads for concurrent streams.
"""
import ctypes
import json
import os
import shutil

import gunicorn.util

wsgi_app = "wsgi:app"
# Loopback unless HOST says otherwise: a fresh instance is claimed by its first sign-up (it becomes admin), so
# it is reachable from elsewhere only when a deployment asks (HOST=0.0.0.0 behind nginx, in a container).
# The local embedding engine multiplies matrices with numpy: one BLAS thread per request thread, since the
# workers and their threads already use every core (a BLAS pool per worker spun 7x the CPU on 2 cores).
if os.environ.get("RAG_EMBEDDING_ENGINE", "ollama").strip().lower() in ("", "local"):
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")  # "sync" only for comparison benches
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
os.environ["GUNICORN_THREADS"] = str(threads)  # workers size their upstream connection pool by it
# A gthread worker keeps accepting connections up to this many and queues them for its threads. At 1000
# (gunicorn's default) one worker took more streams than it had threads while the other idled; capped a
# little above the thread count, the kernel hands the surplus to the other worker (streams served at once
# with 4 threads: 4 -> 8; with 16: 16 -> 30; worst time to first token at 32 threads: 0.13 s -> 0.06 s).
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", str(threads + max(4, threads // 4))))
# gthread heart-beats from its main loop, not from the request threads: this only fires when a worker's
# main loop is stuck, never because one generation is long.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
# On SIGTERM a worker stops accepting and lets in-flight requests (streams included) finish for this long.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "60"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# The app writes the access log (stdout; JSON lines with LOG_FORMAT=json: request id, user id, route, status,
# latency to the end of a stream, backend time). gunicorn's own line can be added: GUNICORN_ACCESSLOG=-.
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# No preload: each worker opens its own SQLite connections, FAISS handles and HTTP sessions after fork.
preload_app = False
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
# glibc gives threads malloc arenas of their own, up to 8 per core, and a busy gthread worker spreads its 32
# threads over all of them: each fragments on its own and RSS crept up while Python's own allocations
# (tracemalloc) and SQLite's stayed flat (bench/soak.py: +5.6 vs +1.3 MB in 75 s at 2 arenas). Two are enough
# for threads that mostly wait on sockets. Set in the master before it forks, so every worker inherits it;
# MALLOC_ARENA_MAX in the environment, read by glibc itself, wins.
MALLOC_ARENAS = 2

max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "0"))


def _json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own refusals (malformed request line 400, URI too long 414, headers too large 431...),
    which never reach the app, in the API's {"detail": ...} shape instead of gunicorn's HTML page."""
    body = json.dumps({"detail": f"{reason}: {mesg}"}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


gunicorn.util.write_error = _json_error  # set in the master before workers fork; every worker class uses it


def _limit_malloc_arenas(arenas: int) -> None:
    if "MALLOC_ARENA_MAX" in os.environ:
        return  # glibc read it at start-up
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8 = M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc (musl, macOS): their allocators do not keep an arena per thread this way


_limit_malloc_arenas(MALLOC_ARENAS)


def _data_dir() -> str:
    from webui_api.config import Settings

    return Settings.from_env().DATA_DIR


# Cross-worker metrics: prometheus_client keeps each worker's values in mmap files in this directory and sums
# them at scrape time. It must be in the environment before a worker imports the app (workers inherit it).
metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(_data_dir(), "metrics")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir


def on_starting(server):
    """In the master, before workers fork: the data dir, the generated secret and a clean metrics dir."""
    from webui_api.config import Settings, load_secret_key

    settings = Settings.from_env()
    os.makedirs(settings.DATA_DIR, exist_ok=True)
    if not settings.WEBUI_SECRET_KEY:
        load_secret_key(settings.DATA_DIR)
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters restart with the server, as Prometheus expects
    os.makedirs(metrics_dir, exist_ok=True)


def when_ready(server):
    """In the master, once, before workers fork: which backends answer, and a warning while nobody owns it."""
    from webui_api.config import Settings
    from webui_api.gateway.readiness import startup_notes

    for level, line in startup_notes(Settings.from_env(), f"http://{bind}"):
        getattr(server.log, level)(line)


def child_exit(server, worker):
    """A worker is gone: drop its live gauges (its counters and histograms stay in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, metrics_dir)


def post_worker_init(worker):
    """The worker loaded the app and did its start-up work (migrations, index repair, recovery): from here on
    it accepts connections (tests wait for this line before pausing workers). TRACEMALLOC_DIR (diagnosis only,
    bench/soak.py --tracemalloc): each worker dumps its allocation growth."""
    worker.log.info("Worker %s ready", worker.pid)
    if os.environ.get("TRACEMALLOC_DIR"):
        from webui_api.telemetry import trace_memory

        trace_memory(os.environ["TRACEMALLOC_DIR"], float(os.environ.get("TRACEMALLOC_INTERVAL", "60")))
