"""How a host learns of another host's write on PostgreSQL: an indexed read per query vs LISTEN/NOTIFY.

Prints a table: the cost a query pays to check versions of 1 and 8 collections (indexed read), and the
delay from a writer's commit to a listener's wake-up (NOTIFY), both over loopback.

    python bench/change_notice.py postgresql://postgres@127.0.0.1:55432/postgres [--rounds 2000]
"""
from __future__ import annotations

import argparse
import select
import statistics
import threading
import time

import psycopg2

TABLE = "bench_collection_state"


def connect(url: str):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def setup(url: str, collections: int) -> None:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cur.execute(f"CREATE TABLE {TABLE} (name TEXT PRIMARY KEY, version BIGINT NOT NULL)")
        cur.execute(f"INSERT INTO {TABLE} SELECT 'c' || g, g FROM generate_series(1, %s) g", (collections,))


def indexed_read_us(url: str, names: list[str], rounds: int) -> list[float]:
    conn = connect(url)
    cur = conn.cursor()
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        cur.execute(f"SELECT name, version FROM {TABLE} WHERE name = ANY(%s)", (names,))
        cur.fetchall()
        out.append((time.perf_counter() - start) * 1e6)
    conn.close()
    return out


def notify_delay_us(url: str, rounds: int) -> list[float]:
    """A writer commits an UPDATE plus NOTIFY; the listener wakes in select() and reads the payload."""
    listener, writer = connect(url), connect(url)
    listener.cursor().execute("LISTEN collection_changed")
    delays, sent = [], {}
    done = threading.Event()

    def listen():
        while len(delays) < rounds:
            if select.select([listener], [], [], 5) == ([], [], []):
                break
            listener.poll()
            while listener.notifies:
                note = listener.notifies.pop(0)
                delays.append((time.perf_counter() - sent[int(note.payload)]) * 1e6)
        done.set()

    thread = threading.Thread(target=listen)
    thread.start()
    cur = writer.cursor()
    for i in range(rounds):
        sent[i] = time.perf_counter()
        cur.execute(f"UPDATE {TABLE} SET version = version + 1 WHERE name = 'c1'; "
                    "SELECT pg_notify('collection_changed', %s)", (str(i),))
        time.sleep(0.002)  # one change at a time: measure delivery, not queueing
    done.wait(30)
    thread.join(5)
    listener.close()
    writer.close()
    return delays


def row(label: str, samples: list[float]) -> str:
    samples = sorted(samples)
    p95 = samples[int(len(samples) * 0.95) - 1]
    return f"| {label:<46} | {statistics.median(samples):>8.0f} | {p95:>8.0f} | {len(samples):>6} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--collections", type=int, default=10_000)
    args = parser.parse_args()
    setup(args.url, args.collections)
    print(f"| {'what (PostgreSQL 15, loopback)':<46} | {'p50 µs':>8} | {'p95 µs':>8} | {'n':>6} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 10}|{'-' * 8}|")
    print(row("indexed read per query, 1 collection", indexed_read_us(args.url, ["c1"], args.rounds)))
    print(row("indexed read per query, 8 collections",
              indexed_read_us(args.url, [f"c{i}" for i in range(1, 9)], args.rounds)))
    print(row("NOTIFY: commit to listener wake-up", notify_delay_us(args.url, min(args.rounds, 500))))
    with connect(args.url) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE {TABLE}")


if __name__ == "__main__":
    main()
