"""Errors every client can read: the real openai and ollama clients show the server's reason; OpenAI's
error object or Ollama's error string beside `detail` by route family; curl's form-labelled JSON; requested
features this server does not provide; token ids for an Ollama embedding model."""
from __future__ import annotations

import json

import ollama
import openai
import pytest
import requests

HELLO = [{"role": "user", "content": "Why is the sky blue?"}]
FORM = "application/x-www-form-urlencoded"  # what `curl -d` sends


@pytest.fixture
def settings_overrides(data_dir, fake_backend):
    return {"OLLAMA_BASE_URLS": fake_backend.url, "OPENAI_API_BASE_URLS": fake_backend.openai_url,
            "OPENAI_API_KEYS": fake_backend.openai_key}


@pytest.fixture
def key(user, api_key_headers) -> dict:
    return api_key_headers(user)


def sdk(live_server: str, key: dict, path: str = "/api") -> openai.OpenAI:
    token = key["Authorization"].split(" ", 1)[1]
    return openai.OpenAI(base_url=live_server + path, api_key=token, max_retries=0, timeout=10)


# ----------------------------------------------------------------------------- the real clients

@pytest.mark.parametrize("path,error,reason", [
    ("/api", openai.BadRequestError, "Model not found"),
    ("/openai", openai.NotFoundError, "Model 'nope' was not found"),
    ("/ollama/v1", openai.NotFoundError, "Model 'nope' was not found")])
def test_openai_sdk_shows_the_reason_for_an_unknown_model(live_server, key, path, error, reason):
    with pytest.raises(error) as info:
        sdk(live_server, key, path).chat.completions.create(model="nope", messages=HELLO)
    assert reason in str(info.value) and info.value.body["message"] == reason


def test_openai_sdk_shows_why_a_key_is_refused(live_server):
    client = openai.OpenAI(base_url=live_server + "/api", api_key="sk-wrong", max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError) as info:
        client.models.list()
    assert "invalid" in str(info.value) and info.value.code == "invalid_api_key"


def test_openai_sdk_shows_a_validation_reason(live_server, key):
    with pytest.raises(openai.UnprocessableEntityError) as info:
        sdk(live_server, key).chat.completions.create(model="llama3.2", messages=[])
    assert "`messages` must be a non-empty list" in str(info.value)


def test_openai_sdk_names_the_unprovided_feature(live_server, key):
    with pytest.raises(openai.BadRequestError) as info:
        sdk(live_server, key).chat.completions.create(model="llama3.2", messages=HELLO,
                                                      extra_body={"features": {"web_search": True}})
    assert "features.web_search" in str(info.value)


def test_openai_sdk_says_ollama_needs_text_not_token_ids(live_server, key):
    client = sdk(live_server, key)
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.embeddings.create(model="nomic-embed-text", input=[[101, 2023, 102]])
    assert "Ollama models embed text, not token ids" in str(info.value)
    # an OpenAI-compatible backend takes token ids as they are
    assert len(client.embeddings.create(model="text-embedding-3-small", input=[[101, 2023, 102]]).data) == 1


def test_openai_sdk_stream_error_carries_type_and_code(live_server, key, fake_backend):
    fake_backend.fault = {"kind": "drop", "path": "/api/chat", "after": 3}
    with pytest.raises(openai.APIError) as info:
        list(sdk(live_server, key).chat.completions.create(model="llama3.2", messages=HELLO, stream=True))
    assert "stream failed" in str(info.value) and info.value.body["type"] == "upstream_error"
    assert info.value.code == "upstream_error"


def test_ollama_client_shows_the_reason(live_server, key):
    client = ollama.Client(host=live_server + "/ollama", headers=key)
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="nope", messages=HELLO, stream=False)
    assert info.value.error == "Model 'nope' was not found" and info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=live_server + "/ollama").list()
    assert info.value.error == "Not authenticated" and info.value.status_code == 401


# ----------------------------------------------------------------------------- bodies by route family

@pytest.mark.parametrize("method,path", [
    ("get", "/api/models"), ("get", "/api/v1/models"), ("post", "/api/chat/completions"),
    ("post", "/api/v1/embeddings"), ("get", "/openai/models"), ("get", "/ollama/v1/models")])
def test_openai_routes_carry_the_error_object(client, method, path):
    body = getattr(client, method)(path).get_json()
    assert body == {"detail": "Not authenticated", "error": {
        "message": "Not authenticated", "type": "authentication_error", "code": "invalid_api_key"}}


def test_validation_items_become_one_message(client, key):
    body = client.post("/api/chat/completions", headers=key, json={"messages": HELLO}).get_json()
    assert body["detail"][0]["loc"] == ["body", "model"]
    assert body["error"]["message"] == "body.model: Missing data for required field."
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "invalid_value"


def test_ollama_api_carries_the_error_string(client, key):
    response = client.post("/ollama/api/show", headers=key, json={"model": "nope"})
    assert response.status_code == 404
    reason = "Model 'nope' was not found"
    assert response.get_json() == {"detail": reason, "error": reason}


@pytest.mark.parametrize("path", ["/api/v1/files/nope", "/api/v1/auths/"])
def test_other_routes_keep_the_plain_detail(client, key, path):
    assert set(client.get(path, headers=key if "files" in path else {}).get_json()) == {"detail"}


# ----------------------------------------------------------------------------- curl's JSON

@pytest.mark.parametrize("path,body", [
    ("/api/chat/completions", {"model": "llama3.2", "messages": HELLO}),
    ("/api/embeddings", {"model": "nomic-embed-text", "input": "hello"})])
def test_json_labelled_as_a_form_is_read(live_server, key, path, body):
    response = requests.post(live_server + path, headers={**key, "Content-Type": FORM},
                             data=json.dumps(body), timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["object"] in ("chat.completion", "list")


def test_a_body_that_is_not_json_is_415_saying_so(client, key):
    response = client.post("/api/chat/completions", headers=key, data="model=llama3.2", content_type=FORM)
    assert response.status_code == 415
    assert response.get_json()["error"]["message"] == (
        "The body must be JSON (Content-Type: application/json).")


# ----------------------------------------------------------------------------- unprovided features

@pytest.mark.parametrize("extra,named", [
    ({"features": {"web_search": True}}, "features.web_search"),
    ({"tool_ids": ["weather"]}, "tool_ids"),
    ({"tool_servers": [{"url": "http://tools"}]}, "tool_servers"),
    ({"features": {"web_search": True, "code_interpreter": True}, "tool_ids": ["x"]},
     "features.web_search, features.code_interpreter, tool_ids")])
def test_unprovided_features_are_refused_by_name(client, key, extra, named):
    response = client.post("/api/chat/completions", headers=key,
                           json={"model": "llama3.2", "messages": HELLO, **extra})
    assert response.status_code == 400 and f"does not provide {named};" in response.get_json()["detail"]


def test_features_turned_off_are_no_request(client, key):
    """Open WebUI's own front end sends every feature, most of them false, and empty tool lists."""
    response = client.post("/api/chat/completions", headers=key, json={
        "model": "llama3.2", "messages": HELLO, "tool_ids": [], "tool_servers": [],
        "features": {"web_search": False, "image_generation": False, "code_interpreter": False}})
    assert response.status_code == 200 and response.get_json()["object"] == "chat.completion"
