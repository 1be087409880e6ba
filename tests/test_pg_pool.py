"""The PostgreSQL pool: a connection the server closed is replaced at check-out, never handed to a request."""
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest

from webui_api import create_app, db

from .conftest import FAST_HASH, PASSWORD


@pytest.fixture
def pg_app(postgres_url, tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": postgres_url,
                      "WEBUI_SECRET_KEY": "pool-test-secret-0123456789abcdef", "PASSWORD_HASH_COST": FAST_HASH,
                      "OLLAMA_BASE_URLS": "http://127.0.0.1:9", "OPENAI_API_BASE_URLS": ""})
    yield app
    app.extensions["webui_api"].close()
    db.close_database()


def terminate_app_connections(url: str) -> int:
    """Kill every server process of the app's database but this one (as a restart or an idle kill would)."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        killed = cursor.fetchone()[0]
    conn.close()
    return killed


def test_connections_killed_by_the_server_are_replaced_not_handed_out(pg_app, postgres_url):
    client = pg_app.test_client()
    body = {"name": "A", "email": "a@example.com", "password": PASSWORD}
    token = client.post("/api/v1/auths/signup", json=body).get_json()["token"]
    headers = {"Authorization": f"Bearer {token}"}

    def me(_):
        return pg_app.test_client().get("/api/v1/auths/", headers=headers).status_code

    with ThreadPoolExecutor(8) as pool:  # several pooled connections, all back in the pool afterwards
        assert list(pool.map(me, range(16))) == [200] * 16
    assert terminate_app_connections(postgres_url) >= 1
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(me, range(16))) == [200] * 16


def test_start_up_refuses_postgres_without_a_shared_secret(postgres_url, tmp_path):
    from webui_api.config import ConfigError

    with pytest.raises(ConfigError, match="WEBUI_SECRET_KEY"):
        create_app({"DATA_DIR": str(tmp_path), "DATABASE_URL": postgres_url, "WEBUI_SECRET_KEY": ""})
