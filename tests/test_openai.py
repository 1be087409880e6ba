"""/openai passthrough: per-connection routing with keys, SSE relay, error mapping."""
import json
import time

import pytest
import requests


HELLO = [{"role": "user", "content": "Hello there, who are you?"}]


@pytest.fixture
def second(make_backend):
    return make_backend(openai_models=["gpt-4o-mini", "o3-mini"], openai_key="sk-second")


@pytest.fixture
def settings_overrides(fake_backend, second):
    return {"OPENAI_API_BASE_URLS": f"{fake_backend.openai_url};{second.openai_url}",
            "OPENAI_API_KEYS": f"{fake_backend.openai_key};sk-second", "OLLAMA_BASE_URLS": fake_backend.url,
            "AIOHTTP_CLIENT_TIMEOUT": "0.6", "AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST": "0.5"}


@pytest.fixture
def key(admin, api_key_headers):
    return api_key_headers(admin)


def sse_events(data: bytes) -> list:
    return [line[6:] for line in data.decode().split("\n\n") if line.startswith("data: ")]


def test_models_in_open_webui_shape(client, key):
    resp = client.get("/openai/models", headers=key)
    assert resp.status_code == 200
    data = resp.get_json()["data"]
    assert [(m["id"], m["urlIdx"]) for m in data] == [
        ("gpt-4o-mini", 0), ("gpt-4-turbo", 0), ("text-embedding-3-small", 0), ("o3-mini", 1)]
    first = data[0]
    assert first["owned_by"] == "openai" and first["name"] == "gpt-4o-mini" and first["provider"] == ""
    assert first["openai"]["id"] == "gpt-4o-mini" and first["connection_type"] == "external"
    raw = client.get("/openai/models/1", headers=key).get_json()
    assert raw["object"] == "list" and [m["id"] for m in raw["data"]] == ["gpt-4o-mini", "o3-mini"]


def test_models_need_a_credential(client, admin):
    assert client.get("/openai/models").status_code == 401


def test_chat_goes_to_the_connection_with_the_model_and_its_key(client, key, fake_backend, second):
    body = {"model": "o3-mini", "messages": HELLO, "temperature": 0.2, "files": [{"id": "x"}],
            "params": {"seed": 3, "system": "not for upstream"}}
    resp = client.post("/openai/chat/completions", headers=key, json=body)
    assert resp.status_code == 200 and resp.get_json()["object"] == "chat.completion"
    sent = second.last("/v1/chat/completions")
    assert sent["headers"]["Authorization"] == "Bearer sk-second"
    assert sent["json"] == {"model": "o3-mini", "messages": HELLO, "temperature": 0.2, "seed": 3}
    assert fake_backend.last("/v1/chat/completions") is None
    client.post("/openai/chat/completions", headers=key, json={"model": "gpt-4o-mini", "messages": HELLO})
    assert fake_backend.last("/v1/chat/completions")["headers"]["Authorization"] == "Bearer sk-fake-openai-key"


def test_stream_is_relayed_with_usage(client, key):
    resp = client.post("/openai/chat/completions", headers=key, json={
        "model": "gpt-4o-mini", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}})
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Accel-Buffering"] == "no"
    events = sse_events(resp.data)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["total_tokens"] == 21


def test_embeddings(client, key):
    resp = client.post("/openai/embeddings", headers=key, json={"model": "text-embedding-3-small", "input": ["a b"]})
    assert resp.status_code == 200 and len(resp.get_json()["data"][0]["embedding"]) == 64


def test_unknown_model_and_bad_body(client, key):
    resp = client.post("/openai/chat/completions", headers=key, json={"model": "nope", "messages": HELLO})
    assert resp.status_code == 404 and resp.get_json()["detail"] == "Model 'nope' was not found"
    assert client.post("/openai/chat/completions", headers=key, data="[1, 2]").status_code == 400
    assert client.post("/openai/chat/completions", headers=key, json={"messages": HELLO}).status_code == 400


def test_backend_errors(client, key, fake_backend):
    fake_backend.fault = {"kind": "http500", "path": "/v1/chat", "message": "overloaded"}
    resp = client.post("/openai/chat/completions/0", headers=key, json={"model": "gpt-4o-mini", "messages": HELLO})
    assert resp.status_code == 502 and resp.get_json()["detail"].endswith("failed (HTTP 500): overloaded")
    fake_backend.fault = {"kind": "slow", "path": "/v1/chat", "delay": 1.0}
    resp = client.post("/openai/chat/completions/0", headers=key, json={"model": "gpt-4o-mini", "messages": HELLO})
    assert resp.status_code == 504 and "OpenAI backend 0" in resp.get_json()["detail"]


def test_backend_rejecting_our_key_is_502_without_the_key(app, client, key, second):
    second.openai_key = "sk-rotated"
    resp = client.post("/openai/chat/completions/1", headers=key, json={"model": "o3-mini", "messages": HELLO})
    assert resp.status_code == 502 and "sk-second" not in resp.get_data(as_text=True)


def test_down_connection_is_502(client, key, second):
    second.stop()
    resp = client.post("/openai/chat/completions/1", headers=key, json={"model": "o3-mini", "messages": HELLO})
    assert resp.status_code == 502 and second.openai_url in resp.get_json()["detail"]
    # the model list still answers from the connection that is up
    assert [m["urlIdx"] for m in client.get("/openai/models", headers=key).get_json()["data"]] == [0, 0, 0]


def test_drop_mid_stream_ends_with_error_event_and_done(live_server, key, fake_backend):
    fake_backend.fault = {"kind": "drop", "path": "/v1/chat", "after": 2}
    resp = requests.post(live_server + "/openai/chat/completions/0", headers=key, timeout=5,
                         json={"model": "gpt-4o-mini", "messages": HELLO, "stream": True})
    events = sse_events(resp.content)
    assert events[-1] == "[DONE]" and "error" in json.loads(events[-2])
    assert len(events) == 4


def test_sse_arrives_as_produced(live_server, key, fake_backend):
    fake_backend.token_delay = 0.05
    start, arrivals = time.monotonic(), []
    with requests.post(live_server + "/openai/chat/completions/0", headers=key, stream=True, timeout=5,
                       json={"model": "gpt-4o-mini", "messages": HELLO, "stream": True}) as resp:
        for line in resp.iter_lines(chunk_size=None):
            if line:
                arrivals.append(time.monotonic() - start)
    assert arrivals[0] < 0.3 and arrivals[-1] - arrivals[0] > 0.5


def test_disabled_openai_api_is_503(app, client, key):
    app.extensions["webui_api"].upstream.openai = []
    resp = client.get("/openai/models", headers=key)
    assert resp.status_code == 503 and resp.get_json()["detail"] == "OpenAI API is disabled"
