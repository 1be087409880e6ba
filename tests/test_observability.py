"""Request ids, Server-Timing, access log lines (text and JSON), ProxyFix, /health/ready and /metrics."""
import json
import logging
import re
import time

import pytest
from flask import Response

from webui_api.api import observability
from webui_api import telemetry
from webui_api.api.deps import access

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def access_lines(caplog):
    """The access-log records the app writes (their structured fields)."""
    caplog.set_level(logging.INFO, logger="webui_api.access")
    return lambda: [r.fields for r in caplog.records if r.name == "webui_api.access"]


@pytest.fixture
def probe_routes(app):
    """Test-only routes: one that spends time "in a backend", one that streams while doing so."""
    @access("public")
    def backend_work():
        with telemetry.backend_timer("Fake backend 0"):
            time.sleep(0.05)
        time.sleep(0.05)  # the gateway's own work
        telemetry.record_tokens(3, 4)
        return {"ok": True}

    @access("public")
    def streamed():
        def body():
            for i in range(3):
                time.sleep(0.05)
                telemetry.record_backend(0.05, "Fake backend 0", observe=(i == 0))
                yield f"data: {telemetry.request_id()}\n\n".encode()
            telemetry.record_tokens(5, 3)
        return Response(body(), mimetype="text/event-stream", direct_passthrough=True)

    app.add_url_rule("/_probe/backend", "probe_backend", backend_work)
    app.add_url_rule("/_probe/stream", "probe_stream", streamed)
    return app


def timing(response) -> dict:
    parts = dict(re.fullmatch(r"(\w+);dur=([\d.]+)", p.strip()).groups() for p in
                 response.headers["Server-Timing"].split(","))
    return {k: float(v) for k, v in parts.items()}


def test_every_response_gets_a_request_id_and_server_timing(client):
    for response in (client.get("/health"), client.get("/api/v1/auths/"), client.get("/nowhere"),
                     client.post("/api/v1/auths/signin", data="{bad json", content_type="application/json")):
        assert HEX32.match(response.headers["X-Request-ID"]), response.status_code
        assert set(timing(response)) == {"app", "backend"}
    assert client.get("/health").headers["X-Request-ID"] != client.get("/health").headers["X-Request-ID"]


@pytest.mark.parametrize("given", ["abc-123", "req_01HZY3:7/x+y=z@host", "a" * 128])
def test_a_sane_client_request_id_is_kept(client, given):
    assert client.get("/health", headers={"X-Request-ID": given}).headers["X-Request-ID"] == given


@pytest.mark.parametrize("given", ["", "a" * 129, "has space", 'quote"d', "semi;colon", "émoji"])
def test_an_odd_client_request_id_is_replaced(client, given):
    assert HEX32.match(client.get("/health", headers={"X-Request-ID": given}).headers["X-Request-ID"])


def test_server_timing_separates_backend_from_gateway_time(client, probe_routes, access_lines):
    response = client.get("/_probe/backend", headers={"X-Request-ID": "rid-backend"})
    spent = timing(response)
    assert 50 <= spent["backend"] < 80
    assert 50 <= spent["app"] < 80  # the sleep after the backend call is the gateway's
    line = next(e for e in access_lines() if e["request_id"] == "rid-backend")
    assert 50 <= line["backend_ms"] < 80 and line["backend_calls"] == 1
    assert line["latency_ms"] >= 100 and (line["tokens_in"], line["tokens_out"]) == (3, 4)
    assert line["route"] == "/_probe/backend" and line["status"] == 200 and line["completed"] is True


def test_a_stream_is_measured_to_its_last_byte_with_its_own_request_id(client, probe_routes, access_lines):
    response = client.get("/_probe/stream", headers={"X-Request-ID": "rid-stream"}, buffered=True)
    # the body was produced after the view returned, yet it saw its request's id
    assert response.get_data() == b"data: rid-stream\n\n" * 3
    line = next(e for e in access_lines() if e["request_id"] == "rid-stream")
    assert line["latency_ms"] >= 150  # three 50 ms chunks, all after the headers
    assert line["backend_ms"] == pytest.approx(150.0, abs=0.5) and line["backend_calls"] == 1
    assert (line["tokens_in"], line["tokens_out"]) == (5, 3)
    assert line["bytes"] == len(response.get_data()) and line["completed"] is True
    assert timing(response)["backend"] < 1  # the headers left before any backend time


def test_a_client_leaving_mid_stream_is_logged_as_incomplete(client, probe_routes, access_lines):
    response = client.get("/_probe/stream", headers={"X-Request-ID": "rid-gone"})
    next(response.response)  # one chunk, then the client hangs up
    response.close()
    line = next(e for e in access_lines() if e["request_id"] == "rid-gone")
    assert line["completed"] is False and line["bytes"] == len(b"data: rid-gone\n\n")
    assert telemetry.request_id() is None  # nothing leaks into the test's own context


def test_access_lines_name_the_user_and_the_route_pattern(client, user, access_lines):
    client.get(f"/api/v1/users/{user['id']}", headers=user["headers"] | {"X-Request-ID": "rid-user"})
    client.get("/no/such/thing", headers={"X-Request-ID": "rid-404"})
    lines = {e["request_id"]: e for e in access_lines()}
    assert lines["rid-user"]["user_id"] == user["id"] and lines["rid-user"]["status"] == 403
    assert lines["rid-user"]["route"] == "/api/v1/users/<string:user_id>"  # the rule, not the id
    assert lines["rid-404"]["route"] == observability.UNMATCHED_ROUTE and lines["rid-404"]["user_id"] is None


def test_json_log_format_writes_one_object_per_line(client, probe_routes, caplog):
    caplog.set_level(logging.INFO, logger="webui_api.access")
    client.get("/_probe/backend", headers={"X-Request-ID": "rid-json"})
    record = next(r for r in caplog.records if getattr(r, "request_id", None) == "rid-json")
    line = observability.JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "info" and data["logger"] == "webui_api.access"
    for key in ("ts", "request_id", "user_id", "method", "route", "status", "latency_ms", "backend_ms"):
        assert key in data


def test_configure_logging_respects_a_host_that_configured_logging():
    logger = logging.getLogger("webui_api")
    before = list(logger.handlers)
    observability.configure_logging("json")  # pytest has root handlers: it owns the output
    assert logger.handlers == before


class TestProxyHops:
    @pytest.fixture
    def settings_overrides(self):
        return {"TRUSTED_PROXY_HOPS": 1}

    def test_the_trusted_proxy_s_forwarded_for_is_the_client(self, client, access_lines):
        client.get("/health", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9",
                                       "X-Request-ID": "rid-xff"})
        line = next(e for e in access_lines() if e["request_id"] == "rid-xff")
        assert line["remote_addr"] == "203.0.113.9"  # one hop trusted: the spoofable left part is ignored


def test_without_trusted_hops_forwarded_for_is_ignored(client, access_lines):
    client.get("/health", headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "rid-noxff"})
    assert next(e for e in access_lines() if e["request_id"] == "rid-noxff")["remote_addr"] == "127.0.0.1"


# --- /health/ready ----------------------------------------------------------------------------

class TestReady:
    @pytest.fixture
    def settings_overrides(self, fake_backend, make_backend):
        self.other = make_backend()
        return {"OLLAMA_BASE_URLS": f"{fake_backend.url};{self.other.url}",
                "OPENAI_API_BASE_URLS": fake_backend.openai_url, "OPENAI_API_KEYS": "sk-wrong-key-1234"}

    def test_ready_lists_each_backend_without_keys(self, client, admin, fake_backend):
        response = client.get("/health/ready", headers=admin["headers"])
        body = response.get_json()
        assert response.status_code == 200 and body["status"] is True, body
        assert body["checks"]["database"]["ok"] and body["checks"]["data_dir"]["ok"]
        by_kind = {(b["kind"], b["ok"]) for b in body["checks"]["backends"]}
        assert by_kind == {("ollama", True), ("openai", False)}
        openai = next(b for b in body["checks"]["backends"] if b["kind"] == "openai")
        assert "rejected" in openai["error"] and fake_backend.openai_url.split("//")[1] in openai["name"]
        assert "sk-wrong" not in response.get_data(as_text=True)

    def test_anonymous_callers_get_a_summary_without_addresses(self, client, fake_backend):
        response = client.get("/health/ready")
        body = response.get_json()
        assert response.status_code == 200 and body["status"] is True
        assert body["checks"]["database"] == {"ok": True}
        expected = [{"kind": "ollama", "ok": True}, {"kind": "ollama", "ok": True},
                    {"kind": "openai", "ok": False}]
        assert sorted(body["checks"]["backends"], key=str) == sorted(expected, key=str)
        assert "127.0.0.1" not in response.get_data(as_text=True)

    def test_one_backend_down_is_reported_but_still_ready(self, client):
        self.other.stop()
        body = client.get("/health/ready").get_json()
        assert body["status"] is True
        assert [b["ok"] for b in body["checks"]["backends"] if b["kind"] == "ollama"] == [True, False]

    def test_no_backend_answering_is_not_ready(self, client, fake_backend):
        fake_backend.stop()
        self.other.stop()
        response = client.get("/health/ready")
        assert response.status_code == 503
        assert response.get_json()["detail"] == "Not ready: backends"

    def test_an_unwritable_data_dir_is_not_ready(self, app, client, tmp_path):
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("x")
        app.extensions["webui_api"].settings.DATA_DIR = str(blocker)
        response = client.get("/health/ready")
        assert response.status_code == 503 and "data_dir" in response.get_json()["detail"]
        assert response.get_json()["checks"]["data_dir"]["ok"] is False


# --- /metrics ---------------------------------------------------------------------------------

def test_metrics_are_for_admins(client, admin, user):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=user["headers"]).status_code == 403
    client.get("/api/version")
    response = client.get("/metrics", headers=admin["headers"])
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    assert re.search(r'webui_api_http_requests_total\{method="GET",route="/api/version",status="200"\} \d',
                     text)
    for name in ("webui_api_http_request_duration_seconds_bucket", "webui_api_http_requests_in_progress"):
        assert name in text
