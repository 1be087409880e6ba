"""deploy/grafana-dashboard.json loads as a Grafana dashboard, every query is per host, and every metric, label
and route it names is one a real app exports (scraped from its /metrics)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
HOST_MATCHER = 'instance=~"$host"'
TARGET_LABELS = {"instance", "job"}  # Prometheus adds these to every series it scrapes
# The series each family type exposes (prometheus_client's parser names a counter family without `_total`).
SERIES_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "untyped": ("",),
                   "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
# Only the service's own families, and not their `_created` timestamps: those and prometheus_client's default
# process_/python_ collectors appear in this in-process scrape but not in gunicorn's multiprocess one, which
# is what Prometheus scrapes in production.
OWN_PREFIX = "webui_api_"
IN_PROCESS_ONLY_SUFFIX = "_created"
HELLO = [{"role": "user", "content": "Hello there, who are you?"}]


# --- a small PromQL identifier scan --------------------------------------------------------------------

_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def scan(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses. Label values and ranges are dropped; an identifier
    followed by `(` is a function or aggregation, and what remains outside braces is a metric name."""
    text = _STRING.sub('""', _GRAFANA_VARIABLE.sub("", expr))
    text = _RANGE.sub("", text)
    labels = {name for group in _MATCHERS.findall(text) for name in _MATCHER_LABEL.findall(group)}
    text = _MATCHERS.sub(" ", text)
    labels |= {name.strip() for group in _GROUPING.findall(text) for name in group.split(",") if name.strip()}
    text = _GROUPING.sub(" ", text)
    metrics = {m.group(0) for m in _IDENTIFIER.finditer(text)
               if m.group(0).lower() not in _KEYWORDS and not text[m.end():].lstrip().startswith("(")}
    return metrics, labels


def exported_series(exposition: str) -> dict[str, set[str]]:
    """{series name: its label names} for the service's own families that have samples in a scrape; a
    histogram's _bucket/_sum/_count (a summary's _sum/_count) only where the family is of that type."""
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        if not family.name.startswith(OWN_PREFIX) or family.name.endswith(IN_PROCESS_ONLY_SUFFIX):
            continue
        for suffix in SERIES_SUFFIXES.get(family.type, ()):
            samples = [s for s in family.samples if s.name == family.name + suffix]
            if samples:
                series[family.name + suffix] = {label for s in samples for label in s.labels}
    return series


def problems(query: str, series: dict[str, set[str]]) -> list[str]:
    """What in `query` the service does not export: unknown metric names, and label names that none of the
    query's metrics carries (nor Prometheus adds)."""
    metrics, labels = scan(query)
    found = [f"{query!r}: no metric {name!r}" for name in sorted(metrics - series.keys())]
    known = TARGET_LABELS.union(*(series.get(name, set()) for name in metrics))
    return found + [f"{query!r}: no label {name!r} on {sorted(metrics)}" for name in sorted(labels - known)]


# --- the dashboard -------------------------------------------------------------------------------------

def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def exprs(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]


def variable(dashboard: dict, name: str) -> dict:
    [found] = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    return found


def host_variable_query(dashboard: dict) -> tuple[str, str]:
    """(metric, label) of the host variable's `label_values(metric, label)` (Grafana's syntax, not PromQL)."""
    query = variable(dashboard, "host")["query"]["query"]
    match = re.fullmatch(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*(\w+)\s*\)", query)
    assert match, query
    return match.group(1), match.group(2)


@pytest.fixture
def settings_overrides(data_dir, fake_backend):
    return {"OLLAMA_BASE_URLS": fake_backend.url}


@pytest.fixture
def series(client, admin, fake_backend) -> dict[str, set[str]]:
    """The series a real app exports once it has answered, called a backend, counted tokens and seen a
    backend fail (families of a multiprocess scrape exist only once written)."""
    chat = {"model": "llama3.2:latest", "messages": HELLO, "stream": False}
    assert client.get("/api/version").status_code == 200
    assert client.get("/no/such/route").status_code == 404
    assert client.post("/api/chat/completions", headers=admin["headers"], json=chat).status_code == 200
    fake_backend.fault = {"kind": "http500", "path": "/api/chat"}
    assert client.post("/api/chat/completions", headers=admin["headers"], json=chat).status_code >= 500
    response = client.get("/metrics", headers=admin["headers"])
    assert response.status_code == 200
    return exported_series(response.get_data(as_text=True))


def test_dashboard_is_a_grafana_dashboard_on_a_prometheus_datasource_variable():
    dashboard = load()
    assert dashboard["schemaVersion"] >= 36 and dashboard["title"] and dashboard["uid"]
    source = variable(dashboard, "DS_PROMETHEUS")
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    host = variable(dashboard, "host")
    assert host["type"] == "query" and host["datasource"] == DATASOURCE and host["multi"] and host["includeAll"]
    assert host_variable_query(dashboard)[1] == "instance"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and len(panels(dashboard)) >= 8
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert panel["title"] and panel["datasource"] == DATASOURCE and panel["targets"], panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(t["datasource"] == DATASOURCE and t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_every_query_is_per_host():
    """Each host serves its own /metrics: every selector filters on the host variable and every aggregation
    keeps `instance`, so no panel adds hosts together."""
    for expr in exprs(load()):
        metrics, _labels = scan(expr)
        for name in metrics:
            selectors = re.findall(re.escape(name) + r"(\{[^}]*\})?", expr)
            assert all(HOST_MATCHER in selector for selector in selectors), expr
        for group in _GROUPING.findall(_STRING.sub('""', expr)):
            assert "instance" in [label.strip() for label in group.split(",")], expr


def test_every_query_names_metrics_and_labels_the_service_exports(series):
    dashboard = load()
    metric, label = host_variable_query(dashboard)
    assert metric in series
    assert problems(f"{metric}{{}}", series) == []
    found = [problem for expr in exprs(dashboard) for problem in problems(expr, series)]
    assert not found, "\n".join(found)
    used = {name for expr in exprs(dashboard) for name in scan(expr)[0]}
    # every family is on a panel: requests, latency, in flight, backend latency and errors, tokens
    assert {name.rsplit("_", 1)[0] for name in series if name.endswith("_bucket")} <= \
        {name.rsplit("_", 1)[0] for name in used}
    assert {name for name in series if not name.endswith(("_bucket", "_sum", "_count"))} <= used


def test_route_matchers_name_routes_the_app_serves(app):
    """A route regex that matches no Flask rule would draw an empty panel without any error."""
    rules = [rule.rule for rule in app.url_map.iter_rules()]
    matchers = [m for expr in exprs(load()) for m in re.findall(r'route=~?"((?:[^"\\]|\\.)*)"', expr)]
    assert matchers
    for alternative in (a for matcher in matchers for a in matcher.split("|")):
        assert any(re.fullmatch(alternative, rule) for rule in rules), alternative


def test_the_check_rejects_what_the_service_does_not_export(series):
    good = ('histogram_quantile(0.99, sum by (instance, le) '
            '(rate(webui_api_http_request_duration_seconds_bucket{instance=~"$host"}[$__rate_interval])))')
    assert problems(good, series) == []
    assert problems('rate(webui_api_http_requests_totl{route="/health"}[5m])', series) == [
        "'rate(webui_api_http_requests_totl{route=\"/health\"}[5m])': no metric 'webui_api_http_requests_totl'",
        "'rate(webui_api_http_requests_totl{route=\"/health\"}[5m])': no label 'route' on "
        "['webui_api_http_requests_totl']"]
    assert problems("rate(webui_api_backend_errors_bucket[5m])", series)  # _bucket of a counter
    assert problems("webui_api_http_requests_in_progress_count", series)  # _count of a gauge
    assert problems("sum by (instance, model) (rate(webui_api_tokens_total[5m]))", series)  # no such label


def test_scan_separates_metrics_from_functions_labels_values_and_ranges():
    expr = ('histogram_quantile(0.95, sum by (instance, le) (rate(a_bucket{route=~"x|y(z)", status!="200"}'
            '[$__rate_interval]))) / on(instance) group_left b offset 5m > 1e3 and bool c:rule{job="by"}')
    assert scan(expr) == ({"a_bucket", "b", "c:rule"}, {"instance", "le", "route", "status", "job"})
