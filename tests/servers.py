"""Real server processes for integration tests: gunicorn on a free loopback port."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from . import engine

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up within {timeout}s")


class ServerProcess:
    """A server subprocess in its own process group: stop() signals the group, SIGKILL after `timeout`."""

    proc: subprocess.Popen | None = None

    def start(self):
        raise NotImplementedError

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Gunicorn(ServerProcess):
    """`gunicorn -c gunicorn.conf.py` from the repo root, with the given environment."""

    def __init__(self, env: dict, workers: int = 2, threads: int = 4, log_path: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "WEB_CONCURRENCY": str(workers),
                    "GUNICORN_THREADS": str(threads), "PASSWORD_HASH_COST": "1024", **env}
        engine.require_database(self.env)
        self.log_path = log_path or tempfile.mkstemp(prefix="gunicorn-", suffix=".log")[1]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "Gunicorn":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"], cwd=ROOT, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_up(self.url + "/health", timeout, proc=self.proc)
        except BaseException:
            self.stop(signal.SIGKILL)  # never left running in a session of its own
            raise
        return self

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def ready_workers(self, count: int, timeout: float = 60) -> list[int]:
        """The pids of `count` live workers that finished booting (gunicorn.conf.py's post_worker_init line):
        a worker forked but still running its start-up work may hold locks, so never pause one then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, errors="replace") as log:
                ready = {int(pid) for pid in re.findall(r"Worker (\d+) ready", log.read())}
            pids = [pid for pid in self.worker_pids() if pid in ready]
            if len(pids) == count:
                return pids
            time.sleep(0.1)
        raise AssertionError(f"expected {count} ready workers; workers {self.worker_pids()}, log {self.log_path}")



def pause(pids) -> list[int]:
    """SIGSTOP each process and wait until every one of its threads is stopped: kill() returns before a
    running thread stops, and a worker thread still running could accept the next connection and then
    freeze with it (the client would wait for a worker that is paused)."""
    pids = list(pids)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while not all(_stopped(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes {pids} did not stop within 10 s")
        time.sleep(0.005)
    return pids


def resume(pids) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def _stopped(pid: int) -> bool:
    """Every thread of `pid` is in the stopped state (a vanished process or thread counts as stopped)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    return all(_thread_state(pid, tid) in ("T", "t", "Z", "X", "") for tid in tasks)


def _thread_state(pid: int, tid: str) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def nginx_binary() -> str | None:
    """The nginx executable (Debian installs it in /usr/sbin, which may not be on a user's PATH)."""
    import shutil

    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)


class Nginx(ServerProcess):
    """deploy/nginx.conf, rewritten for loopback ports and a private prefix dir, run in the foreground.

    Only what must differ is rewritten (listen port, upstream address, body limit, pid/log/temp paths,
    user); every proxy setting under test is the deployed file's own. A rewrite that no longer matches the
    file fails loudly, so the test cannot drift away from the config it claims to test."""

    def __init__(self, upstream_port: int | list[int], workdir: str | Path, client_max_body_size: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(workdir)
        self.upstream_port = upstream_port
        self.ports = upstream_port if isinstance(upstream_port, list) else [upstream_port]  # round-robin
        self.client_max_body_size = client_max_body_size
        self.access_log = self.dir / "access.log"
        self.error_log = self.dir / "error.log"
        self.proc: subprocess.Popen | None = None

    def render(self) -> Path:
        import pwd
        import re

        text = NGINX_CONF.read_text()
        temp = "".join(f"    {name}_temp_path {self.dir / name};\n" for name in
                       ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        rewrites = [
            (r"(?m)^user .*;$", f"user {pwd.getpwuid(os.geteuid()).pw_name};"),
            (r"(?m)^worker_processes .*;$", "worker_processes 2;"),
            (r"(?m)^pid .*;$", f"pid {self.dir / 'nginx.pid'};"),
            (r"(?m)^error_log .*;$", f"error_log {self.error_log} info;"),
            (r"(?m)^(\s*)access_log \S+ gateway;$", rf"\g<1>access_log {self.access_log} gateway;"),
            (r"(?m)^http \{$", "http {\n" + temp),
            (r"server 127\.0\.0\.1:8080;", " ".join(f"server 127.0.0.1:{port};" for port in self.ports)),
            (r"(?m)^(\s*)listen 80;$", rf"\g<1>listen 127.0.0.1:{self.port};"),
        ]
        if self.client_max_body_size:
            rewrites.append((r"client_max_body_size \S+;",
                             f"client_max_body_size {self.client_max_body_size};"))
        for pattern, replacement in rewrites:
            text, count = re.subn(pattern, replacement, text)
            if count != 1:
                raise RuntimeError(f"deploy/nginx.conf changed: {pattern!r} matched {count} times")
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nginx.conf"
        conf.write_text(text)
        return conf

    def start(self, attempts: int = 3) -> "Nginx":
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        for attempt in range(attempts):
            conf = self.render()
            subprocess.run([binary, "-t", "-q", "-p", str(self.dir), "-c", str(conf)], check=True,
                           capture_output=True, timeout=30)
            self.proc = subprocess.Popen([binary, "-p", str(self.dir), "-c", str(conf), "-g", "daemon off;"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            try:
                # nginx writes its pid file only after it bound the port: a connect alone could reach
                # whichever other process grabbed the port first.
                pid_file = self.dir / "nginx.pid"
                wait_until_listening(self.port, proc=self.proc, ready=pid_file.exists)
                return self
            except RuntimeError:  # another process took the free port meanwhile: try another one
                if attempt == attempts - 1 or "in use" not in self.error_log.read_text(errors="replace"):
                    log = self.error_log.read_text(errors="replace")
                    raise RuntimeError(f"nginx did not start: {log[-500:]}")
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        super().stop(sig, timeout)  # SIGTERM: nginx's fast shutdown, master and workers


def wait_until_listening(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None,
                         ready=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if not ready():
            time.sleep(0.05)
            continue
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")
