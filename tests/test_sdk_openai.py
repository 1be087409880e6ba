"""The official `openai` SDK against a live server: models, chat (plain and streamed with usage), embeddings."""
from __future__ import annotations


import openai
import pytest

from .fake_backend import embed_text

QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
ANSWER = "[msgs=1 chars=20] echo: Why is the sky blue? t0 t1 t2 t3 t4 t5 t6 t7 "


@pytest.fixture
def settings_overrides(data_dir, fake_backend):
    return {"OLLAMA_BASE_URLS": fake_backend.url, "OPENAI_API_BASE_URLS": fake_backend.openai_url,
            "OPENAI_API_KEYS": fake_backend.openai_key}


@pytest.fixture
def sdk(live_server, user, api_key_headers) -> openai.OpenAI:
    key = api_key_headers(user)["Authorization"].split(" ", 1)[1]
    assert key.startswith("sk-")
    return openai.OpenAI(base_url=live_server + "/api", api_key=key, max_retries=0, timeout=10)


def test_models_list(sdk):
    ids = [m.id for m in sdk.models.list()]
    assert "llama3.2:latest" in ids and "gpt-4o-mini" in ids


@pytest.mark.parametrize("model", ["llama3.2", "gpt-4o-mini"])
def test_chat_completion(sdk, model):
    reply = sdk.chat.completions.create(model=model, messages=QUESTION, temperature=0.1)
    assert reply.choices[0].message.content == ANSWER
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 16 and reply.usage.total_tokens == reply.usage.prompt_tokens + 16


@pytest.mark.parametrize("model", ["llama3.2", "gpt-4o-mini"])
def test_chat_stream_with_usage(sdk, model):
    chunks = list(sdk.chat.completions.create(model=model, messages=QUESTION, stream=True,
                                              stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert len({c.id for c in chunks}) == 1


def test_stream_failure_surfaces_as_sdk_error(sdk, fake_backend):
    fake_backend.fault = {"kind": "drop", "path": "/api/chat", "after": 3}
    with pytest.raises(openai.APIError, match="stream failed"):
        list(sdk.chat.completions.create(model="llama3.2", messages=QUESTION, stream=True))


def test_unknown_model_is_bad_request(sdk):
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="no-such-model", messages=QUESTION)


@pytest.mark.parametrize("model", ["nomic-embed-text", "text-embedding-3-small"])
def test_embeddings(sdk, model):
    # The SDK asks for base64 by default and decodes it; both backends must round-trip.
    result = sdk.embeddings.create(model=model, input=["hello world", "blue sky"])
    assert len(result.data) == 2
    assert result.data[1].embedding == pytest.approx(embed_text("blue sky"), abs=1e-6)
    floats = sdk.embeddings.create(model=model, input="hello world", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(embed_text("hello world"), abs=1e-6)
