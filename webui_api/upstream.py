"""Upstream client: one pooled HTTP session to the Ollama and OpenAI backends, timeouts and error mapping."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from . import telemetry
from .errors import ApiError, UpstreamError, UpstreamTimeout

log = logging.getLogger("webui_api.upstream")

_STREAM_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class Backend:
    """One configured backend. `key` never appears in repr, labels or error details."""

    kind: str  # "ollama" | "openai" | "reranker"
    idx: int   # position in OLLAMA_BASE_URLS / OPENAI_API_BASE_URLS
    url: str   # base URL without trailing slash (OpenAI ones include /v1 as configured)
    key: str = field(default="", repr=False)

    @property
    def label(self) -> str:
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        shown = f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"  # userinfo dropped
        if self.kind == "reranker":
            return f"reranker ({shown})"
        return f"{'Ollama' if self.kind == 'ollama' else 'OpenAI'} backend {self.idx} ({shown})"


def _label(item: Any) -> str:
    if isinstance(item, tuple) and item:  # e.g. (backend, "tags") jobs
        item = item[0]
    return getattr(item, "label", None) or repr(item)


def _reason(exc: BaseException) -> str:
    """A short, key-free description of a network failure."""
    text = str(exc).lower()
    for needle, reason in (("refused", "connection refused"), ("name or service", "host not found"),
                           ("nodename", "host not found"), ("reset", "connection reset"),
                           ("prematurely", "connection closed mid-response"),
                           ("broken", "connection closed mid-response"), ("ssl", "TLS error")):
        if needle in text:
            return reason
    return type(exc).__name__


def network_error(backend: Backend | None, exc: BaseException) -> UpstreamError:
    """Map a requests/urllib3/socket exception to UpstreamTimeout (504) or UpstreamError (502)."""
    label = backend.label if backend else "upstream backend"
    if isinstance(exc, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return UpstreamTimeout(f"{label} timed out")
    return UpstreamError(f"{label} failed: {_reason(exc)}")


def error_message(response: requests.Response) -> str:
    """The backend's own error text: Ollama `{"error": msg}`, OpenAI `{"error": {"message"}}`, or the body."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or "").strip()[:500] or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        err = body.get("error", body.get("detail"))
        if isinstance(err, dict):
            err = err.get("message") or err
        if err:
            return err if isinstance(err, str) else str(err)
    return str(body)[:500]


def http_error(response: requests.Response, backend: Backend | None = None) -> ApiError:
    """ApiError for a non-2xx backend answer: same status and message, except that a backend refusing
    *our* credentials (401/403) becomes 502 so the caller does not think its own credential is bad."""
    message = error_message(response)
    backend = backend or getattr(response, "backend", None)
    if response.status_code in (401, 403):
        label = backend.label if backend else "upstream backend"
        return UpstreamError(f"{label} rejected the configured credentials: {message}")
    return ApiError(message, status=response.status_code)


class Upstream:
    """All backend traffic goes through here. Cheap to build: no network until the first call."""

    def __init__(self, settings):
        self.settings = settings
        self.connect_timeout = float(settings.UPSTREAM_CONNECT_TIMEOUT)
        self.read_timeout = float(settings.AIOHTTP_CLIENT_TIMEOUT)
        self.list_timeout = float(settings.AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST)
        self.ollama = [Backend("ollama", i, url) for i, url in enumerate(settings.OLLAMA_BASE_URLS)] \
            if settings.ENABLE_OLLAMA_API else []
        keys = list(settings.OPENAI_API_KEYS)
        urls = settings.OPENAI_API_BASE_URLS if settings.ENABLE_OPENAI_API else []
        self.openai = [Backend("openai", i, url, keys[i] if i < len(keys) else "")
                       for i, url in enumerate(urls)]
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=max(4, len(self.ollama) + len(self.openai)),
                              pool_maxsize=max(1, int(settings.UPSTREAM_POOL_SIZE)), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    # --- plain requests
    def timeouts(self, timeout=None) -> tuple[float, float]:
        """(connect, read) seconds: defaults from settings; a number caps both; a pair is used as is."""
        if timeout is None:
            return self.connect_timeout, self.read_timeout
        if isinstance(timeout, (tuple, list)):
            return float(timeout[0]), float(timeout[1])
        return min(self.connect_timeout, float(timeout)), float(timeout)

    def request(self, backend: Backend, method: str, path: str, *, json=None, params=None, data=None,
                headers=None, stream=False, timeout=None) -> requests.Response:
        """Call `backend.url + path`. Network failure -> UpstreamError/UpstreamTimeout; HTTP errors returned.
        The response carries `.backend`; streamed ones must be consumed with stream_lines/stream_chunks
        (or closed)."""
        sent = {"Authorization": f"Bearer {backend.key}"} if backend.key else {}
        if telemetry.request_id():
            sent["X-Request-ID"] = telemetry.request_id()
        sent.update(headers or {})
        started = time.perf_counter()
        try:
            response = self.session.request(method, backend.url + path, json=json, params=params, data=data,
                                            headers=sent, stream=stream, timeout=self.timeouts(timeout))
        except _STREAM_ERRORS as exc:
            telemetry.record_backend(time.perf_counter() - started, backend.label, error=True)
            raise network_error(backend, exc) from None
        telemetry.record_backend(time.perf_counter() - started, backend.label, error=response.status_code >= 500)
        response.backend = backend
        return response

    def json(self, backend: Backend, method: str, path: str, **kwargs) -> Any:
        """request() that also raises http_error() on a non-2xx answer and returns the decoded JSON."""
        response = self.request(backend, method, path, **kwargs)
        if response.status_code >= 400:
            raise http_error(response, backend)
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(f"{backend.label} returned a body that is not JSON") from None

    def read_body(self, response: requests.Response) -> bytes:
        """The whole body of a `stream=True` response (network failures mapped); closes the response."""
        try:
            return response.content
        except _STREAM_ERRORS as exc:
            raise network_error(getattr(response, "backend", None), exc) from None
        finally:
            response.close()

    # --- streaming
    def stream_chunks(self, response: requests.Response) -> Iterator[bytes]:
        """Raw body bytes exactly as they arrive (one HTTP chunk at a time); always closes the response.
        A failure mid-stream raises UpstreamError / UpstreamTimeout naming the backend."""
        raw = response.raw
        backend = getattr(response, "backend", None)
        waited, failed = 0.0, False
        try:
            chunks = (raw.stream(None, decode_content=True) if raw.chunked and raw.supports_chunked_reads()
                      else iter(lambda: raw.read1(65536, decode_content=True), b""))  # read1: whatever is there
            while True:
                started = time.perf_counter()
                chunk = next(chunks, None)
                waited += time.perf_counter() - started  # time the backend kept us waiting, not the client
                if chunk is None:
                    break
                if chunk:
                    yield chunk
        except _STREAM_ERRORS as exc:
            failed = True
            raise network_error(backend, exc) from None
        finally:
            response.close()
            if backend is not None:
                telemetry.record_backend(waited, backend.label, error=failed, observe=False)

    def stream_lines(self, response: requests.Response) -> Iterator[bytes]:
        """Each non-empty line (without its newline) as soon as it arrives; always closes the response."""
        pending = b""
        for chunk in self.stream_chunks(response):
            pending += chunk
            if b"\n" not in chunk:
                continue
            *lines, pending = pending.split(b"\n")
            for line in lines:
                line = line.rstrip(b"\r")
                if line.strip():
                    yield line
        if pending.strip():
            yield pending.rstrip(b"\r")

    # --- concurrency
    def fan_out(self, fn: Callable[[Any], Any], items: Iterable[Any], timeout: float) -> list[tuple]:
        """Run fn(item) concurrently; return [(item, result or exception)] in input order within `timeout`
        seconds whatever happens. Late items get UpstreamTimeout. Daemon threads (one per item) rather than
        a shared pool: a backend that never answers can neither starve later calls nor block shutdown."""
        items = list(items)
        results: dict[int, Any] = {}
        done = threading.Condition()

        def run(i: int, item: Any) -> None:
            try:
                value = fn(item)
            except Exception as exc:  # handed back to the caller, not raised in a thread
                value = exc
            with done:
                results[i] = value
                done.notify_all()

        for i, item in enumerate(items):
            threading.Thread(target=telemetry.bind(run), args=(i, item), daemon=True, name="upstream-fan-out").start()
        deadline = time.monotonic() + timeout
        with done:
            while len(results) < len(items) and (left := deadline - time.monotonic()) > 0:
                done.wait(left)
            snapshot = dict(results)
        out = []
        for i, item in enumerate(items):
            if i not in snapshot:
                log.warning("%s did not answer within %.1f s; skipped", _label(item), timeout)
            out.append((item, snapshot.get(i, UpstreamTimeout(f"{_label(item)} did not answer within "
                                                                 f"{timeout:g} s"))))
        return out

    def close(self) -> None:
        self.session.close()
