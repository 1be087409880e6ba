"""webui_api: a small synchronous gateway that speaks the Open WebUI API over Ollama and OpenAI backends."""
from __future__ import annotations

from typing import Any, Mapping

from .version import API_COMPAT_VERSION, __version__

__all__ = ["API_COMPAT_VERSION", "__version__", "create_app"]


def create_app(config: Mapping[str, Any] | None = None, **services: Any):
    """Build the WSGI app (see `webui_api.api.factory`); importing the package itself stays Flask-free."""
    from .api.factory import create_app as build

    return build(config, **services)
