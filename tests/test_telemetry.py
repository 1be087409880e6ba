"""Telemetry: request-scoped backend time and tokens, helper threads, and metrics summed across processes."""
import os
import subprocess
import sys
import threading
import time

from prometheus_client import REGISTRY

from webui_api import telemetry


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_outside_a_request_there_is_no_id_and_recording_still_counts():
    assert telemetry.request_id() is None
    before = sample("webui_api_backend_errors_total", backend="solo")
    telemetry.record_backend(0.01, "solo", error=True)  # e.g. a background ingestion: metrics only
    assert sample("webui_api_backend_errors_total", backend="solo") == before + 1


def test_backend_time_and_tokens_add_up_on_the_current_record():
    record = telemetry.Record("rid-1")
    count = sample("webui_api_backend_request_duration_seconds_count", backend="b0")
    tokens_in, tokens_out = sample("webui_api_tokens_total", direction="in"), sample("webui_api_tokens_total",
                                                                                      direction="out")
    with telemetry.active(record):
        assert telemetry.request_id() == "rid-1"
        telemetry.record_backend(0.25, "b0")
        telemetry.record_backend(0.5, "b0", error=True, observe=False)  # stream body: time, no new call
        telemetry.record_tokens(7, 11)
        telemetry.record_tokens(None, -3)
    assert telemetry.request_id() is None
    assert record.backend_seconds == 0.75 and record.backend_calls == 1 and record.backend_errors == 1
    assert (record.prompt_tokens, record.completion_tokens) == (7, 11)
    assert sample("webui_api_backend_request_duration_seconds_count", backend="b0") == count + 1
    assert sample("webui_api_tokens_total", direction="in") == tokens_in + 7
    assert sample("webui_api_tokens_total", direction="out") == tokens_out + 11


def test_backend_time_is_capped_by_the_elapsed_time():
    record = telemetry.Record("rid-2")
    record.backend_seconds = 100.0  # e.g. concurrent calls of a fan-out
    gateway, backend = record.split()
    assert gateway == 0.0 and backend <= record.elapsed()


def test_backend_timer_counts_an_exception_as_an_error():
    record = telemetry.Record("rid-3")
    with telemetry.active(record):
        try:
            with telemetry.backend_timer("b1"):
                time.sleep(0.02)
                raise OSError("boom")
        except OSError:
            pass
    assert record.backend_errors == 1 and record.backend_seconds >= 0.02


def test_bind_carries_the_request_into_a_helper_thread():
    record = telemetry.Record("rid-4")
    seen = []

    def work():
        seen.append(telemetry.request_id())
        telemetry.record_backend(0.1, "b2")

    with telemetry.active(record):
        threads = [threading.Thread(target=telemetry.bind(work)) for _ in range(2)]
        unbound = threading.Thread(target=lambda: seen.append(telemetry.request_id()))
        for thread in threads + [unbound]:
            thread.start()
        for thread in threads + [unbound]:
            thread.join()
    assert sorted(seen, key=str) == [None, "rid-4", "rid-4"]
    assert record.backend_calls == 2


def test_finish_counts_the_request_per_route_and_status():
    record, token = telemetry.start("rid-5")
    telemetry.reset(token)
    before = sample("webui_api_http_requests_total", method="GET", route="/x/<id>", status="418")
    latency = telemetry.finish(record, "GET", "/x/<id>", 418)
    assert latency >= 0
    assert sample("webui_api_http_requests_total", method="GET", route="/x/<id>", status="418") == before + 1
    assert sample("webui_api_http_request_duration_seconds_count", method="GET", route="/x/<id>",
                  status="418") >= 1
    text, content_type = telemetry.render_metrics()
    assert content_type.startswith("text/plain")
    assert b'webui_api_http_requests_total{method="GET",route="/x/<id>",status="418"}' in text


WORKER = """
import sys
from webui_api import telemetry
record, token = telemetry.start("w")
telemetry.record_backend(0.2, "shared")
telemetry.record_tokens(int(sys.argv[1]), 1)
telemetry.finish(record, "POST", "/api/chat/completions", 200)
"""


def test_metrics_are_summed_across_processes(tmp_path):
    """Each process (a gunicorn worker) writes its own files; a scrape in any process sees the sum."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for prompt in (3, 4, 5):
        subprocess.run([sys.executable, "-c", WORKER, str(prompt)], env=env, check=True, timeout=60)
    scrape = "from webui_api import telemetry; print(telemetry.render_metrics()[0].decode())"
    text = subprocess.run([sys.executable, "-c", scrape], env=env, check=True, timeout=60,
                          capture_output=True, text=True).stdout
    assert 'webui_api_tokens_total{direction="in"} 12.0' in text
    labels = 'method="POST",route="/api/chat/completions",status="200"'
    assert f"webui_api_http_requests_total{{{labels}}} 3.0" in text
    assert 'webui_api_backend_request_duration_seconds_count{backend="shared"} 3.0' in text
    # the live gauge of finished processes sums to zero
    assert "webui_api_http_requests_in_progress 0.0" in text
