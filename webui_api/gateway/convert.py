"""OpenAI <-> Ollama conversion for chat and embeddings: pure functions, no I/O."""
from __future__ import annotations

import base64
import json
import struct
import uuid
from typing import Any

from ..errors import BadRequest, openai_error
from .fields import OLLAMA_OPTIONS, OLLAMA_TOP_LEVEL, OPENAI_SAMPLING

SSE_DONE = b"data: [DONE]\n\n"


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def sse(obj: Any) -> bytes:
    """One Server-Sent Event carrying `obj` as JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def error_event(message: Any, status: int = 502) -> dict:
    """The SSE error payload streamed to a client when an answer fails after it began: OpenAI's error
    object, as in an error body."""
    return {"error": openai_error(message, status)}


# ----------------------------------------------------------------------------- OpenAI -> Ollama

def _options_from(source: dict) -> dict:
    """Ollama options from OpenAI-style or Ollama-style keys of `source` (a body or a params dict)."""
    options = {}
    for key, value in source.items():
        if value is None:
            continue
        if key in ("max_tokens", "max_completion_tokens"):
            options["num_predict"] = value
        elif key in OPENAI_SAMPLING or key in OLLAMA_OPTIONS:
            options[key] = value
    if isinstance(options.get("stop"), str):
        options["stop"] = [options["stop"]]
    if "max_completion_tokens" in source and source["max_completion_tokens"] is not None:
        options["num_predict"] = source["max_completion_tokens"]  # the newer name wins over max_tokens
    return options


def format_from_response_format(response_format: Any) -> Any:
    """OpenAI `response_format` -> Ollama `format` ("json", a JSON schema, or None)."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        return spec.get("schema") or "json"
    return None


def _image_data(part: dict) -> str:
    url = part.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str) or not url:
        raise BadRequest("image_url parts need a url")
    if url.startswith("data:"):
        return url.split(",", 1)[1] if "," in url else ""
    if url.startswith(("http://", "https://")):
        raise BadRequest("Ollama models take images as data: URLs (base64), not links")
    return url  # already bare base64


def _tool_calls_to_ollama(calls: Any) -> list[dict]:
    out = []
    for call in calls or []:
        function = (call or {}).get("function") or {}
        args = function.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise BadRequest(f"tool call arguments are not valid JSON: {args[:100]!r}") from None
        item = {"function": {"name": function.get("name", ""), "arguments": args or {}}}
        if call.get("id"):
            item["id"] = call["id"]
        out.append(item)
    return out


def convert_message(message: Any, tool_names: dict[str, str]) -> dict:
    """One OpenAI chat message -> Ollama. `tool_names` maps tool_call ids seen so far to function names."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadRequest("each message needs a role")
    out: dict[str, Any] = {"role": message["role"]}
    content = message.get("content")
    if isinstance(content, list):
        texts, images = [], []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                images.append(_image_data(part))
        out["content"] = "\n".join(t for t in texts if t).strip()
        if images:
            out["images"] = images
    else:
        out["content"] = "" if content is None else str(content)
    if message.get("images"):  # already Ollama-style
        out["images"] = list(out.get("images", [])) + list(message["images"])
    if message.get("tool_calls"):
        out["tool_calls"] = _tool_calls_to_ollama(message["tool_calls"])
        for call in message["tool_calls"]:
            if isinstance(call, dict) and call.get("id"):
                tool_names[call["id"]] = (call.get("function") or {}).get("name", "")
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
        if tool_names.get(message["tool_call_id"]):
            out["tool_name"] = tool_names[message["tool_call_id"]]
    thinking = message.get("reasoning_content") or message.get("reasoning") or message.get("thinking")
    if thinking:
        out["thinking"] = thinking
    return out


def openai_to_ollama_chat(body: dict) -> dict:
    """An OpenAI chat.completions body -> an Ollama /api/chat body.

    Precedence for options: `params` < top-level OpenAI/Ollama keys < explicit `options`.
    `stream` is always explicit (Ollama would default to true)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    tool_names: dict[str, str] = {}
    out: dict[str, Any] = {"model": body.get("model"),
                           "messages": [convert_message(m, tool_names) for m in messages],
                           "stream": bool(body.get("stream", False))}
    params = body.get("params") if isinstance(body.get("params"), dict) else {}
    options = {**_options_from(params), **_options_from(body), **(body.get("options") or {})}
    for key in OLLAMA_TOP_LEVEL:  # Open WebUI lifts these out of options/params
        for source in (params, options, body):
            if source.get(key) is not None:
                out[key] = source[key]
        options.pop(key, None)
    fmt = format_from_response_format(body.get("response_format"))
    if fmt is not None:
        out["format"] = fmt
    if options:
        out["options"] = options
    if body.get("tools"):
        out["tools"] = body["tools"]
    return out


# ----------------------------------------------------------------------------- Ollama -> OpenAI

def _rate(tokens: Any, duration_ns: Any) -> Any:
    try:
        return round(float(tokens) / (float(duration_ns) / 1e9), 2) if duration_ns else "N/A"
    except (TypeError, ValueError, ZeroDivisionError):
        return "N/A"


def _approximate(duration_ns: Any) -> str:
    seconds = int((duration_ns or 0) // 1_000_000_000)
    return f"{seconds // 3600}h{seconds % 3600 // 60}m{seconds % 60}s"


def usage_from_ollama(d: dict) -> dict:
    """OpenAI `usage` (plus Open WebUI's extra keys) from an Ollama final line's counters."""
    prompt, completion = int(d.get("prompt_eval_count") or 0), int(d.get("eval_count") or 0)
    return {
        "input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens": prompt, "completion_tokens": completion,
        "response_token/s": _rate(completion, d.get("eval_duration")),
        "prompt_token/s": _rate(prompt, d.get("prompt_eval_duration")),
        "total_duration": d.get("total_duration", 0), "load_duration": d.get("load_duration", 0),
        "prompt_eval_count": prompt, "prompt_eval_duration": d.get("prompt_eval_duration", 0),
        "eval_count": completion, "eval_duration": d.get("eval_duration", 0),
        "approximate_total": _approximate(d.get("total_duration")),
        "completion_tokens_details": {"reasoning_tokens": 0, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }


def tool_calls_to_openai(calls: Any, with_index: bool = False, start: int = 0) -> list[dict]:
    """Ollama tool calls (arguments as objects) -> OpenAI ones (arguments as JSON strings, call ids)."""
    out = []
    for i, call in enumerate(calls or []):
        function = (call or {}).get("function") or {}
        args = function.get("arguments", {})
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False)
        item = {"id": call.get("id") or f"call_{uuid.uuid4().hex}", "type": "function",
                "function": {"name": function.get("name", ""), "arguments": args}}
        if with_index:
            item = {"index": start + i, **item}
        out.append(item)
    return out


def finish_reason(done_reason: Any, saw_tool_calls: bool) -> str:
    if saw_tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"  # "load"/"unload"/None all mean a normal end


def ollama_to_openai_completion(ollama_json: dict, model: str, completion_id: str, created: int) -> dict:
    """A non-streamed Ollama /api/chat answer -> an OpenAI `chat.completion`."""
    message = ollama_json.get("message") or {}
    calls = tool_calls_to_openai(message.get("tool_calls"))
    out_message: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if calls:
        out_message["tool_calls"] = calls
        out_message["content"] = out_message["content"] or None
    if message.get("thinking"):
        out_message["reasoning_content"] = message["thinking"]
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "logprobs": None, "message": out_message,
                         "finish_reason": finish_reason(ollama_json.get("done_reason"), bool(calls))}],
            "usage": usage_from_ollama(ollama_json)}


class OllamaStreamConverter:
    """Ollama NDJSON lines (decoded) -> OpenAI `chat.completion.chunk`s, one chunk per line.

    feed(line) returns the chunks for that line; the `done` line yields the chunk with `finish_reason`
    (carrying usage unless include_usage asks for the separate `choices: []` usage chunk, which follows).
    An `{"error": ...}` line yields an error event and ends the conversion. finish() returns what is still
    owed at the end of the upstream stream: nothing normally, an error event if the answer never finished.
    The caller writes each returned dict with sse() and ends with SSE_DONE."""

    def __init__(self, model: str, completion_id: str, created: int, include_usage: bool = False):
        self.model, self.id, self.created = model, completion_id, created
        self.include_usage = bool(include_usage)
        self.started = self.ended = False
        self.tool_calls_seen = 0

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model,
                 "choices": [{"index": 0, "logprobs": None, "finish_reason": finish, "delta": delta}]}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _delta(self, message: dict) -> dict:
        delta: dict[str, Any] = {}
        if not self.started:
            delta["role"] = "assistant"
            self.started = True
        if message.get("content") or not message.get("tool_calls"):
            delta["content"] = message.get("content") or ""
        if message.get("thinking"):
            delta["reasoning_content"] = message["thinking"]
        if message.get("tool_calls"):
            delta["tool_calls"] = tool_calls_to_openai(message["tool_calls"], True, self.tool_calls_seen)
            self.tool_calls_seen += len(message["tool_calls"])
        return delta

    def feed(self, line: dict) -> list[dict]:
        if self.ended or not isinstance(line, dict):
            return []
        if "error" in line:
            self.ended = True
            err = line["error"]
            return [error_event(err.get("message", err) if isinstance(err, dict) else err)]
        message = line.get("message") or {}
        if not line.get("done"):
            return [self._chunk(self._delta(message))]
        self.ended = True
        chunks = [self._chunk(self._delta(message))] if message.get("content") or message.get("tool_calls") \
            or message.get("thinking") or not self.started else []
        final = self._chunk({}, finish_reason(line.get("done_reason"), self.tool_calls_seen > 0))
        usage = usage_from_ollama(line)
        if self.include_usage:
            chunks += [final, {**self._chunk({}), "choices": [], "usage": usage}]
        else:
            chunks.append({**final, "usage": usage})
        return chunks

    def finish(self) -> list[dict]:
        if self.ended:
            return []
        self.ended = True
        return [error_event("The backend ended the stream before the answer was complete")]


# ----------------------------------------------------------------------------- embeddings

def encode_embedding(vector: list[float], encoding_format: str | None) -> Any:
    """A float list, or base64 of little-endian float32 when the client asked for `base64`."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def ollama_embed_to_openai(ollama_json: dict, model: str, encoding_format: str | None = None) -> dict:
    """An Ollama /api/embed answer -> an OpenAI embeddings list."""
    vectors = ollama_json.get("embeddings") or []
    tokens = int(ollama_json.get("prompt_eval_count") or 0)
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode_embedding(v, encoding_format)}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# ----------------------------------------------------------------------------- legacy text completions

def openai_to_ollama_generate(body: dict, prompt: str, params: dict) -> dict:
    """An OpenAI completions body (its single `prompt` given apart) -> an Ollama /api/generate body.
    Options: `params` < the body's OpenAI/Ollama keys < explicit `options`; `stream` always explicit."""
    options = {**_options_from(params), **_options_from(body), **(body.get("options") or {})}
    out: dict[str, Any] = {"model": body.get("model"), "prompt": prompt, "stream": bool(body.get("stream"))}
    for key in ("suffix", "keep_alive", "raw"):
        if body.get(key) is not None:
            out[key] = body[key]
    if options:
        out["options"] = options
    return out


def text_completion(completion_id: str, created: int, model: str, text: str, finish: str | None,
                    usage: dict | None = None) -> dict:
    """OpenAI's `text_completion` object (a whole answer, or one streamed chunk when `finish` is None)."""
    out = {"id": completion_id, "object": "text_completion", "created": created, "model": model,
           "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage
    return out


def generate_usage(d: dict) -> dict:
    """OpenAI's completions `usage` from an Ollama final line's counters."""
    prompt, completion = int(d.get("prompt_eval_count") or 0), int(d.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
