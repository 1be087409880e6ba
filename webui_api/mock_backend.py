"""A fake LLM backend (stdlib only): a real HTTP server speaking the Ollama API and the OpenAI API (under /v1),
for the test suite and for trying the service with no model (`webui-api mock-backend --port 11434`).

Behaviour tests can rely on:
* Replies echo the last user message: "[msgs=N chars=C] echo: <text> t0 t1 ... t7 " split into tokens on
  spaces (one NDJSON line / SSE chunk per token). With images: "[msgs=N chars=C images=K] ...". When the
  last message is a tool result the reply is "tool result: <content>". With `format` (Ollama) or
  `response_format` json (OpenAI) the reply is one JSON token `{"echo": "<last user text>"}`.
* Token counts: prompt tokens = words over all messages; completion tokens = tokens emitted.
  `options.num_predict` (Ollama) / `max_tokens` / `max_completion_tokens` (OpenAI) cut the reply and give
  done_reason / finish_reason "length".
* Tool calls: when the request has `tools` and the last user message contains the word "tool", the model
  calls the tool whose name appears in that message (else the first tool) with arguments built from the
  tool's JSON schema (strings get the user text, numbers 1, booleans true).
* Embeddings: hashed bag of words, L2-normalised, 64 dims (per model: `embed_dims`); shared words give a
  higher cosine similarity. OpenAI `encoding_format: "base64"` (the SDK default) is honoured.
* OpenAI text completions (`/v1/completions`, `text_completion`, one choice per prompt) and the Responses API
  (`/v1/responses`: `input` text or message items plus `instructions`; streamed as named SSE events
  `response.created` ... `response.output_text.delta` ... `response.completed`, no `[DONE]`), echoing like chat.
* Ollama's keyless OpenAI-compatible layer: a `/v1/chat/completions|completions|embeddings|responses` call whose
  `model` is an installed Ollama model is answered without the OpenAI key (the Ollama key if one is set),
  as Ollama's `/v1` does, with `system_fingerprint: "fp_ollama"`.
* Rerank (OpenAI side, `POST /v1/rerank`, Jina/Cohere shape): relevance = share of the query's distinct words
  found in the document (`overlap_score`), best first (ties by index), `top_n` kept.
* Faults (`.fault = {"kind": ..., "path": prefix, "model": name?, "delay": s, "after": n, "status": code,
  "message": text}`): "http500" (error status + JSON error body), "slow" (sleep `delay`, default 2 s, before
  answering), "hang" (never answer until `.stop()`), "drop" (send `after` lines, default 2, then cut the
  connection; non-streaming replies are cut mid-body), "error" (streaming: `after` lines then an error line
  `{"error": msg}` / SSE error event, then a clean end). `.stop()` takes the backend down (connection refused).
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import socket
import struct
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

OPENAI_KEY = "sk-fake-openai-key"
DEFAULT_OLLAMA_MODELS = ["llama3.2:latest", "llama3.1:latest", "nomic-embed-text:latest"]
DEFAULT_OPENAI_MODELS = ["gpt-4o-mini", "gpt-4-turbo", "text-embedding-3-small"]
DURATIONS = {"total_duration": 123456789, "load_duration": 1234567,
             "prompt_eval_duration": 2345678, "eval_duration": 34567890}
EXTRA_TOKENS = 8
CREATED_AT = "2026-11-24T21:25:03.000000000Z"


class _Dropped(Exception):
    """The handler cut the connection on purpose."""


# ----------------------------------------------------------------------------- pure helpers

def embed_text(text: str, dim: int = 64) -> list[float]:
    """Deterministic hashed bag-of-words embedding, L2-normalised (empty text -> unit vector e0)."""
    vec = [0.0] * dim
    for word in re.findall(r"\w+", str(text).lower()):
        vec[int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big") % dim] += 1.0
    norm = math.sqrt(sum(v * v for v in vec))
    if not norm:
        vec[0] = 1.0
        return vec
    return [v / norm for v in vec]


def overlap_score(query: str, document: str) -> float:
    """The fake reranker's relevance: the share of the query's distinct words found in the document."""
    words = set(re.findall(r"\w+", query.lower()))
    return len(words & set(re.findall(r"\w+", document.lower()))) / len(words) if words else 0.0


def text_of(content) -> str:
    """Text of a message content: a string, or the joined text parts of an OpenAI parts list."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


def _image_count(msg: dict) -> int:
    content = msg.get("content")
    parts = [p for p in content if isinstance(p, dict) and p.get("type") == "image_url"] \
        if isinstance(content, list) else []
    return len(msg.get("images") or []) + len(parts)


def _word_count(messages: list) -> int:
    return sum(len(text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))


def _tool_args(tool: dict, text: str) -> dict:
    props = ((tool.get("function") or {}).get("parameters") or {}).get("properties") or {}
    by_type = {"string": text, "number": 1, "integer": 1, "boolean": True}
    return {name: by_type.get((spec or {}).get("type"), text) for name, spec in props.items()}


def plan_reply(messages: list, tools=None, json_mode=False, limit=None) -> dict:
    """What the fake model answers: {"tokens", "tool_calls", "reason", "prompt_tokens"}."""
    messages = [m for m in messages if isinstance(m, dict)]
    users = [m for m in messages if m.get("role") == "user"]
    last_user = text_of(users[-1].get("content")) if users else ""
    plan = {"tokens": [], "tool_calls": [], "reason": "stop", "prompt_tokens": _word_count(messages)}
    if messages and messages[-1].get("role") == "tool":
        plan["tokens"] = [w + " " for w in ("tool result: " + text_of(messages[-1].get("content"))).split()]
    elif tools and re.search(r"\btool\b", last_user, re.I):
        named = [t for t in tools if (t.get("function") or {}).get("name", "\0") in last_user]
        tool = (named or tools)[0]
        plan["tool_calls"] = [{"name": tool["function"]["name"], "arguments": _tool_args(tool, last_user)}]
        return plan
    elif json_mode:
        plan["tokens"] = [json.dumps({"echo": last_user})]
    else:
        images = sum(_image_count(m) for m in messages)
        head = f"[msgs={len(messages)} chars={len(last_user)}" + (f" images={images}" if images else "")
        words = f"{head}] echo: {last_user}".split()
        plan["tokens"] = [w + " " for w in words] + [f"t{i} " for i in range(EXTRA_TOKENS)]
    if limit is not None and 0 <= int(limit) < len(plan["tokens"]):
        plan["tokens"], plan["reason"] = plan["tokens"][:int(limit)], "length"
    return plan


# ----------------------------------------------------------------------------- server plumbing

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default 5 refuses connections when 64 clients arrive at once (benches)

    def __init__(self, backend: "FakeBackend", host: str, port: int):
        self.backend = backend
        super().__init__((host, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeLLM/1.0"
    timeout = 30  # idle keep-alive connections end eventually

    def log_message(self, *args):  # keep test output (and a standalone run's terminal) clean
        pass

    def setup(self):
        super().setup()
        # headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40 ms per reply
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.backend._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.backend._track(self.connection, False)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if not size:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        backend = self.server.backend
        split = urlsplit(self.path)
        raw = self._read_body()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = ValueError
        backend._record({"method": method, "path": split.path, "query": parse_qs(split.query),
                         "headers": dict(self.headers.items()), "json": None if data is ValueError else data,
                         "body": raw, "time": time.monotonic()})
        self.fault_plan = None
        try:
            if backend._apply_fault(self, split.path, data):
                return
            if data is ValueError:
                return self.send_error_json(400, "invalid JSON body", split.path)
            backend._route(self, method, split.path, data if isinstance(data, dict) else {})
        except _Dropped:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True

    # --- response writers
    def send_json(self, status: int, obj, content_type="application/json; charset=utf-8") -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if self.fault_plan and self.fault_plan["kind"] == "drop":
            self.wfile.write(body[: len(body) // 2])
            self.drop()
        self.wfile.write(body)

    def send_text(self, status: int, text: str, content_type="text/plain; charset=utf-8") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error_json(self, status: int, message: str, path: str) -> None:
        if path.startswith("/v1/"):
            kind = "invalid_request_error" if status < 500 else "server_error"
            return self.send_json(status, {"error": {"message": message, "type": kind, "param": None,
                                                     "code": None}})
        self.send_json(status, {"error": message})

    def stream(self, payloads: list, sse: bool, named: bool = False) -> None:
        """Send each payload as its own HTTP chunk (NDJSON line or SSE event), honouring delay and faults.
        `named`: Responses API events (`event: <type>` lines, no `data: [DONE]` at the end)."""
        backend = self.server.backend
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if sse else "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        plan = self.fault_plan or {}
        for i, payload in enumerate(payloads):
            if plan and i == int(plan.get("after", 2)):
                if plan["kind"] == "drop":
                    self.drop()
                error = plan.get("message", "upstream exploded mid-stream")
                self._chunk({"error": {"message": error}} if sse else {"error": error}, sse)
                break
            if i and backend.token_delay:
                backend._stopping.wait(backend.token_delay)
            self._chunk(payload, sse, named)
        if sse and not named:
            self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    def _chunk(self, payload, sse: bool, named: bool = False) -> None:
        text = json.dumps(payload)
        event = f"event: {payload.get('type', 'error')}\n" if named else ""
        self._write_chunk((f"{event}data: {text}\n\n" if sse else text + "\n").encode())

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def drop(self):
        """Cut the connection abruptly (no chunked terminator, no complete body)."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise _Dropped()


# ----------------------------------------------------------------------------- the backend

class FakeBackend:
    """One fake server. Editable state: ollama_models, openai_models, token_delay, fault, embed_dims."""

    def __init__(self, ollama_models=None, openai_models=None, openai_key: str = OPENAI_KEY,
                 ollama_key: str | None = None, version: str = "0.6.8", host: str = "127.0.0.1", port: int = 0,
                 record: bool = True):
        self.ollama_models = list(DEFAULT_OLLAMA_MODELS if ollama_models is None else ollama_models)
        self.openai_models = list(DEFAULT_OPENAI_MODELS if openai_models is None else openai_models)
        self.openai_key = openai_key
        self.ollama_key = ollama_key  # None: Ollama routes do not check a key (like a stock Ollama)
        self.version = version
        self.loaded_models: list[str] = []
        self.token_delay = 0.0
        self.fault: dict | None = None
        self.embed_dims: dict[str, int] = {}
        self.requests: list[dict] = []
        self.record = record  # off when run on its own: a long-lived server must not keep every request
        self._lock = threading.Lock()
        self._conns: set = set()
        self._stopping = threading.Event()
        self._server = _Server(self, host, port)
        self.port = self._server.server_address[1]
        self.url = f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{self.port}"
        self.openai_url = self.url + "/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-backend-{self.port}", daemon=True)
        self._thread.start()
        self.running = True

    # --- lifecycle and bookkeeping
    def stop(self, drain: bool = False) -> None:
        """Take the backend down: no listener, open connections cut, hanging handlers released. With `drain`,
        replies under way finish and every connection then closes (nothing more is read from it), as a
        replica taken out of service: a stream cut midway cannot be retried, its client has part of it."""
        if not self.running:
            return
        self.running = False
        if not drain:
            self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RD if drain else socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    close = stop

    def _track(self, conn, alive: bool) -> None:
        with self._lock:
            (self._conns.add if alive else self._conns.discard)(conn)

    def _record(self, entry: dict) -> None:
        if not self.record:
            return
        with self._lock:
            self.requests.append(entry)

    def requests_to(self, path: str) -> list[dict]:
        """Recorded requests whose path equals `path`."""
        with self._lock:
            return [r for r in self.requests if r["path"] == path]

    def last(self, path: str | None = None) -> dict | None:
        """The most recent recorded request (to `path`, if given)."""
        found = self.requests_to(path) if path else list(self.requests)
        return found[-1] if found else None

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
        self.fault, self.token_delay = None, 0.0

    # --- faults
    def _apply_fault(self, handler: _Handler, path: str, data) -> bool:
        """Apply the configured fault; True when the request has been fully answered."""
        fault = dict(self.fault) if self.fault else None
        if not fault or not path.startswith(fault.get("path", "")):
            return False
        if fault.get("model") and not (isinstance(data, dict) and data.get("model") == fault["model"]):
            return False
        kind = fault["kind"]
        if kind == "http500":
            handler.send_error_json(int(fault.get("status", 500)), fault.get("message", "upstream exploded"), path)
            return True
        if kind == "slow":
            self._stopping.wait(float(fault.get("delay", 2.0)))
            return False
        if kind == "hang":
            self._stopping.wait()
            handler.drop()
        if kind in ("drop", "error"):
            handler.fault_plan = fault
            return False
        raise ValueError(f"unknown fault kind {kind!r}")

    # --- routing
    def _route(self, h: _Handler, method: str, path: str, body: dict) -> None:
        compat = self._ollama_compat_routes().get((method, path))
        if compat and self.resolve(body.get("model")) and body.get("model") not in self.openai_models:
            if self.ollama_key and h.headers.get("Authorization") != f"Bearer {self.ollama_key}":
                return h.send_json(401, {"error": "unauthorized"})
            return compat(h, body)
        if path.startswith("/v1/"):
            if h.headers.get("Authorization") != f"Bearer {self.openai_key}":
                return h.send_json(401, {"error": {"message": "Incorrect API key provided.",
                                                   "type": "invalid_request_error", "param": None,
                                                   "code": "invalid_api_key"}})
            route = {("GET", "/v1/models"): self._oa_models, ("POST", "/v1/chat/completions"): self._oa_chat,
                     ("POST", "/v1/embeddings"): self._oa_embeddings, ("POST", "/v1/rerank"): self._oa_rerank,
                     ("POST", "/v1/completions"): self._oa_completions,
                     ("POST", "/v1/responses"): self._oa_responses}.get((method, path))
        else:
            if self.ollama_key and h.headers.get("Authorization") != f"Bearer {self.ollama_key}":
                return h.send_json(401, {"error": "unauthorized"})
            if path == "/" and method in ("GET", "HEAD"):
                return h.send_text(200, "Ollama is running")
            route = self._ollama_routes().get((method, path))
        if route is None:
            return h.send_text(404, "404 page not found")
        route(h, body)

    def _ollama_compat_routes(self) -> dict:
        """Ollama's OpenAI-compatible `/v1` (keyless): the OpenAI answers, for installed Ollama models."""
        return {("POST", "/v1/chat/completions"): lambda h, b: self._chat_completion(h, b, "fp_ollama"),
                ("POST", "/v1/completions"): lambda h, b: self._text_completion(h, b, "fp_ollama"),
                ("POST", "/v1/embeddings"): lambda h, b: self._embeddings_list(h, b, self.resolve(b["model"])),
                ("POST", "/v1/responses"): self._response}

    def _ollama_routes(self) -> dict:
        return {("GET", "/api/version"): lambda h, b: h.send_json(200, {"version": self.version}),
                ("GET", "/api/tags"): self._tags, ("GET", "/api/ps"): self._ps, ("POST", "/api/show"): self._show,
                ("POST", "/api/chat"): self._chat, ("POST", "/api/generate"): self._generate,
                ("POST", "/api/embed"): self._embed, ("POST", "/api/embeddings"): self._embeddings_legacy,
                ("POST", "/api/pull"): self._pull, ("POST", "/api/push"): self._push,
                ("POST", "/api/create"): self._create, ("POST", "/api/copy"): self._copy,
                ("DELETE", "/api/delete"): self._delete}

    # --- Ollama
    def resolve(self, name) -> str | None:
        """Installed Ollama model for `name` (an untagged name means `:latest`, as Ollama does)."""
        if not isinstance(name, str) or not name:
            return None
        models = list(self.ollama_models)
        if name in models:
            return name
        return name + ":latest" if ":" not in name and name + ":latest" in models else None

    def _missing(self, h: _Handler, name) -> None:
        h.send_json(404, {"error": f"model \"{name}\" not found, try pulling it first"})

    def _entry(self, name: str) -> dict:
        return {"name": name, "model": name, "modified_at": "2026-10-01T10:00:00.000000000Z",
                "size": 2019393189, "digest": hashlib.sha256(name.encode()).hexdigest(),
                "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                            "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}}

    def _tags(self, h, body):
        h.send_json(200, {"models": [self._entry(n) for n in list(self.ollama_models)]})

    def _ps(self, h, body):
        models = [dict(self._entry(n), expires_at="2030-01-01T00:00:00Z", size_vram=0)
                  for n in list(self.loaded_models)]
        h.send_json(200, {"models": models})

    def _show(self, h, body):
        name = self.resolve(body.get("model") or body.get("name"))
        if not name:
            return self._missing(h, body.get("model") or body.get("name"))
        h.send_json(200, {"modelfile": f"FROM {name}", "parameters": "stop \"<|eot_id|>\"",
                          "template": "{{ .Prompt }}", "details": self._entry(name)["details"],
                          "model_info": {"general.architecture": "llama", "llama.embedding_length": 384}})

    def _final(self, model: str, plan: dict, **extra) -> dict:
        eval_count = len(plan["tokens"]) or len(plan["tool_calls"])
        return {"model": model, "created_at": CREATED_AT, **extra, "done": True, "done_reason": plan["reason"],
                **DURATIONS, "prompt_eval_count": plan["prompt_tokens"], "eval_count": eval_count}

    def _chat(self, h, body):
        model, messages = body.get("model"), body.get("messages")
        if not self.resolve(model):
            return self._missing(h, model)
        if messages is not None and not isinstance(messages, list):
            return h.send_json(400, {"error": "messages must be a list"})
        if not messages:
            return h.send_json(200, {"model": model, "created_at": CREATED_AT, "message": {"role": "assistant",
                                     "content": ""}, "done": True, "done_reason": "load"})
        plan = plan_reply(messages, body.get("tools"), bool(body.get("format")),
                          (body.get("options") or {}).get("num_predict"))
        calls = [{"function": {"index": i, "name": c["name"], "arguments": c["arguments"]}}
                 for i, c in enumerate(plan["tool_calls"])]
        if body.get("stream", True):
            lines = [{"model": model, "created_at": CREATED_AT, "message": {"role": "assistant", "content": t},
                      "done": False} for t in plan["tokens"]]
            if calls:
                lines.append({"model": model, "created_at": CREATED_AT,
                              "message": {"role": "assistant", "content": "", "tool_calls": calls}, "done": False})
            lines.append(self._final(model, plan, message={"role": "assistant", "content": ""}))
            return h.stream(lines, sse=False)
        self._pace(len(plan["tokens"]))
        message = {"role": "assistant", "content": "".join(plan["tokens"])}
        if calls:
            message["tool_calls"] = calls
        h.send_json(200, self._final(model, plan, message=message))

    def _generate(self, h, body):
        model, prompt = body.get("model"), body.get("prompt") or ""
        if not self.resolve(model):
            return self._missing(h, model)
        if not prompt:
            return h.send_json(200, {"model": model, "created_at": CREATED_AT, "response": "", "done": True,
                                     "done_reason": "load"})
        messages = ([{"role": "system", "content": body["system"]}] if body.get("system") else []) + \
            [{"role": "user", "content": prompt, "images": body.get("images") or []}]
        plan = plan_reply(messages, None, bool(body.get("format")), (body.get("options") or {}).get("num_predict"))
        if body.get("stream", True):
            lines = [{"model": model, "created_at": CREATED_AT, "response": t, "done": False}
                     for t in plan["tokens"]]
            lines.append(self._final(model, plan, response="", context=[1, 2, 3]))
            return h.stream(lines, sse=False)
        self._pace(len(plan["tokens"]))
        h.send_json(200, self._final(model, plan, response="".join(plan["tokens"]), context=[1, 2, 3]))

    def _vectors(self, model: str, texts: list) -> list[list[float]]:
        dim = int(self.embed_dims.get(model, 64))
        return [embed_text(t, dim) for t in texts]

    def _embed(self, h, body):
        model, inp = body.get("model"), body.get("input", "")
        name = self.resolve(model)
        if not name:
            return self._missing(h, model)
        texts = inp if isinstance(inp, list) else [inp]
        if not all(isinstance(t, str) for t in texts):
            return h.send_json(400, {"error": "invalid input type"})
        h.send_json(200, {"model": model, "embeddings": self._vectors(name, texts), "total_duration": 1234567,
                          "load_duration": 12345, "prompt_eval_count": _word_count(
                              [{"content": t} for t in texts])})

    def _embeddings_legacy(self, h, body):
        model = body.get("model")
        name = self.resolve(model)
        if not name:
            return self._missing(h, model)
        h.send_json(200, {"embedding": self._vectors(name, [body.get("prompt") or ""])[0]})

    def _progress(self, h, body, statuses: list[str]) -> None:
        lines = [{"status": s} for s in statuses] + [{"status": "success"}]
        if body.get("stream", True):
            return h.stream(lines, sse=False)
        h.send_json(200, {"status": "success"})

    def _pull(self, h, body):
        name = body.get("model") or body.get("name") or ""
        full = name if ":" in name else name + ":latest"
        if full not in self.ollama_models:
            self.ollama_models.append(full)
        self._progress(h, body, ["pulling manifest", "verifying sha256 digest", "writing manifest"])

    def _push(self, h, body):
        name = body.get("model") or body.get("name")
        if not self.resolve(name):
            return self._missing(h, name)
        self._progress(h, body, ["retrieving manifest", "pushing manifest"])

    def _create(self, h, body):
        name = body.get("model") or body.get("name") or ""
        if not name:
            return h.send_json(400, {"error": "model name is required"})
        full = name if ":" in name else name + ":latest"
        if full not in self.ollama_models:
            self.ollama_models.append(full)
        self._progress(h, body, ["using existing layer", "writing manifest"])

    def _copy(self, h, body):
        source = self.resolve(body.get("source"))
        dest = body.get("destination") or ""
        if not source:
            return self._missing(h, body.get("source"))
        full = dest if ":" in dest else dest + ":latest"
        if full not in self.ollama_models:
            self.ollama_models.append(full)
        h.send_text(200, "", "text/plain")

    def _delete(self, h, body):
        name = self.resolve(body.get("model") or body.get("name"))
        if not name:
            return h.send_json(404, {"error": f"model '{body.get('model') or body.get('name')}' not found"})
        self.ollama_models.remove(name)
        h.send_text(200, "", "text/plain")

    def _pace(self, tokens: int) -> None:
        """Non-streaming replies take as long as streaming the tokens would."""
        if self.token_delay and tokens > 1:
            self._stopping.wait(self.token_delay * (tokens - 1))

    # --- OpenAI
    def _oa_missing(self, h, model) -> None:
        h.send_json(404, {"error": {"message": f"The model `{model}` does not exist or you do not have access "
                                               "to it.", "type": "invalid_request_error", "param": None,
                                    "code": "model_not_found"}})

    def _oa_models(self, h, body):
        h.send_json(200, {"object": "list", "data": [{"id": m, "object": "model", "created": 1700000000,
                                                      "owned_by": "openai"} for m in list(self.openai_models)]})

    def _oa_chat(self, h, body):
        if body.get("model") not in self.openai_models:
            return self._oa_missing(h, body.get("model"))
        self._chat_completion(h, body, "fp_fake")

    def _chat_completion(self, h, body, fingerprint: str):
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(messages, list) or not messages:
            return h.send_error_json(400, "'messages' must be a non-empty array", "/v1/")
        fmt = (body.get("response_format") or {}).get("type") in ("json_object", "json_schema")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        plan = plan_reply(messages, body.get("tools"), fmt, limit)
        calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                  "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                 for c in plan["tool_calls"]]
        reason = "tool_calls" if calls else plan["reason"]
        completion = len(plan["tokens"]) or len(calls)
        usage = {"prompt_tokens": plan["prompt_tokens"], "completion_tokens": completion,
                 "total_tokens": plan["prompt_tokens"] + completion}
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model,
                "system_fingerprint": fingerprint}
        if body.get("stream"):
            return h.stream(self._oa_chunks(base, plan["tokens"], calls, reason, usage,
                                            (body.get("stream_options") or {}).get("include_usage")), sse=True)
        self._pace(len(plan["tokens"]))
        message = {"role": "assistant", "content": None if calls else "".join(plan["tokens"])}
        if calls:
            message["tool_calls"] = calls
        h.send_json(200, {"id": base["id"], "object": "chat.completion", "created": base["created"], "model": model,
                          "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
                          "usage": usage, "system_fingerprint": fingerprint})

    @staticmethod
    def _oa_chunks(base, tokens, calls, reason, usage, include_usage) -> list[dict]:
        def chunk(delta, finish=None):
            out = {"id": base["id"], "object": "chat.completion.chunk", "created": base["created"],
                   "model": base["model"], "system_fingerprint": base["system_fingerprint"],
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if include_usage:
                out["usage"] = None
            return out
        chunks = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": t}) for t in tokens]
        chunks += [chunk({"tool_calls": [dict(c, index=i)]}) for i, c in enumerate(calls)]
        chunks.append(chunk({}, reason))
        if include_usage:
            chunks.append(dict(chunk({}), choices=[], usage=usage))
        return chunks

    def _oa_embeddings(self, h, body):
        if body.get("model") not in self.openai_models:
            return self._oa_missing(h, body.get("model"))
        self._embeddings_list(h, body, body["model"])

    def _embeddings_list(self, h, body, name: str):
        """OpenAI's embedding list; `name`: the model whose dimensions apply."""
        model, inp = body.get("model"), body.get("input", "")
        texts = inp if isinstance(inp, list) else [inp]
        data = []
        for i, vec in enumerate(self._vectors(name, [str(t) for t in texts])):
            emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() \
                if body.get("encoding_format") == "base64" else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = _word_count([{"content": str(t)} for t in texts])
        h.send_json(200, {"object": "list", "data": data, "model": model,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _oa_completions(self, h, body):
        if body.get("model") not in self.openai_models:
            return self._oa_missing(h, body.get("model"))
        self._text_completion(h, body, "fp_fake")

    def _text_completion(self, h, body, fingerprint: str):
        """OpenAI's legacy `text_completion`: one choice per prompt, each echoing its prompt like chat."""
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            return h.send_error_json(400, "'prompt' must be a string or a list of strings", "/v1/")
        plans = [plan_reply([{"role": "user", "content": p}], limit=body.get("max_tokens")) for p in prompts]
        prompt_tokens = sum(p["prompt_tokens"] for p in plans)
        completion_tokens = sum(len(p["tokens"]) for p in plans)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": body.get("model"), "system_fingerprint": fingerprint}

        def choice(i, text, reason):
            return {"text": text, "index": i, "logprobs": None, "finish_reason": reason}
        if body.get("stream"):
            chunks = [dict(base, choices=[choice(i, t, None)]) for i, p in enumerate(plans) for t in p["tokens"]]
            chunks += [dict(base, choices=[choice(i, "", p["reason"])]) for i, p in enumerate(plans)]
            if (body.get("stream_options") or {}).get("include_usage"):
                chunks.append(dict(base, choices=[], usage=usage))
            return h.stream(chunks, sse=True)
        self._pace(max(len(p["tokens"]) for p in plans))
        h.send_json(200, dict(base, choices=[choice(i, "".join(p["tokens"]), p["reason"])
                                             for i, p in enumerate(plans)], usage=usage))

    def _oa_responses(self, h, body):
        if body.get("model") not in self.openai_models:
            return self._oa_missing(h, body.get("model"))
        self._response(h, body)

    @staticmethod
    def _response_messages(body: dict) -> list | None:
        """The Responses API's `instructions` + `input` (text, or message items with text parts) as chat
        messages; None when `input` is neither."""
        items = body.get("input")
        items = [{"role": "user", "content": items}] if isinstance(items, str) else items
        if not isinstance(items, list) or not items:
            return None
        system = [{"role": "system", "content": body["instructions"]}] if body.get("instructions") else []
        return system + [{"role": item.get("role", "user"), "content": text_of(
            [dict(p, type="text") for p in item["content"] if isinstance(p, dict)]
            if isinstance(item.get("content"), list) else item.get("content"))}
            for item in items if isinstance(item, dict) and item.get("type", "message") == "message"]

    def _response(self, h, body):
        """OpenAI's Responses API (`object: "response"`), streamed as its named events when `stream`."""
        messages = self._response_messages(body)
        if messages is None:
            return h.send_error_json(400, "'input' must be a string or a list of input items", "/v1/")
        plan = plan_reply(messages, limit=body.get("max_output_tokens"))
        text = "".join(plan["tokens"])
        usage = {"input_tokens": plan["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": len(plan["tokens"]), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": plan["prompt_tokens"] + len(plan["tokens"])}
        rid, mid = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
        status = "completed" if plan["reason"] == "stop" else "incomplete"
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item = {"id": mid, "type": "message", "status": status, "role": "assistant", "content": [part]}
        done = {"id": rid, "object": "response", "created_at": int(time.time()), "status": status, "error": None,
                "incomplete_details": None if status == "completed" else {"reason": "max_output_tokens"},
                "instructions": body.get("instructions"), "model": body.get("model"), "output": [item],
                "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "metadata": {},
                "temperature": body.get("temperature", 1.0), "top_p": 1.0, "usage": usage}
        if not body.get("stream"):
            self._pace(len(plan["tokens"]))
            return h.send_json(200, done)
        h.stream(self._response_events(done, plan["tokens"]), sse=True, named=True)

    @staticmethod
    def _response_events(done: dict, tokens: list) -> list[dict]:
        """The Responses API's stream for `done` (the final response object), one delta per token."""
        item, begun = done["output"][0], dict(done, status="in_progress", output=[], usage=None)
        where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        empty = dict(item["content"][0], text="")
        events = [{"type": "response.created", "response": begun},
                  {"type": "response.in_progress", "response": begun},
                  {"type": "response.output_item.added", "output_index": 0,
                   "item": dict(item, status="in_progress", content=[])},
                  {"type": "response.content_part.added", **where, "part": empty}]
        events += [{"type": "response.output_text.delta", **where, "delta": t, "logprobs": []} for t in tokens]
        events += [{"type": "response.output_text.done", **where, "text": item["content"][0]["text"], "logprobs": []},
                   {"type": "response.content_part.done", **where, "part": item["content"][0]},
                   {"type": "response.output_item.done", "output_index": 0, "item": item},
                   {"type": f"response.{'completed' if done['status'] == 'completed' else 'incomplete'}",
                    "response": done}]
        return [dict(e, sequence_number=i) for i, e in enumerate(events)]

    def _oa_rerank(self, h, body):
        query, documents, top_n = body.get("query"), body.get("documents"), body.get("top_n")
        if not isinstance(query, str) or not isinstance(documents, list):
            return h.send_json(422, {"error": {"message": "`query` (string) and `documents` (list) are required"}})
        scores = [overlap_score(query, str(doc)) for doc in documents]
        order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))[:top_n or len(documents)]
        h.send_json(200, {"model": body.get("model"), "usage": {"total_tokens": 0},
                          "results": [{"index": i, "relevance_score": scores[i]} for i in order]})
