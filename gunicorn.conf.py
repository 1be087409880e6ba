"""gunicorn settings for a streaming gateway; every value can be set from the environment."""
import os

wsgi_app = "wsgi:app"
bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread: a streamed completion holds one thread, not a whole worker process, and the worker keeps
# heart-beating from its main loop, so long generations are not killed by `timeout`.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# No preload: each worker opens its own SQLite connections, FAISS handles and HTTP sessions after fork.
preload_app = False


def on_starting(server):
    """Create the data dir and the generated secret once, in the master, before workers fork."""
    from webui_api.config import Settings, load_secret_key

    settings = Settings.from_env()
    os.makedirs(settings.DATA_DIR, exist_ok=True)
    if not settings.WEBUI_SECRET_KEY:
        load_secret_key(settings.DATA_DIR)
