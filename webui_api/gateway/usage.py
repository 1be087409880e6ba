"""Tokens an answer used, as the backend reports them (OpenAI `usage`, Ollama's eval counters): for the
metrics and for API keys with a tokens-per-minute limit."""
from __future__ import annotations

import json
from typing import Any, Iterator

from .. import telemetry
from ..auth import keys

# Only lines holding one of these are parsed: the rest of a stream is relayed without a look.
_MARKERS = (b'"usage"', b'"eval_count"', b'"prompt_eval_count"')
MAX_LINE = 1 << 20


def record(reply: Any) -> None:
    """Charge a reply's token counts (OpenAI `usage`, or a final Ollama line's counters) to the request."""
    if not isinstance(reply, dict):
        return
    usage = reply.get("usage")
    try:
        if isinstance(usage, dict):
            telemetry.record_tokens(usage.get("prompt_tokens"), usage.get("completion_tokens"))
        elif reply.get("done") and ("eval_count" in reply or "prompt_eval_count" in reply):
            telemetry.record_tokens(reply.get("prompt_eval_count"), reply.get("eval_count"))
    except (TypeError, ValueError):
        pass  # a backend's odd numbers must not fail the reply


def needed() -> bool:
    """Whether a relayed answer must be read for its token counts (the calling key limits tokens)."""
    return keys.counts_tokens()


def ask_for_usage(body: dict) -> None:
    """An OpenAI stream reports usage only when asked: ask, so a token-limited key cannot stream around
    its limit (the client then also sees the final `choices: []` usage chunk, as OpenAI defines it)."""
    if body.get("stream") is True and needed():
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        body["stream_options"] = {**options, "include_usage": True}


def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks` (SSE or NDJSON) passed on unchanged, recording the token counts of lines that carry them."""
    carry = b""
    try:
        for chunk in chunks:
            data = carry + chunk
            end = data.rfind(b"\n") + 1
            if any(marker in data for marker in _MARKERS):
                for line in data[:end].splitlines():
                    if any(marker in line for marker in _MARKERS):
                        record(_json_line(line))
            carry = data[end:] if len(data) - end <= MAX_LINE else b""  # no endless line held in memory
            yield chunk
        if carry:
            record(_json_line(carry))
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # the relay's own clean-up runs now, not whenever the generator is collected


def count_body(body: bytes) -> None:
    """A buffered answer's token counts (read only when it names them)."""
    if any(marker in body for marker in _MARKERS):
        record(_json_line(body))


def _json_line(line: bytes) -> Any:
    line = line.strip()
    if line.startswith(b"data:"):
        line = line[5:]
    try:
        return json.loads(line)
    except ValueError:
        return None
