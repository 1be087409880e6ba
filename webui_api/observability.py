"""Placeholder: request ids, Server-Timing, access logs and metrics (being written)."""


def init_app(app):
    return app
