"""Replicas of one model: calls spread over healthy hosts, a host that cannot answer (or answers 5xx before
any byte was sent) is replaced once by another, skipped for a back-off and tried again; never after a
stream has begun. Chat, the /ollama passthrough, embeddings and RAG embeddings alike."""
import json
import threading

import pytest
import requests

from webui_api.upstream import HostHealth

CHAT = {"model": "llama3.2:latest", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def replicas(make_backend):
    return make_backend(), make_backend()


@pytest.fixture
def settings_overrides(data_dir, replicas):
    one, two = replicas
    return {"OLLAMA_BASE_URLS": f"{one.url};{two.url}",
            "OPENAI_API_BASE_URLS": f"{one.openai_url};{two.openai_url}",
            "OPENAI_API_KEYS": f"{one.openai_key};{two.openai_key}",
            "RAG_EMBEDDING_MODEL": "nomic-embed-text:latest"}


def chats(backend) -> int:
    return len(backend.requests_to("/api/chat"))


def test_a_replica_taken_down_mid_run_fails_no_chat(live_server, admin, replicas):
    """Replica two stops mid-run: no new connection, no further request read on the open ones (the replies
    under way finish). Every chat after that goes to replica one. (A stream cut midway by a crash ends with
    an error event, by design: test_chat's drop tests.)"""
    one, two = replicas
    statuses, lock = [], threading.Lock()

    def client(count: int):
        with requests.Session() as session:
            for i in range(count):
                body = {**CHAT, "stream": i % 2 == 1}
                reply = session.post(live_server + "/api/chat/completions", json=body,
                                     headers=admin["headers"], timeout=30)
                ok = reply.status_code == 200 and (not body["stream"] or b"[DONE]" in reply.content
                                                   and b"error" not in reply.content)
                with lock:
                    statuses.append(ok)
                    if len(statuses) == 30:
                        two.stop(drain=True)  # mid-run, with requests in flight on both

    threads = [threading.Thread(target=client, args=(25,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(statuses) == 100 and statuses.count(False) == 0
    assert chats(one) > 0 and chats(two) > 0  # both served while both were up


def test_a_5xx_before_any_byte_is_retried_on_the_other_host_which_then_serves_alone(client, admin, replicas):
    one, two = replicas
    one.fault = {"kind": "http500", "path": "/api/chat"}
    for stream in (False, True, False, False):
        body = {**CHAT, "stream": stream}
        reply = client.post("/api/chat/completions", json=body, headers=admin["headers"])
        assert reply.status_code == 200 and b"upstream exploded" not in reply.data
    assert chats(one) == 1 and chats(two) == 4  # one failure, then skipped for its back-off
    ready = client.get("/health/ready", headers=admin["headers"]).get_json()
    circuits = [b["circuit"] for b in ready["checks"]["backends"] if b["kind"] == "ollama"]
    assert circuits[0]["state"] == "open" and circuits[0]["failures"] == 1
    assert "HTTP 500" in circuits[0]["last_error"]
    assert circuits[1] == {"state": "closed"}


def test_a_failed_host_is_tried_again_after_its_back_off(client, admin, replicas, monkeypatch):
    one, two = replicas
    monkeypatch.setattr(HostHealth, "BACKOFF_FIRST", 0.0)  # the back-off passes at once
    one.fault = {"kind": "http500", "path": "/api/chat"}
    assert client.post("/api/chat/completions", json=CHAT, headers=admin["headers"]).status_code == 200
    one.fault = None
    for _ in range(4):
        assert client.post("/api/chat/completions", json=CHAT, headers=admin["headers"]).status_code == 200
    assert chats(one) >= 2  # probed again, and back in the rotation
    ready = client.get("/health/ready", headers=admin["headers"]).get_json()
    assert all(b["circuit"] == {"state": "closed"} for b in ready["checks"]["backends"])


def test_every_host_failing_answers_the_error_after_one_retry(client, admin, replicas):
    for backend in replicas:
        backend.fault = {"kind": "http500", "path": "/api/chat", "message": "out of memory"}
    reply = client.post("/api/chat/completions", json=CHAT, headers=admin["headers"])
    assert reply.status_code == 502 and "out of memory" in reply.get_json()["detail"]
    assert chats(replicas[0]) + chats(replicas[1]) == 2


def test_a_stream_that_began_is_never_retried(client, admin, replicas):
    for backend in replicas:
        backend.fault = {"kind": "drop", "path": "/api/chat", "after": 2}
    reply = client.post("/api/chat/completions", json={**CHAT, "stream": True}, headers=admin["headers"])
    events = [json.loads(line[6:]) for line in reply.data.split(b"\n\n") if line.startswith(b"data: {")]
    assert "error" in events[-1]
    assert chats(replicas[0]) + chats(replicas[1]) == 1


def warm(client, admin):
    """One chat first, so the model lists name both replicas before one goes down."""
    assert client.post("/api/chat/completions", json=CHAT, headers=admin["headers"]).status_code == 200


def test_the_ollama_passthrough_fails_over(client, admin, replicas):
    warm(client, admin)
    replicas[0].stop()
    for _ in range(4):
        reply = client.post("/ollama/api/chat", json={**CHAT, "stream": False}, headers=admin["headers"])
        assert reply.status_code == 200 and reply.get_json()["done"] is True


def test_openai_connections_listing_the_same_id_are_replicas(client, admin, replicas):
    warm(client, admin)
    replicas[1].stop()
    body = {"model": "gpt-4o-mini", "messages": CHAT["messages"]}
    for _ in range(4):
        assert client.post("/api/chat/completions", json=body, headers=admin["headers"]).status_code == 200
        assert client.post("/openai/chat/completions", json=body, headers=admin["headers"]).status_code == 200


def test_embeddings_fail_over(app, client, admin, replicas):
    warm(client, admin)
    replicas[0].stop()
    body = {"model": "nomic-embed-text:latest", "input": ["a", "b"]}
    for _ in range(2):
        reply = client.post("/api/embeddings", json=body, headers=admin["headers"])
        assert reply.status_code == 200 and len(reply.get_json()["data"]) == 2
    vectors = app.extensions["webui_api"].embedder.embed(["rag text"])
    assert vectors.shape[0] == 1
    assert len(replicas[1].requests_to("/api/embed")) == 3
