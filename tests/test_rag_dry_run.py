"""`rag_dry_run` on /api/chat/completions: the exact messages the backend would get, and no model call."""
from __future__ import annotations

import pytest

from .rag_helpers import _drain_background, rag_settings, upload_ok  # noqa: F401

HELLO = [{"role": "user", "content": "What is the secret launch code of project Zephyr?"}]
CODE = "The secret launch code of project Zephyr is 7-alpha-9."
CHAT_PATHS = {"llama3.2": "/api/chat", "gpt-4o-mini": "/v1/chat/completions"}


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend)


@pytest.fixture
def request_body(client, user):
    """A chat through a preset (system prompt) with a file to retrieve from: {base model: body}."""
    file_id = upload_ok(client, user["headers"], "code.txt", CODE.encode())["id"]
    bodies = {}
    for base in CHAT_PATHS:
        preset = client.post("/api/v1/models/create", headers=user["headers"], json={
            "id": f"helper-{base}", "base_model_id": base, "name": "Helper", "meta": {},
            "params": {"system": "You are a careful helper.", "temperature": 0.1}})
        assert preset.status_code == 200, preset.get_json()
        bodies[base] = {"model": f"helper-{base}", "messages": HELLO, "files": [{"type": "file", "id": file_id}]}
    return bodies


def chat(client, user, body):
    return client.post("/api/chat/completions", headers=user["headers"], json=body)


@pytest.mark.parametrize("base", list(CHAT_PATHS))
def test_dry_run_messages_are_what_the_backend_gets(client, user, fake_backend, request_body, base):
    body, path = request_body[base], CHAT_PATHS[base]
    dry = chat(client, user, {**body, "rag_dry_run": True, "stream": True})
    got = dry.get_json()
    assert dry.status_code == 200 and dry.headers["Content-Type"] == "application/json", got
    assert got["object"] == "chat.completion.dry_run" and got["model"] == body["model"]
    assert got["sources"][0]["document"] == [CODE]
    assert got["messages"][0] == {"role": "system", "content": "You are a careful helper."}
    assert CODE in got["messages"][-1]["content"]
    assert fake_backend.requests_to(path) == []  # the model was not called

    real = chat(client, user, body)
    assert real.status_code == 200, real.get_json()
    assert fake_backend.last(path)["json"]["messages"] == got["messages"]
    assert real.get_json()["sources"] == got["sources"]


def test_dry_run_without_retrieval_and_bad_flag(client, user, fake_backend):
    dry = chat(client, user, {"model": "llama3.2", "messages": HELLO, "rag_dry_run": True})
    assert dry.status_code == 200 and dry.get_json()["messages"] == HELLO and dry.get_json()["sources"] == []
    bad = chat(client, user, {"model": "llama3.2", "messages": HELLO, "rag_dry_run": "yes"})
    assert bad.status_code == 422 and "rag_dry_run" in str(bad.get_json()["detail"])
    assert chat(client, user, {"model": "nope", "messages": HELLO, "rag_dry_run": True}).status_code == 400
    assert fake_backend.requests_to("/api/chat") == []
