"""What a key's per-minute limits cost: CPU per chat with an unlimited key vs a key with requests- and
tokens-per-minute limits (set high enough never to refuse), same server, rounds taking the keys in turn.

The limited key adds one UPSERT per request (the request count) and one per answer (its tokens).
Fake backend in its own process, the project under `gunicorn -c gunicorn.conf.py` (2 workers), SQLite unless
DATABASE_URL is set.

    .venv/bin/python bench/key_limits.py [--seconds 3] [--repeat 3] [--clients 16]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gateway_overhead import MODELS, Target, closed_loop, fake_backend, gunicorn, stop  # noqa: E402

HIGH = 2**31 - 1  # the largest limit: counted, never reached


def keys(url: str) -> dict[str, dict]:
    body = {"name": "Bench", "email": "bench@example.com", "password": "bench-password-123"}
    token = requests.post(f"{url}/api/v1/auths/signup", json=body, timeout=30).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    made = {}
    limited = {"requests_per_minute": HIGH, "tokens_per_minute": HIGH}
    for name, limits in (("unlimited", {}), ("limited", limited)):
        reply = requests.post(f"{url}/api/v1/auths/api_keys", headers=bearer, json={"name": name, **limits},
                              timeout=30)
        made[name] = {"Authorization": f"Bearer {reply.json()['api_key']}"}
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    data = tempfile.mkdtemp(prefix="bench-keys-")
    procs = []
    try:
        backend_proc, backend = fake_backend()
        procs.append(backend_proc)
        env = {"DATA_DIR": data, "OLLAMA_BASE_URLS": backend, "OPENAI_API_BASE_URLS": backend + "/v1",
               "OPENAI_API_KEYS": "sk-fake-openai-key", "MODELS_CACHE_TTL": "300",
               "PASSWORD_HASH_COST": "1024", "LOG_LEVEL": "warning"}
        project_proc, project = gunicorn(None, env, data, "project")
        procs.append(project_proc)
        report(project, project_proc, keys(project), args)
    finally:
        for proc in reversed(procs):
            stop(proc)


def report(url: str, proc, made: dict, args) -> None:
    print(f"2 gunicorn workers; {args.clients} connections; "
          f"{args.repeat} rounds of {args.seconds:g} s (medians)")
    print(f"{'kind':7} {'key':10} {'req/s':>7} {'cpu ms/req':>10}")
    for kind in MODELS:
        found = {name: [] for name in made}
        for _ in range(args.repeat):
            for name, headers in made.items():
                target = Target(name, {kind: url + "/api/chat/completions"}, {kind: headers}, proc)
                found[name].append(closed_loop(target, kind, args.clients, args.seconds))
        for name, runs in found.items():
            rate, cpu = statistics.median(r for r, _, _ in runs), statistics.median(c for _, c, _ in runs)
            failed = sum(f for _, _, f in runs)
            print(f"{kind:7} {name:10} {rate:7.0f} {cpu:10.2f}" + (f" ({failed} failed)" if failed else ""))


if __name__ == "__main__":
    main()
