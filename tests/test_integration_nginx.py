"""deploy/nginx.conf in front of real gunicorn on loopback: streams arrive token by token, upload limits
answer JSON 413s, and the client's X-Forwarded-For and X-Request-ID reach the logs."""
import json
import socket
import statistics
import time

import pytest
import requests

from . import engine
from .servers import Gunicorn, Nginx, free_port, nginx_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(nginx_binary() is None,
                       reason="nginx is not installed (apt-get install nginx; .ci/run does it): "
                              "proxy tests skipped"),
]

TOKEN_DELAY = 0.05
LIMIT_MB = 1  # RAG_FILE_MAX_SIZE here; nginx gets the same +1 MB envelope as the deployed 100 -> 101m


@pytest.fixture(scope="module")
def backend(module_backend):
    return module_backend


@pytest.fixture(scope="module")
def stack(request, backend, tmp_path_factory):
    """gunicorn (2 workers) behind nginx. TRUSTED_PROXY_HOPS=2: nginx plus the load balancer the test client
    plays, whose X-Forwarded-For is therefore trusted."""
    data = tmp_path_factory.mktemp("data")
    env = {"DATA_DIR": str(data), **engine.database_settings(request), "OLLAMA_BASE_URLS": backend.url,
           "OPENAI_API_BASE_URLS": "", "RAG_FILE_MAX_SIZE": str(LIMIT_MB),
           "RAG_EMBEDDING_MODEL": "nomic-embed-text",
           "TRUSTED_PROXY_HOPS": "2", "LOG_FORMAT": "json", "MODELS_CACHE_TTL": "60"}
    gunicorn = Gunicorn(env, workers=2, threads=8, log_path=str(data / "gunicorn.log")).start()
    nginx = Nginx(gunicorn.port, tmp_path_factory.mktemp("nginx"), client_max_body_size=f"{LIMIT_MB + 1}m")
    try:
        nginx.start()
        account = {"name": "Ops", "email": "ops@example.com", "password": "ops-password"}
        signup = requests.post(nginx.url + "/api/v1/auths/signup", timeout=30, json=account).json()
        key = requests.post(nginx.url + "/api/v1/auths/api_key", timeout=30,
                            headers={"Authorization": f"Bearer {signup['token']}"}).json()["api_key"]
        yield {"nginx": nginx, "gunicorn": gunicorn, "headers": {"Authorization": f"Bearer {key}"},
               "log": data / "gunicorn.log"}
    finally:
        nginx.stop()
        gunicorn.stop()


def arrivals(response) -> list[tuple[float, bytes]]:
    """(seconds since the request, line) for each non-empty line, timed when its bytes arrived."""
    started, pending, out = time.perf_counter(), b"", []
    for chunk in response.iter_content(chunk_size=None):
        now = time.perf_counter() - started
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out += [(now, line) for line in lines if line.strip()]
    return out


def assert_token_by_token(times: list[float], label: str) -> None:
    gaps = [b - a for a, b in zip(times, times[1:])]
    print(f"\n{label}: {len(times)} lines over {times[-1] - times[0]:.2f} s; inter-arrival ms "
          f"min {min(gaps) * 1000:.1f} median {statistics.median(gaps) * 1000:.1f} "
          f"max {max(gaps) * 1000:.1f}")
    assert len(times) >= 15
    assert 0.035 <= statistics.median(gaps) <= 0.1  # paced like the backend, not held back
    assert sum(gap < 0.01 for gap in gaps) <= 2  # no burst: at most the role/first and final lines together
    assert times[-1] - times[0] >= 0.8 * TOKEN_DELAY * (len(times) - 3)


@pytest.fixture
def paced(backend):
    backend.token_delay = TOKEN_DELAY
    yield
    backend.token_delay = 0.0


def test_ndjson_stream_reaches_the_client_token_by_token(stack, paced, backend):
    body = {"model": "llama3.2", "prompt": "why is the sky blue on a clear day", "stream": True}
    with requests.post(stack["nginx"].url + "/ollama/api/generate", json=body, headers=stack["headers"],
                       stream=True, timeout=60) as response:
        assert response.status_code == 200 and response.headers["Server"] == "nginx"
        lines = arrivals(response)
    assert json.loads(lines[-1][1])["done"] is True
    # nginx's request id went through the gateway to the backend
    assert backend.last("/api/generate")["headers"].get("X-Request-ID") == response.headers["X-Request-ID"]
    assert_token_by_token([t for t, _ in lines], "NDJSON /ollama/api/generate via nginx")


def test_sse_stream_reaches_the_client_token_by_token(stack, paced):
    body = {"model": "llama3.2", "stream": True,
            "messages": [{"role": "user", "content": "tell me about tides"}]}
    with requests.post(stack["nginx"].url + "/api/chat/completions", json=body, headers=stack["headers"],
                       stream=True, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = arrivals(response)
    assert lines[-1][1] == b"data: [DONE]"
    times = [t for t, line in lines if line != b"data: [DONE]"]
    assert_token_by_token(times, "SSE /api/chat/completions via nginx")


def upload(stack, size: int, name: str = "limit.txt"):
    words = b"".join(b"tide%05d " % i for i in range(size // 10 + 1))
    return requests.post(stack["nginx"].url + "/api/v1/files/", headers=stack["headers"], timeout=120,
                         files={"file": (name, words[:size], "text/plain")})


def test_upload_at_the_limit_passes_and_above_it_gets_json_413(stack):
    limit = LIMIT_MB * 1024 * 1024
    at_limit = upload(stack, limit)
    assert at_limit.status_code == 200, at_limit.text
    assert at_limit.json()["data"]["status"] == "completed" and at_limit.json()["meta"]["size"] == limit

    over = upload(stack, limit + 1, "over.txt")  # nginx lets it through; the gateway refuses it
    assert over.status_code == 413 and over.headers["Content-Type"] == "application/json"
    assert "too large" in over.json()["detail"]

    way_over = upload(stack, 3 * limit, "way-over.txt")  # nginx refuses it before the gateway sees it
    assert way_over.status_code == 413 and way_over.headers["Content-Type"] == "application/json"
    assert way_over.json() == {"detail": "Request body too large"}
    chat = requests.post(stack["nginx"].url + "/api/chat/completions", headers=stack["headers"], timeout=30,
                         data=b"x" * (3 * limit))  # the openai SDK shows only error.message
    assert chat.status_code == 413 and chat.json()["error"]["message"] == "Request body too large"


def log_entry(path, request_id: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and request_id in line:
                entry = json.loads(line)
                if entry.get("request_id") == request_id:
                    return entry
        time.sleep(0.05)
    raise AssertionError(f"no log line for request {request_id} in {path}")


def test_forwarded_for_and_request_id_reach_both_logs(stack):
    url = stack["nginx"].url + "/api/version"
    response = requests.get(url, headers={"X-Forwarded-For": "203.0.113.7", "X-Request-ID": "xff-test-1"},
                            timeout=10)
    assert response.headers["X-Request-ID"] == "xff-test-1"
    entry = log_entry(stack["log"], "xff-test-1")
    assert entry["remote_addr"] == "203.0.113.7"
    assert entry["route"] == "/api/version" and entry["status"] == 200
    assert "latency_ms" in entry and "backend_ms" in entry and "user_id" in entry

    # A client cannot push a fake address past the trusted hops: only the last two entries are believed.
    requests.get(url, headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.8", "X-Request-ID": "xff-test-2"},
                 timeout=10)
    assert log_entry(stack["log"], "xff-test-2")["remote_addr"] == "203.0.113.8"

    # Without a client id, nginx makes one; the gateway answers and logs that same id.
    generated = requests.get(url, timeout=10).headers["X-Request-ID"]
    assert len(generated) == 32 and log_entry(stack["log"], generated)["status"] == 200
    nginx_line = log_entry(stack["nginx"].access_log, generated)
    assert nginx_line["uri"] == "/api/version" and nginx_line["upstream_time"]


def test_nginx_own_502_is_json(tmp_path):
    with Nginx(free_port(), tmp_path) as nginx:  # nothing listens upstream
        response = requests.get(nginx.url + "/api/version", timeout=10)
    assert response.status_code == 502 and response.headers["Content-Type"] == "application/json"
    assert "detail" in response.json() and len(response.headers["X-Request-ID"]) == 32


def test_nginx_own_errors_carry_what_each_route_family_reads(tmp_path):
    with Nginx(free_port(), tmp_path) as nginx:  # nothing listens upstream
        paths = ("/api/chat/completions", "/openai/embeddings", "/ollama/api/chat", "/api/config")
        answers = {path: requests.post(nginx.url + path, json={}, timeout=10).json() for path in paths}
    reason = "The gateway is not reachable (webui_api upstream down)"
    openai_body = {"detail": reason,
                   "error": {"message": reason, "type": "upstream_error", "code": "upstream_error"}}
    assert answers["/api/chat/completions"] == answers["/openai/embeddings"] == openai_body
    assert answers["/ollama/api/chat"] == {"detail": reason, "error": reason}
    assert answers["/api/config"] == {"detail": reason}


def open_connections(port: int, count: int, prefix: bytes) -> list:
    """`count` connections that each sent `prefix` and then stall, as a slowloris client does."""
    conns = []
    try:
        for _ in range(count):
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            conn.sendall(prefix)
            conns.append(conn)
    except BaseException:
        close_all(conns)
        raise
    return conns


def close_all(conns) -> None:
    for conn in conns:
        conn.close()


def closed_by_peer(conn, timeout: float) -> bool:
    conn.settimeout(timeout)
    try:
        return conn.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def health_answers(url: str) -> bool:
    """Within the client's 5 s timeout: direct to gunicorn, 200 half-header connections make this time out."""
    return requests.get(url + "/health", timeout=5).status_code == 200


def test_half_header_connections_neither_stop_the_gateway_nor_live_past_the_header_timeout(stack):
    """Slowloris: 200 connections that never finish their headers (direct to gunicorn they stop every
    worker). nginx holds them without a gunicorn thread, answers /health meanwhile and drops them after
    client_header_timeout (10 s)."""
    nginx = stack["nginx"]
    conns = open_connections(nginx.port, 200, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    try:
        assert all(health_answers(nginx.url) for _ in range(5))
        assert closed_by_peer(conns[0], timeout=15)  # the header timeout fired
        assert all(closed_by_peer(conn, timeout=1) for conn in conns[1:])
    finally:
        close_all(conns)


def test_one_address_may_hold_64_requests_and_the_next_gets_json_429(stack):
    """limit_conn: requests whose headers arrived but whose bodies stall count against their address."""
    nginx = stack["nginx"]
    head = b"POST /api/v1/auths/signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
           b"Content-Length: 100\r\n\r\n{"
    conns = open_connections(nginx.port, 64, head)
    try:
        time.sleep(0.5)  # let nginx read every header, so each connection counts
        refused = requests.post(nginx.url + "/api/v1/auths/signin", json={}, timeout=5)
        assert refused.status_code == 429 and refused.headers["Content-Type"] == "application/json"
        assert refused.json() == {"detail": "Too many concurrent requests from this address"}
    finally:
        close_all(conns)
    deadline = time.monotonic() + 5
    while requests.post(nginx.url + "/api/v1/auths/signin", json={}, timeout=5).status_code == 429:
        assert time.monotonic() < deadline, "the address's slots were not released"
        time.sleep(0.1)


@pytest.mark.parametrize("length,answered_by", [(6_000, "gunicorn"), (10_000, "nginx")])
def test_uri_too_long_is_json_whichever_layer_refuses_it(stack, length, answered_by):
    """nginx takes request lines up to its 8 KB header buffers and refuses longer ones itself; gunicorn
    refuses those over 4094 bytes that nginx let through. Both answer 414 with a {"detail": ...} body."""
    response = requests.get(stack["nginx"].url + "/" + "a" * length, timeout=10)
    assert response.status_code == 414 and response.headers["Content-Type"] == "application/json"
    detail = response.json()["detail"]
    assert ("Request Line is too large" in detail) == (answered_by == "gunicorn")


@pytest.mark.parametrize("request_bytes,status", [
    (b"NOT A REQUEST LINE\r\n\r\n", 400),
    (b"GET /api/version HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n", 431),
])
def test_nginx_refusals_before_any_uri_are_json(stack, request_bytes, status):
    """Refused while reading the request line or headers: no URI yet, still the API's error shape."""
    with socket.create_connection(("127.0.0.1", stack["nginx"].port), timeout=10) as conn:
        conn.sendall(request_bytes)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == str(status).encode() and b"Content-Type: application/json" in head
    assert isinstance(json.loads(body)["detail"], str)
