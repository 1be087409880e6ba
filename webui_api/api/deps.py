"""What every blueprint needs: the app's services, the caller, and per-route access levels."""
from __future__ import annotations

from flask import current_app, g, request

from ..auth import accounts, keys
from ..auth.policy import is_admin
from ..db import User
from ..errors import ACCESS_PROHIBITED, NOT_AUTHENTICATED, Forbidden, Unauthorized
from ..services import Services

LEVELS = ("public", "authenticated", "verified", "admin")
DEFAULT_LEVEL = "verified"  # secure by default: a route nobody marked needs a verified user


def access(level: str):
    """Mark a view (or MethodView method) with who may call it; a public one is documented without the
    bearer requirement (`security: []`), so the spec cannot disagree with the check."""
    if level not in LEVELS:
        raise ValueError(f"unknown access level {level!r}")

    def mark(view):
        view._access = level
        if level == "public":
            # flask-smorest reads `_apidoc["manual_doc"]` when the route is registered (as @blp.doc writes it)
            view._apidoc = {**getattr(view, "_apidoc", {})}
            view._apidoc["manual_doc"] = {**view._apidoc.get("manual_doc", {}), "security": []}
        return view
    return mark


def ext() -> Services:
    """The Services bound to the current app (settings, upstream, catalog, vectors, embedder)."""
    return current_app.extensions["webui_api"]


def current_caller() -> accounts.Caller | None:
    """The caller; on a public route resolved only now, when the view asks (a bad token means anonymous)."""
    if "caller" not in g:
        g.caller = _optional_caller()
    return g.caller


def _optional_caller() -> accounts.Caller | None:
    token = bearer_token()
    try:
        caller = accounts.authenticate(ext().settings, token, request.path) if token else None
    except (Unauthorized, Forbidden):
        return None
    keys.use(caller.key if caller else None)
    return caller


def current_user() -> User:
    caller = g.get("caller")
    if caller is None:
        raise Unauthorized(NOT_AUTHENTICATED)
    return caller.user


def bearer_token() -> str | None:
    """The Bearer credential, if any; other schemes are not credentials here."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def route_access() -> str | None:
    """The access level of the matched route; None when no route matched (the 404 handler answers)."""
    if request.endpoint is None:
        return None
    if request.endpoint == "static" or request.endpoint.startswith("api-docs."):
        return "public"
    return view_access(current_app.view_functions.get(request.endpoint), request.method)


def view_access(view, method: str) -> str:
    """The access level marked on a view function or on a MethodView's method (HEAD as GET)."""
    view_class = getattr(view, "view_class", None)
    method = method.lower()
    if view_class is not None:
        handler = getattr(view_class, method, None) or (getattr(view_class, "get", None)
                                                        if method == "head" else None)
        level = getattr(handler, "_access", None) or getattr(view_class, "_access", None)
    else:
        level = getattr(view, "_access", None)
    return level or DEFAULT_LEVEL


def authenticate_request() -> None:
    """before_request hook: resolve the caller and enforce the route's access level."""
    keys.use(None)  # this thread's previous request may have used a key
    level = route_access()
    if level is None or level == "public" or request.method == "OPTIONS":
        return  # public routes never pay for authentication unless the view asks who calls
    token = bearer_token()
    g.caller = accounts.authenticate(ext().settings, token, request.path) if token else None
    if g.caller is None:
        raise Unauthorized(NOT_AUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
    role = g.caller.user.role
    if level == "verified" and role not in ("user", "admin"):
        raise Forbidden(ACCESS_PROHIBITED)
    if level == "admin" and not is_admin(g.caller.user):
        raise Forbidden(ACCESS_PROHIBITED)
    if g.caller.key is not None:
        keys.use(g.caller.key)
        keys.admit(g.caller.key)  # last: only requests that may run count against the key's limits
