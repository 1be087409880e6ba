"""Where uploaded bytes should live when several hosts serve one service: a shared directory or PostgreSQL.

    sudo .venv/bin/python bench/upload_store.py [--dir /mnt/nfs/bench] [--repeat-scale 1.0]

Starts a throwaway PostgreSQL 15 cluster (Debian binaries, run as the `postgres` user; loopback port, default
durability: fsync and synchronous_commit on) and compares, for 100 KB, 1 MB, 10 MB and 50 MB of random
(incompressible, like PDF/DOCX/images) bytes:

    directory   what UPLOAD_DIR does: temp file, write, fsync, rename, fsync the directory; read = open+read
    bytea       one INSERT of the bytes into a bytea column, commit; read = SELECT (psycopg2 materialises it)
    bytea 1MB   rows of 1 MB pieces in one transaction; read piece by piece (bounded memory per request)
    large obj   a large object written in 256 KB blocks plus a row with its oid, commit; read in blocks

It prints write and read throughput (MB/s, p50 over the repeats; reads right after writes, so from the page
cache / shared buffers for both), the database (or directory) growth and the WAL written per stored byte,
and the client's peak memory for one 50 MB write and read in a fresh process.

Measured (2 shared vCPUs, local virtio disk, PostgreSQL 15 on loopback, three runs; fsync-bound small writes
vary 12-86 MB/s between runs with the neighbours' load):

    size    store      | write MB/s  read MB/s | growth/byte WAL/byte
    100 KB  directory  |     12-86     ~4300   |    1.00       0
    100 KB  bytea      |     12-49      87-117 |    1.07      1.07
    1 MB    directory  |     92-130   ~10000   |    1.00       0
    1 MB    bytea      |     21-33      77-140 |    1.04      1.07
    1 MB    large obj  |     38-79     149-280 |    1.34      1.07
    10 MB   directory  |    625-851   3000-7500|    1.00       0
    10 MB   bytea      |     21-28      65-97  |    1.04      1.07
    10 MB   bytea 1MB  |     31-39     122-168 |    1.04      1.07
    10 MB   large obj  |     40-58      93-171 |    1.34      1.07
    50 MB   directory  |    665-1041   697-1421|    1.00       0
    50 MB   bytea      |     23-46      47-91  |    1.04      1.07
    50 MB   large obj  |     44-94      69-140 |    1.34      1.07

    client peak memory, one 50 MB upload / one 50 MB read (the read figures include the 50 MB returned, and
    for the piecewise stores the bench's join of the pieces: a streamed response holds one piece):
    directory +0 / +50 MB;  bytea +400 / +300 MB;  bytea 1MB +15 / +105 MB;  large obj +0 / +101 MB

psycopg2 interpolates parameters client-side: a bytea goes out as a hex literal (2x) inside the query text,
and comes back as hex text decoded into a second buffer; hence 8x and 6x the payload for one value.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

PG_BIN = "/usr/lib/postgresql/15/bin"
SIZES = [(100 * 1024, "100 KB", 30), (1024**2, "1 MB", 20), (10 * 1024**2, "10 MB", 8), (50 * 1024**2, "50 MB", 5)]
BLOCK = 256 * 1024
MB = 1024 * 1024


# ---------------------------------------------------------------- throwaway cluster

def as_postgres(*args: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_cluster() -> tuple[str, int]:
    root = tempfile.mkdtemp(prefix="bench-pg-")
    shutil.chown(root, "postgres", "postgres")
    data, port = os.path.join(root, "data"), free_port()
    as_postgres(f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    as_postgres(f"{PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(root, "log"), "-w", "start", "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c shared_buffers=128MB")
    return root, port


def stop_cluster(root: str) -> None:
    as_postgres(f"{PG_BIN}/pg_ctl", "-D", os.path.join(root, "data"), "-m", "fast", "-w", "stop")
    shutil.rmtree(root, ignore_errors=True)


def connect(port: int):
    import psycopg2

    return psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")


# ---------------------------------------------------------------- the three stores

class DirectoryStore:
    name = "directory"

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def write(self, data: bytes) -> str:
        key = uuid.uuid4().hex
        temp = os.path.join(self.folder, f".incoming-{key}")
        with open(temp, "wb") as out:
            for start in range(0, len(data), BLOCK):
                out.write(data[start:start + BLOCK])
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, os.path.join(self.folder, key))
        fd = os.open(self.folder, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        return key

    def read(self, key: str) -> bytes:
        with open(os.path.join(self.folder, key), "rb") as handle:
            return handle.read()

    def size(self) -> int:
        return sum(os.path.getsize(os.path.join(self.folder, n)) for n in os.listdir(self.folder))

    def wal(self) -> int:
        return 0


class ByteaStore:
    name = "bytea"

    def __init__(self, conn):
        self.conn = conn
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS upload_bytea (id text PRIMARY KEY, data bytea NOT NULL)")

    def write(self, data: bytes) -> str:
        import psycopg2

        key = uuid.uuid4().hex
        with self.conn, self.conn.cursor() as cur:
            cur.execute("INSERT INTO upload_bytea (id, data) VALUES (%s, %s)", (key, psycopg2.Binary(data)))
        return key

    def read(self, key: str) -> bytes:
        with self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT data FROM upload_bytea WHERE id = %s", (key,))
            return bytes(cur.fetchone()[0])

    def size(self) -> int:
        return database_size(self.conn)

    def wal(self) -> int:
        return wal_position(self.conn)


class ChunkedByteaStore:
    """bytea rows of 1 MB: what a database store would do to bound memory per request."""

    name = "bytea 1MB"
    PIECE = 1024 * 1024

    def __init__(self, conn):
        self.conn = conn
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS upload_piece (id text, seq int, data bytea NOT NULL, "
                        "PRIMARY KEY (id, seq))")

    def write(self, data: bytes) -> str:
        import psycopg2

        key = uuid.uuid4().hex
        with self.conn, self.conn.cursor() as cur:
            for seq, start in enumerate(range(0, len(data), self.PIECE)):
                cur.execute("INSERT INTO upload_piece (id, seq, data) VALUES (%s, %s, %s)",
                            (key, seq, psycopg2.Binary(data[start:start + self.PIECE])))
        return key

    def read(self, key: str) -> bytes:
        parts = []
        with self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM upload_piece WHERE id = %s", (key,))
            for seq in range(cur.fetchone()[0]):  # one piece in memory at a time, as a streamed response
                cur.execute("SELECT data FROM upload_piece WHERE id = %s AND seq = %s", (key, seq))
                parts.append(bytes(cur.fetchone()[0]))
        return b"".join(parts)

    def size(self) -> int:
        return database_size(self.conn)

    def wal(self) -> int:
        return wal_position(self.conn)


class LargeObjectStore:
    name = "large obj"

    def __init__(self, conn):
        self.conn = conn
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS upload_lo (id text PRIMARY KEY, data oid NOT NULL)")

    def write(self, data: bytes) -> str:
        key = uuid.uuid4().hex
        with self.conn:
            lob = self.conn.lobject(0, "wb")
            for start in range(0, len(data), BLOCK):
                lob.write(data[start:start + BLOCK])
            lob.close()
            with self.conn.cursor() as cur:
                cur.execute("INSERT INTO upload_lo (id, data) VALUES (%s, %s)", (key, lob.oid))
        return key

    def read(self, key: str) -> bytes:
        with self.conn:
            with self.conn.cursor() as cur:
                cur.execute("SELECT data FROM upload_lo WHERE id = %s", (key,))
                lob = self.conn.lobject(cur.fetchone()[0], "rb")
            parts = []
            while True:
                block = lob.read(BLOCK)
                if not block:
                    break
                parts.append(block)
            lob.close()
        return b"".join(parts)

    def size(self) -> int:
        return database_size(self.conn)

    def wal(self) -> int:
        return wal_position(self.conn)


def database_size(conn) -> int:
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CHECKPOINT")
        cur.execute("SELECT pg_database_size(current_database())")
        size = cur.fetchone()[0]
    conn.autocommit = False
    return size


def wal_position(conn) -> int:
    """Bytes of WAL written so far: what replicas and WAL archives (point-in-time backups) receive."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
        return int(cur.fetchone()[0])


# ---------------------------------------------------------------- measuring

def measure(store, size: int, repeats: int) -> dict:
    data = os.urandom(size)
    before, wal_before = store.size(), store.wal()
    writes, reads, keys = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        keys.append(store.write(data))
        writes.append(time.perf_counter() - started)
    for key in keys:
        started = time.perf_counter()
        assert store.read(key) == data
        reads.append(time.perf_counter() - started)
    stored = size * repeats
    return {"write": size / MB / statistics.median(writes), "read": size / MB / statistics.median(reads),
            "growth": (store.size() - before) / stored, "wal": (store.wal() - wal_before) / stored}


PEAK_PROBE = r"""
import os, sys
sys.path.insert(0, {bench!r})
import upload_store as bench
store = {make}
data = os.urandom(50 * 1024 * 1024) if {key!r} is None else None
base = bench.peak_rss()
result = store.write(data) if {key!r} is None else len(store.read({key!r}))
print(result, bench.peak_rss() - base)
"""


def peak_rss() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the forking parent)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def peak_memory(make: str, key: str | None = None) -> tuple[str, int]:
    """(result, growth of the peak resident memory) of one 50 MB write (key None) or read, in a fresh
    process: what one request holding a worker thread costs on top of the service."""
    code = PEAK_PROBE.format(bench=os.path.dirname(os.path.abspath(__file__)), make=make, key=key)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result, grown = out.stdout.split()
    return result, int(grown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="directory for the file store (e.g. an NFS mount); default a temp dir")
    parser.add_argument("--repeat-scale", type=float, default=1.0)
    args = parser.parse_args()
    folder = args.dir or tempfile.mkdtemp(prefix="bench-uploads-")
    root, port = start_cluster()
    try:
        stores = [DirectoryStore(folder), ByteaStore(connect(port)), ChunkedByteaStore(connect(port)),
                  LargeObjectStore(connect(port))]
        print(f"{'size':>7} {'store':>10} | {'write MB/s':>10} {'read MB/s':>10} | {'growth/byte':>11} "
              f"{'WAL/byte':>8}")
        for size, label, repeats in SIZES:
            for store in stores:
                row = measure(store, size, max(3, int(repeats * args.repeat_scale)))
                print(f"{label:>7} {store.name:>10} | {row['write']:>10.0f} {row['read']:>10.0f} | "
                      f"{row['growth']:>11.2f} {row['wal']:>8.2f}", flush=True)
        print("\nclient peak memory of one 50 MB upload, beyond the payload the caller already holds; and of "
              "one 50 MB read, including the 50 MB returned:")
        for name, make in (("directory", f"bench.DirectoryStore({folder!r})"),
                           ("bytea", f"bench.ByteaStore(bench.connect({port}))"),
                           ("bytea 1MB", f"bench.ChunkedByteaStore(bench.connect({port}))"),
                           ("large obj", f"bench.LargeObjectStore(bench.connect({port}))")):
            key, wrote = peak_memory(make)
            _, read = peak_memory(make, key)
            print(f"{name:>10}: write +{wrote / MB:.0f} MB, read +{read / MB:.0f} MB")
    finally:
        stop_cluster(root)
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
