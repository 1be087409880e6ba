"""Chat completions and embeddings: resolve the model, apply its preset and RAG, then call the backend."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterator

from . import convert, usage
from .fields import CHAT_OWN_FIELDS, OLLAMA_NATIVE_OPTIONS, OLLAMA_ONLY, OLLAMA_TOP_LEVEL, WEBUI_PARAMS
from ..auth import policy
from ..rag import files, knowledge
from ..errors import ApiError, BadRequest, ServiceUnavailable, Unprocessable, UpstreamError
from ..upstream import http_error

log = logging.getLogger("webui_api.gateway")

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
STREAM_FAILED = "Chat completion stream failed"


@dataclass
class Streamed:
    """A streaming reply for the HTTP layer to send as is."""

    body: Iterator[bytes]
    mimetype: str = "text/event-stream"
    headers: dict = field(default_factory=lambda: {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# --- chat ------------------------------------------------------------------------------------

def chat_completion(ext, user, body: dict) -> dict | Streamed:
    """OpenAI-style chat over any registered model: a `chat.completion` dict, or SSE when `stream`."""
    body = dict(body)
    refuse_unprovided(body)
    requested = body.get("model")
    target = ext.catalog.resolve(user, requested)
    messages = check_messages(body.get("messages"))
    params = merged_params(target.params, body.get("params"))
    system = params.pop("system", None)
    if isinstance(params.get("stream_response"), bool):
        body["stream"] = params["stream_response"]  # a preset may force streaming on or off
    params = {k: v for k, v in params.items() if k not in WEBUI_PARAMS}
    items = retrieval_items(user, body, target.preset)
    top_k = _top_k(body.get("top_k"))
    dry_run = body.get("rag_dry_run") is True
    body = {k: v for k, v in body.items() if k not in CHAT_OWN_FIELDS}
    if isinstance(system, str) and system.strip():
        messages = with_system_prompt(messages, render_prompt(system, user))
    sources: list = []
    if items:
        messages, sources = _augment(ext, user, messages, items, top_k)
    body["messages"] = messages
    if dry_run:
        return dry_run_reply(target, requested, body, params, sources)
    if target.kind == "pipe":  # a function model, run in-process (gateway/pipes.py)
        return ext.pipes.chat(user, target, body, params, sources)
    if target.kind == "openai":
        return _openai_chat(ext.upstream, user, target, body, params, sources)
    return _ollama_chat(ext.upstream, user, target, requested, body, params, sources)


def refuse_unprovided(body: dict) -> None:
    """Open WebUI features this server does not run (web search, tools, ...) are refused by name: were
    they dropped, a script asking for a grounded answer would get an ungrounded one and no warning."""
    features = body.get("features")
    if features is not None and not isinstance(features, dict):
        raise Unprocessable("`features` must be an object.")
    asked = [f"features.{name}" for name, on in (features or {}).items() if on]
    asked += [name for name in ("tool_ids", "tool_servers") if body.get(name)]
    if asked:
        raise BadRequest(f"This server does not provide {', '.join(asked)}; remove "
                         f"{'it' if len(asked) == 1 else 'them'} from the request.")


def check_messages(messages: Any) -> list[dict]:
    """`messages` must be a non-empty list of {role, content} objects (content: text, parts or null)."""
    if not isinstance(messages, list) or not messages:
        raise Unprocessable("`messages` must be a non-empty list of {\"role\", \"content\"} objects.")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise Unprocessable(f"{where} must be an object with `role` and `content`.")
        if msg.get("role") not in ROLES:
            raise Unprocessable(f"{where}.role must be one of {', '.join(sorted(ROLES))}.")
        content = msg.get("content")
        if content is None and msg.get("role") != "assistant":
            raise Unprocessable(f"{where}.content is required.")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in content):
                raise Unprocessable(f"{where}.content parts must be objects with a `type`.")
        elif content is not None and not isinstance(content, str):
            raise Unprocessable(f"{where}.content must be a string or a list of parts.")
    return [dict(m) for m in messages]


def merged_params(stored: dict, requested: Any) -> dict:
    """Preset params ← request params (request wins, nulls ignored); `custom_params` merged in."""
    if requested is not None and not isinstance(requested, dict):
        raise Unprocessable("`params` must be an object.")
    out = dict(stored or {})
    out.update({k: v for k, v in (requested or {}).items() if v is not None})
    custom = out.pop("custom_params", None)
    if isinstance(custom, dict):
        for key, value in custom.items():
            out[key] = _maybe_json(value)
    return out


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def retrieval_items(user, body: dict, preset) -> list[dict]:
    """The request's `files` plus the preset's `meta.knowledge` the caller may read, without duplicates.

    A file the caller names and may not read is an error (404, from retrieval); knowledge attached to a
    shared preset that the caller may not read is skipped, so sharing a preset never shares private files."""
    requested = body.get("files")
    if requested is not None and (not isinstance(requested, list)
                                  or not all(isinstance(f, dict) for f in requested)):
        raise Unprocessable('`files` must be a list of objects such as {"type": "file", "id": "..."}.')
    meta = (preset.meta or {}) if preset is not None else {}
    if ((meta.get("capabilities") or {}).get("file_context")) is False:
        return []  # the preset turned retrieval off
    listed = meta.get("knowledge") if isinstance(meta.get("knowledge"), list) else []
    items, seen = [], set()
    attached = [k for k in listed if isinstance(k, dict) and _caller_may_read(user, k)]
    for item in list(requested or []) + attached:
        key = json.dumps(item, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            items.append(item)
    return items


def _caller_may_read(user, item: dict) -> bool:
    kind, ident = item.get("type"), item.get("id")
    if kind not in (None, "collection", "file"):
        return True  # other item kinds are left to retrieval to accept or ignore
    finders = {"collection": [knowledge.find], "file": [files.find]}.get(kind, [knowledge.find, files.find])
    if any(row is not None and policy.can_read(user, row) for row in (find(ident) for find in finders)):
        return True
    log.info("preset knowledge %s %s is not readable by user %s; skipped", kind, ident, user.id)
    return False


def _top_k(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Unprocessable("`top_k` must be a positive integer.")
    return value


def render_prompt(template: str, user) -> str:
    """Fill Open WebUI's common prompt variables."""
    now = datetime.now()
    values = {"{{USER_NAME}}": getattr(user, "name", "") or "", "{{CURRENT_DATE}}": now.strftime("%Y-%m-%d"),
              "{{CURRENT_TIME}}": now.strftime("%H:%M:%S"),
              "{{CURRENT_DATETIME}}": now.strftime("%Y-%m-%d %H:%M:%S"),
              "{{CURRENT_WEEKDAY}}": now.strftime("%A")}
    for key, value in values.items():
        template = template.replace(key, value)
    return template


def with_system_prompt(messages: list[dict], prompt: str) -> list[dict]:
    """Prepend `prompt` to the first system message (joined with a newline), or add one at the front."""
    for i, msg in enumerate(messages):
        if msg.get("role") != "system":
            continue
        content = msg.get("content")
        if isinstance(content, list):
            merged = [{"type": "text", "text": prompt}] + content
        else:
            merged = f"{prompt}\n{content}" if content else prompt
        return messages[:i] + [{**msg, "content": merged}] + messages[i + 1:]
    return [{"role": "system", "content": prompt}] + messages


def _augment(ext, user, messages, items, top_k):
    try:
        from ..rag import retrieve
    except ImportError as exc:
        log.error("retrieval requested but webui_api.rag.retrieve cannot be imported: %s", exc)
        raise ServiceUnavailable("Retrieval is not available on this server.") from None
    return retrieve.augment(ext, user, messages, items, top_k)


# --- OpenAI-compatible backends ----------------------------------------------------------------

def openai_payload(target, body: dict, params: dict) -> dict:
    """The body an OpenAI-compatible backend gets (chat or text completion): `body` with the params it
    takes filled in where the request has no own value, and the backend's model name."""
    for key, value in params.items():
        if key not in OLLAMA_ONLY:
            body.setdefault(key, value)  # the request's own top-level fields win
    body["model"] = target.upstream_model
    return body


def _openai_chat(upstream, user, target, body: dict, params: dict, sources: list) -> dict | Streamed:
    body = openai_payload(target, body, params)
    stream = bool(body.get("stream"))
    usage.ask_for_usage(body)
    resp = upstream.send(target.hosts, "POST", "/chat/completions", json=body, stream=stream, user=user)
    if resp.status_code >= 400:
        raise backend_error(resp, resp.backend)
    if not stream:
        data = _json_body(resp, resp.backend)
        _count_tokens(data)
        return {"sources": sources, **data} if sources else data
    return Streamed(_sse_passthrough(upstream, resp, sources, user))


def _sse_passthrough(upstream, resp, sources: list, user) -> Iterator[bytes]:
    """The backend's SSE bytes as they arrive; `sources` goes into the first chunk that has choices."""
    chunks = upstream.stream_chunks(resp)
    if usage.needed():
        chunks = usage.counted(chunks)
    try:
        pending, injected = b"", not sources
        for chunk in chunks:
            if injected:
                yield chunk
                continue
            out, pending, injected = _inject_sources(pending + chunk, sources)
            if out:
                yield out
        if pending:
            yield pending
    except Exception as exc:  # the response has started: end it with an error event, never hang
        yield from _stream_error(exc, user)
    finally:
        chunks.close()


def _inject_sources(buffer: bytes, sources: list) -> tuple[bytes, bytes, bool]:
    """Pass complete lines through until the first `data:` chunk with a non-empty `choices`, which gains
    `sources`. Returns (bytes to send, incomplete remainder, injected?)."""
    out = []
    while (end := buffer.find(b"\n")) >= 0:
        line, buffer = buffer[:end + 1], buffer[end + 1:]
        text = line.strip()
        if text.startswith(b"data:"):
            try:
                obj = json.loads(text[5:])
            except ValueError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("choices"), list) and obj["choices"]:
                newline = line[len(line.rstrip(b"\r\n")):]
                out.append(b"data: " + _dumps({"sources": sources, **obj}) + newline + buffer)
                return b"".join(out), b"", True
        out.append(line)
    return b"".join(out), buffer, False


# --- Ollama backends ---------------------------------------------------------------------------

def ollama_chat_payload(target, body: dict, params: dict) -> dict:
    """The /api/chat body an Ollama backend gets for an OpenAI-style chat `body` and the merged `params`."""
    options = body.pop("options", None)
    if options is not None and not isinstance(options, dict):
        raise Unprocessable("`options` must be an object.")
    for key, value in params.items():
        if key not in OLLAMA_NATIVE_OPTIONS and key not in OLLAMA_TOP_LEVEL:
            body.setdefault(key, value)  # OpenAI names (temperature, max_tokens, ...): converted below
    body["model"] = target.upstream_model
    payload = convert.openai_to_ollama_chat(body)
    payload["options"] = {**{k: v for k, v in params.items() if k in OLLAMA_NATIVE_OPTIONS},
                          **(payload.get("options") or {}), **(options or {})}
    if not payload["options"]:
        del payload["options"]
    for key in OLLAMA_TOP_LEVEL & params.keys():
        payload.setdefault(key, params[key])
    payload["stream"] = bool(body.get("stream"))
    return payload


def _ollama_chat(upstream, user, target, requested: str, body: dict, params: dict,
                 sources: list) -> dict | Streamed:
    payload = ollama_chat_payload(target, body, params)
    stream = payload["stream"]
    include_usage = stream and bool((body.get("stream_options") or {}).get("include_usage"))
    completion_id, created = convert.new_completion_id(), int(time.time())
    resp = upstream.send(target.hosts, "POST", "/api/chat", json=payload, stream=stream, user=user)
    if resp.status_code >= 400:
        raise backend_error(resp, resp.backend)
    if not stream:
        data = _json_body(resp, resp.backend)
        if isinstance(data, dict) and data.get("error"):
            raise UpstreamError(f"{resp.backend.label}: {data['error']}")
        completion = convert.ollama_to_openai_completion(data, requested, completion_id, created)
        _count_tokens(completion)
        return {"sources": sources, **completion} if sources else completion
    converter = convert.OllamaStreamConverter(requested, completion_id, created, include_usage)
    return Streamed(_ollama_sse(upstream, resp, converter, sources, user))


def _ollama_sse(upstream, resp, converter, sources: list, user) -> Iterator[bytes]:
    """NDJSON from Ollama → `chat.completion.chunk` events, `[DONE]` last; failures → an error event."""
    lines = upstream.stream_lines(resp)
    label = resp.backend.label if getattr(resp, "backend", None) else "backend"
    pending_sources = sources or None
    try:
        finished = False
        for obj in ollama_objects(lines, label):
            for chunk in converter.feed(obj):
                if pending_sources and isinstance(chunk.get("choices"), list) and chunk["choices"]:
                    chunk, pending_sources = {"sources": pending_sources, **chunk}, None
                _count_tokens(chunk)
                yield convert.sse(chunk)
            finished = finished or bool(obj.get("done"))
        if not finished:
            raise UpstreamError(f"{label} ended the stream before the reply was complete")
        for chunk in converter.finish():
            yield convert.sse(chunk)
        yield convert.SSE_DONE
    except Exception as exc:  # the response has started: end it with an error event, never hang
        yield from _stream_error(exc, user)
    finally:
        lines.close()


def ollama_objects(lines, label: str) -> Iterator[dict]:
    """The objects of an Ollama NDJSON stream; a line that is not JSON, or one carrying `error`, fails it."""
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            raise UpstreamError(f"{label} sent a line that is not JSON") from None
        if isinstance(obj, dict) and obj.get("error"):
            raise UpstreamError(f"{label}: {obj['error']}")
        if isinstance(obj, dict):
            yield obj


def _stream_error(exc: Exception, user) -> Iterator[bytes]:
    if isinstance(exc, ApiError):
        log.warning("chat stream failed: %s", exc.detail)
        detail, status = policy.as_shown_to(user, exc.detail), exc.status
    else:
        log.exception("chat stream failed")
        detail, status = "internal error", 500
    yield convert.sse(convert.error_event(f"{STREAM_FAILED}: {detail}", status))
    yield convert.SSE_DONE


# --- RAG dry run -------------------------------------------------------------------------------

UPSTREAM_PAYLOADS = {"openai": openai_payload, "ollama": ollama_chat_payload}


def dry_run_reply(target, requested: str, body: dict, params: dict, sources: list) -> dict:
    """`rag_dry_run: true`: the messages the backend would get (built by the same payload builder as the
    real call, after preset, retrieval and template) and the sources; the chat model is not called."""
    build = UPSTREAM_PAYLOADS.get(target.kind)
    payload = build(target, body, params) if build else body
    return {"object": "chat.completion.dry_run", "model": requested, "messages": payload["messages"],
            "sources": sources}


# --- embeddings --------------------------------------------------------------------------------

def embeddings(ext, user, body: dict) -> dict:
    """OpenAI-format embeddings for any registered model (Ollama via /api/embed, OpenAI via /embeddings)."""
    requested = body.get("model")
    target = ext.catalog.resolve(user, requested)
    if target.kind == "pipe":
        raise BadRequest(f"Model '{requested}' is a function (pipe) model, which makes no embeddings.")
    inputs = body.get("input")
    if target.kind == "openai":
        _check_input(inputs, tokens_ok=True)
        payload = {k: v for k, v in body.items() if k not in CHAT_OWN_FIELDS}
        payload["model"] = target.upstream_model
        resp = ext.upstream.send(target.hosts, "POST", "/embeddings", json=payload, user=user)
        if resp.status_code >= 400:
            raise backend_error(resp, resp.backend)
        data = _json_body(resp, resp.backend)
        _count_tokens(data)
        return data
    _check_input(inputs, tokens_ok=False)
    payload = {"model": target.upstream_model, "input": inputs}
    payload.update({k: body[k] for k in ("truncate", "options", "keep_alive", "dimensions") if k in body})
    resp = ext.upstream.send(target.hosts, "POST", "/api/embed", json=payload, user=user)
    if resp.status_code >= 400:
        raise backend_error(resp, resp.backend)
    data = _json_body(resp, resp.backend)
    if not isinstance(data, dict) or not isinstance(data.get("embeddings"), list):
        raise UpstreamError(f"{resp.backend.label} returned no embeddings")
    result = convert.ollama_embed_to_openai(data, requested, body.get("encoding_format"))
    _count_tokens(result)
    return result


def _check_input(inputs: Any, tokens_ok: bool) -> None:
    if isinstance(inputs, str):
        return
    if isinstance(inputs, list) and inputs:
        if all(isinstance(t, str) for t in inputs):
            return
        if _token_ids(inputs):
            if tokens_ok:
                return
            raise Unprocessable("Ollama models embed text, not token ids: send `input` as a string or a "
                                "list of strings (langchain's OpenAIEmbeddings: check_embedding_ctx_length="
                                "False).")
    raise Unprocessable("`input` must be a string or a non-empty list of strings.")


def _token_ids(inputs: list) -> bool:
    """One list of token ids, or a list of them (what tiktoken-based clients send)."""
    return (all(isinstance(t, int) for t in inputs)
            or all(isinstance(t, list) and all(isinstance(i, int) for i in t) for t in inputs))


# --- shared ------------------------------------------------------------------------------------

def backend_error(resp, backend) -> ApiError:
    """A backend's error answer as upstream.http_error words it for our client; closes the response."""
    try:
        return http_error(resp, backend)
    finally:
        resp.close()


def _json_body(resp, backend) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise UpstreamError(f"{backend.label} returned a body that is not JSON") from None
    finally:
        resp.close()


def _count_tokens(reply: Any) -> None:
    """Charge a reply's `usage` (if it carries one) to the current request's metrics."""
    usage.record(reply)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
