"""The /ollama and /openai passthroughs: pick the backend, forward the body, relay the answer as it comes."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import convert, model_lists, usage
from .catalog import Catalog, permit
from .fields import WEBUI_FIELDS, WEBUI_PARAMS
from ..auth import policy
from ..errors import BadRequest, UpstreamError
from ..upstream import Backend, Upstream, http_error

log = logging.getLogger("webui_api.proxy")

STREAM_TYPES = ("application/x-ndjson", "text/event-stream")


@dataclass
class Reply:
    """What the view sends back: a status, a content type and bytes or an iterator of bytes."""

    status: int
    content_type: str
    body: bytes | Iterator[bytes] = b""
    streaming: bool = False
    headers: dict = field(default_factory=dict)


def _pick(catalog: Catalog, kind: str, body: dict, model_key: str | None, url_idx: int | None,
          default_idx: int | None) -> list[Backend]:
    """The backends for this call (several when replicas serve the model); rewrites body[model_key] to the
    resolved (tagged) name."""
    if model_key:
        permit(body.get(model_key) if body.get(model_key) is not None else body.get("name"))
    if url_idx is not None:
        return [catalog.backend_at(kind, url_idx)]
    if model_key:
        if model_key == "model" and body.get("model") is None and body.get("name"):  # Ollama's older field
            model_key = "name"
        model = body.get(model_key)
        if model is not None:
            hosts, resolved = catalog.hosts_for(kind, model)
            body[model_key] = resolved
            return hosts
        if default_idx is None:
            raise BadRequest(f"{model_key} is required")
    return [catalog.backend_at(kind, default_idx) if default_idx else catalog.pool(kind)[0]]


def relay(upstream: Upstream, response, sse: bool, after: Callable[[], None] | None = None, user=None
          ) -> Iterator[bytes]:
    """Yield the backend's bytes as they arrive. If the backend fails mid-stream, end with an error the
    client's parser understands (an NDJSON `{"error": ...}` line, or an SSE error event and [DONE]), worded
    for `user`."""
    last = b"\n"
    try:
        for chunk in upstream.stream_chunks(response):
            last = chunk[-1:]
            yield chunk
    except UpstreamError as exc:
        log.warning("stream from %s broke: %s", getattr(response, "backend", None), exc.detail)
        sep = b"" if last == b"\n" else b"\n"
        detail = policy.as_shown_to(user, exc.detail)
        if sse:
            event = json.dumps(convert.error_event(detail, exc.status)).encode()
            yield sep + b"data: " + event + b"\n\ndata: [DONE]\n\n"
        else:
            yield sep + json.dumps({"error": detail}).encode() + b"\n"
    finally:
        if after:
            after()


def forward(upstream: Upstream, hosts: list[Backend], method: str, path: str, body: dict | None,
            after: Callable[[], None] | None = None, user=None) -> Reply:
    """Send the call (to another host once if the first fails before answering) and turn the answer into
    a Reply: streamed when the backend streams, else buffered. Backend HTTP errors become ApiError as
    upstream.http_error words them. `user`: the caller (forwarded user headers, stream errors' wording)."""
    response = upstream.send(hosts, method, path, json=body, stream=True, user=user)
    if response.status_code >= 400:
        upstream.read_body(response)
        if after:
            after()
        raise http_error(response, response.backend)
    content_type = response.headers.get("Content-Type", "application/json")
    if any(kind in content_type for kind in STREAM_TYPES):
        chunks = relay(upstream, response, "event-stream" in content_type, after, user)
        return Reply(response.status_code, content_type, usage.counted(chunks) if usage.needed() else chunks,
                     streaming=True)
    try:
        answer = upstream.read_body(response)
        if usage.needed():
            usage.count_body(answer)
        return Reply(response.status_code, content_type, answer)
    finally:
        if after:
            after()


# ----------------------------------------------------------------------------- Ollama

def ollama_call(catalog: Catalog, method: str, path: str, body: dict | None, *, url_idx: int | None = None,
                model_key: str | None = "model", default_idx: int | None = None, changes_models: bool = False,
                user=None) -> Reply:
    """Forward one Ollama API call. Without `url_idx` the backend is one that hosts body[model_key] (an
    untagged name matches `:latest` and is rewritten), or `default_idx` for calls without a model.
    `changes_models`: the catalogue is invalidated once the backend has answered."""
    body = dict(body or {})
    hosts = _pick(catalog, "ollama", body, model_key, url_idx, default_idx)
    after = catalog.invalidate if changes_models else None
    return forward(catalog.upstream, hosts, method, path, body if method != "GET" else None, after, user)


def require_json_object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    return body


def ollama_tags(catalog: Catalog, url_idx: int | None = None) -> dict:
    """All backends' models merged (`urls` per entry), or one backend's raw list."""
    if url_idx is not None:
        return catalog.upstream.json(catalog.backend_at("ollama", url_idx), "GET", "/api/tags")
    return catalog.ollama_tags()


def _get(upstream: Upstream, backend: Backend, path: str) -> dict:
    return upstream.json(backend, "GET", path, timeout=upstream.list_timeout)


def _version_key(version: str) -> tuple:
    parts = []
    for piece in str(version).split("-")[0].split("."):
        parts.append(int(piece) if piece.isdigit() else 0)
    return tuple(parts)


def _pool(catalog: Catalog, url_idx: int | None) -> list[Backend]:
    """The backend at `url_idx`, else every Ollama backend (503 when there is none)."""
    if url_idx is not None:
        return [catalog.backend_at("ollama", url_idx)]
    return catalog.pool("ollama")


def ollama_version(catalog: Catalog, url_idx: int | None = None) -> dict:
    """The lowest version among the backends that answer (what every feature can rely on)."""
    upstream, pool = catalog.upstream, _pool(catalog, url_idx)
    results = upstream.fan_out(lambda b: _get(upstream, b, "/api/version"), pool, upstream.list_timeout)
    versions = [r["version"] for _, r in results if isinstance(r, dict) and r.get("version")]
    if not versions:
        raise UpstreamError("WebUI could not connect to Ollama")
    return {"version": min(versions, key=_version_key)}


def ollama_ps(catalog: Catalog, url_idx: int | None = None) -> dict:
    """Loaded models of every backend, merged like the tags."""
    upstream, pool = catalog.upstream, _pool(catalog, url_idx)
    results = upstream.fan_out(lambda b: _get(upstream, b, "/api/ps")["models"], pool, upstream.list_timeout)
    return {"models": model_lists.merge_tags(results)}


def ollama_v1_models(catalog: Catalog) -> dict:
    """Ollama's OpenAI-compatible model list, built from the merged tags."""
    now = int(time.time())
    models = catalog.ollama_tags()["models"]
    return {"object": "list",
            "data": [{"id": m["model"], "object": "model", "created": now, "owned_by": "openai"}
                     for m in models]}


# ----------------------------------------------------------------------------- OpenAI

def openai_body(body: dict) -> dict:
    """The body an OpenAI backend gets: Open WebUI-only fields removed, `params` applied where unset."""
    params = body.get("params") if isinstance(body.get("params"), dict) else {}
    out = {k: v for k, v in body.items() if k not in WEBUI_FIELDS}
    for key, value in params.items():
        if key not in WEBUI_PARAMS and value is not None:
            out.setdefault(key, value)
    return out


def openai_call(catalog: Catalog, path: str, body: dict, url_idx: int | None = None, user=None) -> Reply:
    """Forward a model call (chat/completions, embeddings, ...) to the connection serving body["model"]."""
    body = openai_body(require_json_object(body))
    hosts = _pick(catalog, "openai", body, "model", url_idx, None)
    usage.ask_for_usage(body)
    return forward(catalog.upstream, hosts, "POST", path, body, user=user)


def openai_models(catalog: Catalog, url_idx: int | None = None) -> dict:
    """Every connection's models in Open WebUI's shape (`urlIdx`, raw entry under `openai`), or one
    connection's raw list."""
    if url_idx is not None:
        return catalog.upstream.json(catalog.backend_at("openai", url_idx), "GET", "/models")
    return {"data": catalog.openai_models()}
