"""Request ids, Server-Timing, structured access logs, ProxyFix and per-request metrics for the Flask app."""
from __future__ import annotations

import ipaddress
import json
import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from flask import Flask, Response, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from .. import telemetry

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is reused only when it is short, printable and cannot break a log line or a header.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@+=/-]{1,128}$")
UNMATCHED_ROUTE = "<unmatched>"  # one label for every 404, so scanners cannot blow up the metrics

access_log = logging.getLogger("webui_api.access")
_HANDLER_MARK = "_webui_api_handler"


def init_app(app: Flask) -> Flask:
    settings = app.extensions["webui_api"].settings
    hops = int(settings.TRUSTED_PROXY_HOPS or 0)
    if hops > 0:
        # Trust exactly `hops` proxies' X-Forwarded-For/-Proto/-Host; anything further left is client-made.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    configure_logging(settings.LOG_FORMAT)
    app.before_request(_begin)
    app.after_request(_after)
    app.teardown_request(_teardown)
    return app


def from_this_machine() -> bool:
    """Whether the request comes from the server's own machine: the TCP peer and every address a proxy (or
    the client) wrote into X-Forwarded-For / X-Real-IP are loopback, and no RFC 7239 Forwarded header says
    otherwise. ProxyFix's remote_addr is always one of those, so this is at least as strict as the trusted
    hops, and stays safe when TRUSTED_PROXY_HOPS is wrong: nginx on loopback relaying a remote client counts
    as remote, and a client cannot look local by adding addresses (they only add entries that must pass)."""
    environ = request.environ
    peer = environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR", environ.get("REMOTE_ADDR"))
    forwarded = [part for header in ("X-Forwarded-For", "X-Real-IP")
                 for part in request.headers.get(header, "").split(",") if part.strip()]
    return "Forwarded" not in request.headers and all(map(_is_loopback, [peer or "", *forwarded]))


def _is_loopback(address: str) -> bool:
    address = address.strip()
    if not address:
        return True  # a Unix socket peer: only processes on this machine can connect (proxies add XFF)
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def sane_request_id(value: str | None) -> str:
    """The client's X-Request-ID when sane, else a fresh one (32 hex digits, like nginx's $request_id)."""
    if value and _SANE_REQUEST_ID.match(value):
        return value
    return uuid.uuid4().hex


def server_timing(record: telemetry.Record) -> str:
    gateway, backend = record.split()
    return f"app;dur={gateway * 1000:.1f}, backend;dur={backend * 1000:.1f}"


# --- request hooks ----------------------------------------------------------------------------

@dataclass
class _State:
    record: telemetry.Record
    token: Any = None
    finished: bool = False


def _begin() -> None:
    record, token = telemetry.start(sane_request_id(request.headers.get(REQUEST_ID_HEADER)))
    g._observability = _State(record, token)


def _after(response: Response) -> Response:
    state: _State | None = g.get("_observability")
    if state is None:  # another before_request hook failed before ours ran
        _begin()
        state = g._observability
    record = state.record
    response.headers[REQUEST_ID_HEADER] = record.request_id
    response.headers["Server-Timing"] = server_timing(record)
    entry = _entry(record, response.status_code)
    done = lambda completed, sent: _finish(state, entry, completed, sent)  # noqa: E731
    if response.is_sequence or _is_file(response.response):
        # The body is ready (or a file gunicorn will sendfile): nothing of ours runs after this point.
        done(True, response.content_length or 0)
    else:
        # A stream: werkzeug hands this iterable to the server as is, which closes it at the end (or when the
        # client goes away); latency, backend time and tokens are counted up to that point.
        response.response = TrackedBody(response.response, record, done)
    return response


def _teardown(_error: BaseException | None) -> None:
    state: _State | None = g.get("_observability")
    if state is not None and state.token is not None:
        telemetry.reset(state.token)
        state.token = None


def _entry(record: telemetry.Record, status: int) -> dict:
    caller = g.get("caller")
    return {
        "request_id": record.request_id,
        "remote_addr": request.remote_addr,
        "user_id": caller.user.id if caller is not None else None,
        "method": request.method,
        "path": request.path,
        "route": request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE,
        "status": status,
        "user_agent": request.headers.get("User-Agent", ""),
    }


def _finish(state: _State, entry: dict, completed: bool, sent: int) -> None:
    if state.finished:
        return
    state.finished = True
    record = state.record
    latency = telemetry.finish(record, entry["method"], entry["route"], entry["status"])
    _gateway, backend = record.split()
    entry.update(latency_ms=round(latency * 1000, 1), backend_ms=round(backend * 1000, 1),
                 backend_calls=record.backend_calls, tokens_in=record.prompt_tokens,
                 tokens_out=record.completion_tokens, bytes=sent, completed=completed)
    access_log.info(_access_line(entry), extra={"fields": entry, "request_id": entry["request_id"]})


def _access_line(e: dict) -> str:
    aborted = "" if e["completed"] else " (client went away)"
    return (f'{e["remote_addr"]} user={e["user_id"] or "-"} "{e["method"]} {e["path"]}" {e["status"]} '
            f'{e["bytes"]}B {e["latency_ms"]}ms backend={e["backend_ms"]}ms route={e["route"]}{aborted}')


def _is_file(body: Any) -> bool:
    return hasattr(body, "filelike") or (hasattr(body, "file") and hasattr(body, "buffer_size"))


class TrackedBody:
    """Wraps a streamed body: each chunk is produced with the request's telemetry record current, and
    close() (called by the WSGI server after the last byte, or when the client disconnects) finishes it."""

    def __init__(self, body: Iterable[bytes], record: telemetry.Record, done: Callable[[bool, int], None]):
        self._body = body
        self._iter = iter(body)
        self._record = record
        self._done = done
        self._sent = 0
        self._completed = False
        self._closed = False

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        with telemetry.active(self._record):
            try:
                chunk = next(self._iter)
            except StopIteration:
                self._completed = True
                raise
        self._sent += len(chunk)
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                with telemetry.active(self._record):  # a generator's finally blocks still report here
                    close()
        finally:
            self._done(self._completed, self._sent)


# --- logging ----------------------------------------------------------------------------------

class JsonFormatter(logging.Formatter):
    """One JSON object per line. Access lines carry their fields; others a message (and the request id)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        payload: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            payload.update(fields)
        else:
            payload["message"] = record.getMessage()
            if getattr(record, "request_id", None):
                payload["request_id"] = record.request_id
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class _RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id (for logs written deep inside plain modules)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = telemetry.request_id() or "-"
        return True


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (gunicorn and test capture may swap it)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


def configure_logging(log_format: str) -> None:
    """Send the `webui_api` loggers (access lines included) to stdout as text or JSON lines — unless the
    host already configured logging (a root handler: pytest, an embedding app), which then decides."""
    logger = logging.getLogger("webui_api")
    ours = [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]
    if not ours and logging.getLogger().handlers:
        return
    handler = ours[0] if ours else _StdoutHandler()
    setattr(handler, _HANDLER_MARK, True)
    handler.filters = [_RequestIdFilter()]
    if str(log_format).lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    if not ours:
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
