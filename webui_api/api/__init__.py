"""HTTP layer: the flask-smorest Api (one error path, one error schema), and the blueprint list."""
from __future__ import annotations

import importlib
import logging

from flask import g, jsonify, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.routing import BaseConverter

from ..auth.policy import as_shown_to
from ..errors import ApiError, error_message, openai_error
from .schemas import ErrorSchema

log = logging.getLogger("webui_api")

# One module per endpoint group; each exposes `blp`.
BLUEPRINTS = ("system", "auths", "users", "groups", "models", "chat", "ollama", "openai", "files", "knowledge", "retrieval", "ops")

# Route families whose clients read something other than `detail`: the openai SDK (and litellm, langchain)
# show only `error.message`, the ollama client only an `error` string. deploy/nginx.conf's `$error_extra`
# map gives nginx's own error bodies the same shapes: keep the two in step.
OPENAI_PATHS = frozenset({"/api/chat/completions", "/api/v1/chat/completions", "/api/embeddings",
                          "/api/v1/embeddings", "/api/models", "/api/v1/models", "/api/completions",
                          "/api/v1/completions"})
OPENAI_PREFIXES = ("/openai/", "/ollama/v1/")
OLLAMA_PREFIXES = ("/ollama/api/",)

_LOCATIONS = {"json": "body", "form": "form", "files": "files", "query": "query", "querystring": "query",
              "headers": "header", "view_args": "path"}


class PathSegmentConverter(BaseConverter):
    """`<string:...>` that is never the name of a static route beside it, so `/knowledge/create` and
    `/files/all` answer for their own methods alone (405 with their own `Allow`) instead of the
    `/{id}` route's. Rule texts (and the `route` label of the metrics) stay as they are."""

    STATIC_SIBLINGS = ("create", "all", "search", "count")
    regex = rf"(?!(?:{'|'.join(STATIC_SIBLINGS)})$)[^/]+"


class WebuiApi(Api):
    """flask-smorest's Api, with every error turned into `{"detail": ...}` and documented so."""

    ERROR_SCHEMA = ErrorSchema

    def init_app(self, app, **kwargs):
        app.url_map.converters["string"] = PathSegmentConverter
        super().init_app(app, **kwargs)

    def _register_error_handlers(self):
        # On the app, not the blueprints: errors raised in before_request hooks take the same path.
        self._app.register_error_handler(HTTPException, self.handle_http_exception)
        self._app.register_error_handler(ApiError, handle_api_error)

    def handle_http_exception(self, error: HTTPException):
        if isinstance(error, InternalServerError) and error.original_exception is not None:
            log.error("unhandled error", exc_info=error.original_exception)
            return error_response("Internal server error", 500)
        data = getattr(error, "data", None) or {}
        messages = data.get("messages") or data.get("errors")
        if error.code == 422 and isinstance(messages, dict):
            return error_response(validation_detail(messages), 422, data.get("headers"))
        if messages:
            return error_response(_flatten(messages), error.code, data.get("headers"))
        return error_response(data.get("message") or _plain_detail(error), error.code,
                              data.get("headers") or _allow_header(error))


def handle_api_error(error: ApiError):
    return error_response(error.detail, error.status, error.headers)


def error_response(detail, status: int, headers: dict | None = None):
    caller = g.get("caller")
    detail = as_shown_to(caller.user if caller is not None else None, detail)
    response = jsonify({"detail": detail, **client_error(request.path, detail, status)})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def client_error(path: str, detail, status: int) -> dict:
    """What the route family's own clients read beside Open WebUI's `detail`."""
    path = path.rstrip("/") or "/"
    if path in OPENAI_PATHS or path.startswith(OPENAI_PREFIXES):
        return {"error": openai_error(detail, status)}
    if path.startswith(OLLAMA_PREFIXES):
        return {"error": error_message(detail)}
    return {}


def validation_detail(messages: dict) -> list[dict]:
    """webargs' nested messages → a FastAPI-like list: [{"loc": [...], "msg": ..., "type": ...}]."""
    items: list[dict] = []
    for location, fields in messages.items():
        _walk(fields, [_LOCATIONS.get(location, location)], items)
    return items


def _walk(node, loc: list, items: list) -> None:
    if isinstance(node, dict):
        for key, child in node.items():
            _walk(child, loc + [key], items)
    elif isinstance(node, list) and node and all(isinstance(m, str) for m in node):
        items.extend({"loc": loc, "msg": msg, "type": "value_error"} for msg in node)
    elif isinstance(node, list):
        for child in node:
            _walk(child, loc, items)
    else:
        items.append({"loc": loc, "msg": str(node), "type": "value_error"})


def _flatten(messages) -> str:
    if isinstance(messages, dict):
        return "; ".join(_flatten(value) for value in messages.values())
    if isinstance(messages, list):
        return "; ".join(_flatten(value) for value in messages)
    return str(messages)


def _plain_detail(error: HTTPException) -> str:
    return {404: "Not Found", 405: "Method Not Allowed", 413: "Request body too large"}.get(
        error.code, error.name)


def _allow_header(error: HTTPException) -> dict:
    allowed = getattr(error, "valid_methods", None)
    return {"Allow": ", ".join(allowed)} if allowed else {}


def register_blueprints(api: WebuiApi) -> None:
    for name in BLUEPRINTS:
        module = importlib.import_module(f"{__name__}.{name}")
        api.register_blueprint(module.blp)


# The one Api: `create_app` binds it to each app it builds, and the app built last owns its spec (one app
# per process in production; tests import it to add probe blueprints to the app they just built).
api = WebuiApi()
