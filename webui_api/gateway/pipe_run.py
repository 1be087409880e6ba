"""One pipe call: on a daemon thread the request waits for no longer than AIOHTTP_CLIENT_TIMEOUT, its
result (text, an iterator of text or chunks, an OpenAI dict) mapped to a chat completion or SSE."""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import queue
import threading
import time
from typing import Any, Iterator

from . import convert
from .chat import Streamed
from .fields import OLLAMA_ONLY
from .. import telemetry
from ..auth import policy
from ..errors import ApiError, ServiceUnavailable, UpstreamError, UpstreamTimeout

log = logging.getLogger("webui_api.gateway.pipes")

MAX_DETAIL = 500  # characters of a pipe's exception text shown to the caller
MAX_JOINED_CHARS = 16_000_000  # text a non-streamed answer may gather from a pipe's pieces (502 beyond)
_VALUE, _PIECE, _END, _FAILED = "value", "piece", "end", "failed"


def chat(pipes, pipe, user, target, body: dict, params: dict, sources: list) -> dict | Streamed:
    """A `chat.completion` (or SSE when `stream`) from `pipe` on the OpenAI-shaped body it is given."""
    requested = body.get("model")
    for key, value in params.items():
        if key not in OLLAMA_ONLY:
            body.setdefault(key, value)  # preset params an OpenAI body takes; the request's own win
    body["model"] = target.upstream_model  # as Open WebUI: the pipe model's id, a preset's base
    given = arguments(pipe, body, user, target.entry)
    run = Run(pipe.id, lambda: pipe.instance.pipe(**given), pipes.slots)
    reply = Reply(pipe.id, requested, sources)
    if not body.get("stream"):
        return reply.completion(run.collect(pipes.timeout))
    first = run.next(pipes.timeout)  # a pipe failing before its first piece answers 502/504, not 200
    if first[0] == _VALUE:
        reply.check_value(first[1])
    return Streamed(reply.events(run, first, pipes.timeout, user))


def arguments(pipe, body: dict, user, model: dict) -> dict:
    """`body` and whichever of Open WebUI's `__name__` arguments the pipe's signature asks for. Calls
    over this API have no browser session: the event emitter and caller accept and drop events."""
    user_info = {"id": user.id, "email": user.email, "name": user.name, "role": user.role}
    user_valves = getattr(pipe.instance, "UserValves", None)
    if isinstance(user_valves, type):
        try:
            user_info["valves"] = user_valves()  # per-user valves are not stored here: the defaults
        except Exception as exc:
            log.warning("pipe %s: UserValves() failed: %s", pipe.id, type(exc).__name__)
    metadata = {"user_id": user.id, "chat_id": None, "message_id": None, "session_id": None,
                "model": dict(model), "files": []}
    offered = {"__user__": user_info, "__metadata__": metadata,
               "__event_emitter__": _dropped_event, "__event_call__": _dropped_event,
               "__chat_id__": None, "__session_id__": None, "__message_id__": None, "__task__": None,
               "__task_body__": None, "__files__": [], "__tools__": {}, "__request__": None}
    asked = inspect.signature(pipe.instance.pipe).parameters
    return {"body": body, **{k: v for k, v in offered.items() if k in asked}}


async def _dropped_event(event: Any) -> None:
    return None


def finished(value: Any) -> Any:
    """`value`, or what it resolves to if it is a coroutine (an `async def` pipe or pipes())."""
    if not inspect.iscoroutine(value):
        return value
    loop = asyncio.new_event_loop()  # pipes run on their own threads, where no loop is running
    try:
        return loop.run_until_complete(value)
    finally:
        loop.close()


class Run:
    """One pipe call on a daemon thread, handing back its value or pieces through a small queue, so the
    request can stop waiting (504) and a client that leaves stops the pipe at its next piece. The thread
    holds one of PIPES_MAX_RUNNING slots until the pipe really returns."""

    def __init__(self, pipe_id: str, call, slots: threading.BoundedSemaphore):
        self.pipe_id = pipe_id
        self.queue: queue.Queue = queue.Queue(maxsize=16)
        self.stopped = threading.Event()
        if not slots.acquire(blocking=False):
            raise ServiceUnavailable("Too many pipe calls are running on this server; try again shortly.")
        self.slots = slots
        threading.Thread(target=telemetry.bind(self._work), args=(call,), daemon=True,
                         name=f"pipe-{pipe_id}").start()

    def _work(self, call) -> None:
        # One loop per call, so what an async pipe opens while awaited (a client session) still works in
        # the generator it returns; set as the thread's loop for pipes that ask for it.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            result = call()
            if inspect.iscoroutine(result):
                result = loop.run_until_complete(result)
            if inspect.isasyncgen(result):
                self._drain_async(result, loop)
            elif isinstance(result, Iterator):
                self._drain(result)
            else:
                self._put((_VALUE, result))
            self._put((_END, None))
        except BaseException as exc:  # handed to the request thread, never raised on this one
            self._put((_FAILED, exc))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
            self.slots.release()

    def _drain(self, pieces: Iterator) -> None:
        try:
            for piece in pieces:
                if not self._put((_PIECE, piece)):
                    break
        finally:
            getattr(pieces, "close", lambda: None)()

    def _drain_async(self, pieces, loop) -> None:
        try:
            while True:
                try:
                    piece = loop.run_until_complete(pieces.__anext__())
                except StopAsyncIteration:
                    break
                if not self._put((_PIECE, piece)):
                    break
        finally:
            loop.run_until_complete(pieces.aclose())

    def _put(self, item: tuple) -> bool:
        """Queue `item` unless the reader left; False once it has."""
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def next(self, timeout: float) -> tuple:
        """The next (kind, value); 504 after `timeout` s of silence, 502 naming the pipe if it raised."""
        try:
            kind, value = self.queue.get(timeout=max(timeout, 0.001))
        except queue.Empty:
            self.stop()
            raise UpstreamTimeout(f"Pipe '{self.pipe_id}' did not answer within {timeout:g} s") from None
        if kind == _FAILED:
            self.stop()
            raise self.failure(value)
        return kind, value

    def failure(self, exc: BaseException) -> ApiError:
        log.warning("pipe %s raised %s: %s", self.pipe_id, type(exc).__name__, exc)
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return UpstreamError(f"Pipe '{self.pipe_id}' failed: {text[:MAX_DETAIL]}")

    def collect(self, timeout: float) -> tuple[Any, list[str]]:
        """(value, each piece's text) once the pipe is done: all of it within `timeout` s, and at most
        MAX_JOINED_CHARS of text (a generator that never ends must not fill the worker's memory)."""
        deadline, texts, value, size = time.monotonic() + timeout, [], None, 0
        while True:
            try:
                kind, item = self.next(deadline - time.monotonic())
            except UpstreamTimeout:
                raise UpstreamTimeout(f"Pipe '{self.pipe_id}' did not finish within {timeout:g} s") from None
            if kind == _END:
                return value, texts
            if kind == _VALUE:
                value = item
                continue
            texts.append(_text(item))
            size += len(texts[-1])
            if size > MAX_JOINED_CHARS:
                self.stop()
                raise UpstreamError(f"Pipe '{self.pipe_id}' answered more than {MAX_JOINED_CHARS} characters")

    def stop(self) -> None:
        self.stopped.set()


class Reply:
    """The client's view of a pipe's output: Open WebUI's completion and chunk shapes."""

    def __init__(self, pipe_id: str, model: Any, sources: list):
        self.pipe_id = pipe_id
        self.model = model
        self.sources = sources
        self.id, self.created = convert.new_completion_id(), int(time.time())

    def check_value(self, value: Any) -> None:
        """A non-iterator result must be text, nothing, or an OpenAI chat completion (or chunk)."""
        value = _plain(value)
        if value is None or isinstance(value, (str, bytes)):
            return
        if isinstance(value, dict) and isinstance(value.get("choices"), list):
            return
        raise UpstreamError(f"Pipe '{self.pipe_id}' returned {type(value).__name__}, which is neither text, "
                            "an iterator of text, nor an OpenAI chat completion")

    def completion(self, outcome: tuple[Any, list]) -> dict:
        """The pipe's OpenAI dict as it is, or its text (or pieces' text joined) as a completion."""
        value, texts = outcome
        value = _plain(value)
        self.check_value(value)
        if isinstance(value, dict):
            return {"sources": self.sources, **value} if self.sources else value
        text = "".join(texts) if texts else _text(value)
        reply = {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                 "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": text}}]}
        return {"sources": self.sources, **reply} if self.sources else reply

    def events(self, run: Run, first: tuple, timeout: float, user) -> Iterator[bytes]:
        """SSE: each piece as a chunk (text wrapped, chunks and `data:` lines passed on), then a stop chunk
        and [DONE] unless the pipe sent its own. A failure once streaming began ends with an error event."""
        item, done = first, False
        try:
            while item[0] != _END:
                for event in self._events_of(*item):
                    done = done or event == convert.SSE_DONE
                    yield event
                item = run.next(timeout)
            if not done:
                yield convert.sse(self._chunk({}, "stop"))
                yield convert.SSE_DONE
        except Exception as exc:  # the response has started: end it with an error event, never hang
            if not isinstance(exc, ApiError):
                log.warning("pipe %s sent a piece that cannot be sent: %r", self.pipe_id, exc)
                exc = UpstreamError(f"Pipe '{self.pipe_id}' sent a piece that cannot be sent "
                                    f"({type(exc).__name__})")
            detail = policy.as_shown_to(user, exc.detail)
            yield convert.sse(convert.error_event(f"Chat completion stream failed: {detail}", exc.status))
            yield convert.SSE_DONE
        finally:
            run.stop()

    def _events_of(self, kind: str, value: Any) -> list[bytes]:
        value = _plain(value)
        if kind == _VALUE and isinstance(value, dict) and value.get("object") == "chat.completion":
            message = (value["choices"][0] if value["choices"] else {}).get("message") or {}
            value = {**value, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": message, "finish_reason": "stop"}]}
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value.lstrip().startswith("data:"):
            data = value.lstrip()[5:].strip()
            if data == "[DONE]":
                return [convert.SSE_DONE]
            try:
                value = json.loads(data)
            except ValueError:
                return [f"data: {data}\n\n".encode()]
        if isinstance(value, dict):
            return [convert.sse(self._with_sources(value))]
        text = _text(value)
        return [convert.sse(self._with_sources(self._chunk({"content": text})))] if text else []

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "logprobs": None, "finish_reason": finish, "delta": delta}]}

    def _with_sources(self, chunk: dict) -> dict:
        """The first chunk with choices carries the RAG sources, as on every other model."""
        if self.sources and isinstance(chunk.get("choices"), list) and chunk["choices"]:
            chunk, self.sources = {"sources": self.sources, **chunk}, []
        return chunk


def _plain(value: Any) -> Any:
    """A pydantic model (some pipes return one) as its dict."""
    return value.model_dump() if hasattr(value, "model_dump") and callable(value.model_dump) else value


def _text(piece: Any) -> str:
    """The text a piece adds: itself, or a chunk's delta (or a completion's message) content."""
    piece = _plain(piece)
    if piece is None:
        return ""
    if isinstance(piece, bytes):
        piece = piece.decode("utf-8", "replace")
    if isinstance(piece, str) and piece.lstrip().startswith("data:"):
        data = piece.lstrip()[5:].strip()
        try:
            piece = json.loads(data)
        except ValueError:
            return ""  # `data: [DONE]` and the like add no text
    if isinstance(piece, dict):
        choice = (piece.get("choices") or [{}])[0]
        if not isinstance(choice, dict):
            return ""
        content = (choice.get("delta") or choice.get("message") or {}).get("content")
        return content if isinstance(content, str) else ""
    return str(piece)
