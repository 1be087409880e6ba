"""The OpenAPI document tells the truth: a schema for every answer, the `{"detail"}` body for every error,
no lock on public routes, and a bounded schemathesis run that finds no answer the document misdescribes."""
import io
import itertools
import json
import os
import re
import warnings
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance
from schemathesis.specs.openapi.examples import get_strategies_from_examples

from webui_api import create_app
from webui_api.api.deps import view_access
from webui_api.auth import accounts
from webui_api.db import File, Knowledge, Preset, User

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


def test_event_streams_document_one_event(spec):
    """Found by the run below: an OpenAPI 3.0 text/event-stream schema describes one event (`data`, `event`, `id`,
    `retry`), which tools check each event against; `type: string` failed every streamed answer."""
    streams = [resolve(spec, media["schema"]) for _, _, op in operations(spec) for response in op["responses"].values()
               for kind, media in resolve(spec, response).get("content", {}).items() if kind == "text/event-stream"]
    assert len(streams) > 5
    for schema in streams:
        assert schema["type"] == "object" and schema["required"] == ["data"]
        assert schema["properties"]["data"]["type"] == "string"


@pytest.mark.parametrize("path", ["/api/v1/files/", "/api/v1/knowledge/", "/api/v1/users/"])
def test_a_page_past_any_sql_offset_is_422(client, admin, path):
    """Found by the run below: a page number past SQLite's 64-bit offset was a 500."""
    response = client.get(f"{path}?page={2**63}", headers=admin["headers"])
    assert response.status_code == 422 and response.get_json()["detail"][0]["loc"] == ["query", "page"]


# ----------------------------------------------------------------------------- schemathesis

# Generated cases per operation and role, in each generation mode: a few in the suite, more from bench/fuzz.sh.
FUZZ_EXAMPLES = int(os.environ.get("WEBUI_FUZZ_EXAMPLES", "3"))
FUZZ_CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
# Operations the run leaves out, each with its reason. None today: every case has a fresh JWT (a generated sign-out
# or password change cuts off only that case) and the seeds below are re-made whenever a call deleted one.
NOT_FUZZED: dict[tuple[str, str], str] = {}
ROLES = ("user", "admin")
OTHER_ROLE = {"user": "admin", "admin": "user"}
MODELS = ("llama3.2:latest", "gpt-4o-mini")


class Actors:
    """The run's admin and verified user, and what each owns, re-made before a case whenever a generated call
    deleted or demoted it, so the ids planted in paths and bodies exist."""

    def __init__(self, app, backend):
        self.app, self.backend, self.client = app, backend, app.test_client()
        self.settings = app.extensions["webui_api"].settings
        self.models = (list(backend.ollama_models), list(backend.openai_models))
        self.users: dict[str, User] = {}
        self.owned: dict[str, dict] = {role: {} for role in ROLES}
        self.numbers = itertools.count(1)

    def headers(self, role: str) -> dict:
        session = accounts.issue_session(self.settings, self.account(role))
        return {"Authorization": f"Bearer {session.token}"}

    def account(self, name: str) -> User:
        """`user`, `admin`, or `victim` (a user the admin's calls may delete or demote)."""
        role = "admin" if name == "admin" else "user"
        user = self.users.get(name) and User.get_or_none(User.id == self.users[name].id)
        if user is None or user.role != role:
            if user is not None:
                accounts.delete_user(user.id)
            user = self.users[name] = accounts.add_user(
                self.settings, f"Fuzz {name}", f"fuzz-{name}-{next(self.numbers)}@example.com", PASSWORD, role)
            self.owned[name] = {}
        return user

    def known(self, role: str) -> dict[str, list]:
        """Values to plant by parameter name: the caller's objects, the other role's (access checks), a victim."""
        self.backend.ollama_models[:], self.backend.openai_models[:] = self.models  # /ollama/api/delete may run
        mine, theirs = self.seeds(role), self.seeds(OTHER_ROLE[role])
        collections = [mine["knowledge"], f"file-{mine['file']}", theirs["knowledge"]]
        return {"file_id": [mine["file"], theirs["file"]], "knowledge_id": [mine["knowledge"], theirs["knowledge"]],
                "user_id": [self.account("victim").id, self.account(role).id],
                "id": [mine["preset"], theirs["preset"], *MODELS], "model": [*MODELS, mine["preset"]],
                "collection_name": collections, "collection_names": [collections], "url_idx": [0]}

    def seeds(self, role: str) -> dict:
        owned, headers = self.owned[role], self.headers(role)
        if File.get_or_none(File.id == owned.get("file")) is None:
            owned["file"] = self.created("/api/v1/files/", headers, data={
                "file": (io.BytesIO(b"the fuzz run's own notes"), "notes.txt", "text/plain")})
        if Knowledge.get_or_none(Knowledge.id == owned.get("knowledge")) is None:
            owned["knowledge"] = self.created("/api/v1/knowledge/create", headers, json={"name": "Fuzz notes"})
            self.client.post(f"/api/v1/knowledge/{owned['knowledge']}/file/add", headers=headers,
                             json={"file_id": owned["file"]})
        if Preset.get_or_none(Preset.id == owned.get("preset")) is None:
            owned["preset"] = self.created("/api/v1/models/create", headers, json={
                "id": f"fuzz-{role}-{next(self.numbers)}", "base_model_id": MODELS[0], "name": "Fuzz preset"})
        return owned

    def created(self, path: str, headers: dict, **body) -> str:
        response = self.client.post(path, headers=headers, **body)
        assert response.status_code == 200, (path, response.get_json())
        return response.get_json()["id"]


def plant(case, known: dict, data) -> None:
    """Swap some generated values for ones that exist, so calls get past the 404 into each route's logic."""
    for values in (case.path_parameters, case.query, case.body):
        if isinstance(values, dict):
            for name in sorted(set(values) & set(known)):
                values[name] = data.draw(st.sampled_from([values[name], *known[name]]), label=name)


class Tally:
    """Cases, 5xx answers and answers the document misdescribes, with the first failure of each operation."""

    def __init__(self):
        self.operations = self.cases = self.server_errors = self.violations = 0
        self.failures: dict[str, str] = {}
        self.statuses: Counter = Counter()

    def record(self, case, response) -> None:
        self.cases += 1
        self.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=FUZZ_CHECKS)
        except FailureGroup as failure:
            self.server_errors += response.status_code >= 500
            self.violations += response.status_code < 500
            self.failures.setdefault(f"{case.operation.label}", str(failure)[:3000])

    def figures(self, role: str) -> str:
        return (f"fuzz {role}: {self.operations} operations, {self.cases} cases, {self.server_errors} 5xx, "
                f"{self.violations} schema violations; statuses {dict(sorted(self.statuses.items()))}")


@pytest.fixture(scope="module")
def fuzzed(request, tmp_path_factory, module_backend):
    """The app in dev mode over the fake backend, and the accounts whose calls the run makes."""
    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("data")), **engine.database_settings(request),
                      "ENV": "dev", "PASSWORD_HASH_COST": FAST_HASH, "OLLAMA_BASE_URLS": module_backend.url,
                      "OPENAI_API_BASE_URLS": module_backend.openai_url,
                      "OPENAI_API_KEYS": module_backend.openai_key, "AIOHTTP_CLIENT_TIMEOUT": "2",
                      # One fake server answers both APIs and wants the OpenAI key on /v1, also under /ollama/v1.
                      "OLLAMA_API_CONFIGS": json.dumps({"0": {"key": module_backend.openai_key}})})
    app.test_client().post("/api/v1/auths/signup", json={  # the first account, made admin, outside the run
        "name": "Ada", "email": "ada@example.com", "password": PASSWORD})
    yield Actors(app, module_backend)
    app.extensions["webui_api"].jobs.drain(30)
    app.extensions["webui_api"].close()


def fuzz_operation(operation, role: str, actors: Actors, tally: Tally) -> None:
    # The documented examples first (a real model name reaches the backend), then valid and invalid input.
    cases = st.one_of(*get_strategies_from_examples(operation), operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases, data=st.data())
    @settings(max_examples=FUZZ_EXAMPLES * 2, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def call(case, data):
        plant(case, actors.known(role), data)
        tally.record(case, case.call(headers=actors.headers(role)))

    call()


@pytest.mark.parametrize("role", ROLES)
def test_no_answer_is_a_5xx_or_misdescribed(fuzzed, role):
    """Every operation in /openapi.json, called by a verified user and by an admin with documented examples and
    generated valid and invalid input: no 5xx, no status or body the document does not describe."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzzed.app)
    tally = Tally()
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.lower(), operation.path) not in NOT_FUZZED:
            tally.operations += 1
            fuzz_operation(operation, role, fuzzed, tally)
    print(tally.figures(role))  # bench/fuzz.sh reads this line
    assert tally.failures == {}, "\n\n".join(tally.failures.values())
