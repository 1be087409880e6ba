"""Per-request telemetry (request id, backend time, tokens) and the Prometheus metrics; no Flask here."""
from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

# prometheus_client picks its storage when first imported: with PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py
# sets it before any worker imports the app) every worker writes its own mmap files and a scrape sums them.
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess, values)

# Generations run for minutes, so the buckets go far beyond the usual 10 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

HTTP_REQUESTS = Counter("webui_api_http_requests_total", "HTTP requests answered, by route and status",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("webui_api_http_request_duration_seconds",
                         "Time from request to the last byte of the response (streams included)",
                         ["method", "route", "status"], buckets=LATENCY_BUCKETS)
HTTP_IN_PROGRESS = Gauge("webui_api_http_requests_in_progress", "Requests (and streams) not finished yet",
                         multiprocess_mode="livesum")
BACKEND_LATENCY = Histogram("webui_api_backend_request_duration_seconds",
                            "Backend calls: time until the response headers (streams: time to first byte)",
                            ["backend"], buckets=LATENCY_BUCKETS)
BACKEND_ERRORS = Counter("webui_api_backend_errors_total",
                         "Backend calls that failed (network error, timeout, 5xx, broken stream)",
                         ["backend"])
log = logging.getLogger("webui_api.telemetry")
TOKENS = Counter("webui_api_tokens_total", "Model tokens: direction=in (prompt) or out (completion)",
                 ["direction"])


@dataclass
class Record:
    """What one HTTP request has spent so far. Mutable and shared by reference, so a stream that runs after
    the view returned (or a helper thread given `bind(...)`) keeps adding to the right request."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    backend_seconds: float = 0.0
    backend_calls: int = 0
    backend_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_sinks: list = field(default_factory=list, repr=False, compare=False)  # callback(tokens) per count
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def split(self) -> tuple[float, float]:
        """(gateway seconds, backend seconds). Concurrent backend calls can add up to more than the wall
        time; backend time is capped at the elapsed time so the gateway part never goes negative."""
        total = self.elapsed()
        backend = min(self.backend_seconds, total)
        return total - backend, backend


_current: contextvars.ContextVar[Record | None] = contextvars.ContextVar("webui_api_request", default=None)


# --- the API plain modules call -----------------------------------------------------------------

def request_id() -> str | None:
    """The current request's id (to pass on to backends as X-Request-ID), or None outside a request."""
    record = _current.get()
    return record.request_id if record else None


def record_backend(seconds: float, backend_label: str, error: bool = False, *, observe: bool = True) -> None:
    """One backend call took `seconds`. `observe=False` adds the time (and an error) to the request without a
    new latency observation: used for the body of a stream whose headers were already recorded."""
    seconds = max(0.0, float(seconds))
    if observe:
        BACKEND_LATENCY.labels(backend_label).observe(seconds)
    if error:
        BACKEND_ERRORS.labels(backend_label).inc()
    record = _current.get()
    if record is not None:
        with record._lock:
            record.backend_seconds += seconds
            record.backend_calls += 1 if observe else 0
            record.backend_errors += 1 if error else 0


def record_tokens(prompt_tokens: int | None, completion_tokens: int | None) -> None:
    """Tokens a model consumed and produced for the current request (None or negatives count as 0)."""
    prompt, completion = max(0, int(prompt_tokens or 0)), max(0, int(completion_tokens or 0))
    if prompt:
        TOKENS.labels("in").inc(prompt)
    if completion:
        TOKENS.labels("out").inc(completion)
    record = _current.get()
    if record is not None:
        with record._lock:
            record.prompt_tokens += prompt
            record.completion_tokens += completion
        for sink in record.token_sinks:
            try:
                sink(prompt + completion)
            except Exception:  # counting must never break the answer it counts
                log.exception("token sink failed")


def on_tokens(callback: Callable[[int], None]) -> None:
    """Call `callback(tokens)` each time the current request records tokens: as the backend reports them,
    before the answer's last byte is sent (a key's tokens-per-minute count is up to date when it ends)."""
    record = _current.get()
    if record is not None:
        record.token_sinks.append(callback)


@contextmanager
def backend_timer(backend_label: str) -> Iterator[None]:
    """`with backend_timer(label): ...` records the block as one backend call; an exception is an error."""
    started = time.perf_counter()
    failed = True
    try:
        yield
        failed = False
    finally:
        record_backend(time.perf_counter() - started, backend_label, error=failed)


def bind(fn: Callable) -> Callable:
    """`fn` running in a copy of the caller's context, for helper threads (new threads start with an empty
    context, so their backend calls would otherwise not be charged to the request)."""
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.run(fn, *args, **kwargs)


# --- the request lifecycle (driven by observability.py) ----------------------------------------

def start(request_id_: str) -> tuple[Record, contextvars.Token]:
    record = Record(request_id_)
    HTTP_IN_PROGRESS.inc()
    return record, _current.set(record)


def reset(token: contextvars.Token) -> None:
    try:
        _current.reset(token)
    except ValueError:  # the token belongs to another context (e.g. a copied one); leave it
        pass


@contextmanager
def active(record: Record) -> Iterator[Record]:
    """Make `record` current for the block: a streamed body is produced after the view's context is gone."""
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)


def finish(record: Record, method: str, route: str, status: int) -> float:
    """Count the request in the metrics; returns its total latency in seconds."""
    latency = record.elapsed()
    status_text = str(status)
    HTTP_REQUESTS.labels(method, route, status_text).inc()
    HTTP_LATENCY.labels(method, route, status_text).observe(latency)
    HTTP_IN_PROGRESS.dec()
    return latency


# --- exposition ------------------------------------------------------------------------------

def multiprocess_dir() -> str | None:
    """The shared metrics directory, when this process writes its metrics there."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None  # prometheus_client was imported before the variable was set: per-process metrics
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def render_metrics() -> tuple[bytes, str]:
    """The Prometheus text exposition: summed over every gunicorn worker (live and exited) in multiprocess
    mode, this process's own registry otherwise."""
    path = multiprocess_dir()
    if path:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


def trace_memory(directory: str, interval: float = 60.0, top: int = 25) -> None:
    """Diagnosis of memory growth (opt-in, TRACEMALLOC_DIR): trace this process's allocations and every
    `interval` s append to `directory`/tracemalloc-<pid>.txt the traced total, RSS and the `top` source lines
    that grew most since tracing began. Tracing slows the process down by about half: never in production."""
    import tracemalloc

    tracemalloc.start(1)
    baseline = tracemalloc.take_snapshot()
    path = os.path.join(directory, f"tracemalloc-{os.getpid()}.txt")

    def dump_forever() -> None:
        started = time.monotonic()
        while True:
            time.sleep(interval)
            snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            current, _peak = tracemalloc.get_traced_memory()
            with open("/proc/self/status") as status:
                rss = next(line.split()[1] for line in status if line.startswith("VmRSS:"))
            lines = [f"--- {time.monotonic() - started:.0f} s: traced {current / 2**20:.1f} MB, "
                     f"RSS {int(rss) / 1024:.1f} MB, SQLite {_sqlite_memory_used() / 2**20:.1f} MB"]
            lines += [str(stat) for stat in snapshot.compare_to(baseline, "lineno")[:top]]
            with open(path, "a") as out:
                out.write("\n".join(lines) + "\n")

    threading.Thread(target=dump_forever, name="tracemalloc-dump", daemon=True).start()


def _sqlite_memory_used() -> int:
    """Bytes SQLite's allocator holds in this process (page caches of every connection): not Python memory,
    so tracemalloc never sees it."""
    import ctypes
    import ctypes.util
    import sqlite3  # noqa: F401 - loads the library whose counter is read

    try:
        library = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
        library.sqlite3_memory_used.restype = ctypes.c_int64
        return library.sqlite3_memory_used()
    except (OSError, AttributeError):
        return -1
