"""The application factory: settings, database, services, the Api with its blueprints, hooks and start-up."""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from flask import Flask, request
from flask.sessions import SessionInterface

from ..version import __version__

log = logging.getLogger("webui_api")


def create_app(config: Mapping[str, Any] | None = None, **services: Any) -> Flask:
    """Build the WSGI app. `config` overrides environment variables by name; `services` replaces
    the upstream client, catalog, vector store or embedder (tests hand in their own)."""
    from .. import db
    from ..config import Settings, load_secret_key
    from ..services import build_services
    from . import api, observability, register_blueprints
    from .deps import authenticate_request
    from .json_input import install as guard_json_input

    settings = Settings.from_env(overrides=config)
    os.makedirs(settings.DATA_DIR, exist_ok=True)
    if not settings.WEBUI_SECRET_KEY:
        settings.WEBUI_SECRET_KEY = load_secret_key(settings.DATA_DIR)

    app = Flask(__name__, static_folder=None)
    app.session_interface = _NoCookieSession()
    app.config.update(_flask_config(settings))
    guard_json_input(app)
    db.init_database(settings.DATABASE_URL, settings.database_pool_size, settings.SQLITE_CACHE_MB)
    app.extensions["webui_api"] = build_services(settings, **services)

    api.init_app(app, spec_kwargs=_spec_kwargs())
    register_blueprints(api)
    if settings.docs_enabled:
        _serve_swagger_assets(app)
    observability.init_app(app)
    app.before_request(authenticate_request)
    app.teardown_appcontext(lambda _error: db.close_request_connection())
    if settings.CORS_ALLOW_ORIGIN:
        _enable_cors(app, settings.CORS_ALLOW_ORIGIN)
    _startup(app)
    return app


class _NoCookieSession(SessionInterface):
    """Callers authenticate with Bearer credentials only: no cookie session to sign and open per request."""

    def open_session(self, app, request):
        return None  # Flask then hands views its null session

    def save_session(self, app, session, response):
        return None


def _flask_config(settings) -> dict:
    docs = settings.docs_enabled
    return {
        "SECRET_KEY": settings.WEBUI_SECRET_KEY,
        "API_TITLE": "webui_api",
        "API_VERSION": __version__,
        "OPENAPI_VERSION": "3.0.3",
        # Docs exist only in dev (Open WebUI defaults to exposing them).
        "OPENAPI_URL_PREFIX": "/" if docs else None,
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "/docs",
        "OPENAPI_SWAGGER_UI_URL": "/static/swagger-ui/",
    }


def _spec_kwargs() -> dict:
    return {
        "components": {"securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "An API key (sk-...) or a JWT from /api/v1/auths/signin"}}},
        "security": [{"bearerAuth": []}],
    }


def _serve_swagger_assets(app: Flask) -> None:
    """Swagger UI's JS/CSS from the installed swagger_ui_bundle package: the docs work offline."""
    from flask import send_from_directory
    from swagger_ui_bundle import swagger_ui_path

    from .deps import access

    @access("public")
    def swagger_asset(filename: str):
        return send_from_directory(swagger_ui_path, filename)

    app.add_url_rule("/static/swagger-ui/<path:filename>", "swagger_asset", swagger_asset)


def _enable_cors(app: Flask, origins: list[str]) -> None:
    allow_any = "*" in origins

    @app.after_request
    def add_cors_headers(response):
        origin = request.headers.get("Origin")
        if origin and (allow_any or origin in origins):
            response.headers["Access-Control-Allow-Origin"] = "*" if allow_any else origin
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Request-ID"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS, HEAD"
            response.headers["Vary"] = "Origin"
        return response


def _startup(app: Flask) -> None:
    """One-time work per process: the headless admin, and files a crashed worker left half-done."""
    from .. import db
    from ..auth import accounts
    from ..rag import index_sync, lexical
    from ..rag.jobs import recover_interrupted

    ext = app.extensions["webui_api"]
    if accounts.ensure_initial_admin(ext.settings):
        log.info("created the initial admin %s", ext.settings.WEBUI_ADMIN_EMAIL)
    # A kill between a committed row and its index write leaves an index behind SQLite: a cheap count check
    # (file names against covering indexes) finds those, and the first worker to look rebuilds them.
    rebuilt, drifted = index_sync.repair_on_drift(ext.vectors)
    if drifted:
        log.info("start-up repair: %d vectors re-indexed from SQLite in %d collection(s)", rebuilt,
                 len(drifted))
    recover_interrupted(ext)
    if lexical.use_tokenizer(ext.settings.RAG_BM25_TOKENIZER):
        log.info("BM25 index rebuilt with tokenizer %r", ext.settings.RAG_BM25_TOKENIZER)
    db.close_request_connection()  # PostgreSQL: start-up's connection goes back to the pool
