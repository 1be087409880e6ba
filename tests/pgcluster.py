"""A throwaway PostgreSQL cluster for tests: Debian's initdb/pg_ctl in a temp dir, on a free loopback port."""
from __future__ import annotations

import atexit
import glob
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from urllib.parse import urlsplit

from webui_api.locks import alive

from . import servers

DIR_PREFIX = "webui-pg-"
SUPERUSER = "webui_test"
MISSING = "PostgreSQL not installed (Debian package postgresql); .ci/run installs it"
# Throwaway data: durability off. Connections: gunicorn tests run workers x threads x pools at once.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'", "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
    "max_connections": "400", "shared_buffers": "32MB", "log_min_messages": "warning",
}
OUR_DATABASE = re.compile(r"^t[0-9a-f]{16}$")  # the only names drop_database accepts


def bin_dir() -> str | None:
    """The newest Debian PostgreSQL's bin directory (PATH is not trusted: /usr/local may hold another)."""
    found = [os.path.dirname(p) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if os.access(os.path.join(d, "pg_ctl"), os.X_OK)]
    return max(found, key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0, default=None)


def available() -> str | None:
    """None when a cluster can be started here, else a one-line reason to skip."""
    if bin_dir() is None:
        return MISSING
    if os.geteuid() == 0 and not _postgres_user():
        return "PostgreSQL cannot run as root and there is no 'postgres' system user"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    return None


def _postgres_user():
    import pwd

    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def _as_cluster_owner(argv: list[str]) -> list[str]:
    """initdb and pg_ctl refuse to run as root: run them as the postgres system user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class Cluster:
    """One running cluster: new_database() hands out fresh empty databases, drop_database() removes one."""

    def __init__(self, directory: str):
        self.bin = bin_dir()
        self.dir = directory
        self.data = os.path.join(self.dir, "data")
        self.password = secrets.token_hex(12)
        self.port = 0
        self.owner = os.getpid()
        self._admin = None
        self._lock = threading.Lock()

    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = _as_cluster_owner([os.path.join(self.bin, tool), *args])
        return subprocess.run(argv, cwd=self.dir, capture_output=True, text=True, timeout=timeout)

    def start(self, attempts: int = 3) -> "Cluster":
        with open(os.path.join(self.dir, "owner"), "w") as handle:
            handle.write(str(self.owner))  # lets a later run recognise this cluster as stale if we die
        if os.geteuid() == 0:
            owner = _postgres_user()
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self._initdb()
        for attempt in range(attempts):
            self.port = servers.free_port()
            started = self._run("pg_ctl", "start", "-w", "-t", "60", "-D", self.data,
                                "-l", os.path.join(self.dir, "server.log"), "-o", f"-p {self.port}")
            if started.returncode == 0:
                return self
            log = self._log()
            if "could not bind" not in log or attempt == attempts - 1:  # else the port was taken meanwhile
                raise RuntimeError(f"PostgreSQL did not start: {started.stderr.strip()} {log[-800:]}")

    def _initdb(self) -> None:
        pwfile = os.path.join(self.dir, "pwfile")
        with open(pwfile, "w") as handle:
            handle.write(self.password)
        os.chmod(pwfile, 0o644)  # initdb runs as postgres; the directory itself is private (0700)
        # C collation compares bytes, as SQLite's default BINARY collation does.
        done = self._run("initdb", "-D", self.data, "-U", SUPERUSER, f"--pwfile={pwfile}", "-E", "UTF8",
                         "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()[-800:]}")
        os.remove(pwfile)
        settings = {**SERVER_SETTINGS, "unix_socket_directories": f"'{self.dir}'"}
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write("".join(f"{name} = {value}\n" for name, value in settings.items()))

    def _log(self) -> str:
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _execute(self, statement, *params) -> None:
        """Run one statement on the maintenance database, outside a transaction (CREATE/DROP DATABASE)."""
        import psycopg2

        with self._lock:
            if self._admin is None or self._admin.closed:
                self._admin = psycopg2.connect(self.url("postgres"))
                self._admin.autocommit = True
            with self._admin.cursor() as cursor:
                cursor.execute(statement, params or None)

    def new_database(self) -> str:
        """A fresh, empty database (copied from template0, so nothing leaks in), as a postgresql:// URL."""
        from psycopg2 import sql

        name = "t" + secrets.token_hex(8)
        self._execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by new_database(), even while servers still hold connections to it."""
        from psycopg2 import sql

        name = urlsplit(url).path.lstrip("/")
        if not OUR_DATABASE.match(name):
            raise ValueError(f"not a database of this cluster: {url}")
        self._execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", name)
        # FORCE also ends a connection a pool opened between the terminate and the drop.
        self._execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run("pg_ctl", "stop", "-m", "immediate", "-D", self.data, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


_cluster: Cluster | None = None
_failure: str | None = None  # a cluster that failed to start is not retried by every test
_start_lock = threading.Lock()


def cluster() -> Cluster:
    """The session's cluster, started on first use (after removing clusters of runs that died)."""
    global _cluster, _failure
    with _start_lock:
        if _cluster is None:
            _failure = _failure or available()
            if _failure:
                raise RuntimeError(_failure)
            remove_stale_clusters()
            _cluster = Cluster(tempfile.mkdtemp(prefix=DIR_PREFIX))
            try:
                _cluster.start()
            except Exception as exc:
                _failure = str(exc)
                _cluster.stop()
                _cluster = None
                raise
        return _cluster


def shutdown() -> None:
    """Stop the session's cluster, if one was started; pytest calls this at session end."""
    global _cluster
    with _start_lock:
        if _cluster is not None and _cluster.owner == os.getpid():  # not in a forked child
            _cluster.stop()
            _cluster = None


atexit.register(shutdown)  # a run that ends without pytest's session hooks still stops its cluster


def remove_stale_clusters() -> None:
    """Stop and delete clusters left by runs that were killed (their owner process is gone); a concurrent
    run's cluster is left alone."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), DIR_PREFIX + "*")):
        try:
            with open(os.path.join(path, "owner")) as handle:
                owner = int(handle.read().strip())
        except (OSError, ValueError):
            continue  # being created right now, or not ours
        if owner != os.getpid() and not alive(owner):
            Cluster(path).stop()


