"""Cross-host catch-up of the vector cache (issue 10): what the per-query version check and the catch-up cost.

Two "hosts" are two VectorStores with their own index directory on one SQLite database (384-dim vectors,
1,000 chunks per file, every file in one knowledge collection). Measures, in process and warm unless said:
query p50 through VectorStore.search (no check) and index_sync.search (the version check, one indexed read
of collection_state, plus one directory listing), the check alone; catch-up of the other host after
10/100/1000 new chunks, and the writer host's own index write (index_sync.link); the first query of a host
with an empty DATA_DIR at 10k and 100k; and the triggers' cost on inserting 1,000 chunk rows. Prints a
table.

    .venv/bin/python bench/catch_up.py [--sizes 10000,100000] [--queries 2000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from webui_api import db  # noqa: E402
from webui_api.db import Chunk, File, Knowledge, KnowledgeFile, User  # noqa: E402
from webui_api.rag import index_sync  # noqa: E402
from webui_api.rag.collection_rows import collection_vectors  # noqa: E402
from webui_api.rag.vectors import VectorStore  # noqa: E402

DIM, PER_FILE = 384, 1000
INSERT = ("INSERT INTO chunk (file_id, seq, text, start, end, vector, dim, model) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
RNG = np.random.default_rng(0)


def unit_rows(count: int) -> np.ndarray:
    rows = RNG.normal(size=(count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def add_file(owner: str, count: int, knowledge_id: str | None) -> str:
    """A processed file: its chunk rows in one transaction (as the pipeline writes them), then its link."""
    file_id = db.new_id()
    with db.write_transaction():
        File.create(id=file_id, user=owner, filename="f.txt", storage_name=file_id, file_hash=file_id,
                    status="completed")
        rows = [(file_id, seq, f"chunk {seq}", 0, 1, vector.tobytes(), DIM, "m")
                for seq, vector in enumerate(unit_rows(count))]
        db.database.cursor().executemany(INSERT, rows)
    if knowledge_id:
        with db.write_transaction():
            KnowledgeFile.create(knowledge=knowledge_id, file=file_id)
    return file_id


def fill(owner: str, knowledge_id: str, chunks: int) -> None:
    for _ in range(chunks // PER_FILE):
        add_file(owner, PER_FILE, knowledge_id)


def p50_ms(call, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def timed_ms(call) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def query_costs(store: VectorStore, kid: str, queries: int) -> list[tuple[str, float]]:
    vectors = unit_rows(64)
    pick = iter(range(10**9))
    plain = p50_ms(lambda: store.search([kid], vectors[next(pick) % 64], 10), queries)
    checked = p50_ms(lambda: index_sync.search(store, [kid], vectors[next(pick) % 64], 10), queries)
    check = p50_ms(lambda: index_sync.catch_up(store, [kid]), queries)
    return [("query p50, no version check (ms)", plain), ("query p50, with the check (ms)", checked),
            ("the check alone p50 (ms)", check)]


def catch_up_costs(owner: str, kid: str, reader: VectorStore, writer: VectorStore) -> list[tuple[str, float]]:
    rows = []
    for count in (10, 100, 1000):
        other, own = [], []
        for _ in range(5):
            index_sync.catch_up(reader, [kid])
            index_sync.catch_up(writer, [kid])
            file_id = add_file(owner, count, kid)
            own.append(timed_ms(lambda: index_sync.link(writer, kid, file_id)))  # the writer's own write
            other.append(timed_ms(lambda: index_sync.catch_up(reader, [kid])))
        rows.append((f"catch-up p50, other host, {count} new chunks (ms)", statistics.median(other)))
        rows.append(("  the writer's own index write (link) p50 (ms)", statistics.median(own)))
    return rows


def cold_start(kid: str, base: str) -> list[tuple[str, float]]:
    chunks = Chunk.select().join(KnowledgeFile, on=(KnowledgeFile.file == Chunk.file)).where(
        KnowledgeFile.knowledge == kid).count()
    fresh = VectorStore(os.path.join(base, f"cold-{chunks}"))
    query = unit_rows(1)[0]
    first = timed_ms(lambda: index_sync.search(fresh, [kid], query, 10))
    return [(f"first query, empty DATA_DIR, {chunks:,} chunks (ms)", first),
            ("  of which reading the chunk rows (ms)", timed_ms(lambda: collection_vectors(kid))),
            ("  second query (ms)", timed_ms(lambda: index_sync.search(fresh, [kid], query, 10)))]


def trigger_cost(owner: str) -> list[tuple[str, float]]:
    """Inserting 1,000 chunk rows of a file linked to a collection, with and without the log triggers."""
    kid = Knowledge.create(user=owner, name="trigger-bench").id
    with_triggers = statistics.median(timed_ms(lambda: add_file(owner, PER_FILE, kid)) for _ in range(5))
    saved = db.database.execute_sql("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                                    "AND name LIKE 'index_log_%'").fetchall()
    for name, _sql in saved:
        db.database.execute_sql(f"DROP TRIGGER {name}")
    without = statistics.median(timed_ms(lambda: add_file(owner, PER_FILE, kid)) for _ in range(5))
    for _name, sql in saved:
        db.database.execute_sql(sql)
    return [("insert 1,000 chunk rows, with log triggers (ms)", with_triggers),
            ("insert 1,000 chunk rows, without (ms)", without)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory() as base:
        db.init_database(os.path.join(base, "webui.db"))
        owner = User.create(email="bench@example.com", name="Bench", password_hash="-").id
        kid = Knowledge.create(user=owner, name="bench").id
        host_a, host_b = VectorStore(os.path.join(base, "a")), VectorStore(os.path.join(base, "b"))
        results, have = [], 0
        for size in sizes:
            fill(owner, kid, size - have)
            results += cold_start(kid, base)
            if size == sizes[0]:
                index_sync.search(host_a, [kid], unit_rows(1)[0], 10)
                index_sync.search(host_b, [kid], unit_rows(1)[0], 10)
                results += query_costs(host_b, kid, args.queries)
                results += catch_up_costs(owner, kid, host_b, host_a)
            have = Chunk.select().count()
        results += trigger_cost(owner)
        width = max(len(label) for label, _ in results)
        print(f"{'measure':<{width}}  value")
        for label, value in results:
            print(f"{label:<{width}}  {value:8.3f}")


if __name__ == "__main__":
    main()
