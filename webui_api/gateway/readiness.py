"""Readiness checks: the database, a writable data dir and each backend; a summary that never shows a key."""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable

from .. import db
from ..auth import security
from ..auth.accounts import SETUP_TOKEN_HEADER
from ..config import load_secret_key
from ..dialect import for_url
from ..upstream import Upstream
from ..errors import ApiError

CACHE_SECONDS = 2.0  # an anonymous caller must not be able to turn probes into a flood of backend calls
# Cheap, key-checking endpoints: Ollama's version, OpenAI's model list (a wrong key answers 401 there).
PROBE_PATHS = {"ollama": "/api/version", "openai": "/models"}

class ReportCache:
    """The last readiness report, reused for CACHE_SECONDS (one per app, held by its services)."""

    def __init__(self, seconds: float = CACHE_SECONDS):
        self.seconds = seconds
        self._lock = threading.Lock()
        self._last: tuple[float, dict] | None = None

    def get(self, evaluate: Callable[[], dict]) -> dict:
        with self._lock:
            last = self._last
        if last is not None and time.monotonic() - last[0] < self.seconds:
            return last[1]
        result = evaluate()
        with self._lock:
            self._last = (time.monotonic(), result)
        return result


def report(ext, detailed: bool = True) -> dict:
    """{"status": bool, "checks": {...}}, cached for CACHE_SECONDS. Not ready when the database or the data
    dir fails, or when backends are configured and none answers; one backend down is reported (`ok: false`)
    but the service stays ready, as the gateway skips it."""
    result = ext.readiness.get(lambda: _evaluate(ext))
    return result if detailed else redacted(result)


def redacted(result: dict) -> dict:
    """The summary for anonymous callers: which checks pass, not where the backends live or why they fail."""
    checks = {name: {"ok": check["ok"]} for name, check in result["checks"].items() if name != "backends"}
    checks["backends"] = [{"kind": b["kind"], "ok": b["ok"]} for b in result["checks"]["backends"]]
    return {**result, "checks": checks}


def _evaluate(ext) -> dict:
    checks = {"database": _timed(check_database),
              "data_dir": _timed(lambda: check_data_dir(ext.settings.DATA_DIR))}
    backends = check_backends(ext.upstream)
    checks["backends"] = backends
    failed = [name for name in ("database", "data_dir") if not checks[name]["ok"]]
    if backends and not any(b["ok"] for b in backends):
        failed.append("backends")
    return {"status": not failed, "failed": failed, "checks": checks}


def _timed(fn: Callable[[], dict | None]) -> dict:
    started = time.perf_counter()
    try:
        extra = fn() or {}
        result = {"ok": True, **extra}
    except Exception as exc:  # any failure is a "not ready" line, never a traceback
        result = {"ok": False, "error": _describe(exc)}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError) and isinstance(exc.detail, str):
        return exc.detail
    return f"{exc.__class__.__name__}: {exc}"[:300]


def check_database() -> dict:
    return {"schema_version": db.schema_version()}


def check_data_dir(path: str) -> dict:
    """Write, fsync and delete a small file, as an upload would."""
    with tempfile.NamedTemporaryFile(dir=path, prefix=".ready-", delete=True) as handle:
        handle.write(b"ok")
        handle.flush()
        os.fsync(handle.fileno())
    return {"free_bytes": shutil.disk_usage(path).free}


def check_backends(upstream) -> list[dict]:
    """Probe every configured backend concurrently, within the model-list timeout. `circuit` is this
    worker's breaker for the host (closed: in use; open: skipped after failures; half-open: tried next)."""
    backends = list(upstream.ollama) + list(upstream.openai)
    if not backends:
        return []
    timeout = upstream.list_timeout
    results = upstream.fan_out(lambda b: _probe(upstream, b, timeout), backends, timeout + 0.5)
    out = []
    for backend, result in results:
        entry = {"name": backend.label, "kind": backend.kind}
        entry.update(result if isinstance(result, dict) else {"ok": False, "error": _describe(result)})
        entry["circuit"] = upstream.health.describe(backend)
        out.append(entry)
    return out


def _probe(upstream, backend, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    response = upstream.request(backend, "GET", PROBE_PATHS[backend.kind], timeout=timeout)
    response.close()
    ms = round((time.perf_counter() - started) * 1000, 1)
    if response.status_code in (401, 403):
        return {"ok": False, "ms": ms,
                "error": f"HTTP {response.status_code}: the configured key was rejected"}
    if response.status_code >= 400:
        return {"ok": False, "ms": ms, "error": f"HTTP {response.status_code}"}
    return {"ok": True, "ms": ms}


STARTUP_PROBE_SECONDS = 1.5  # every backend at once, so start-up waits at most this plus fan_out's 0.5 s


def startup_notes(settings, bind: str) -> list[tuple[str, str]]:
    """(log level, line) for the master to log once at start-up: each backend and whether it answered, and a
    loud warning while no account exists (the first sign-up becomes admin) and no admin is configured."""
    notes = backend_notes(settings)
    if not (settings.WEBUI_ADMIN_EMAIL and settings.WEBUI_ADMIN_PASSWORD) and not has_account(settings):
        token = security.setup_token(settings.WEBUI_SECRET_KEY or load_secret_key(settings.DATA_DIR))
        notes.append(("warning", f"NO ACCOUNT EXISTS YET on {bind}: the first sign-up becomes admin. From this "
                                 f"machine it needs nothing; from another it must send the header "
                                 f"'{SETUP_TOKEN_HEADER}: {token}'. Sign up now, or set WEBUI_ADMIN_EMAIL and "
                                 f"WEBUI_ADMIN_PASSWORD."))
    return notes


def backend_notes(settings) -> list[tuple[str, str]]:
    quick = dataclasses.replace(settings, AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST=min(
        settings.AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST, STARTUP_PROBE_SECONDS))
    upstream = Upstream(quick)
    try:
        results = check_backends(upstream)
    finally:
        upstream.close()
    if not results:
        return [("warning", "No backend configured (OLLAMA_BASE_URLS, OPENAI_API_BASE_URLS)")]
    return [("info", f"{b['name']}: answered in {b['ms']:g} ms") if b["ok"] else
            ("warning", f"{b['name']}: did not answer at start-up ({b.get('error', 'no answer')})")
            for b in results]


def has_account(settings) -> bool:
    """Read-only, on a connection of its own: the master must not hold a database connection across fork."""
    return for_url(settings.DATABASE_URL).any_user()
