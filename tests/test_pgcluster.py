"""The throwaway PostgreSQL cluster: each new database is empty and isolated, a drop wins over open
connections, the URL carries working credentials, and a cluster left by a killed run is cleaned up."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from urllib.parse import urlsplit

import pytest

from . import engine, pgcluster
from .servers import ROOT

pytestmark = pytest.mark.skipif(pgcluster.available() is not None, reason=pgcluster.available() or "")


def connect(url: str):
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def scalar(url: str, query: str, *params):
    with connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(query, params or None)
        return cursor.fetchone()[0]


def user_tables(url: str) -> int:
    return scalar(url, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")


def test_two_new_databases_are_empty_and_independent():
    cluster = pgcluster.cluster()
    first, second = cluster.new_database(), cluster.new_database()
    try:
        assert first != second and user_tables(first) == user_tables(second) == 0
        with connect(first) as conn, conn.cursor() as cursor:
            cursor.execute("CREATE TABLE note (body text); INSERT INTO note VALUES ('only in the first')")
        assert scalar(first, "SELECT body FROM note") == "only in the first"
        assert user_tables(second) == 0
    finally:
        cluster.drop_database(first)
        cluster.drop_database(second)


def test_drop_wins_over_an_open_connection_in_a_transaction():
    import psycopg2

    cluster = pgcluster.cluster()
    url = cluster.new_database()
    holder = psycopg2.connect(url)
    with holder.cursor() as cursor:
        cursor.execute("CREATE TABLE held (x int); INSERT INTO held VALUES (1)")  # left in a transaction
    cluster.drop_database(url)
    name = urlsplit(url).path.lstrip("/")
    assert scalar(cluster.url("postgres"), "SELECT count(*) FROM pg_database WHERE datname = %s", name) == 0
    with pytest.raises(psycopg2.Error):
        with holder.cursor() as cursor:
            cursor.execute("SELECT 1")
    holder.close()
    cluster.drop_database(url)  # dropping twice is harmless (a finalizer after a test's own drop)


def test_the_url_carries_the_password_and_a_wrong_one_is_refused():
    import psycopg2

    url = pgcluster.cluster().new_database()
    try:
        parts = urlsplit(url)
        assert parts.scheme == "postgresql" and parts.hostname == "127.0.0.1" and parts.password
        assert scalar(url, "SELECT current_user") == pgcluster.SUPERUSER
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(url.replace(f":{parts.password}@", ":wrong@"))
    finally:
        pgcluster.cluster().drop_database(url)


def test_drop_refuses_a_database_it_did_not_make():
    with pytest.raises(ValueError):
        pgcluster.cluster().drop_database(pgcluster.cluster().url("postgres"))


def test_postgres_url_fixture_gives_a_fresh_database_that_engine_query_reads(postgres_url):
    assert user_tables(postgres_url) == 0
    assert engine.query({"DATABASE_URL": postgres_url}, "SELECT current_database()") == [
        (urlsplit(postgres_url).path.lstrip("/"),)]


def test_the_suite_engine_setting(database_settings, request, tmp_path):
    assert ("DATABASE_URL" in database_settings) == engine.ON_POSTGRES
    url = engine.database_url(request, str(tmp_path))
    if engine.ON_POSTGRES:
        assert user_tables(database_settings["DATABASE_URL"]) == user_tables(url) == 0
    else:
        assert url == f"sqlite:///{tmp_path}/webui.db"


def test_a_cluster_left_by_a_killed_run_is_stopped_and_removed():
    script = textwrap.dedent("""
        import os, sys
        from tests import pgcluster
        cluster = pgcluster.cluster()
        print(cluster.dir, flush=True)
        sys.stdin.read()  # wait to be killed
    """)
    run = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    left = run.stdout.readline().strip()
    run.send_signal(signal.SIGKILL)
    run.wait()
    postmaster = os.path.join(left, "data", "postmaster.pid")
    assert os.path.exists(postmaster)  # the killed run could not stop its server
    with open(postmaster) as handle:
        server_pid = int(handle.readline())
    pgcluster.remove_stale_clusters()
    assert not os.path.exists(left)
    assert not running(server_pid)


def running(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
