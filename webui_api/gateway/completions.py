"""Legacy text completions (`/api/v1/completions`): OpenAI's `text_completion` over any catalogue model."""
from __future__ import annotations

import time
import uuid
from typing import Any, Iterator

from . import convert
from .chat import (Streamed, _count_tokens, _json_body, _sse_passthrough, _stream_error, backend_error,
                   merged_params, ollama_objects, openai_payload)
from .fields import CHAT_OWN_FIELDS, WEBUI_PARAMS
from ..errors import BadRequest, Unprocessable, UpstreamError


def text_completion(ext, user, body: dict) -> dict | Streamed:
    """Complete `prompt` with the model (or preset: its sampling params apply) the catalogue resolves:
    OpenAI connections get `/completions` as sent, Ollama backends `/api/generate`, converted."""
    requested = body.get("model")
    target = ext.catalog.resolve(user, requested)
    params = {k: v for k, v in merged_params(target.params, None).items() if k not in WEBUI_PARAMS}
    body = {k: v for k, v in body.items() if k not in CHAT_OWN_FIELDS}
    if target.kind == "openai":
        return _openai_completion(ext.upstream, user, target, body, params)
    if target.kind == "ollama":
        return _ollama_completion(ext.upstream, user, target, requested, body, params)
    raise BadRequest(f"Model '{requested}' does not offer text completions; use /api/chat/completions.")


def _openai_completion(upstream, user, target, body: dict, params: dict) -> dict | Streamed:
    payload = openai_payload(target, body, params)
    stream = bool(payload.get("stream"))
    resp = upstream.send(target.hosts, "POST", "/completions", json=payload, stream=stream, user=user)
    if resp.status_code >= 400:
        raise backend_error(resp, resp.backend)
    if not stream:
        data = _json_body(resp, resp.backend)
        _count_tokens(data)
        return data
    return Streamed(_sse_passthrough(upstream, resp, [], user))


def single_prompt(prompt: Any) -> str:
    """Ollama generates from one text: a string, or a list holding exactly one string."""
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise Unprocessable("`prompt` must be a string (Ollama models take one text prompt per request, "
                            "not token ids or several prompts).")
    return prompt


def _ollama_completion(upstream, user, target, requested: str, body: dict, params: dict) -> dict | Streamed:
    if body.get("options") is not None and not isinstance(body["options"], dict):
        raise Unprocessable("`options` must be an object.")
    body["model"] = target.upstream_model
    payload = convert.openai_to_ollama_generate(body, single_prompt(body.get("prompt")), params)
    ident = (f"cmpl-{uuid.uuid4().hex}", int(time.time()), requested)  # id, created, model of every chunk
    resp = upstream.send(target.hosts, "POST", "/api/generate", json=payload, stream=payload["stream"],
                         user=user)
    if resp.status_code >= 400:
        raise backend_error(resp, resp.backend)
    if payload["stream"]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return Streamed(_ollama_stream(upstream, resp, ident, include_usage, user))
    return _ollama_answer(resp, ident)


def _ollama_answer(resp, ident: tuple) -> dict:
    """A non-streamed /api/generate answer as a `text_completion`."""
    data = _json_body(resp, resp.backend)
    if not isinstance(data, dict) or data.get("error"):
        raise UpstreamError(f"{resp.backend.label}: {data.get('error') if isinstance(data, dict) else data}")
    usage = convert.generate_usage(data)
    _count_tokens({"usage": usage})
    finish = convert.finish_reason(data.get("done_reason"), False)
    return convert.text_completion(*ident, data.get("response") or "", finish, usage)


def _ollama_stream(upstream, resp, ident: tuple, include_usage: bool, user) -> Iterator[bytes]:
    """Ollama's NDJSON generate lines -> `text_completion` chunks, `[DONE]` last; failures -> an error
    event."""
    lines = upstream.stream_lines(resp)
    label = resp.backend.label
    try:
        for obj in ollama_objects(lines, label):
            if obj.get("response"):
                yield convert.sse(convert.text_completion(*ident, obj["response"], None))
            if obj.get("done"):
                yield from _final_chunks(ident, obj, include_usage)
                return
        raise UpstreamError(f"{label} ended the stream before the reply was complete")
    except Exception as exc:  # the response has started: end it with an error event, never hang
        yield from _stream_error(exc, user)
    finally:
        lines.close()


def _final_chunks(ident: tuple, done: dict, include_usage: bool) -> Iterator[bytes]:
    """The chunk with `finish_reason` (carrying usage, or followed by the `choices: []` usage chunk when
    include_usage asks for it), then `[DONE]`."""
    usage = convert.generate_usage(done)
    _count_tokens({"usage": usage})
    finish = convert.finish_reason(done.get("done_reason"), False)
    yield convert.sse(convert.text_completion(*ident, "", finish, None if include_usage else usage))
    if include_usage:
        yield convert.sse({**convert.text_completion(*ident, "", None), "choices": [], "usage": usage})
    yield convert.SSE_DONE

