"""The raw-WSGI floor for bench/gateway_overhead.py: read the chat, one call through a pooled
requests.Session, decode and re-encode the reply (or relay the stream). Any gateway does at least this."""
import json
import os

import requests
from requests.adapters import HTTPAdapter

BACKEND = os.environ["FLOOR_BACKEND_URL"]  # the fake backend: Ollama at /, OpenAI under /v1
OPENAI_AUTH = {"Authorization": f"Bearer {os.environ.get('FLOOR_OPENAI_KEY', '')}"}
session = requests.Session()
session.trust_env = False
session.mount("http://", HTTPAdapter(pool_maxsize=int(os.environ.get("GUNICORN_THREADS", "32")),
                                     max_retries=0))


def app(environ, start_response):
    body = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
    stream, openai = bool(body.get("stream")), body["model"].startswith("gpt")
    url = BACKEND + ("/v1/chat/completions" if openai else "/api/chat")
    reply = session.post(url, json=body, headers=OPENAI_AUTH if openai else None, stream=stream,
                         timeout=(5, 300))
    kind = "text/event-stream" if stream else "application/json"
    start_response(f"{reply.status_code} {reply.reason}", [("Content-Type", kind)])
    if stream:
        return reply.iter_content(None)
    return [json.dumps(reply.json()).encode()]
