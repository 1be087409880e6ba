"""The one reader of JSON request input: a size limit before parsing, then depth, numbers and text checked."""
from __future__ import annotations

import json
import math

import flask
import flask_smorest
from flask.json.provider import DefaultJSONProvider
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import RequestEntityTooLarge

from ..errors import BadRequest, PayloadTooLarge

# Deeper than any real request (Open WebUI's chats and tool schemas nest a few dozen levels at most) and
# far below the interpreter's recursion limit, so nothing downstream (json.dumps, a backend) recurses out.
MAX_JSON_DEPTH = 100
# Python refuses int() of more than 4,300 digits with a ValueError; 100 digits exceed any 64-bit field.
MAX_INT_DIGITS = 100
TOO_DEEP = f"The JSON body is nested too deeply (more than {MAX_JSON_DEPTH} levels)."
NOT_FINITE = "The JSON body contains a number that is not finite (NaN, Infinity or out of range)."
TOO_LONG_INT = f"The JSON body contains an integer of more than {MAX_INT_DIGITS} digits."
LONE_SURROGATE = "The JSON body contains an unpaired surrogate escape (e.g. \\ud800): not valid Unicode text."


class InvalidJsonInput(BadRequest):
    """JSON that parses but no part of the service can hold: refused with 400 before anything changes."""


def loads(data: bytes | str):
    """Parse request JSON. Plain syntax errors raise ValueError (each caller answers those its own way);
    hostile input that parses (too deep, NaN, huge numbers, lone surrogates) raises InvalidJsonInput."""
    if isinstance(data, bytes):
        data = data.decode("utf-8")  # UnicodeDecodeError is a ValueError
    try:
        value = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float,
                           parse_int=_bounded_int)
    except RecursionError:
        raise InvalidJsonInput(TOO_DEEP) from None
    _check_tree(value)
    return value


def _refuse_constant(_name: str):
    raise InvalidJsonInput(NOT_FINITE)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 reads as inf
        raise InvalidJsonInput(NOT_FINITE)
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidJsonInput(TOO_LONG_INT)
    return int(text)


def _check_tree(value) -> None:
    """Depth and text of every node, iteratively (a recursive walk would itself hit the recursion limit)."""
    pending = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, str):
            _check_text(node)
        elif isinstance(node, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise InvalidJsonInput(TOO_DEEP)
            children = node.items() if isinstance(node, dict) else ((None, item) for item in node)
            for key, child in children:
                if key is not None:
                    _check_text(key)
                pending.append((child, depth + 1))


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidJsonInput(LONE_SURROGATE) from None


def max_json_bytes() -> int:
    return int(flask.current_app.extensions["webui_api"].settings.MAX_JSON_BODY_MB * 1024 * 1024)


class GuardedRequest(flask.Request):
    """Every body but a multipart upload (whose routes set their own limit) is JSON here: it is refused
    with 413 past MAX_JSON_BODY_MB before a byte of it is parsed."""

    @property
    def max_content_length(self) -> int | None:
        if self._max_content_length is not None or self.mimetype == "multipart/form-data":
            return super().max_content_length
        return max_json_bytes()

    @max_content_length.setter
    def max_content_length(self, value: int | None) -> None:
        self._max_content_length = value

    def get_data(self, *args, **kwargs):
        try:
            data = super().get_data(*args, **kwargs)
        except RequestEntityTooLarge:
            raise self._too_large() from None
        limit = self.max_content_length
        # werkzeug cuts a chunked body (no Content-Length) at the limit without a word: reaching it is over it
        if self.content_length is None and limit is not None and len(data) >= limit:
            raise self._too_large()
        return data

    def _too_large(self) -> PayloadTooLarge:
        limit_mb = flask.current_app.extensions["webui_api"].settings.MAX_JSON_BODY_MB
        return PayloadTooLarge(f"The request body exceeds the {limit_mb:g} MB limit (MAX_JSON_BODY_MB).")


class GuardedJSONProvider(DefaultJSONProvider):
    """`request.get_json()` (the passthrough routes) reads through `loads` too."""

    sort_keys = False  # keep Open WebUI's field order

    def loads(self, s, **kwargs):
        return loads(s)


class GuardedParser(FlaskParser):
    """webargs' body reading (every `blp.arguments` JSON body) through `loads`."""

    def _raw_load_json(self, req):
        if not is_json_request(req):
            return core.missing
        return loads(req.get_data(cache=True))


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint reading JSON bodies through `loads`: every blueprint here is one."""

    ARGUMENTS_PARSER = GuardedParser()


def install(app: flask.Flask) -> None:
    app.request_class = GuardedRequest
    app.json = GuardedJSONProvider(app)
