"""Retrieval for chat: augment() itself, and the full seed flow through /api/chat/completions."""
from __future__ import annotations

import json

import pytest

from webui_api.db import User
from webui_api.errors import BadRequest, NotFound
from webui_api.rag import retrieve

from .fake_backend import live_server  # noqa: F401  (fixture)
from .rag_helpers import _drain_background, rag_settings, upload_ok  # noqa: F401

SECRET = "The secret launch code of project Zephyr is 7-alpha-9."
QUESTION = "What is the secret launch code of project Zephyr?"
FILLER = ("apple river mountain cloud forest lantern copper violin meadow harbor pebble thunder "
          "glacier orchard canyon falcon ember willow saddle quartz").split()


def filler(n: int) -> bytes:
    words = [FILLER[(n * 7 + i * 3) % len(FILLER)] for i in range(40)]
    return (f"Field notes {n}. " + " ".join(words) + ".").encode()


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend)


@pytest.fixture
def ext(app):
    return app.extensions["webui_api"]


def me(creds):
    return User.get_by_id(creds["id"])


def ask(text=QUESTION):
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- augment()

def test_no_items_or_no_question_leaves_messages_alone(ext, user):
    msgs = ask()
    assert retrieve.augment(ext, me(user), msgs, []) == (msgs, [])
    file = upload_ok_direct(ext, user)
    only_system = [{"role": "system", "content": "hi"}]
    assert retrieve.augment(ext, me(user), only_system, [{"type": "file", "id": file}]) == (only_system, [])


def upload_ok_direct(ext, user, data=SECRET.encode(), name="zephyr.txt"):
    import io

    from webui_api.rag import files

    file, _ = files.upload(ext, me(user), io.BytesIO(data), name, "text/plain", None)
    return file.id


def test_context_goes_into_the_last_user_message_with_numbered_sources(ext, user):
    fid = upload_ok_direct(ext, user)
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": QUESTION}]
    new, sources = retrieve.augment(ext, me(user), history, [{"type": "file", "id": fid}])
    assert new[:3] == history[:3] and history[3]["content"] == QUESTION  # caller's list untouched
    prompt = new[3]["content"]
    assert f'<source id="1" name="zephyr.txt">{SECRET}</source>' in prompt
    assert prompt.rstrip().endswith(f"Question: {QUESTION}")
    [source] = sources
    assert source["source"] == {"type": "file", "id": fid, "name": "zephyr.txt"}
    meta = source["metadata"][0]
    assert (meta["file_id"], meta["name"], meta["start_index"], meta["end_index"]) == (fid, "zephyr.txt", 0,
                                                                                          len(SECRET))
    assert source["document"] == [SECRET] and source["distances"][0] == meta["score"] > 0.5


def test_system_context_mode_and_multipart_messages(ext, user):
    fid = upload_ok_direct(ext, user)
    ext.settings.RAG_SYSTEM_CONTEXT = True
    new, _ = retrieve.augment(ext, me(user), [{"role": "system", "content": "Be brief."}] + ask(),
                              [{"type": "file", "id": fid}])
    assert new[0]["content"].startswith("Be brief.\n\n") and SECRET in new[0]["content"]
    assert new[1]["content"] == QUESTION
    ext.settings.RAG_SYSTEM_CONTEXT = False
    parts = [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                          {"type": "image_url", "image_url": {"url": "data:,x"}}]}]
    new, _ = retrieve.augment(ext, me(user), parts, [{"type": "file", "id": fid}])
    content = new[0]["content"]
    assert content[0]["type"] == "text" and SECRET in content[0]["text"] and content[1]["type"] == "image_url"


def test_custom_template_without_query_is_prepended_and_placeholders_in_text_stay(ext, user):
    tricky = "Ignore this: {{QUERY}} and [context] are literal here. The launch code is secret."
    fid = upload_ok_direct(ext, user, tricky.encode(), "tricky.txt")
    ext.settings.RAG_TEMPLATE = "CONTEXT START\n{{CONTEXT}}\nCONTEXT END"
    new, _ = retrieve.augment(ext, me(user), ask("what is the launch code?"), [{"type": "file", "id": fid}])
    prompt = new[0]["content"]
    assert prompt.startswith("CONTEXT START\n") and prompt.endswith("CONTEXT END\n\nwhat is the launch code?")
    assert "{{QUERY}} and [context] are literal" in prompt


def test_render_substitutes_the_template_only_once():
    out = retrieve.render("Q={{QUERY}} C={{CONTEXT}}", context="has {{QUERY}}", query="has [context]")
    assert out == "Q=has [context] C=has {{QUERY}}"


def test_ranking_over_several_sources_top_k_and_threshold(ext, user):
    target = upload_ok_direct(ext, user, SECRET.encode(), "target.txt")
    others = [upload_ok_direct(ext, user, filler(n), f"f{n}.txt") for n in range(5)]
    items = [{"type": "file", "id": fid} for fid in others + [target]]
    new, sources = retrieve.augment(ext, me(user), ask(), items, top_k=2)
    hits = [(s["source"]["id"], d) for s in sources for d in s["distances"]]
    assert len(hits) == 2 and max(hits, key=lambda h: h[1])[0] == target
    ext.settings.RAG_RELEVANCE_THRESHOLD = 0.5
    _, sources = retrieve.augment(ext, me(user), ask(), items, top_k=5)
    assert [s["source"]["id"] for s in sources] == [target]


def test_identical_texts_are_cited_once(ext, user, make_user):
    a = upload_ok_direct(ext, user, SECRET.encode(), "a.txt")
    b = upload_ok_direct(ext, user, (SECRET + " ").encode(), "b.txt")  # other bytes, same extracted chunk
    new, sources = retrieve.augment(ext, me(user), ask(), [{"type": "file", "id": a}, {"type": "file",
                                                                                       "id": b}])
    assert sum(len(s["document"]) for s in sources) == 1
    assert new[0]["content"].count(SECRET) == 1


def test_full_context_items_use_the_whole_text(ext, user):
    fid = upload_ok_direct(ext, user, b"Alpha section.\n\nUnrelated beta words.", "full.txt")
    new, sources = retrieve.augment(ext, me(user), ask("alpha?"), [{"type": "file", "id": fid,
                                                                    "context": "full"}])
    assert sources[0]["document"] == ["Alpha section.\n\nUnrelated beta words."]


def test_unreadable_or_bad_items_are_refused(ext, user, make_user):
    fid = upload_ok_direct(ext, user)
    stranger = me(make_user("user"))
    with pytest.raises(NotFound):
        retrieve.augment(ext, stranger, ask(), [{"type": "file", "id": fid}])
    with pytest.raises(NotFound):
        retrieve.augment(ext, stranger, ask(), [{"type": "collection", "id": "no-such-kb"}])
    with pytest.raises(BadRequest):
        retrieve.augment(ext, me(user), ask(), [{"type": "file"}])
    with pytest.raises(BadRequest):
        retrieve.augment(ext, me(user), ask(), [{"type": "file", "id": fid}], top_k=0)
    # unknown item types are ignored, not fatal
    assert retrieve.augment(ext, me(user), ask(), [{"type": "web_search", "id": "x"}]) == (ask(), [])


# ---------------------------------------------------------------- the seed flow through chat

@pytest.fixture
def corpus(client, user):
    """51 files (one holding the secret) in one collection."""
    headers = user["headers"]
    kb = client.post("/api/v1/knowledge/create", headers=headers, json={"name": "Zephyr KB"}).get_json()
    target = None
    for n in range(51):
        data = f"Zephyr dossier.\n\n{SECRET}\n".encode() if n == 25 else filler(n)
        file = upload_ok(client, headers, f"doc{n}.txt", data)
        if n == 25:
            target = file
        assert client.post(f"/api/v1/knowledge/{kb['id']}/file/add", headers=headers,
                           json={"file_id": file["id"]}).status_code == 200
    return kb, target


def backend_prompt(backend, path="/api/chat"):
    return backend.last(path)["json"]["messages"][-1]["content"]


def check_sources(sources, kind, ident, target):
    top = sources[0]
    assert top["source"]["type"] == kind and top["source"]["id"] == ident
    meta = top["metadata"][0]
    assert meta["file_id"] == target["id"] and meta["name"] == "doc25.txt"
    text = top["document"][0]
    assert SECRET in text and meta["end_index"] - meta["start_index"] == len(text)


def test_seed_flow_file_collection_stream_and_isolation(client, user, fake_backend, corpus, make_user):
    kb, target = corpus
    for kind, ident in (("file", target["id"]), ("collection", kb["id"])):
        response = client.post("/api/chat/completions", headers=user["headers"], json={
            "model": "llama3.2:latest", "messages": ask(), "files": [{"type": kind, "id": ident}]})
        assert response.status_code == 200, response.get_json()
        assert SECRET in backend_prompt(fake_backend)
        check_sources(response.get_json()["sources"], kind, ident, target)
    # streaming: sources ride on the first chunk that has choices, never on an event of their own
    response = client.post("/api/chat/completions", headers=user["headers"], json={
        "model": "llama3.2:latest", "messages": ask(), "stream": True,
        "files": [{"type": "collection", "id": kb["id"]}]})
    events = [json.loads(line[6:]) for line in response.get_data(as_text=True).splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    assert all("choices" in e for e in events)
    assert "sources" in events[0] and not any("sources" in e for e in events[1:])
    check_sources(events[0]["sources"], "collection", kb["id"], target)
    # another user naming the collection gets 404 and nothing reaches the model
    calls = len(fake_backend.requests_to("/api/chat"))
    stranger = make_user("user")
    response = client.post("/api/chat/completions", headers=stranger["headers"], json={
        "model": "llama3.2:latest", "messages": ask(), "files": [{"type": "collection", "id": kb["id"]}]})
    assert response.status_code == 404
    assert len(fake_backend.requests_to("/api/chat")) == calls


def test_openai_sdk_sees_sources_stream_and_not(live_server, client, user, fake_backend, corpus):
    openai = pytest.importorskip("openai")
    kb, target = corpus
    sdk = openai.OpenAI(base_url=live_server + "/api", api_key=user["token"], max_retries=0)
    extra = {"files": [{"type": "collection", "id": kb["id"]}]}
    reply = sdk.chat.completions.create(model="gpt-4o-mini", messages=ask(), extra_body=extra)
    check_sources(reply.model_extra["sources"], "collection", kb["id"], target)
    assert SECRET in backend_prompt(fake_backend, "/v1/chat/completions")
    chunks = list(sdk.chat.completions.create(model="gpt-4o-mini", messages=ask(), extra_body=extra,
                                              stream=True))
    assert chunks[0].choices and chunks[0].model_extra.get("sources")
    check_sources(chunks[0].model_extra["sources"], "collection", kb["id"], target)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
