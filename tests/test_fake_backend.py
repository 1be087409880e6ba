"""Brief checks that the fake backend behaves like Ollama / OpenAI where the other tests depend on it."""
import base64
import json
import struct
import time

import pytest
import requests

from tests.fake_backend import embed_text, fake_backend, make_backend  # noqa: F401  (fixtures)

OA_HEADERS = {"Authorization": "Bearer sk-fake-openai-key"}
HELLO = [{"role": "user", "content": "Hello there, who are you?"}]


def ndjson(resp):
    return [json.loads(line) for line in resp.iter_lines() if line]


def test_ollama_chat_streams_by_default_with_final_counters(fake_backend):
    lines = ndjson(requests.post(fake_backend.url + "/api/chat", json={"model": "llama3.2", "messages": HELLO}))
    assert "".join(x["message"]["content"] for x in lines).startswith("[msgs=1 chars=25] echo: Hello there")
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["prompt_eval_count"] == 5 and final["eval_count"] == len(lines) - 1 == 16
    assert final["total_duration"] > 0 and final["eval_duration"] > 0
    assert fake_backend.last("/api/chat")["json"]["model"] == "llama3.2"


def test_num_predict_and_max_tokens_stop_on_length(fake_backend):
    gen = requests.post(fake_backend.url + "/api/generate", json={
        "model": "llama3.2:latest", "prompt": "hi", "stream": False, "options": {"num_predict": 3}}).json()
    assert gen["done_reason"] == "length" and gen["eval_count"] == 3
    oa = requests.post(fake_backend.openai_url + "/chat/completions", headers=OA_HEADERS, json={
        "model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 2}).json()
    assert oa["choices"][0]["finish_reason"] == "length" and oa["usage"]["completion_tokens"] == 2


def test_openai_sse_with_usage_and_key_check(fake_backend):
    resp = requests.post(fake_backend.openai_url + "/chat/completions", headers=OA_HEADERS, json={
        "model": "gpt-4o-mini", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}})
    events = [line[6:] for line in resp.iter_lines() if line]
    assert events[-1] == b"[DONE]"
    usage = json.loads(events[-2])
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 21
    assert json.loads(events[-3])["choices"][0]["finish_reason"] == "stop"
    bad = requests.get(fake_backend.openai_url + "/models", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


def test_ollama_v1_is_keyless_for_ollama_models_only(make_backend):
    backend = make_backend(ollama_key="ollama-secret")
    body = {"model": "llama3.2", "messages": HELLO}
    assert requests.post(backend.openai_url + "/chat/completions", json=body).status_code == 401
    ollama = requests.post(backend.openai_url + "/chat/completions", json=body,
                           headers={"Authorization": "Bearer ollama-secret"}).json()
    assert ollama["system_fingerprint"] == "fp_ollama" and ollama["model"] == "llama3.2"
    gpt = requests.post(backend.openai_url + "/chat/completions", json={**body, "model": "gpt-4o-mini"},
                        headers={"Authorization": "Bearer ollama-secret"})
    assert gpt.status_code == 401 and gpt.json()["error"]["code"] == "invalid_api_key"


def test_responses_stream_named_events_without_done(fake_backend):
    resp = requests.post(fake_backend.openai_url + "/responses", headers=OA_HEADERS,
                         json={"model": "gpt-4o-mini", "input": "hi", "stream": True, "max_output_tokens": 2})
    blocks = [b for b in resp.text.split("\n\n") if b]
    names = [b.split("\n")[0] for b in blocks]
    assert names[0] == "event: response.created" and names[-1] == "event: response.incomplete"
    assert names.count("event: response.output_text.delta") == 2 and "[DONE]" not in resp.text
    final = json.loads(blocks[-1].split("data: ", 1)[1])
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_tool_call_trigger(fake_backend):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    body = {"model": "llama3.2", "stream": False, "tools": tools,
            "messages": [{"role": "user", "content": "use the get_weather tool"}]}
    msg = requests.post(fake_backend.url + "/api/chat", json=body).json()["message"]
    assert msg["tool_calls"][0]["function"]["name"] == "get_weather"
    assert isinstance(msg["tool_calls"][0]["function"]["arguments"], dict)
    oa = requests.post(fake_backend.openai_url + "/chat/completions", headers=OA_HEADERS,
                       json=dict(body, model="gpt-4o-mini")).json()["choices"][0]
    assert oa["finish_reason"] == "tool_calls"
    assert json.loads(oa["message"]["tool_calls"][0]["function"]["arguments"])["city"]


def test_embeddings_rank_shared_words_higher(fake_backend):
    res = requests.post(fake_backend.url + "/api/embed", json={
        "model": "nomic-embed-text", "input": ["red apple pie", "red apple", "blue ocean"]}).json()
    a, b, c = res["embeddings"]
    assert len(a) == 64 and abs(sum(x * x for x in a) - 1) < 1e-9
    assert sum(x * y for x, y in zip(a, b)) > sum(x * y for x, y in zip(a, c))
    fake_backend.embed_dims["text-embedding-3-small"] = 8
    oa = requests.post(fake_backend.openai_url + "/embeddings", headers=OA_HEADERS, json={
        "model": "text-embedding-3-small", "input": "x y", "encoding_format": "base64"}).json()
    floats = struct.unpack("<8f", base64.b64decode(oa["data"][0]["embedding"]))
    assert floats == pytest.approx(embed_text("x y", 8), abs=1e-6)


def test_faults(fake_backend):
    fake_backend.fault = {"kind": "http500", "path": "/api/chat"}
    resp = requests.post(fake_backend.url + "/api/chat", json={"model": "llama3.2", "messages": HELLO})
    assert resp.status_code == 500 and resp.json() == {"error": "upstream exploded"}
    fake_backend.fault = {"kind": "drop", "path": "/api/chat", "after": 2}
    resp = requests.post(fake_backend.url + "/api/chat", json={"model": "llama3.2", "messages": HELLO}, stream=True)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        list(resp.iter_lines())
    fake_backend.fault = {"kind": "hang"}
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(fake_backend.url + "/api/tags", timeout=0.2)
    fake_backend.fault = {"kind": "slow", "delay": 0.3}
    start = time.monotonic()
    assert requests.get(fake_backend.url + "/api/version").json() == {"version": "0.6.8"}
    assert time.monotonic() - start >= 0.3


def test_stop_means_down(make_backend):
    backend = make_backend(ollama_models=["only:latest"])
    session = requests.Session()
    assert session.get(backend.url + "/api/tags").json()["models"][0]["name"] == "only:latest"
    backend.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(backend.url + "/api/tags", timeout=1)
