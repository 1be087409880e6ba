"""/ollama passthrough: routing, merging, streaming, access, faults, and the official `ollama` client."""
import json
import time

import ollama
import pytest
import requests


HELLO = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
def second(make_backend):
    return make_backend(ollama_models=["llama3.2:latest", "mistral:7b"], version="0.5.1")


@pytest.fixture
def settings_overrides(fake_backend, second):
    return {"OLLAMA_BASE_URLS": f"{fake_backend.url};{second.url}", "OPENAI_API_BASE_URLS": "",
            "AIOHTTP_CLIENT_TIMEOUT": "0.6", "AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST": "0.5"}


@pytest.fixture
def key(admin, api_key_headers):
    return api_key_headers(admin)


def ndjson(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def test_root_is_public(client):
    assert client.get("/ollama/").get_json() == {"status": True}
    assert client.head("/ollama/").status_code == 200


def test_routes_need_a_credential(client, admin):
    assert client.get("/ollama/api/tags").status_code == 401
    assert client.get("/ollama/api/tags").get_json()["detail"] == "Not authenticated"


def test_pending_user_is_forbidden(client, pending):
    assert client.get("/ollama/api/tags", headers=pending["headers"]).status_code == 403


def test_seed_document_examples_with_untagged_model(client, key, fake_backend, second):
    # the documented curl examples send JSON with curl's default form content type
    form = {**key, "Content-Type": "application/x-www-form-urlencoded"}
    gen = client.post("/ollama/api/generate", headers=form,
                      data=json.dumps({"model": "llama3.2", "prompt": "¿Por qué el cielo es azul?"}))
    assert gen.status_code == 200 and gen.headers["Content-Type"] == "application/x-ndjson"
    assert gen.headers["X-Accel-Buffering"] == "no" and gen.headers["Cache-Control"] == "no-cache"
    lines = ndjson(gen.data)
    assert lines[-1]["done"] is True and "¿Por qué el cielo es azul?" in "".join(x["response"] for x in lines)
    sent = (fake_backend.last("/api/generate") or second.last("/api/generate"))["json"]
    assert sent == {"model": "llama3.2:latest", "prompt": "¿Por qué el cielo es azul?"}

    tags = client.get("/ollama/api/tags", headers=key)
    assert tags.status_code == 200 and "llama3.2:latest" in [m["model"] for m in tags.get_json()["models"]]

    embed = client.post("/ollama/api/embed", headers=form, data=json.dumps(
        {"model": "llama3.2", "input": ["Open WebUI es genial!", "Vamos a generar incrustaciones."]}))
    assert embed.status_code == 200
    assert len(embed.get_json()["embeddings"]) == 2 and len(embed.get_json()["embeddings"][0]) == 64


def test_tags_merge_backends_with_urls(client, key):
    models = client.get("/ollama/api/tags", headers=key).get_json()["models"]
    urls = {m["model"]: m["urls"] for m in models}
    assert urls == {"llama3.2:latest": [0, 1], "llama3.1:latest": [0], "nomic-embed-text:latest": [0],
                    "mistral:7b": [1]}
    assert all(m["connection_type"] == "local" for m in models)
    one = client.get("/ollama/api/tags/1", headers=key).get_json()["models"]
    assert [m["model"] for m in one] == ["llama3.2:latest", "mistral:7b"] and "urls" not in one[0]
    assert client.get("/ollama/api/tags/7", headers=key).status_code == 404


def test_routes_to_the_backend_that_has_the_model(client, key, fake_backend, second):
    resp = client.post("/ollama/api/chat", headers=key, json={"model": "mistral:7b", "messages": HELLO,
                                                              "stream": False})
    assert resp.status_code == 200 and resp.get_json()["message"]["content"].startswith("[msgs=1")
    assert second.last("/api/chat")["json"]["stream"] is False and fake_backend.last("/api/chat") is None
    forced = client.post("/ollama/api/chat/0", headers=key, json={"model": "llama3.1", "messages": HELLO,
                                                                  "stream": False})
    assert forced.status_code == 200 and fake_backend.last("/api/chat")["json"]["model"] == "llama3.1"


def test_non_stream_chat_is_the_backend_json(client, key):
    body = client.post("/ollama/api/chat", headers=key, json={"model": "llama3.1", "messages": HELLO,
                                                              "stream": False}).get_json()
    assert body["done"] is True and body["done_reason"] == "stop" and body["eval_count"] == 16


def test_unknown_model_is_404(client, key):
    resp = client.post("/ollama/api/generate", headers=key, json={"model": "nope", "prompt": "x"})
    assert resp.status_code == 404 and resp.get_json()["detail"] == "Model 'nope' was not found"
    assert client.post("/ollama/api/generate", headers=key, json={"prompt": "x"}).status_code == 400
    assert client.post("/ollama/api/generate", headers=key, data="not json").status_code == 400


def test_show_and_version_and_v1_models(client, key):
    show = client.post("/ollama/api/show", headers=key, json={"model": "mistral:7b"})
    assert show.status_code == 200 and show.get_json()["details"]["family"] == "llama"
    assert client.get("/ollama/api/version", headers=key).get_json() == {"version": "0.5.1"}
    assert client.get("/ollama/api/version/0", headers=key).get_json() == {"version": "0.6.8"}
    ids = [m["id"] for m in client.get("/ollama/v1/models", headers=key).get_json()["data"]]
    assert "mistral:7b" in ids


def test_model_management_is_admin_only(client, user):
    for method, path in (("post", "/ollama/api/pull"), ("post", "/ollama/api/push"), ("delete", "/ollama/api/push"),
                         ("post", "/ollama/api/create"), ("post", "/ollama/api/copy"),
                         ("delete", "/ollama/api/delete"), ("get", "/ollama/api/ps")):
        resp = getattr(client, method)(path, headers=user["headers"], json={"model": "llama3.2"})
        assert resp.status_code == 403, (method, path)


def test_pull_copy_delete_and_the_merged_list_follows(client, key, fake_backend, second):
    assert "new:latest" not in [m["model"] for m in client.get("/ollama/api/tags", headers=key).get_json()["models"]]
    pull = client.post("/ollama/api/pull/1", headers=key, json={"model": "new"})
    assert pull.status_code == 200 and ndjson(pull.data)[-1] == {"status": "success"}
    assert fake_backend.last("/api/pull") is None and "new:latest" in second.ollama_models
    tags = {m["model"]: m["urls"] for m in client.get("/ollama/api/tags", headers=key).get_json()["models"]}
    assert tags["new:latest"] == [1]  # the cached list was dropped after the pull
    copy = client.post("/ollama/api/copy", headers=key, json={"source": "new", "destination": "new2"})
    assert copy.status_code == 200 and second.last("/api/copy")["json"]["source"] == "new:latest"
    for method in ("post", "delete"):
        push = getattr(client, method)("/ollama/api/push", headers=key, json={"model": "new", "stream": False})
        assert push.status_code == 200 and push.get_json() == {"status": "success"}, push.get_json()
    assert client.delete("/ollama/api/delete", headers=key, json={"model": "new2"}).status_code == 200
    assert "new2:latest" not in second.ollama_models
    assert client.delete("/ollama/api/delete/1", headers=key, json={"model": "gone"}).status_code == 404


@pytest.mark.parametrize("path, body", [("/ollama/api/pull", {"model": {"A": 1}}),
                                        ("/ollama/api/create", {"model": ["x"], "stream": False}),
                                        ("/ollama/api/chat", {"model": "llama3.2", "stream": "yes"}),
                                        ("/ollama/api/generate", {"model": "llama3.2", "images": [1]})])
def test_a_documented_field_of_the_wrong_type_is_422_before_the_backend(client, key, fake_backend, path, body):
    """Found by the fuzz: `model: {}` on pull/create was forwarded, the backend dropped the connection, 502."""
    before = len(fake_backend.requests)
    response = client.post(path, headers=key, json=body)
    assert response.status_code == 422 and response.get_json()["detail"][0]["loc"][0] == "body"
    assert len(fake_backend.requests) == before


def test_ps_merges_loaded_models(client, key, fake_backend, second):
    fake_backend.loaded_models = ["llama3.2:latest"]
    second.loaded_models = ["llama3.2:latest"]
    models = client.get("/ollama/api/ps", headers=key).get_json()["models"]
    assert [(m["model"], m["urls"]) for m in models] == [("llama3.2:latest", [0, 1])]


def test_backend_http_error_is_502_naming_the_backend(client, key, fake_backend):
    fake_backend.fault = {"kind": "http500", "path": "/api/chat"}
    resp = client.post("/ollama/api/chat/0", headers=key, json={"model": "llama3.2", "messages": HELLO})
    assert resp.status_code == 502
    assert resp.get_json()["detail"] == f"Ollama backend 0 ({fake_backend.url}) failed (HTTP 500): upstream exploded"


def test_slow_backend_is_504(client, key, fake_backend):
    fake_backend.fault = {"kind": "slow", "path": "/api/generate", "delay": 1.0}
    resp = client.post("/ollama/api/generate/0", headers=key, json={"model": "llama3.2", "prompt": "x"})
    assert resp.status_code == 504 and fake_backend.url in resp.get_json()["detail"]


def test_down_backend_is_502(client, key, fake_backend, second):
    fake_backend.stop()
    resp = client.post("/ollama/api/generate/0", headers=key, json={"model": "llama3.2", "prompt": "x"})
    assert resp.status_code == 502 and fake_backend.url in resp.get_json()["detail"]
    # the model is still served by the other backend; the dead one is skipped quickly
    start = time.monotonic()
    ok = client.post("/ollama/api/generate", headers=key, json={"model": "llama3.2", "prompt": "x", "stream": False})
    assert ok.status_code == 200 and time.monotonic() - start < 3.0  # no wait on the dead one (a shared CI core)
    second.stop()
    assert client.get("/ollama/api/version", headers=key).status_code == 502


def test_hung_backend_does_not_stall_the_model_list(client, key, fake_backend):
    fake_backend.fault = {"kind": "hang"}
    start = time.monotonic()
    models = client.get("/ollama/api/tags", headers=key).get_json()["models"]
    assert time.monotonic() - start < 3.0  # the 0.5 s list timeout, not the hang (margin for a loaded machine)
    assert {m["model"] for m in models} == {"llama3.2:latest", "mistral:7b"}


def test_drop_mid_stream_ends_with_an_error_line(live_server, key, fake_backend):
    fake_backend.fault = {"kind": "drop", "path": "/api/chat", "after": 3}
    resp = requests.post(live_server + "/ollama/api/chat/0", headers=key, timeout=5,
                         json={"model": "llama3.2", "messages": HELLO})
    lines = ndjson(resp.content)
    assert resp.status_code == 200 and len(lines) == 4
    assert "error" in lines[-1] and fake_backend.url in lines[-1]["error"]


def test_lines_are_forwarded_as_they_arrive(live_server, key, fake_backend):
    fake_backend.token_delay = 0.06
    start, arrivals = time.monotonic(), []
    with requests.post(live_server + "/ollama/api/generate/0", headers=key, stream=True, timeout=5,
                       json={"model": "llama3.2", "prompt": "hi"}) as resp:
        for line in resp.iter_lines(chunk_size=None):
            if line:
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 13
    assert arrivals[0] < 0.3 and arrivals[-1] - arrivals[0] > 0.5  # spread out, not buffered to the end


def test_official_ollama_client(live_server, key, fake_backend, second):
    client = ollama.Client(host=live_server + "/ollama", headers=key)
    assert "mistral:7b" in [m.model for m in client.list().models]
    parts = list(client.chat(model="llama3.2", messages=HELLO, stream=True))
    assert parts[-1].done and "Why is the sky blue?" in "".join(p.message.content for p in parts)
    assert client.generate(model="llama3.2", prompt="hello world").response.startswith("[msgs=1")
    assert len(client.embed(model="nomic-embed-text", input=["a", "b"]).embeddings) == 2
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="nope", prompt="x")
    assert info.value.status_code == 404


def test_disabled_ollama_api_is_503(app, client, key):
    app.extensions["webui_api"].upstream.ollama = []
    resp = client.get("/ollama/api/tags", headers=key)
    assert resp.status_code == 503 and "disabled" in resp.get_json()["detail"]
    assert client.get("/ollama/").status_code == 200


def test_request_id_and_backend_time_reach_backend_and_headers(client, key, fake_backend):
    fake_backend.token_delay = 0.02
    response = client.post("/ollama/api/generate/0", headers={**key, "X-Request-ID": "trace-abc-123"},
                           json={"model": "llama3.2", "prompt": "hi", "stream": False})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "trace-abc-123"
    assert fake_backend.last("/api/generate")["headers"].get("X-Request-ID") == "trace-abc-123"
    timing = dict(part.strip().split(";dur=") for part in response.headers["Server-Timing"].split(","))
    assert float(timing["backend"]) >= 8 * 20 * 0.8  # 8 tokens, 20 ms apart, spent waiting on the backend
