"""Shared fixtures: a temp DATA_DIR, the database engine, the app and its test client, users of each role, the
fake backend."""
from __future__ import annotations

import pytest

from webui_api.auth import accounts
from webui_api import create_app
from webui_api.db import User

from . import engine, pgcluster
from .fake_backend import fake_backend, live_server, make_backend, module_backend  # noqa: F401  (fixtures)

FAST_HASH = 2**10  # scrypt cost for tests; production default is 2**14
PASSWORD = "correct horse battery staple"


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    return str(path)


def pytest_collection_modifyitems(config, items):
    if engine.ON_POSTGRES:
        for item in items:
            if item.get_closest_marker("sqlite_only"):
                item.add_marker(pytest.mark.skip(reason=engine.SQLITE_ONLY))
            elif engine.DATABASE_SCOPE and item.module.__name__.rpartition(".")[2] in engine.ENGINE_NEUTRAL:
                item.add_marker(pytest.mark.skip(reason=engine.ENGINE_NEUTRAL_REASON))


def pytest_sessionfinish(session, exitstatus):
    pgcluster.shutdown()


@pytest.fixture
def database_settings(request):
    """The suite's engine for this test's app, CLI runs and servers: {} on SQLite, a DATABASE_URL on
    PostgreSQL."""
    return engine.database_settings(request)


@pytest.fixture
def postgres_url(request):
    """A fresh PostgreSQL database for a test that needs one on either engine (skips without PostgreSQL)."""
    return engine.postgres_database(request)


@pytest.fixture
def settings_overrides(data_dir):
    """Environment overrides for the app under test; test modules override this fixture to add more."""
    return {}


@pytest.fixture
def app(data_dir, database_settings, settings_overrides):
    config = {
        "DATA_DIR": data_dir,
        **database_settings,
        "PASSWORD_HASH_COST": FAST_HASH,
        "OLLAMA_BASE_URLS": "http://127.0.0.1:9",  # discard port: nothing listens
        "OPENAI_API_BASE_URLS": "",
        **settings_overrides,
    }
    application = create_app(config)
    yield application
    application.extensions["webui_api"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_user(app):
    """Create an account with a role directly and return its credentials as a dict."""
    settings = app.extensions["webui_api"].settings
    counter = iter(range(1, 10_000))

    def make(role: str = "user", email: str | None = None, name: str | None = None) -> dict:
        number = next(counter)
        email = email or f"{role}{number}@example.com"
        user = accounts.add_user(settings, name or f"{role.title()} {number}", email, PASSWORD, role)
        session = accounts.issue_session(settings, user)
        return credentials({"token": session.token, "id": user.id, "role": user.role}, email)
    return make


def credentials(session: dict, email: str) -> dict:
    token = session["token"]
    return {"id": session["id"], "email": email, "password": PASSWORD, "role": session["role"],
            "token": token, "headers": {"Authorization": f"Bearer {token}"}}


@pytest.fixture
def admin(client):
    """The first account, created through the public signup route (so it becomes admin)."""
    body = {"name": "Ada Admin", "email": "admin@example.com", "password": PASSWORD}
    response = client.post("/api/v1/auths/signup", json=body)
    assert response.status_code == 200, response.get_json()
    assert User.get_by_id(response.get_json()["id"]).role == "admin"
    return credentials(response.get_json(), body["email"])


@pytest.fixture
def user(admin, make_user):
    return make_user("user")


@pytest.fixture
def pending(admin, make_user):
    return make_user("pending")


@pytest.fixture
def api_key_headers(client):
    """Bearer headers carrying a fresh API key for the given credentials."""
    def make(creds: dict) -> dict:
        response = client.post("/api/v1/auths/api_key", headers=creds["headers"])
        assert response.status_code == 200, response.get_json()
        return {"Authorization": f"Bearer {response.get_json()['api_key']}"}
    return make
