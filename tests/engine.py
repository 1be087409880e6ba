"""The one owner of the suite's database engine: WEBUI_TEST_DATABASE=sqlite (the default) or postgres."""
from __future__ import annotations

import os
import secrets
import sqlite3
from contextlib import closing

import pytest

from . import pgcluster

ENGINES = ("sqlite", "postgres")
ENGINE = os.environ.get("WEBUI_TEST_DATABASE", "sqlite").strip().lower() or "sqlite"
if ENGINE not in ENGINES:
    raise pytest.UsageError(f"WEBUI_TEST_DATABASE={ENGINE!r}: expected one of {', '.join(ENGINES)}")
ON_POSTGRES = ENGINE == "postgres"
SQLITE_ONLY = "tests a SQLite-only detail (the .db file, PRAGMAs, WAL or FTS5)"
# WEBUI_TEST_SCOPE=database (what CI's PostgreSQL pass sets, to stay in its time budget) leaves out the
# modules whose subject is not the database — parsing, extraction, the gateway's wire formats, tooling —
# which the SQLite pass covers; `make test-postgres` alone runs everything.
DATABASE_SCOPE = os.environ.get("WEBUI_TEST_SCOPE", "").strip().lower() == "database"
ENGINE_NEUTRAL = frozenset("""test_chunk test_convert test_extract test_upstream test_fake_backend test_telemetry
test_layering test_grafana_dashboard test_docs_browser test_hostile_input test_backend_faults test_client_errors
test_sdk_openai test_failover test_embed test_rerank test_integration_nginx test_ollama test_openai
test_openapi test_pipes test_completions test_local_embed test_mock_backend""".split())
ENGINE_NEUTRAL_REASON = "not about the database: run by the SQLite pass (WEBUI_TEST_SCOPE=database)"


def postgres_database(request) -> str:
    """A fresh PostgreSQL database's URL, dropped when `request`'s scope (test, module, ...) ends; the test
    skips with a one-line reason when PostgreSQL is not installed."""
    reason = pgcluster.available()
    if reason:
        pytest.skip(reason)
    cluster = pgcluster.cluster()
    url = cluster.new_database()
    request.addfinalizer(lambda: cluster.drop_database(url))
    return url


def database_settings(request) -> dict[str, str]:
    """Settings (environment) that put the app or server under test on the suite's engine: nothing on
    SQLite (the default DATA_DIR/webui.db); on PostgreSQL a fresh database's DATABASE_URL, dropped after
    `request`'s scope, and the WEBUI_SECRET_KEY the service requires there."""
    if not ON_POSTGRES:
        return {}
    return {"DATABASE_URL": postgres_database(request), "WEBUI_SECRET_KEY": secrets.token_hex(32)}


def database_url(request, data_dir: str) -> str:
    """The URL of the database a test opens itself (db.init_database and the like): the SQLite file under
    `data_dir`, or a fresh PostgreSQL database dropped after `request`'s scope."""
    return postgres_database(request) if ON_POSTGRES else f"sqlite:///{os.path.abspath(data_dir)}/webui.db"


def url_of(env: dict) -> str:
    """The database URL a server started with `env` uses (the service's own default on SQLite)."""
    return env.get("DATABASE_URL") or f"sqlite:///{os.path.abspath(env['DATA_DIR'])}/webui.db"


def storage_of(env: dict) -> dict[str, str]:
    """Where a server keeps its state: what a CLI run against that server's data needs from its env."""
    return {key: env[key] for key in ("DATA_DIR", "DATABASE_URL", "WEBUI_SECRET_KEY") if key in env}


def query(env: dict, statement: str) -> list[tuple]:
    """Rows of one parameterless SELECT, read straight from the database a server with `env` uses."""
    if "DATABASE_URL" in env:
        import psycopg2

        connection = psycopg2.connect(env["DATABASE_URL"])
    else:
        connection = sqlite3.connect(os.path.join(env["DATA_DIR"], "webui.db"))
    with closing(connection), closing(connection.cursor()) as cursor:
        cursor.execute(statement)
        return cursor.fetchall()


def require_database(env: dict) -> None:
    """A server started without the suite's database would silently run on SQLite: refuse that."""
    if ON_POSTGRES and "DATABASE_URL" not in env:
        raise AssertionError("WEBUI_TEST_DATABASE=postgres: build this server's env with "
                             "database_settings (tests/engine.py)")
