"""Upstream client against the fake backend over real HTTP: timeouts, error mapping, streaming, fan-out."""
import json
import threading
import time

import pytest

from webui_api.config import Settings
from webui_api.errors import ApiError, UpstreamError, UpstreamTimeout
from webui_api.upstream import Backend, Upstream, http_error


def make_upstream(tmp_path, ollama=(), openai=(), keys=(), **extra) -> Upstream:
    overrides = {"DATA_DIR": str(tmp_path), "OLLAMA_BASE_URLS": ";".join(ollama),
                 "OPENAI_API_BASE_URLS": ";".join(openai), "OPENAI_API_KEYS": ";".join(keys),
                 "UPSTREAM_CONNECT_TIMEOUT": "1", "AIOHTTP_CLIENT_TIMEOUT": "5",
                 "AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST": "0.5", **extra}
    return Upstream(Settings.from_env(env={}, overrides=overrides))


@pytest.fixture
def up(tmp_path, fake_backend):
    upstream = make_upstream(tmp_path, [fake_backend.url], [fake_backend.openai_url], [fake_backend.openai_key])
    yield upstream
    upstream.close()


def test_backends_from_settings_and_label_hides_key(tmp_path):
    upstream = make_upstream(tmp_path, ["http://a:1", "http://b:2/"], ["https://api.example.com/v1"], ["sk-secret"])
    assert [b.url for b in upstream.ollama] == ["http://a:1", "http://b:2"]
    openai = upstream.openai[0]
    assert openai.key == "sk-secret" and openai.idx == 0 and openai.kind == "openai"
    assert "sk-secret" not in openai.label + repr(openai)
    assert openai.label == "OpenAI backend 0 (https://api.example.com/v1)"
    assert Backend("ollama", 0, "http://user:pw@h:5").label == "Ollama backend 0 (http://h:5)"
    assert upstream.session.adapters["http://"]._pool_maxsize == upstream.settings.UPSTREAM_POOL_SIZE
    disabled = make_upstream(tmp_path, ["http://a:1"], ENABLE_OLLAMA_API="false")
    assert disabled.ollama == []


def test_request_sends_key_and_explicit_timeouts(up, fake_backend):
    resp = up.request(up.openai[0], "GET", "/models")
    assert resp.status_code == 200 and resp.backend is up.openai[0]
    assert fake_backend.last("/v1/models")["headers"]["Authorization"] == "Bearer sk-fake-openai-key"
    up.request(up.ollama[0], "GET", "/api/version")
    assert "Authorization" not in fake_backend.last("/api/version")["headers"]
    assert up.timeouts() == (1.0, 5.0) and up.timeouts(0.5) == (0.5, 0.5) and up.timeouts((2, 3)) == (2, 3)


def test_http_errors_are_returned_not_raised(up, fake_backend):
    fake_backend.fault = {"kind": "http500", "path": "/api/chat"}
    resp = up.request(up.ollama[0], "POST", "/api/chat", json={"model": "llama3.2", "messages": []})
    assert resp.status_code == 500
    err = http_error(resp)
    assert isinstance(err, UpstreamError) and err.status == 502
    assert err.detail == f"Ollama backend 0 ({fake_backend.url}) failed (HTTP 500): upstream exploded"
    with pytest.raises(ApiError) as info:
        up.json(up.ollama[0], "POST", "/api/show", json={"model": "nope"})
    assert info.value.status == 404 and "not found" in info.value.detail


def test_rejected_backend_key_is_a_502_not_a_401(tmp_path, fake_backend):
    upstream = make_upstream(tmp_path, openai=[fake_backend.openai_url], keys=["sk-wrong"])
    with pytest.raises(UpstreamError) as info:
        upstream.json(upstream.openai[0], "GET", "/models")
    assert info.value.status == 502 and "OpenAI backend 0" in info.value.detail
    assert "sk-wrong" not in info.value.detail


def test_timeout_is_504_naming_the_backend(tmp_path, fake_backend):
    upstream = make_upstream(tmp_path, [fake_backend.url], AIOHTTP_CLIENT_TIMEOUT="0.3")
    fake_backend.fault = {"kind": "slow", "delay": 1.0}
    start = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        upstream.request(upstream.ollama[0], "GET", "/api/tags")
    assert time.monotonic() - start < 0.9
    assert info.value.status == 504 and fake_backend.url in info.value.detail


def test_down_backend_is_502(tmp_path, make_backend):
    backend = make_backend()
    upstream = make_upstream(tmp_path, [backend.url])
    assert upstream.request(upstream.ollama[0], "GET", "/api/version").ok  # pooled connection now open
    backend.stop()
    with pytest.raises(UpstreamError) as info:
        upstream.request(upstream.ollama[0], "GET", "/api/version")
    assert info.value.status == 502 and backend.url in info.value.detail
    assert not isinstance(info.value, UpstreamTimeout)


def test_stream_lines_arrive_as_they_are_produced(up, fake_backend):
    fake_backend.token_delay = 0.06
    resp = up.request(up.ollama[0], "POST", "/api/generate", json={"model": "llama3.2", "prompt": "hi there"},
                      stream=True)
    start, arrivals, lines = time.monotonic(), [], []
    for line in up.stream_lines(resp):
        arrivals.append(time.monotonic() - start)
        lines.append(json.loads(line))
    assert lines[-1]["done"] is True and len(lines) == 14
    # one line per ~60 ms, not all at the end: the first arrives long before the last
    assert arrivals[0] < 0.05 and arrivals[-1] > 0.6
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert sum(1 for g in gaps if g > 0.03) >= len(gaps) - 1


def test_stream_chunks_for_sse_passthrough(up, fake_backend):
    resp = up.request(up.openai[0], "POST", "/chat/completions", stream=True, json={
        "model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    body = b"".join(up.stream_chunks(resp))
    assert body.endswith(b"data: [DONE]\n\n") and body.count(b"\n\n") >= 4


def test_drop_mid_stream_raises_upstream_error(up, fake_backend):
    fake_backend.fault = {"kind": "drop", "path": "/api/chat", "after": 3}
    resp = up.request(up.ollama[0], "POST", "/api/chat", stream=True,
                      json={"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}]})
    got = []
    with pytest.raises(UpstreamError) as info:
        for line in up.stream_lines(resp):
            got.append(line)
    assert len(got) == 3 and info.value.status == 502 and fake_backend.url in info.value.detail


def test_drop_in_non_streamed_body_is_502(up, fake_backend):
    fake_backend.fault = {"kind": "drop", "path": "/api/tags"}
    with pytest.raises(UpstreamError):
        up.request(up.ollama[0], "GET", "/api/tags")


def test_fan_out_returns_within_timeout_when_one_hangs(up):
    release = threading.Event()

    def work(item):
        if item == "hang":
            release.wait(10)
        if item == "boom":
            raise ValueError("boom")
        return item * 2

    start = time.monotonic()
    out = up.fan_out(work, ["a", "hang", "boom"], timeout=0.3)
    elapsed = time.monotonic() - start
    release.set()
    assert 0.25 < elapsed < 5  # waited for the timeout, not for the hung item (10 s)
    assert out[0] == ("a", "aa")
    assert isinstance(out[1][1], UpstreamTimeout) and isinstance(out[2][1], ValueError)


def test_proxy_settings_are_read_once_and_no_proxy_is_honoured(tmp_path, fake_backend, monkeypatch):
    """HTTP_PROXY is taken at start-up (the fake backend plays the proxy for an unresolvable host);
    changing the environment later has no effect; NO_PROXY exempts a host."""
    monkeypatch.setenv("HTTP_PROXY", fake_backend.url)
    monkeypatch.setenv("NO_PROXY", "direct.invalid")
    upstream = make_upstream(tmp_path, ["http://via-proxy.invalid:11434", "http://direct.invalid:11434"])
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # read per call, this would break the first
    proxied, direct = upstream.ollama
    assert upstream.json(proxied, "GET", "/api/version") == {"version": fake_backend.version}
    assert fake_backend.last("/api/version") is not None
    with pytest.raises(UpstreamError):
        upstream.request(direct, "GET", "/api/version")
    upstream.close()
