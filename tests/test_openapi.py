"""The OpenAPI document tells the truth: a schema for every answer, the `{"detail"}` body for every error,
no lock on public routes, and a bounded schemathesis run that finds no answer the document misdescribes."""
import re
import warnings

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import response_schema_conformance
from schemathesis.specs.openapi.examples import get_strategies_from_examples

from webui_api import create_app
from webui_api.api.deps import view_access

from . import engine
from .conftest import FAST_HASH, PASSWORD

METHODS = ("get", "post", "put", "patch", "delete")
ERROR_REF = "#/components/schemas/Error"
# The readiness 503 carries the failing checks beside its `detail` (load balancers read them).
ERROR_BODY_EXCEPTIONS = {("/health/ready", "get", "503")}
# Routes the brief names as public; the marker check below covers every other one.
PUBLIC = {("/health", "get"), ("/health/ready", "get"), ("/api/config", "get"), ("/api/version", "get"),
          ("/api/v1/auths/signin", "post"), ("/api/v1/auths/signup", "post")}


@pytest.fixture
def settings_overrides():
    return {"ENV": "dev"}


@pytest.fixture
def spec(client):
    return client.get("/openapi.json").get_json()


def operations(spec):
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def resolve(spec, obj):
    while "$ref" in obj:
        section, name = obj["$ref"].split("/")[-2:]
        obj = spec["components"][section][name]
    return obj


def test_every_schema_has_its_own_name(data_dir, database_settings):
    """apispec renames a second schema with a taken name (`Grant1`) and only warns: two shapes, one name."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        app = create_app({"DATA_DIR": data_dir, **database_settings, "ENV": "dev",
                          "OLLAMA_BASE_URLS": "http://127.0.0.1:9"})
    app.extensions["webui_api"].close()


def test_every_operation_documents_a_success_schema(spec):
    missing = []
    for path, method, op in operations(spec):
        success = [resolve(spec, r) for code, r in op["responses"].items() if code.startswith("2")]
        if not any("schema" in media for r in success for media in r.get("content", {}).values()):
            missing.append(f"{method.upper()} {path}")
    assert len(list(operations(spec))) > 90 and missing == []


def test_every_error_response_is_the_detail_body(spec):
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["detail"] and len(error["properties"]["detail"]["oneOf"]) == 2
    openai_error, ollama_error = error["properties"]["error"]["oneOf"]  # beside `detail` on those routes
    assert openai_error["required"] == ["message", "type", "code"] and ollama_error == {"type": "string"}
    wrong = []
    for path, method, op in operations(spec):
        assert "default" in op["responses"]
        for code, response in op["responses"].items():
            if code[0] in "45" or code == "default":
                schema = resolve(spec, response)["content"]["application/json"]["schema"]
                if schema.get("$ref") != ERROR_REF and (path, method, code) not in ERROR_BODY_EXCEPTIONS:
                    wrong.append(f"{method.upper()} {path} {code}")
    assert wrong == []


def test_public_routes_and_only_they_declare_no_security(app, spec):
    assert spec["security"] == [{"bearerAuth": []}]
    marked = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods & {m.upper() for m in METHODS}:
            if view_access(app.view_functions[rule.endpoint], method) == "public" and path in spec["paths"]:
                marked.add((path, method.lower()))
    assert PUBLIC <= marked
    for path, method, op in operations(spec):
        assert (op.get("security") == []) == ((path, method) in marked), f"{method.upper()} {path}"


def test_ollama_passthrough_documents_its_request_bodies(spec):
    for path, method, op in operations(spec):
        if path.startswith("/ollama/") and method in ("post", "delete"):
            body = resolve(spec, op["requestBody"]["content"]["application/json"]["schema"])
            assert body["additionalProperties"] is True  # forwarded untouched
            fields = set(body["properties"])
            assert "model" in fields or {"source", "destination"} <= fields


@pytest.mark.parametrize("path", ["/api/v1/files/", "/api/v1/knowledge/", "/api/v1/users/"])
def test_a_page_past_any_sql_offset_is_422(client, admin, path):
    """Found by the run below: a page number past SQLite's 64-bit offset was a 500."""
    response = client.get(f"{path}?page={2**63}", headers=admin["headers"])
    assert response.status_code == 422 and response.get_json()["detail"][0]["loc"] == ["query", "page"]


# ----------------------------------------------------------------------------- schemathesis

@pytest.fixture(scope="module")
def fuzzed(request, tmp_path_factory, module_backend):
    """The app in dev mode over the fake backend, with an admin's JWT for every generated call."""
    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("data")), **engine.database_settings(request),
                      "ENV": "dev", "PASSWORD_HASH_COST": FAST_HASH, "OLLAMA_BASE_URLS": module_backend.url,
                      "OPENAI_API_BASE_URLS": module_backend.openai_url,
                      "OPENAI_API_KEYS": module_backend.openai_key, "AIOHTTP_CLIENT_TIMEOUT": "2"})
    session = app.test_client().post("/api/v1/auths/signup", json={
        "name": "Ada", "email": "ada@example.com", "password": PASSWORD}).get_json()
    app.config["FUZZ_HEADERS"] = {"Authorization": f"Bearer {session['token']}"}
    yield app
    app.extensions["webui_api"].close()


def test_answers_match_the_documented_schemas(fuzzed):
    """A few generated calls per operation; only the response-schema check (the other checks are about
    input validation, which the per-route tests cover)."""
    # Signing out would revoke the one token the run uses; everything else may be called at random.
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzzed).exclude(path="/api/v1/auths/signout")
    headers = fuzzed.config["FUZZ_HEADERS"]
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        # The documented examples first (a real model name reaches the backend), then generated cases.
        cases = st.one_of(*get_strategies_from_examples(operation), operation.as_strategy())

        @given(case=cases)
        @settings(max_examples=3, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def call(case):
            case.call_and_validate(headers=headers, checks=[response_schema_conformance])

        try:
            call()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label}: {exc}"[:2000])
    assert failures == []
