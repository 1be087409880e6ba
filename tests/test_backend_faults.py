"""A failing backend, attacked as the hardening audit did (issue 11, items 9, 10 and 21): its 5xx is a 502 naming
it on every route, streaming or not; a model missing because a backend's model list did not arrive is a 502
naming that backend, from a cold cache as from a warm one, and is back as soon as the backend is; a failed list
is not an empty one; a caller who is not an admin learns which backend failed, never where it lives."""
from __future__ import annotations

import json

import ollama
import openai
import pytest
import requests

from webui_api.upstream import Backend, without_locations

from .test_chat import settings_overrides, short_timeout  # noqa: F401  (the same backends and timeouts)

HELLO = [{"role": "user", "content": "Why is the sky blue?"}]
# route -> (request body, the backend path it reaches, the backend it names)
PASSTHROUGH = {
    "/ollama/api/chat": ({"model": "llama3.2", "messages": HELLO}, "/api/chat", "Ollama backend 0"),
    "/ollama/api/generate": ({"model": "llama3.2", "prompt": "Why?"}, "/api/generate", "Ollama backend 0"),
    "/openai/chat/completions": ({"model": "gpt-4o-mini", "messages": HELLO}, "/v1/chat/completions",
                                 "OpenAI backend 0")}
# model -> (the chat path it reaches, the embedding model of the same backend kind, the backend it names)
MODELS = {"llama3.2": ("/api/chat", "nomic-embed-text", "Ollama backend 0"),
          "gpt-4o-mini": ("/v1/chat/completions", "text-embedding-3-small", "OpenAI backend 0")}


@pytest.fixture
def key(user, api_key_headers) -> dict:
    return api_key_headers(user)


def chat(client, creds: dict, model: str, stream: bool = False):
    return client.post("/api/chat/completions", headers=creds["headers"],
                       json={"model": model, "messages": HELLO, "stream": stream})


def embed(client, creds: dict, model: str):
    return client.post("/api/embeddings", headers=creds["headers"], json={"model": model, "input": "sky"})


def stream_error(data: bytes) -> str:
    """The error message that ends a stream: an SSE error event's, or an NDJSON error line's."""
    for line in reversed(data.decode().splitlines()):
        line = line.removeprefix("data: ").strip()
        if line.startswith("{") and "error" in json.loads(line):
            error = json.loads(line)["error"]
            return error["message"] if isinstance(error, dict) else error
    raise AssertionError(f"no error in the stream: {data[-300:]!r}")


# ----------------------------------------------------------------------------- item 9: 5xx → 502 naming the backend

@pytest.mark.parametrize("route", PASSTHROUGH)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [500, 503])
def test_a_backend_5xx_on_the_passthrough_is_502_naming_the_backend(client, user, fake_backend, route, stream,
                                                                     status):
    body, path, name = PASSTHROUGH[route]
    fake_backend.fault = {"kind": "http500", "path": path, "status": status, "message": "GPU on fire"}
    reply = client.post(route, headers=user["headers"], json={**body, "stream": stream})
    assert reply.status_code == 502
    detail = reply.get_json()["detail"]
    assert detail == f"{name} failed (HTTP {status}): GPU on fire"
    error = reply.get_json()["error"]  # the route family's own client shape stays
    assert error == detail if route.startswith("/ollama/") else error["type"] == "upstream_error"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_a_backend_5xx_on_chat_and_embeddings_is_502_naming_the_backend(client, user, fake_backend, model, stream):
    path, embedder, name = MODELS[model]
    fake_backend.fault = {"kind": "http500", "path": path, "status": 500, "message": "GPU on fire"}
    reply = chat(client, user, model, stream)
    assert reply.status_code == 502 and reply.get_json()["detail"] == f"{name} failed (HTTP 500): GPU on fire"
    fake_backend.fault = {"kind": "http500", "path": "/v1/embeddings" if "OpenAI" in name else "/api/embed"}
    reply = embed(client, user, embedder)
    assert reply.status_code == 502 and reply.get_json()["detail"] == f"{name} failed (HTTP 500): upstream exploded"


def test_a_backend_4xx_keeps_its_status_and_message(client, user, fake_backend):
    fake_backend.fault = {"kind": "http500", "path": "/api/generate", "status": 409, "message": "model is busy"}
    reply = client.post("/ollama/api/generate", headers=user["headers"], json={"model": "llama3.2", "prompt": "x"})
    assert reply.status_code == 409 and reply.get_json() == {"detail": "model is busy", "error": "model is busy"}


def test_the_real_clients_read_the_502(live_server, key, fake_backend):
    fake_backend.fault = {"kind": "http500", "path": "/api/chat", "message": "GPU on fire"}
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=live_server + "/ollama", headers=key).chat(model="llama3.2", messages=HELLO)
    assert info.value.status_code == 502 and info.value.error == "Ollama backend 0 failed (HTTP 500): GPU on fire"
    fake_backend.fault = {"kind": "http500", "path": "/v1/chat", "message": "GPU on fire"}
    sdk = openai.OpenAI(base_url=live_server + "/openai", api_key=key["Authorization"].split(" ", 1)[1],
                        max_retries=0, timeout=10)
    with pytest.raises(openai.InternalServerError) as info:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert info.value.status_code == 502
    assert info.value.body["message"] == "OpenAI backend 0 failed (HTTP 500): GPU on fire"


# ----------------------------------------------------------------------------- item 10: backend down, model lists

def down_routes(model: str) -> list[tuple[str, dict]]:
    """Every route a model is called through: chat, embeddings (the same backend's embedder), passthrough."""
    _, embedder, name = MODELS[model]
    passthrough = "/ollama/api/chat" if "Ollama" in name else "/openai/chat/completions"
    return [("/api/chat/completions", {"model": model, "messages": HELLO}),
            ("/api/chat/completions", {"model": model, "messages": HELLO, "stream": True}),
            ("/api/embeddings", {"model": embedder, "input": "sky"}),
            (passthrough, {"model": model, "messages": HELLO, "stream": False})]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("warm", [False, True], ids=["cold-cache", "warm-cache"])
def test_a_backend_down_is_502_naming_it_whichever_cache_the_worker_has(client, user, fake_backend, model, warm):
    if warm:
        assert chat(client, user, model).status_code == 200  # this worker has listed the model
    fake_backend.stop()
    name = MODELS[model][2]
    for route, body in down_routes(model):
        reply = client.post(route, headers=user["headers"], json=body)
        assert reply.status_code == 502, (route, reply.get_json())
        detail = reply.get_json()["detail"]
        assert name in detail and "connection refused" in detail and "Model not found" not in detail


@pytest.mark.parametrize("model", MODELS)
def test_a_model_list_that_failed_names_its_backend_and_the_model_is_back_with_it(client, user, fake_backend,
                                                                                  monkeypatch, model):
    monkeypatch.setattr("webui_api.gateway.catalog.REFETCH_AFTER", 0.0)  # a miss asks the backends again now
    lists = "/api/tags" if model == "llama3.2" else "/v1/models"
    fake_backend.fault = {"kind": "http500", "path": lists}
    name = MODELS[model][2]
    for route, body in down_routes(model):
        reply = client.post(route, headers=user["headers"], json=body)
        assert reply.status_code == 502, (route, reply.get_json())
        assert reply.get_json()["detail"] == (f"Model '{body['model']}' could not be found: a backend's model "
                                              f"list did not arrive ({name} answered HTTP 500)")
    fake_backend.fault = None  # the backend is back: so is the model, at once, not after the cache's TTL
    for route, body in down_routes(model):
        reply = client.post(route, headers=user["headers"], json=body)
        assert reply.status_code == 200, (route, reply.get_json())


def test_a_failed_model_list_is_not_cached_as_an_empty_list(client, user, fake_backend):
    def listed() -> set:
        reply = client.get("/api/models?refresh=true", headers=user["headers"])
        assert reply.status_code == 200
        return {m["id"] for m in reply.get_json()["data"]}

    before = listed()
    assert {"llama3.2:latest", "gpt-4o-mini"} <= before
    fake_backend.fault = {"kind": "http500", "path": "/api/tags"}  # the list fails; chat still works
    assert listed() == before
    assert chat(client, user, "llama3.2").status_code == 200
    assert client.post("/ollama/api/chat", headers=user["headers"],
                       json={"model": "llama3.2", "messages": HELLO, "stream": False}).status_code == 200


def test_an_unknown_model_while_a_backend_is_down_may_be_its_own_so_is_502(client, user, fake_backend):
    fake_backend.stop()
    assert chat(client, user, "nope").status_code == 502
    reply = client.post("/openai/chat/completions", headers=user["headers"], json={"model": "nope", "messages": HELLO})
    assert reply.status_code == 502 and "OpenAI backend 0" in reply.get_json()["detail"]


def test_every_list_arrived_and_the_model_is_not_there_is_not_found(client, user):
    assert chat(client, user, "nope").get_json()["detail"] == "Model not found"
    reply = client.post("/ollama/api/chat", headers=user["headers"], json={"model": "nope", "messages": HELLO})
    assert reply.status_code == 404 and reply.get_json()["detail"] == "Model 'nope' was not found"


# ----------------------------------------------------------------------------- item 21: where a backend lives

@pytest.fixture
def callers(admin, user) -> dict:
    return {"admin": admin, "user": user}


def assert_named_for(role: str, text: str, backend, name: str) -> None:
    """An admin reads the backend's URL; anyone else its name only: no host, no port."""
    assert name in text
    if role == "admin":
        assert backend.url in text
    else:
        assert "127.0.0.1" not in text and str(backend.port) not in text


@pytest.mark.parametrize("role", ["admin", "user"])
@pytest.mark.parametrize("model", MODELS)
def test_502_details_name_the_backend_in_full_only_for_admins(client, callers, fake_backend, monkeypatch, role,
                                                              model):
    monkeypatch.setattr("webui_api.gateway.catalog.REFETCH_AFTER", 0.0)  # a miss asks the backends again now
    creds, (path, _, name) = callers[role], MODELS[model]
    fake_backend.fault = {"kind": "http500", "path": path}
    for reply in (chat(client, creds, model), chat(client, creds, model, stream=True),
                  client.post("/ollama/api/chat" if "Ollama" in name else "/openai/chat/completions",
                              headers=creds["headers"], json={"model": model, "messages": HELLO})):
        assert reply.status_code == 502
        assert_named_for(role, reply.get_data(as_text=True), fake_backend, name)
    fake_backend.stop()
    reply = chat(client, creds, model)
    assert reply.status_code == 502 and "connection refused" in reply.get_json()["detail"]
    assert_named_for(role, reply.get_data(as_text=True), fake_backend, name)
    reply = chat(client, creds, "nope")  # a model list that did not arrive
    assert reply.status_code == 502 and "model list" in reply.get_json()["detail"]
    assert_named_for(role, reply.get_data(as_text=True), fake_backend, name)


@pytest.mark.parametrize("role", ["admin", "user"])
def test_504_details_name_the_backend_in_full_only_for_admins(client, callers, fake_backend, short_timeout, role):
    fake_backend.fault = {"kind": "slow", "path": "/api/generate", "delay": 2}
    reply = client.post("/ollama/api/generate", headers=callers[role]["headers"],
                        json={"model": "llama3.2", "prompt": "x", "stream": False})
    assert reply.status_code == 504
    assert_named_for(role, reply.get_data(as_text=True), fake_backend, "Ollama backend 0")


@pytest.mark.parametrize("role", ["admin", "user"])
@pytest.mark.parametrize("route,body,path,name", [
    ("/api/chat/completions", {"model": "llama3.2", "messages": HELLO}, "/api/chat", "Ollama backend 0"),
    ("/api/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}, "/v1/chat", "OpenAI backend 0"),
    ("/ollama/api/chat", {"model": "llama3.2", "messages": HELLO}, "/api/chat", "Ollama backend 0"),
    ("/openai/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}, "/v1/chat", "OpenAI backend 0")])
def test_a_stream_cut_short_names_the_backend_in_full_only_for_admins(live_server, callers, fake_backend, role,
                                                                      route, body, path, name):
    fake_backend.fault = {"kind": "drop", "path": path, "after": 2}
    reply = requests.post(live_server + route, headers=callers[role]["headers"], timeout=10,
                          json={**body, "stream": True})
    assert reply.status_code == 200  # the stream had begun: it ends with an error the client parses
    assert_named_for(role, stream_error(reply.content), fake_backend, name)


def test_readiness_and_errors_agree_on_what_a_user_sees(client, user, fake_backend):
    fake_backend.stop()
    ready = client.get("/health/ready", headers=user["headers"]).get_data(as_text=True)
    reply = chat(client, user, "llama3.2").get_data(as_text=True)
    assert str(fake_backend.port) not in ready + reply


def test_a_label_cuts_to_its_name_whatever_the_url_holds():
    odd = Backend("openai", 3, "https://user:pw@llm.internal:8443/a path(1)/v1", "sk-x")
    assert odd.label == "OpenAI backend 3 (https://llm.internal:8443/a%20path%281%29/v1)"
    text = f"{odd.label} failed: connection refused; {Backend('reranker', 0, 'http://r:9').label}: boom"
    assert without_locations(text) == "OpenAI backend 3 failed: connection refused; reranker: boom"
    assert without_locations("OpenAI backend 3 failed (HTTP 500): bad (really)") == \
        "OpenAI backend 3 failed (HTTP 500): bad (really)"  # a backend's own words are left alone
