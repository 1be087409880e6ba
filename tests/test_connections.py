"""Per-connection settings with Open WebUI's names (OLLAMA_API_CONFIGS / OPENAI_API_CONFIGS): enable, key,
prefix_id, model_ids, tags, headers; and ENABLE_FORWARD_USER_INFO_HEADERS."""
import json

import pytest

from webui_api import create_app
from webui_api.errors import ConfigError

from .conftest import FAST_HASH

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def make_app(data_dir, database_settings):
    apps = []

    def make(**config):
        app = create_app({"DATA_DIR": data_dir, **database_settings, "PASSWORD_HASH_COST": FAST_HASH,
                          "OPENAI_API_BASE_URLS": "",
                          **{k: json.dumps(v) if isinstance(v, dict) else v for k, v in config.items()}})
        apps.append(app)
        client = app.test_client()
        body = {"name": "Ada", "email": "ada@example.com", "password": "pw-123456"}
        token = client.post("/api/v1/auths/signup", json=body).get_json()["token"]
        return client, {"Authorization": f"Bearer {token}"}

    yield make
    for app in apps:
        app.extensions["webui_api"].close()


def model_ids(client, headers) -> list[str]:
    return [m["id"] for m in client.get("/api/models", headers=headers).get_json()["data"]]


def test_an_ollama_that_demands_a_key_gets_it(make_app, make_backend):
    guarded = make_backend(ollama_key="ollama-secret")
    client, headers = make_app(OLLAMA_BASE_URLS=guarded.url,
                               OLLAMA_API_CONFIGS={"0": {"key": "ollama-secret"}})
    assert "llama3.2:latest" in model_ids(client, headers)
    chat = client.post("/api/chat/completions", json={"model": "llama3.2", "messages": HI}, headers=headers)
    assert chat.status_code == 200
    native = client.post("/ollama/api/chat", json={"model": "llama3.2", "messages": HI, "stream": False},
                         headers=headers)
    assert native.status_code == 200
    assert guarded.last("/api/chat")["headers"]["Authorization"] == "Bearer ollama-secret"


@pytest.mark.parametrize("config", [{}, {"key": "ollama-secret", "auth_type": "none"}])
def test_without_the_key_that_ollama_lists_nothing(make_app, make_backend, config):
    guarded = make_backend(ollama_key="ollama-secret")
    client, headers = make_app(OLLAMA_BASE_URLS=guarded.url, OLLAMA_API_CONFIGS={"0": config})
    assert model_ids(client, headers) == []


def test_prefix_ids_tell_two_connections_with_the_same_models_apart(make_app, make_backend):
    one, two = make_backend(), make_backend()
    client, headers = make_app(
        OLLAMA_BASE_URLS=f"{one.url};{two.url}", OLLAMA_API_CONFIGS={"1": {"prefix_id": "gpu"}},
        OPENAI_API_BASE_URLS=f"{one.openai_url};{two.openai_url}",
        OPENAI_API_KEYS=f"{one.openai_key};{two.openai_key}",
        OPENAI_API_CONFIGS={"0": {"prefix_id": "a"}, "1": {"prefix_id": "b"}})
    ids = model_ids(client, headers)
    assert {"llama3.2:latest", "gpu.llama3.2:latest", "a.gpt-4o-mini", "b.gpt-4o-mini"} <= set(ids)
    assert "gpt-4o-mini" not in ids
    for model, backend, path, upstream in (("b.gpt-4o-mini", two, "/v1/chat/completions", "gpt-4o-mini"),
                                           ("a.gpt-4o-mini", one, "/v1/chat/completions", "gpt-4o-mini"),
                                           ("gpu.llama3.2", two, "/api/chat", "llama3.2:latest")):
        reply = client.post("/api/chat/completions", json={"model": model, "messages": HI}, headers=headers)
        assert reply.status_code == 200
        assert backend.last(path)["json"]["model"] == upstream
    native = client.post("/ollama/api/chat", json={"model": "gpu.llama3.2", "messages": HI, "stream": False},
                         headers=headers)
    assert native.status_code == 200 and two.last("/api/chat")["json"]["model"] == "llama3.2:latest"
    tags = client.get("/ollama/api/tags", headers=headers).get_json()["models"]
    assert {"llama3.2:latest", "gpu.llama3.2:latest"} <= {m["model"] for m in tags}


def test_model_allowlists_and_tags(make_app, make_backend):
    backend = make_backend()
    client, headers = make_app(
        OLLAMA_BASE_URLS=backend.url,
        OLLAMA_API_CONFIGS={"0": {"model_ids": ["llama3.2"], "tags": [{"name": "local"}]}},
        OPENAI_API_BASE_URLS=backend.openai_url, OPENAI_API_KEYS=backend.openai_key,
        OPENAI_API_CONFIGS={"0": {"model_ids": ["gpt-4o-mini"], "tags": ["cloud"]}})
    models = {m["id"]: m for m in client.get("/api/models", headers=headers).get_json()["data"]}
    assert set(models) == {"llama3.2:latest", "gpt-4o-mini"}
    assert models["llama3.2:latest"]["tags"] == [{"name": "local"}]
    assert models["gpt-4o-mini"]["tags"] == [{"name": "cloud"}]
    assert backend.requests_to("/v1/models") == []  # as Open WebUI: an allowlist is not checked remotely
    for model in ("llama3.1", "gpt-4-turbo"):
        reply = client.post("/api/chat/completions", json={"model": model, "messages": HI}, headers=headers)
        assert reply.status_code == 400 and reply.get_json()["detail"] == "Model not found"
    reply = client.post("/api/chat/completions", json={"model": "gpt-4o-mini", "messages": HI},
                        headers=headers)
    assert reply.status_code == 200


@pytest.mark.parametrize("by_url", [False, True])  # older Open WebUI keyed the configs by URL
def test_a_disabled_connection_is_left_out_and_keeps_the_others_indexes(make_app, make_backend, by_url):
    off, on = make_backend(ollama_models=["off:latest"]), make_backend(ollama_models=["on:latest"])
    client, headers = make_app(OLLAMA_BASE_URLS=f"{off.url};{on.url}",
                               OLLAMA_API_CONFIGS={off.url if by_url else "0": {"enable": False}})
    assert model_ids(client, headers) == ["on:latest"]
    assert client.get("/ollama/api/tags/1", headers=headers).status_code == 200
    assert client.get("/ollama/api/tags/0", headers=headers).status_code == 404
    assert off.requests == []


def test_extra_headers_and_forwarded_user_info_reach_the_backend(make_app, make_backend):
    backend = make_backend()
    client, headers = make_app(OLLAMA_BASE_URLS=backend.url, ENABLE_FORWARD_USER_INFO_HEADERS="true",
                               OLLAMA_API_CONFIGS={"0": {"headers": {"X-Team": "search"}}})
    assert client.post("/api/chat/completions", json={"model": "llama3.2", "messages": HI},
                       headers=headers).status_code == 200
    sent = backend.last("/api/chat")["headers"]
    assert sent["X-Team"] == "search"
    assert (sent["X-OpenWebUI-User-Email"], sent["X-OpenWebUI-User-Role"]) == ("ada@example.com", "admin")
    assert sent["X-OpenWebUI-User-Name"] == "Ada" and sent["X-OpenWebUI-User-Id"]
    assert client.post("/ollama/api/chat", json={"model": "llama3.2", "messages": HI, "stream": False},
                       headers=headers).status_code == 200
    assert backend.last("/api/chat")["headers"]["X-OpenWebUI-User-Email"] == "ada@example.com"
    assert client.post("/api/embeddings", json={"model": "nomic-embed-text", "input": "x"},
                       headers=headers).status_code == 200
    assert backend.last("/api/embed")["headers"]["X-OpenWebUI-User-Id"] == sent["X-OpenWebUI-User-Id"]


def test_user_info_is_not_forwarded_unless_enabled(make_app, make_backend):
    backend = make_backend()
    client, headers = make_app(OLLAMA_BASE_URLS=backend.url)
    client.post("/api/chat/completions", json={"model": "llama3.2", "messages": HI}, headers=headers)
    assert not any(h.startswith("X-OpenWebUI") for h in backend.last("/api/chat")["headers"])


@pytest.mark.parametrize("configs", ['[]', '{"0": []}', '{"0": {"headers": ["x"]}}', "{nope"])
def test_a_malformed_connection_config_stops_start_up(data_dir, configs):
    with pytest.raises(ConfigError):
        create_app({"DATA_DIR": data_dir, "OLLAMA_BASE_URLS": "http://127.0.0.1:9",
                    "OLLAMA_API_CONFIGS": configs})
