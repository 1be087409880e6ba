"""Function (pipe) models: Open WebUI pipe files from PIPES_DIR listed in /api/models and run by chat."""
from __future__ import annotations

import json
import logging
import shutil
import textwrap
import time
from pathlib import Path

import pytest

from .test_chat import HELLO, content_of, events, make_preset, upload

CHAT = "/api/chat/completions"
PIPES = Path(__file__).parent / "pipes"  # pipes written for Open WebUI, used as they are
EXAMPLES = Path(__file__).parent.parent / "examples" / "pipes"


# Files that must not load (and one whose result is not a chat completion), written per test.
FAULTY = {
    "syntax_error.py": "class Pipe:\n    def pipe(self, body)\n",
    "needs_missing.py": "import no_such_module_anywhere\nclass Pipe:\n    pass\n",
    "no_pipe_class.py": "def pipe(body):\n    return 'x'\n",
    "picky.py": textwrap.dedent("""\
        from pydantic import BaseModel
        class Pipe:
            class Valves(BaseModel):
                RETRIES: int = 1
            def __init__(self):
                self.valves = self.Valves()
            def pipe(self, body):
                return 'ok'
        """),
    "odd_dict.py": "class Pipe:\n    def pipe(self, body):\n        return {'answer': 42}\n",
    "endless.py": textwrap.dedent("""\
        from pydantic import BaseModel
        class Pipe:
            class Valves(BaseModel):
                PIECE_CHARS: int = 5
                CLOSED_MARK: str = ""
            def __init__(self):
                self.valves = self.Valves()
            def pipe(self, body):
                def pieces():
                    try:
                        while True:
                            yield "x" * self.valves.PIECE_CHARS
                    finally:
                        if self.valves.CLOSED_MARK:
                            open(self.valves.CLOSED_MARK, "w").write("closed")
                return pieces()
        """),
    "flaky_manifold.py": textwrap.dedent("""\
        class Pipe:
            def __init__(self):
                self.calls = 0
            def pipes(self):
                self.calls += 1
                if self.calls > 1:
                    raise ConnectionError("the provider's model list is down")
                return [{"id": "a", "name": "A"}]
            def pipe(self, body):
                return body["model"]
        """),
}


@pytest.fixture
def pipes_dir(tmp_path):
    folder = tmp_path / "pipes"
    folder.mkdir()
    for path in list(PIPES.glob("*.py")) + list(EXAMPLES.glob("*.py")):
        shutil.copy(path, folder)
    for name, text in FAULTY.items():
        (folder / name).write_text(text)
    writable = folder / "anyone_may_write.py"
    writable.write_text("class Pipe:\n    def pipe(self, body):\n        return 'x'\n")
    writable.chmod(0o666)
    return folder


@pytest.fixture
def settings_overrides(data_dir, fake_backend, pipes_dir, request, tmp_path):
    valves = tmp_path / "valves.json"
    valves.write_text(json.dumps({"openai_relay": {"OPENAI_API_BASE_URL": fake_backend.openai_url},
                                  "echo": {"GREETING": "from the file", "PIECES": 4}}))
    return {"OLLAMA_BASE_URLS": fake_backend.url, "OPENAI_API_BASE_URLS": fake_backend.openai_url,
            "OPENAI_API_KEYS": fake_backend.openai_key, "PIPES_DIR": str(pipes_dir),
            "PIPES_VALVES_FILE": str(valves), "PIPE_OPENAI_RELAY_OPENAI_API_KEY": fake_backend.openai_key,
            "PIPE_ECHO_GREETING": "from the environment", "PIPE_CLOCK_TIMEZONE": "Europe/Paris",
            "PIPE_PICKY_RETRIES": "many-secret-value", "PIPE_ENDLESS_PIECE_CHARS": "1000000",
            "PIPE_ENDLESS_CLOSED_MARK": str(tmp_path / "endless-closed"),
            "AIOHTTP_CLIENT_TIMEOUT": 0.5 if "short_timeout" in request.fixturenames else 30,
            "PIPES_MAX_RUNNING": 1 if "one_slot" in request.fixturenames else 32}


@pytest.fixture
def short_timeout():
    """Marker fixture: the app under test gets a 0.5 s timeout."""


@pytest.fixture
def one_slot():
    """Marker fixture: one pipe call at a time (PIPES_MAX_RUNNING=1)."""


@pytest.fixture
def chat(client, user):
    def post(body: dict, creds: dict | None = None):
        return client.post(CHAT, headers=(creds or user)["headers"], json=body)
    return post


def echoed(text: str) -> dict:
    return json.loads(text)


def listed(client, creds) -> dict:
    response = client.get("/api/models", headers=creds["headers"])
    assert response.status_code == 200
    return {m["id"]: m for m in response.get_json()["data"]}


# --- loading and listing -----------------------------------------------------------------------

def test_pipes_are_listed_first_in_open_webui_shape(client, user):
    models = listed(client, user)
    assert list(models)[:10] == ["async_words", "clock", "echo", "endless", "failing", "flaky_manifold.a",
                                 "odd_dict", "openai_relay.gpt-4o-mini", "openai_relay.gpt-4-turbo", "sleepy"]
    created = models["echo"]["created"]
    assert models["echo"] == {"id": "echo", "name": "Echo", "object": "model", "created": created,
                              "owned_by": "openai", "pipe": {"type": "pipe"}, "has_user_valves": False,
                              "tags": [], "actions": [], "filters": []}
    assert isinstance(created, int) and created > 0
    relay = models["openai_relay.gpt-4o-mini"]
    assert relay["name"] == "RELAY/gpt-4o-mini" and relay["pipe"] == {"type": "pipe"}
    assert "openai_relay.text-embedding-3-small" not in models  # the pipe's own pipes() filter
    assert "llama3.2:latest" in models and "gpt-4o-mini" in models  # backends still listed


def test_a_manifold_whose_list_fails_keeps_its_last_one(app, client, user, chat):
    assert "flaky_manifold.a" in listed(client, user)
    response = client.get("/api/models?refresh=true", headers=user["headers"])
    assert "flaky_manifold.a" in [m["id"] for m in response.get_json()["data"]]
    assert app.extensions["webui_api"].pipes.loaded["flaky_manifold"].instance.calls == 2  # it did fail
    assert chat({"model": "flaky_manifold.a", "messages": HELLO}).get_json()["choices"][0]["message"] == {
        "role": "assistant", "content": "flaky_manifold.a"}


def test_broken_files_are_skipped_with_a_reason_and_never_stop_start_up(client, user, caplog):
    models = listed(client, user)
    for skipped in ("syntax_error", "needs_missing", "no_pipe_class", "picky", "anyone_may_write"):
        assert skipped not in models


def test_skip_reasons_are_logged_without_valve_values(data_dir, database_settings, settings_overrides,
                                                      caplog):
    with caplog.at_level(logging.INFO, logger="webui_api.gateway.pipes"):
        app = build_app(data_dir, database_settings, settings_overrides)
        app.extensions["webui_api"].close()
    text = caplog.text
    assert "pipe needs_missing skipped: it imports no_such_module_anywhere, which is not installed" in text
    assert "pipe no_pipe_class skipped" in text and "no class Pipe" in text
    assert "pipe syntax_error skipped" in text and "SyntaxError" in text
    assert "pipe picky skipped: its valves do not validate: RETRIES" in text
    assert "pipe anyone_may_write skipped:" in text and "is writable by anyone" in text
    assert "many-secret-value" not in text  # a rejected valve may be a key: never logged
    assert "pipe echo loaded" in text


def build_app(data_dir, database_settings, overrides: dict):
    from webui_api import create_app
    return create_app({"DATA_DIR": data_dir, **database_settings, "OLLAMA_BASE_URLS": "http://127.0.0.1:9",
                       "OPENAI_API_BASE_URLS": "", **overrides})


def test_installed_package_pipes_load_through_their_entry_point(data_dir, database_settings, tmp_path,
                                                                monkeypatch):
    site = tmp_path / "site"
    (site / "hello_pipes-1.0.dist-info").mkdir(parents=True)
    (site / "hello_pipes-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: hello-pipes\n"
                                                                  "Version: 1.0\n")
    (site / "hello_pipes-1.0.dist-info" / "entry_points.txt").write_text(
        "[webui_api.pipes]\npackaged_hello = hello_pipes:Pipe\n")
    (site / "hello_pipes.py").write_text("class Pipe:\n    def pipe(self, body):\n        return 'hi'\n")
    monkeypatch.syspath_prepend(str(site))
    app = build_app(data_dir, database_settings, {})
    try:
        entries = {e["id"]: e for e in app.extensions["webui_api"].catalog.base_models()}
        assert entries["packaged_hello"]["pipe"] == {"type": "pipe"}
    finally:
        app.extensions["webui_api"].close()


def test_an_unreadable_valves_file_stops_start_up(data_dir, database_settings, tmp_path):
    from webui_api.errors import ConfigError
    bad = tmp_path / "valves.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="PIPES_VALVES_FILE"):
        build_app(data_dir, database_settings, {"PIPES_VALVES_FILE": str(bad)})


def test_valves_from_file_then_environment(chat):
    response = chat({"model": "echo", "messages": HELLO})
    assert response.status_code == 200, response.get_json()
    seen = echoed(response.get_json()["choices"][0]["message"]["content"])
    assert seen["greeting"] == "from the environment"  # PIPE_ECHO_GREETING wins over the file


# --- chat ----------------------------------------------------------------------------------------

def test_unmodified_open_webui_manifold_relays_nonstream(chat, fake_backend):
    response = chat({"model": "openai_relay.gpt-4o-mini", "messages": HELLO})
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    sent = fake_backend.last("/v1/chat/completions")["json"]
    assert sent["model"] == "gpt-4o-mini" and sent["messages"] == HELLO and sent["stream"] is False


def test_unmodified_open_webui_manifold_relays_stream(chat, fake_backend):
    response = chat({"model": "openai_relay.gpt-4-turbo", "messages": HELLO, "stream": True})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    got = events(response)
    assert got[-1] == "[DONE]" and got.count("[DONE]") == 1  # the backend's own [DONE], not a second one
    assert content_of(got[:-1])
    assert fake_backend.last("/v1/chat/completions")["json"]["stream"] is True


def test_generator_pipe_joined_when_not_streamed(chat, user):
    response = chat({"model": "echo", "messages": HELLO, "temperature": 0.3})
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["object"] == "chat.completion" and body["model"] == "echo"
    assert body["choices"][0]["finish_reason"] == "stop"
    seen = echoed(body["choices"][0]["message"]["content"])
    assert seen["model"] == "echo" and seen["messages"] == HELLO and seen["temperature"] == 0.3
    assert seen["stream"] is False and seen["metadata_user"] == seen["user"]["id"]
    assert seen["user"]["email"] == user["email"] and seen["user"]["role"] == "user" and seen["user"]["name"]


def test_generator_pipe_streams_chunks(chat):
    response = chat({"model": "echo", "messages": HELLO, "stream": True})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    got = events(response)
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    assert len(chunks) >= 4 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert echoed(content_of(chunks))["stream"] is True


def test_async_pipe_with_async_generator(chat):
    response = chat({"model": "async_words", "messages": HELLO})
    assert response.get_json()["choices"][0]["message"]["content"] == "async pipes work "
    streamed = chat({"model": "async_words", "messages": HELLO, "stream": True})
    assert content_of(events(streamed)[:-1]) == "async pipes work "


def test_example_pipe_runs(client, user, chat):
    assert listed(client, user)["clock"]["name"] == "Clock"
    response = chat({"model": "clock", "messages": HELLO})
    assert "in Europe/Paris." in response.get_json()["choices"][0]["message"]["content"]


# --- presets and RAG -------------------------------------------------------------------------------

def test_preset_over_a_pipe(client, chat, user):
    make_preset(client, user, id="echo-brief", base_model_id="echo", name="Brief echo",
                params={"system": "Be brief, {{USER_NAME}}.", "temperature": 0.1})
    entry = listed(client, user)["echo-brief"]
    assert entry["preset"] is True and entry["pipe"] == {"type": "pipe"} and entry["owned_by"] == "openai"
    response = chat({"model": "echo-brief", "messages": HELLO})
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["model"] == "echo-brief"
    seen = echoed(body["choices"][0]["message"]["content"])
    assert seen["model"] == "echo"  # as Open WebUI: the pipe sees its own id under a preset
    assert seen["temperature"] == 0.1
    assert seen["messages"][0] == {"role": "system", "content": f"Be brief, {seen['user']['name']}."}


def test_rag_over_a_pipe(client, chat, user):
    file_id = upload(client, user, b"The secret launch code of project Zephyr is 7-4-1.", "zephyr.txt")
    question = [{"role": "user", "content": "What is the launch code of project Zephyr?"}]
    response = chat({"model": "echo", "messages": question, "files": [{"type": "file", "id": file_id}]})
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["sources"][0]["source"]["id"] == file_id
    seen = echoed(body["choices"][0]["message"]["content"])
    assert "7-4-1" in json.dumps(seen["messages"])
    streamed = events(chat({"model": "echo", "messages": question, "stream": True,
                            "files": [{"type": "file", "id": file_id}]}))
    assert [i for i, e in enumerate(streamed) if isinstance(e, dict) and "sources" in e] == [0]


# --- failures ----------------------------------------------------------------------------------------

def test_raising_pipe_answers_502_naming_it(chat):
    for stream in (False, True):
        response = chat({"model": "failing", "messages": HELLO, "stream": stream})
        assert response.status_code == 502
        assert response.get_json()["detail"] == ("Pipe 'failing' failed: RuntimeError: the quota of the "
                                                 "remote service is exhausted")
        assert "Traceback" not in response.get_data(as_text=True)


def test_a_result_that_is_no_chat_completion_answers_502(chat):
    for stream in (False, True):
        response = chat({"model": "odd_dict", "messages": HELLO, "stream": stream})
        assert response.status_code == 502
        assert response.get_json()["detail"].startswith("Pipe 'odd_dict' returned dict, which is neither")


def test_slow_pipe_answers_504(chat, short_timeout):
    for stream in (False, True):
        response = chat({"model": "sleepy", "messages": HELLO, "stream": stream})
        assert response.status_code == 504
        assert response.get_json()["detail"].startswith("Pipe 'sleepy' did not")


def test_a_hung_pipe_holds_its_slot_and_calls_beyond_the_limit_get_503(chat, short_timeout, one_slot):
    assert chat({"model": "sleepy", "messages": HELLO}).status_code == 504  # still sleeping on its thread
    response = chat({"model": "echo", "messages": HELLO})
    assert response.status_code == 503 and "Too many pipe calls" in response.get_json()["detail"]


def test_an_endless_answer_is_cut_when_not_streamed(chat):
    response = chat({"model": "endless", "messages": HELLO})
    assert response.status_code == 502
    assert response.get_json()["detail"].startswith("Pipe 'endless' answered more than")


def test_a_client_that_leaves_stops_a_streaming_pipe(client, user, tmp_path):
    response = client.post(CHAT, headers=user["headers"], buffered=False,
                           json={"model": "endless", "messages": HELLO, "stream": True})
    body = iter(response.response)
    assert next(body).startswith(b"data: ") and next(body).startswith(b"data: ")
    response.close()
    closed, waited = tmp_path / "endless-closed", 0
    while not closed.exists() and waited < 200:  # the pipe notices at its next piece
        time.sleep(0.05)
        waited += 1
    assert closed.read_text() == "closed"


def test_pipe_models_make_no_embeddings_and_are_not_on_the_passthroughs(client, user):
    response = client.post("/api/v1/embeddings", headers=user["headers"],
                           json={"model": "echo", "input": "hi"})
    assert response.status_code == 400 and "pipe" in response.get_json()["detail"]
    response = client.post("/openai/chat/completions", headers=user["headers"],
                           json={"model": "echo", "messages": HELLO})
    assert response.status_code == 404


def test_a_backend_models_pipe_flag_does_not_make_it_ours():
    """Another Open WebUI behind OPENAI_API_BASE_URLS lists its pipes with the flag: they are its models."""
    from types import SimpleNamespace

    from webui_api.gateway import model_lists
    listed_there = [{"id": "remote_pipe", "object": "model", "pipe": {"type": "pipe"}}]
    entry, = model_lists.openai_entries([((SimpleNamespace(idx=0), "models"), listed_there)])
    assert "pipe" not in entry and entry["openai"]["pipe"] == {"type": "pipe"} and entry["urlIdx"] == 0


# --- the official openai SDK over real HTTP ------------------------------------------------------------

@pytest.fixture
def sdk(live_server, user, api_key_headers):
    import openai
    key = api_key_headers(user)["Authorization"].split(" ", 1)[1]
    return openai.OpenAI(base_url=live_server + "/api", api_key=key, max_retries=0, timeout=10)


def test_openai_sdk_lists_and_chats_with_the_unmodified_open_webui_pipe(sdk):
    assert "openai_relay.gpt-4o-mini" in [m.id for m in sdk.models.list()]
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    reply = sdk.chat.completions.create(model="openai_relay.gpt-4o-mini", messages=question)
    answer = reply.choices[0].message.content
    assert "Why is the sky blue?" in answer  # the fake backend echoes the question
    chunks = list(sdk.chat.completions.create(model="openai_relay.gpt-4o-mini", messages=question,
                                              stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer


def test_openai_sdk_reads_a_failing_pipe_s_reason(sdk):
    import openai
    with pytest.raises(openai.APIStatusError, match="Pipe 'failing' failed: RuntimeError") as raised:
        sdk.chat.completions.create(model="failing", messages=HELLO)
    assert raised.value.status_code == 502


# --- real gunicorn workers ---------------------------------------------------------------------------------

@pytest.mark.integration
def test_gunicorn_workers_each_load_the_pipes_and_a_slow_one_frees_its_request(tmp_path, database_settings,
                                                                                 fake_backend, pipes_dir):
    import requests

    from .servers import Gunicorn
    env = {"DATA_DIR": str(tmp_path / "gunicorn-data"), **database_settings,
           "OLLAMA_BASE_URLS": fake_backend.url, "PIPES_DIR": str(pipes_dir), "AIOHTTP_CLIENT_TIMEOUT": "1"}
    with Gunicorn(env, workers=2, threads=2) as server:
        signup = requests.post(server.url + "/api/v1/auths/signup", timeout=10,
                               json={"name": "A", "email": "a@example.com", "password": "a long password"})
        headers = {"Authorization": f"Bearer {signup.json()['token']}"}
        url = server.url + CHAT
        for _ in range(4):  # fresh connections: both workers answer
            with requests.post(url, headers=headers, stream=True, timeout=10,
                               json={"model": "echo", "messages": HELLO, "stream": True}) as response:
                lines = [line for line in response.iter_lines() if line]
            assert response.status_code == 200 and lines[-1] == b"data: [DONE]"
            assert echoed(content_of([json.loads(line[6:]) for line in lines[:-1]]))["greeting"] == "hello"
        failing = requests.post(url, headers=headers, timeout=10,
                                json={"model": "failing", "messages": HELLO})
        assert failing.status_code == 502 and failing.json()["detail"].startswith("Pipe 'failing' failed")
        slow = requests.post(url, headers=headers, json={"model": "sleepy", "messages": HELLO}, timeout=10)
        assert slow.status_code == 504
        assert requests.get(server.url + "/health", timeout=10).status_code == 200
