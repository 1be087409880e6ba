"""POST /api/chat/completions: what reaches each backend, presets, streaming, RAG sources and every fault."""
from __future__ import annotations

import json
import time

import pytest
import requests

from webui_api.gateway import chat as gateway

HELLO = [{"role": "user", "content": "Hello there, who are you?"}]
CHAT = "/api/chat/completions"


@pytest.fixture
def settings_overrides(data_dir, fake_backend, request):
    timeout = 0.5 if "short_timeout" in request.fixturenames else 30
    return {"OLLAMA_BASE_URLS": fake_backend.url, "OPENAI_API_BASE_URLS": fake_backend.openai_url,
            "OPENAI_API_KEYS": fake_backend.openai_key, "AIOHTTP_CLIENT_TIMEOUT": timeout}


@pytest.fixture
def short_timeout():
    """Marker fixture: the app under test gets a 0.5 s read timeout."""


@pytest.fixture
def chat(client, user):
    def post(body: dict, creds: dict | None = None, **kwargs):
        return client.post(CHAT, headers=(creds or user)["headers"], json=body, **kwargs)
    return post


def events(response) -> list:
    """The SSE data payloads of a streamed response, decoded ('[DONE]' kept as a string)."""
    text = response.get_data(as_text=True)
    out = []
    for line in text.split("\n"):
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def content_of(chunks: list) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if isinstance(c, dict) and c.get("choices"))


# --- Ollama backend --------------------------------------------------------------------------

def test_ollama_nonstream_reaches_backend_exactly(chat, fake_backend):
    response = chat({"model": "llama3.2:latest", "messages": HELLO, "stream": False})
    body = response.get_json()
    assert response.status_code == 200, body
    assert fake_backend.last("/api/chat")["json"] == {"model": "llama3.2:latest", "messages": HELLO, "stream": False}
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "llama3.2:latest"
    assert body["choices"][0]["message"] == {"role": "assistant", "content":
                                             "[msgs=1 chars=25] echo: Hello there, who are you? t0 t1 t2 t3 t4 t5 t6 t7 "}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 16


def test_untagged_model_resolves_to_latest_and_is_echoed(chat, fake_backend):
    response = chat({"model": "llama3.1", "messages": HELLO})
    assert response.status_code == 200 and response.get_json()["model"] == "llama3.1"
    assert fake_backend.last("/api/chat")["json"]["model"] == "llama3.1:latest"


def test_openai_sampling_params_map_into_ollama_options(chat, fake_backend):
    body = {"model": "llama3.2", "messages": HELLO, "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": "END",
            "frequency_penalty": 0.5, "presence_penalty": 0.1, "max_tokens": 4,
            "response_format": {"type": "json_object"}, "options": {"num_ctx": 4096}}
    response = chat(body)
    sent = fake_backend.last("/api/chat")["json"]
    assert sent["options"] == {"temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["END"],
                               "frequency_penalty": 0.5, "presence_penalty": 0.1, "num_predict": 4, "num_ctx": 4096}
    assert sent["format"] == "json"
    assert response.get_json()["choices"][0]["finish_reason"] == "stop"


def test_token_limit_gives_finish_reason_length(chat):
    response = chat({"model": "llama3.2", "messages": HELLO, "max_completion_tokens": 3})
    assert response.get_json()["choices"][0]["finish_reason"] == "length"
    assert response.get_json()["usage"]["completion_tokens"] == 3


def test_ollama_stream_chunks(chat, fake_backend):
    response = chat({"model": "llama3.2", "messages": HELLO, "stream": True,
                     "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache" and response.headers["X-Accel-Buffering"] == "no"
    got = events(response)
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "llama3.2" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content_of(chunks) == "[msgs=1 chars=25] echo: Hello there, who are you? t0 t1 t2 t3 t4 t5 t6 t7 "
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 16
    assert fake_backend.last("/api/chat")["json"]["stream"] is True


def test_tools_round_trip_through_ollama(chat, fake_backend):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    response = chat({"model": "llama3.2", "messages": [{"role": "user", "content": "use the get_weather tool"}],
                     "tools": tools})
    choice = response.get_json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"])["city"]
    assert fake_backend.last("/api/chat")["json"]["tools"] == tools


def test_streams_as_tokens_arrive(client, user, fake_backend):
    fake_backend.token_delay = 0.2  # ~2.6 s for the whole answer: the first token comes long before the end
    for model in ("llama3.2", "gpt-4o-mini"):
        started = time.monotonic()
        response = client.post(CHAT, headers=user["headers"], buffered=False,
                               json={"model": model, "messages": HELLO, "stream": True})
        stream = iter(response.response)
        first = next(stream)
        first_at = time.monotonic() - started
        rest = b"".join(stream)
        total = time.monotonic() - started
        assert first.startswith(b"data: ") and rest.endswith(b"data: [DONE]\n\n")
        assert first_at < total / 2, (model, first_at, total)


# --- OpenAI backend --------------------------------------------------------------------------

def test_openai_nonstream_forwards_body_minus_our_fields(chat, fake_backend):
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": False, "temperature": 0.2, "max_tokens": 8,
            "params": {"top_p": 0.5}, "chat_id": "c1", "top_k": 2}
    response = chat(body)
    assert response.status_code == 200, response.get_json()
    sent = fake_backend.last("/v1/chat/completions")
    assert sent["json"] == {"model": "gpt-4o-mini", "messages": HELLO, "stream": False, "temperature": 0.2,
                            "max_tokens": 8, "top_p": 0.5}
    assert sent["headers"]["Authorization"] == f"Bearer {fake_backend.openai_key}"
    reply = response.get_json()
    assert reply["system_fingerprint"] == "fp_fake" and reply["usage"]["completion_tokens"] == 8


def test_openai_stream_bytes_pass_through(chat, fake_backend):
    response = chat({"model": "gpt-4o-mini", "messages": HELLO, "stream": True,
                     "stream_options": {"include_usage": True}})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert response.headers["X-Accel-Buffering"] == "no"
    raw = response.get_data()
    assert b'"object": "chat.completion.chunk"' in raw  # the backend's own spacing: not re-serialised
    got = events(response)
    assert got[-1] == "[DONE]" and got[-2]["choices"] == [] and got[-2]["usage"]["total_tokens"] == 21
    assert content_of(got[:-1]).startswith("[msgs=1 chars=25] echo: Hello")
    assert fake_backend.last("/v1/chat/completions")["json"]["stream_options"] == {"include_usage": True}


# --- presets ---------------------------------------------------------------------------------

def make_preset(client, creds, **form):
    response = client.post("/api/v1/models/create", headers=creds["headers"], json={"meta": {}, **form})
    assert response.status_code == 200, response.get_json()


def test_preset_system_prompt_and_params_on_ollama(client, chat, user, fake_backend):
    make_preset(client, user, id="terse", base_model_id="llama3.2", name="Terse",
                params={"system": "Be terse, {{USER_NAME}}.", "temperature": 0.1, "num_ctx": 2048, "max_tokens": 50,
                        "function_calling": "legacy"})
    messages = [{"role": "system", "content": "Answer in English."}] + HELLO
    response = chat({"model": "terse", "messages": messages, "temperature": 0.7})
    assert response.status_code == 200 and response.get_json()["model"] == "terse"
    sent = fake_backend.last("/api/chat")["json"]
    assert sent["model"] == "llama3.2:latest"
    assert sent["messages"][0] == {"role": "system", "content": "Be terse, User 1.\nAnswer in English."}
    assert sent["options"] == {"num_ctx": 2048, "temperature": 0.7, "num_predict": 50}


def test_preset_system_prompt_added_and_params_on_openai(client, chat, user, fake_backend):
    make_preset(client, user, id="mini-bot", base_model_id="gpt-4o-mini", name="Mini",
                params={"system": "You are Mini.", "temperature": 0.3, "num_ctx": 8192, "seed": 1})
    response = chat({"model": "mini-bot", "messages": HELLO, "seed": 2, "params": {"temperature": 0.4}})
    assert response.status_code == 200
    sent = fake_backend.last("/v1/chat/completions")["json"]
    assert sent == {"model": "gpt-4o-mini", "stream": False, "seed": 2, "temperature": 0.4,
                    "messages": [{"role": "system", "content": "You are Mini."}] + HELLO}


def test_shared_preset_is_usable_by_others_private_is_not(client, chat, user, make_user):
    other = make_user("user")
    make_preset(client, other, id="pub", base_model_id="llama3.2", name="Pub", is_public=True)
    make_preset(client, other, id="priv", base_model_id="llama3.2", name="Priv")
    assert chat({"model": "pub", "messages": HELLO}).status_code == 200
    response = chat({"model": "priv", "messages": HELLO})
    assert response.status_code == 400 and response.get_json()["detail"] == "Model not found"


# --- RAG hook --------------------------------------------------------------------------------

SOURCES = [{"source": {"type": "file", "id": "f1"}, "document": ["ctx"], "metadata": [{"file_id": "f1"}],
            "distances": [0.9]}]


@pytest.fixture
def rag_calls(monkeypatch):
    """Stand in for rag.retrieve.augment at the gateway's seam and record what it was given."""
    calls = []

    def augment(ext, user, messages, items, top_k):
        calls.append({"items": items, "top_k": top_k, "messages": messages})
        return messages[:-1] + [{"role": "user", "content": "CONTEXT\n" + messages[-1]["content"]}], SOURCES
    monkeypatch.setattr(gateway, "_augment", augment)
    return calls


def test_files_add_sources_nonstream(chat, rag_calls, fake_backend):
    for model in ("llama3.2", "gpt-4-turbo"):
        files = [{"type": "file", "id": "f1"}]
        response = chat({"model": model, "messages": HELLO, "files": files, "top_k": 2})
        body = response.get_json()
        assert response.status_code == 200, body
        assert list(body)[0] == "sources" and body["sources"] == SOURCES and body["choices"]
        assert rag_calls[-1]["items"] == files and rag_calls[-1]["top_k"] == 2
    assert fake_backend.last("/v1/chat/completions")["json"]["messages"][-1]["content"].startswith("CONTEXT\n")
    assert "files" not in fake_backend.last("/v1/chat/completions")["json"]


def test_sources_ride_on_first_streamed_chunk_with_choices(chat, rag_calls):
    for model in ("llama3.2", "gpt-4-turbo"):
        response = chat({"model": model, "messages": HELLO, "stream": True, "files": [{"type": "file", "id": "f"}]})
        got = events(response)
        carrying = [i for i, e in enumerate(got) if isinstance(e, dict) and "sources" in e]
        assert carrying == [0], model
        assert got[0]["sources"] == SOURCES and got[0]["choices"] and got[-1] == "[DONE]"


def test_preset_knowledge_is_retrieved_when_the_caller_may_read_it(client, chat, user, make_user, rag_calls):
    response = client.post("/api/v1/knowledge/create", headers=user["headers"], json={"name": "Docs",
                                                                                      "description": ""})
    assert response.status_code == 200, response.get_json()
    knowledge = [{"type": "collection", "id": response.get_json()["id"], "name": "Docs"},
                 {"type": "file", "id": "no-such-file"}]
    make_preset(client, user, id="kb-bot", base_model_id="llama3.2", name="KB", meta={"knowledge": knowledge},
                is_public=True)
    make_preset(client, user, id="no-rag", base_model_id="llama3.2", name="No",
                meta={"knowledge": knowledge, "capabilities": {"file_context": False}})
    assert chat({"model": "kb-bot", "messages": HELLO, "files": [{"type": "file", "id": "f"}]}).status_code == 200
    assert rag_calls[-1]["items"] == [{"type": "file", "id": "f"}, knowledge[0]]
    assert chat({"model": "no-rag", "messages": HELLO}).status_code == 200 and len(rag_calls) == 1
    # Another user may chat with the shared preset, but its private collection is not searched for them.
    assert chat({"model": "kb-bot", "messages": HELLO}, creds=make_user("user")).status_code == 200
    assert len(rag_calls) == 1


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body,status", [
    ({"model": "no-such-model", "messages": HELLO}, 400),
    ({"model": "no-such-model", "messages": HELLO, "stream": True}, 400),
    ({"model": "llama3.2"}, 422),
    ({"messages": HELLO}, 422),
    ({"model": "llama3.2", "messages": "hi"}, 422),
    ({"model": "llama3.2", "messages": []}, 422),
    ({"model": "llama3.2", "messages": [1]}, 422),
    ({"model": "llama3.2", "messages": [{"content": "no role"}]}, 422),
    ({"model": "llama3.2", "messages": [{"role": "wizard", "content": "x"}]}, 422),
    ({"model": "llama3.2", "messages": [{"role": "user"}]}, 422),
    ({"model": "llama3.2", "messages": [{"role": "user", "content": {"a": 1}}]}, 422),
    ({"model": "llama3.2", "messages": [{"role": "user", "content": ["x"]}]}, 422),
    ({"model": "llama3.2", "messages": HELLO, "stream": "sometimes"}, 422),
    ({"model": "llama3.2", "messages": HELLO, "files": "f1"}, 422),
    ({"model": "llama3.2", "messages": HELLO, "files": [{"type": "file"}, 3]}, 422),
    ({"model": "llama3.2", "messages": HELLO, "params": []}, 422),
    ({"model": "llama3.2", "messages": HELLO, "top_k": 0}, 422),
    ({"model": "llama3.2", "messages": HELLO, "options": "fast"}, 422),
    ({"model": ["llama3.2"], "messages": HELLO}, 422),
    ({"model": "llama3.2", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}, 400),
])
def test_bad_bodies(chat, fake_backend, body, status):
    response = chat(body)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["detail"]
    assert not fake_backend.requests_to("/api/chat") and not fake_backend.requests_to("/v1/chat/completions")


def test_unknown_model_detail_is_exact(chat):
    assert chat({"model": "no-such-model", "messages": HELLO}).get_json()["detail"] == "Model not found"


@pytest.mark.parametrize("raw", ["{\"model\": \"llama3.2:latest\", \"messages\": [", "[1, 2]", "null", "\"x\""])
def test_malformed_json(client, user, raw):
    response = client.post(CHAT, headers={**user["headers"], "Content-Type": "application/json"}, data=raw)
    assert response.status_code in (400, 422) and response.get_json()["detail"]


def test_auth_required(client, pending):
    assert client.post(CHAT, json={"model": "llama3.2", "messages": HELLO}).status_code == 401
    assert client.post(CHAT, headers=pending["headers"], json={"model": "llama3.2", "messages": HELLO}).status_code == 403


def test_v1_alias(client, user):
    response = client.post("/api/v1/chat/completions", headers=user["headers"],
                           json={"model": "gpt-4o-mini", "messages": HELLO})
    assert response.status_code == 200 and response.get_json()["object"] == "chat.completion"


# --- faults ------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,path", [("llama3.2", "/api/chat"), ("gpt-4o-mini", "/v1/chat/completions")])
@pytest.mark.parametrize("stream", [False, True])
def test_backend_500_is_502_naming_backend(chat, fake_backend, model, path, stream):
    fake_backend.fault = {"kind": "http500", "path": path}
    response = chat({"model": model, "messages": HELLO, "stream": stream})
    assert response.status_code == 502
    detail = response.get_json()["detail"]
    assert "upstream exploded" in detail and "backend 0" in detail and fake_backend.openai_key not in detail


@pytest.mark.parametrize("model", ["llama3.2", "gpt-4o-mini"])
def test_backend_down_is_502(chat, fake_backend, model):
    chat({"model": model, "messages": HELLO})  # the catalogue now knows the model
    fake_backend.stop()
    response = chat({"model": model, "messages": HELLO, "stream": True})
    assert response.status_code == 502 and "connection refused" in response.get_json()["detail"]


@pytest.mark.parametrize("model,path", [("llama3.2", "/api/chat"), ("gpt-4o-mini", "/v1/chat/completions")])
def test_slow_backend_is_504(chat, fake_backend, short_timeout, model, path):
    fake_backend.fault = {"kind": "slow", "path": path, "delay": 8}
    started = time.monotonic()
    response = chat({"model": model, "messages": HELLO})
    assert response.status_code == 504 and "timed out" in response.get_json()["detail"]
    assert time.monotonic() - started < 4  # the 0.5 s timeout, not the 8 s answer (margin for a loaded machine)


@pytest.mark.parametrize("model,path", [("llama3.2", "/api/chat"), ("gpt-4o-mini", "/v1/chat/completions")])
def test_drop_mid_stream_ends_with_error_event_and_done(chat, fake_backend, model, path):
    fake_backend.fault = {"kind": "drop", "path": path, "after": 3}
    response = chat({"model": model, "messages": HELLO, "stream": True})
    assert response.status_code == 200
    got = events(response)
    assert got[-1] == "[DONE]"
    assert "error" in got[-2] and got[-2]["error"]["message"].startswith("Chat completion stream failed")
    assert content_of(got[:-2])  # what arrived before the drop was passed on


def test_drop_mid_nonstream_body_is_502(chat, fake_backend):
    fake_backend.fault = {"kind": "drop", "path": "/api/chat"}
    response = chat({"model": "llama3.2", "messages": HELLO})
    assert response.status_code == 502


def test_ollama_error_line_mid_stream_becomes_error_event(chat, fake_backend):
    fake_backend.fault = {"kind": "error", "path": "/api/chat", "after": 2, "message": "out of memory"}
    got = events(chat({"model": "llama3.2", "messages": HELLO, "stream": True}))
    assert got[-1] == "[DONE]" and "out of memory" in got[-2]["error"]["message"]


def test_stalled_stream_times_out_with_error_event(chat, fake_backend, short_timeout):
    fake_backend.token_delay = 1.0
    started = time.monotonic()
    got = events(chat({"model": "llama3.2", "messages": HELLO, "stream": True}))
    assert got[-1] == "[DONE]" and "timed out" in got[-2]["error"]["message"]
    assert time.monotonic() - started < 4  # the 0.5 s timeout, not the 13 s answer


def test_backend_4xx_keeps_status(chat, fake_backend):
    chat({"model": "llama3.1", "messages": HELLO})
    fake_backend.ollama_models.remove("llama3.1:latest")  # gone from the backend, still in our cache
    response = chat({"model": "llama3.1", "messages": HELLO})
    assert response.status_code == 404 and "not found" in response.get_json()["detail"]


def test_backend_refusing_our_key_is_502_not_401(chat, fake_backend):
    chat({"model": "gpt-4o-mini", "messages": HELLO})
    fake_backend.openai_key = "sk-rotated"
    response = chat({"model": "gpt-4o-mini", "messages": HELLO})
    assert response.status_code == 502 and "credentials" in response.get_json()["detail"]


# --- the seed document's examples, over real HTTP ----------------------------------------------

def test_seed_doc_curl_example(live_server, user):
    # curl -X POST .../api/chat/completions -H "Authorization: Bearer KEY" -H "Content-Type: application/json" -d '{...}'
    data = '{"model": "llama3.1", "messages": [{"role": "user", "content": "¿Por qué el cielo es azul?"}]}'
    response = requests.post(f"{live_server}/api/chat/completions", data=data.encode(), timeout=10,
                             headers={"Authorization": f"Bearer {user['token']}", "Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert "¿Por qué el cielo es azul?" in response.json()["choices"][0]["message"]["content"]


def test_seed_doc_python_example(live_server, user, fake_backend):
    fake_backend.ollama_models.append("granite3.1-dense:8b")

    def chat_with_model(token):
        url = f"{live_server}/api/chat/completions"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        data = {"model": "granite3.1-dense:8b",
                "messages": [{"role": "user", "content": "¿Por qué el cielo es azul?"}]}
        response = requests.post(url, headers=headers, json=data, timeout=10)
        return response.json()

    reply = chat_with_model(user["token"])
    assert reply["choices"][0]["message"]["role"] == "assistant" and reply["model"] == "granite3.1-dense:8b"


# --- RAG end to end (real upload, real retrieval, fake embeddings) ------------------------------

def upload(client, creds, text: bytes, name: str) -> str:
    import io
    response = client.post("/api/v1/files/", headers=creds["headers"], data={"file": (io.BytesIO(text), name)})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["id"]


def test_rag_with_an_uploaded_file(client, chat, user, make_user, fake_backend):
    file_id = upload(client, user, b"The secret launch code of project Zephyr is 7-4-1.", "zephyr.txt")
    question = [{"role": "user", "content": "What is the launch code of project Zephyr?"}]
    response = chat({"model": "gpt-4o-mini", "messages": question, "files": [{"type": "file", "id": file_id}]})
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["sources"][0]["source"]["id"] == file_id
    assert "7-4-1" in body["sources"][0]["document"][0]
    sent = fake_backend.last("/v1/chat/completions")["json"]["messages"][-1]["content"]
    assert "7-4-1" in sent and "What is the launch code of project Zephyr?" in sent
    stranger = make_user("user")
    response = chat({"model": "gpt-4o-mini", "messages": question, "files": [{"type": "file", "id": file_id}]},
                    creds=stranger)
    assert response.status_code == 404


def test_usage_tokens_are_counted_in_metrics(chat):
    from prometheus_client import REGISTRY

    def out_tokens() -> float:
        return REGISTRY.get_sample_value("webui_api_tokens_total", {"direction": "out"}) or 0.0

    for body in ({"model": "llama3.2", "messages": HELLO}, {"model": "gpt-4o-mini", "messages": HELLO},
                 {"model": "llama3.2", "messages": HELLO, "stream": True}):
        before = out_tokens()
        chat(body).get_data()
        assert out_tokens() - before == 16, body


@pytest.mark.parametrize("model", ["llama3.2", "gpt-4o-mini"])
def test_client_going_away_frees_the_stream(live_server, user, fake_backend, model):
    from prometheus_client import REGISTRY

    def in_progress() -> float:
        return REGISTRY.get_sample_value("webui_api_http_requests_in_progress") or 0.0

    fake_backend.token_delay = 0.6  # the whole answer would take ~8 s
    baseline = in_progress()
    started = time.monotonic()
    response = requests.post(f"{live_server}{CHAT}", headers=user["headers"], stream=True, timeout=10,
                             json={"model": model, "messages": HELLO, "stream": True})
    lines = response.iter_lines()
    assert next(lines).startswith(b"data: ")
    response.close()  # the client hangs up mid-answer
    while in_progress() > baseline and time.monotonic() - started < 8:
        time.sleep(0.05)
    assert in_progress() == baseline and time.monotonic() - started < 5
