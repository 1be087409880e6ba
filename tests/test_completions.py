"""Legacy completions (/api/v1/completions), the Responses API relays and Ollama's keyless /v1, through the
official `openai` SDK and plain HTTP."""
from __future__ import annotations

import json

import openai
import pytest

from .fake_backend import embed_text
from .test_sdk_openai import ANSWER, settings_overrides  # noqa: F401 - the same backends (a fixture)

PROMPT = "Why is the sky blue?"


@pytest.fixture
def sdk(live_server, user, api_key_headers):
    """An openai client for one of the server's OpenAI-compatible roots ("/api/v1", "/openai", ...)."""
    key = api_key_headers(user)["Authorization"].split(" ", 1)[1]
    return lambda root: openai.OpenAI(base_url=live_server + root, api_key=key, max_retries=0, timeout=10)


# --- POST /api/v1/completions ------------------------------------------------------------------

@pytest.mark.parametrize("model", ["llama3.2", "gpt-4o-mini"])
def test_legacy_completion(sdk, model):
    reply = sdk("/api/v1").completions.create(model=model, prompt=PROMPT)
    assert reply.object == "text_completion" and reply.model == model
    assert reply.choices[0].text == ANSWER and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 16 and reply.usage.prompt_tokens == 5


@pytest.mark.parametrize("model", ["llama3.2", "gpt-4o-mini"])
def test_legacy_completion_stream_with_usage(sdk, model):
    chunks = list(sdk("/api/v1").completions.create(model=model, prompt=[PROMPT], stream=True,
                                                    stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16


def test_legacy_completion_reaches_ollama_generate_converted(client, user, fake_backend):
    preset = client.post("/api/v1/models/create", headers=user["headers"], json={
        "id": "short", "base_model_id": "llama3.2", "name": "Short", "meta": {},
        "params": {"system": "ignored here", "temperature": 0.1, "num_ctx": 2048}})
    assert preset.status_code == 200, preset.get_json()
    body = {"model": "short", "prompt": PROMPT, "max_tokens": 3, "temperature": 0.5, "suffix": "!", "stop": "x"}
    reply = client.post("/api/v1/completions", headers=user["headers"], json=body).get_json()
    assert reply["choices"][0]["finish_reason"] == "length" and reply["model"] == "short"
    assert fake_backend.last("/api/generate")["json"] == {
        "model": "llama3.2:latest", "prompt": PROMPT, "stream": False, "suffix": "!",
        "options": {"temperature": 0.5, "num_ctx": 2048, "num_predict": 3, "stop": ["x"]}}


def test_legacy_completion_reaches_openai_as_sent(client, user, fake_backend):
    body = {"model": "gpt-4o-mini", "prompt": ["a", "b"], "max_tokens": 3, "files": [{"id": "x"}]}
    reply = client.post("/api/completions", headers=user["headers"], json=body).get_json()
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    sent = fake_backend.last("/v1/completions")
    assert sent["json"] == {"model": "gpt-4o-mini", "prompt": ["a", "b"], "max_tokens": 3, "stream": False}
    assert sent["headers"]["Authorization"] == f"Bearer {fake_backend.openai_key}"


def test_legacy_completion_errors(sdk, client, user, fake_backend):
    api = sdk("/api/v1")
    with pytest.raises(openai.UnprocessableEntityError, match="one text prompt"):
        api.completions.create(model="llama3.2", prompt=["one", "two"])
    with pytest.raises(openai.BadRequestError, match="Model not found"):
        api.completions.create(model="no-such-model", prompt=PROMPT)
    missing = client.post("/api/v1/completions", headers=user["headers"], json={"model": "llama3.2"})
    bad = client.post("/api/v1/completions", headers=user["headers"],
                      json={"model": "llama3.2", "prompt": "x", "options": [1]})
    assert bad.status_code == 422 and bad.get_json()["detail"] == "`options` must be an object."
    assert missing.status_code == 422 and missing.get_json()["error"]["message"]
    fake_backend.fault = {"kind": "http500", "path": "/v1/completions", "message": "quota gone"}
    with pytest.raises(openai.APIStatusError, match="quota gone"):
        api.completions.create(model="gpt-4o-mini", prompt=PROMPT)
    fake_backend.fault = {"kind": "drop", "path": "/api/generate", "after": 3}
    with pytest.raises(openai.APIError, match="stream failed"):
        list(api.completions.create(model="llama3.2", prompt=PROMPT, stream=True))


# --- the Responses API -------------------------------------------------------------------------

RESPONSES = [("/openai", "gpt-4o-mini", "/v1/responses"), ("/ollama/v1", "llama3.2", "/v1/responses")]


@pytest.mark.parametrize("root,model,path", RESPONSES)
def test_responses_relayed(sdk, fake_backend, root, model, path):
    reply = sdk(root).responses.create(model=model, input=PROMPT)
    assert reply.object == "response" and reply.status == "completed" and reply.output_text == ANSWER
    assert reply.usage.output_tokens == 16
    sent = fake_backend.last(path)
    assert sent["json"]["input"] == PROMPT
    assert ("Authorization" in sent["headers"]) == (root == "/openai")  # Ollama's /v1 is keyless


@pytest.mark.parametrize("root,model,path", RESPONSES)
def test_responses_stream_relayed(sdk, root, model, path):
    events = list(sdk(root).responses.create(model=model, input=[{"role": "user", "content": PROMPT}],
                                             stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
    assert events[-1].response.output_text == ANSWER


def test_responses_errors(sdk, fake_backend):
    with pytest.raises(openai.NotFoundError, match="was not found"):
        sdk("/openai").responses.create(model="no-such-model", input=PROMPT)
    fake_backend.fault = {"kind": "drop", "path": "/v1/responses", "after": 5}
    with pytest.raises(openai.APIError):
        list(sdk("/ollama/v1").responses.create(model="llama3.2", input=PROMPT, stream=True))


# --- Ollama's OpenAI-compatible /v1 ------------------------------------------------------------

def test_ollama_v1_chat_completions_and_embeddings(sdk, fake_backend):
    ollama = sdk("/ollama/v1")
    chat = ollama.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": PROMPT}])
    assert chat.choices[0].message.content == ANSWER and chat.system_fingerprint == "fp_ollama"
    assert fake_backend.last("/v1/chat/completions")["json"]["model"] == "llama3.2:latest"
    streamed = list(ollama.chat.completions.create(model="llama3.2", stream=True,
                                                   messages=[{"role": "user", "content": PROMPT}]))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == ANSWER
    text = ollama.completions.create(model="llama3.2", prompt=PROMPT)
    assert text.choices[0].text == ANSWER
    streamed = list(ollama.completions.create(model="llama3.2", prompt=PROMPT, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == ANSWER
    vectors = ollama.embeddings.create(model="nomic-embed-text", input=["blue sky"], encoding_format="float")
    assert vectors.data[0].embedding == pytest.approx(embed_text("blue sky"), abs=1e-6)
    calls = [r for r in fake_backend.requests if r["method"] == "POST" and r["path"].startswith("/v1/")]
    assert len(calls) == 5 and not any("Authorization" in r["headers"] for r in calls)  # keyless, as Ollama


def test_ollama_v1_unknown_model_and_backend_error(sdk, fake_backend):
    ollama = sdk("/ollama/v1")
    with pytest.raises(openai.NotFoundError, match="was not found"):
        ollama.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    fake_backend.fault = {"kind": "http500", "path": "/v1/completions", "message": "out of memory"}
    with pytest.raises(openai.APIStatusError, match="out of memory") as caught:
        ollama.completions.create(model="llama3.2", prompt=PROMPT)
    assert caught.value.status_code == 502 and json.loads(caught.value.response.text)["detail"]
