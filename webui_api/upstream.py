"""Upstream client: one pooled HTTP session to the Ollama and OpenAI backends, timeouts and error mapping."""
from __future__ import annotations

import itertools
import json as jsonlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from . import telemetry
from .config import parse_bool
from .errors import ApiError, ConfigError, UpstreamError, UpstreamTimeout

log = logging.getLogger("webui_api.upstream")

_STREAM_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class Backend:
    """One configured backend. `key` and `headers` never appear in repr, labels or error details."""

    kind: str  # "ollama" | "openai" | "reranker"
    idx: int   # position in OLLAMA_BASE_URLS / OPENAI_API_BASE_URLS
    url: str   # base URL without trailing slash (OpenAI ones include /v1 as configured)
    key: str = field(default="", repr=False)
    # From OLLAMA_API_CONFIGS / OPENAI_API_CONFIGS (Open WebUI's per-connection settings):
    prefix_id: str = ""          # its models are listed as `<prefix_id>.<id>`
    model_ids: tuple = ()        # allowlist of the backend's own model names; empty: all
    tags: tuple = ()             # tag names added to each of its models
    headers: tuple = field(default=(), repr=False)  # extra (name, value) pairs sent with every call

    @cached_property
    def name(self) -> str:
        """What a caller who is not an admin is told: the kind and position, not where it lives."""
        if self.kind == "reranker":
            return "reranker"
        return f"{'Ollama' if self.kind == 'ollama' else 'OpenAI'} backend {self.idx}"

    @cached_property  # asked on every call (metrics, errors): parsed once
    def label(self) -> str:
        """The name and where the backend lives, for logs, metrics and admins; never its credentials."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        path = quote(parts.path, safe="/:@!$&'*+,;=-._~%")  # no space or parenthesis: without_locations
        return f"{self.name} ({parts.scheme}://{parts.hostname or ''}{port}{path})"  # userinfo dropped


# A Backend.label inside a text: the name, then the URL in parentheses.
_LOCATED_NAME = re.compile(r"\b((?:Ollama|OpenAI) backend \d+|reranker) \([a-z][a-z0-9+.-]*://[^\s()]*\)")


def without_locations(text: str) -> str:
    """`text` with every backend label cut to the backend's name: "Ollama backend 0", not its host and port."""
    return _LOCATED_NAME.sub(r"\1", text)


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
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return UpstreamTimeout(f"{label} timed out connecting")
    if isinstance(exc, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return UpstreamTimeout(f"{label} timed out")
    return UpstreamError(f"{label} failed: {_reason(exc)}")


def _plain(url: str) -> bool:
    """A URL that needs none of requests' preparation: ASCII, no credentials in it, nothing to quote."""
    return url.isascii() and "@" not in url and " " not in url


def _never_answered(exc: BaseException) -> bool:
    """The request did not get a response at all (refused, reset, connect timeout): safe to send elsewhere.
    A read timeout is not: the backend may still be generating."""
    return isinstance(exc, requests.exceptions.ConnectionError)


class HostHealth:
    """A small circuit breaker per backend URL, per worker: a host that failed is skipped for a back-off
    (BACKOFF_FIRST s, doubling up to BACKOFF_MAX) while other hosts can serve; once it has passed, the next
    request tries the host again, and a success closes the breaker."""

    BACKOFF_FIRST, BACKOFF_MAX = 2.0, 60.0

    def __init__(self):
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float, str]] = {}  # url -> (failures in a row, skip until, why)

    def available(self, backend: Backend) -> bool:
        failed = self._failures.get(backend.url)
        return failed is None or time.monotonic() >= failed[1]

    def failed(self, backend: Backend, reason: str) -> None:
        with self._lock:
            count = self._failures.get(backend.url, (0, 0.0, ""))[0] + 1
            backoff = min(self.BACKOFF_MAX, self.BACKOFF_FIRST * 2 ** (count - 1))
            self._failures[backend.url] = (count, time.monotonic() + backoff, reason)
        log.warning("%s; skipped for %.0f s where another host can serve", reason, backoff)

    def succeeded(self, backend: Backend) -> None:
        if backend.url in self._failures:
            with self._lock:
                self._failures.pop(backend.url, None)

    def describe(self, backend: Backend) -> dict:
        """This worker's view: `closed` (in use), `open` (skipped for `retry_in` s) or `half-open` (the
        back-off passed; the next request tries it)."""
        failed = self._failures.get(backend.url)
        if failed is None:
            return {"state": "closed"}
        left = failed[1] - time.monotonic()
        state = {"state": "open", "retry_in": round(left, 1)} if left > 0 else {"state": "half-open"}
        return {**state, "failures": failed[0], "last_error": failed[2]}


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
    """The one rule for a backend's error answer reaching our client. A 4xx keeps its status and the
    backend's message (a 429 its Retry-After): the request was refused as sent. A 5xx becomes 502 naming the
    backend: it failed, not the caller's request. A refusal of *our* credentials (401/403) becomes 502 too,
    so the caller does not think its own credential is bad."""
    message = error_message(response)
    backend = backend or getattr(response, "backend", None)
    label = backend.label if backend else "upstream backend"
    if response.status_code in (401, 403):
        return UpstreamError(f"{label} rejected the configured credentials: {message}")
    if response.status_code >= 500:
        return UpstreamError(f"{label} failed (HTTP {response.status_code}): {message}")
    retry = response.headers.get("Retry-After") if response.status_code == 429 else None
    return ApiError(message, status=response.status_code, headers={"Retry-After": retry} if retry else None)


def connections(kind: str, urls: list[str], keys: list[str], configs: dict) -> list[Backend]:
    """The enabled backends of one kind, each with its settings from `configs` (keyed by index, or by URL
    as older Open WebUI wrote them). A disabled one keeps its index: the others' `url_idx` do not move."""
    out = []
    for idx, url in enumerate(urls):
        config = configs.get(str(idx), configs.get(url, {}))
        if not isinstance(config, dict):
            raise ConfigError(f"{kind.upper()}_API_CONFIGS[{idx}] must be a JSON object")
        if not parse_bool(config.get("enable", True)):
            continue
        key = (keys[idx] if idx < len(keys) else "") or str(config.get("key") or "")
        if config.get("auth_type") == "none":
            key = ""  # Open WebUI's way to keep a connection's key from being sent
        headers = config.get("headers") or {}
        if not isinstance(headers, dict):
            raise ConfigError(f"{kind.upper()}_API_CONFIGS[{idx}].headers must be a JSON object")
        out.append(Backend(kind, idx, url, key, str(config.get("prefix_id") or ""),
                           tuple(str(m) for m in config.get("model_ids") or ()),
                           tuple(_tag_name(t) for t in config.get("tags") or () if _tag_name(t)),
                           tuple((str(k), str(v)) for k, v in headers.items())))
    return out


def _tag_name(tag: Any) -> str:
    return str(tag.get("name") or "") if isinstance(tag, dict) else str(tag or "")


def forwarded_user_headers(settings, user) -> dict:
    """Open WebUI's X-OpenWebUI-User-* headers (ENABLE_FORWARD_USER_INFO_HEADERS), for per-user accounting
    at the backend; the name is percent-encoded, as header values must be ASCII."""
    if user is None or not settings.ENABLE_FORWARD_USER_INFO_HEADERS:
        return {}
    return {"X-OpenWebUI-User-Name": quote(user.name or "", safe=" "), "X-OpenWebUI-User-Id": str(user.id),
            "X-OpenWebUI-User-Email": str(user.email), "X-OpenWebUI-User-Role": str(user.role)}


class Upstream:
    """All backend traffic goes through here. Cheap to build: no network until the first call."""

    def __init__(self, settings):
        self.settings = settings
        self.connect_timeout = float(settings.UPSTREAM_CONNECT_TIMEOUT)
        self.read_timeout = float(settings.AIOHTTP_CLIENT_TIMEOUT)
        self.list_timeout = float(settings.AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST)
        urls = settings.OLLAMA_BASE_URLS if settings.ENABLE_OLLAMA_API else []
        self.ollama = connections("ollama", urls, [], settings.OLLAMA_API_CONFIGS)
        urls = settings.OPENAI_API_BASE_URLS if settings.ENABLE_OPENAI_API else []
        self.openai = connections("openai", urls, settings.OPENAI_API_KEYS, settings.OPENAI_API_CONFIGS)
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=max(4, len(self.ollama) + len(self.openai)),
                              pool_maxsize=max(1, int(settings.UPSTREAM_POOL_SIZE)), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # requests would re-read the proxy variables on every call (trust_env): read them once instead.
        self.session.trust_env = False
        self.session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self._proxies: dict[str, dict] = {}
        self.health = HostHealth()
        self._turn = itertools.count()
        for backend in self.ollama + self.openai:
            self.proxies_for(backend.url)

    def proxies_for(self, url: str) -> dict:
        """HTTP(S)_PROXY / ALL_PROXY for `url` unless NO_PROXY exempts its host, looked up once per URL."""
        proxies = self._proxies.get(url)
        if proxies is None:
            proxies = self._proxies[url] = requests.utils.get_environ_proxies(url)
        return proxies

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
        sent.update(backend.headers)
        sent.update(headers or {})
        started = time.perf_counter()
        try:
            url, proxies = backend.url + path, self.proxies_for(backend.url)
            options = {"stream": stream, "timeout": self.timeouts(timeout), "proxies": proxies}
            if params is None and data is None and _plain(url):
                response = self.session.send(self._prepared(method, url, json, sent),
                                             verify=self.session.verify, cert=None, **options)
            else:
                response = self.session.request(method, url, json=json, params=params, data=data,
                                                headers=sent, **options)
        except _STREAM_ERRORS as exc:
            telemetry.record_backend(time.perf_counter() - started, backend.label, error=True)
            error = network_error(backend, exc)
            error.never_answered = _never_answered(exc)
            raise error from None
        telemetry.record_backend(time.perf_counter() - started, backend.label,
                                 error=response.status_code >= 500)
        response.backend = backend
        return response

    def order(self, hosts: list[Backend], spread: bool = True) -> list[Backend]:
        """Healthy hosts first (taken in turns when `spread`, else in configured order), then skipped ones:
        when every host is failing, one is still tried rather than none."""
        healthy = [b for b in hosts if self.health.available(b)]
        if spread and len(healthy) > 1:
            turn = next(self._turn) % len(healthy)
            healthy = healthy[turn:] + healthy[:turn]
        return healthy + [b for b in hosts if b not in healthy]

    def send(self, hosts: list[Backend], method: str, path: str, *, spread: bool = True, user=None,
             **kwargs) -> requests.Response:
        """request() to one of `hosts` serving the same model. When the first one chosen cannot be reached
        or answers 5xx (no byte has reached our client yet), the call is sent once more to the next host;
        a failing host is skipped for a back-off. Never used for a retry once a stream has begun.
        `user`: whom to name in the forwarded user headers, when those are enabled."""
        if user is not None and self.settings.ENABLE_FORWARD_USER_INFO_HEADERS:
            kwargs["headers"] = {**forwarded_user_headers(self.settings, user),
                                 **(kwargs.get("headers") or {})}
        candidates = self.order(hosts, spread)[:2]
        for attempt, backend in enumerate(candidates):
            last = attempt == len(candidates) - 1
            try:
                response = self.request(backend, method, path, **kwargs)
            except UpstreamError as exc:
                self.health.failed(backend, exc.detail)
                if last or not getattr(exc, "never_answered", False):
                    raise
                continue
            if response.status_code < 500:
                self.health.succeeded(backend)
                return response
            self.health.failed(backend, f"{backend.label} answered HTTP {response.status_code}")
            if last:
                return response
            response.close()
        raise UpstreamError("no backend to send to")  # only when `hosts` is empty

    def _prepared(self, method: str, url: str, body: Any, headers: dict) -> requests.PreparedRequest:
        """What Session.prepare_request builds for a call with a JSON body (or none), no query, no cookies and
        no auth, without its per-call merging of settings and re-parsing of the URL (a fifth of the
        gateway's CPU per chat when profiled). Our URLs come from configuration and fixed paths."""
        prepared = requests.PreparedRequest()
        prepared.method, prepared.url, prepared.hooks = method.upper(), url, {"response": []}
        prepared.headers = requests.structures.CaseInsensitiveDict(self.session.headers)
        prepared.headers.update(headers)
        prepared.body = None
        if body is not None:
            try:
                prepared.body = jsonlib.dumps(body, allow_nan=False).encode()
            except ValueError as exc:
                raise requests.exceptions.InvalidJSONError(exc) from None
            prepared.headers.setdefault("Content-Type", "application/json")
            prepared.headers["Content-Length"] = str(len(prepared.body))
        elif prepared.method not in ("GET", "HEAD"):
            prepared.headers["Content-Length"] = "0"
        return prepared

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
                      # read1: whatever is there
                      else iter(lambda: raw.read1(65536, decode_content=True), b""))
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
            threading.Thread(target=telemetry.bind(run), args=(i, item), daemon=True,
                             name="upstream-fan-out").start()
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
