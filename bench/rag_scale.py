"""The RAG store at scale: collections of 10k, 100k and 1M chunks (384 dims) served by gunicorn (2 workers).

Builds each collection by inserting chunk rows (1,000 per file, vectors from the fake backend's hashed
bag-of-words embedding over a topical vocabulary) through the project's store modules, then indexes it with
index_sync.rebuild_all. Measures, interleaving the sizes round by round and reporting medians:
query p50/p99 through POST /api/v1/retrieval/query/collection, FAISS alone (one thread and OpenMP's
default), adding a 1,000-chunk file (store path; at 100k also through POST /knowledge/{id}/file/add),
removing one, gunicorn restart to the first successful query, PSS per worker and of the whole tree, index
bytes on disk and recall@10 against exact search. Prints a table and writes a PNG plot.

    .venv/bin/python bench/rag_scale.py [--sizes 10000,100000,1000000] [--data DIR] [--plot PNG]
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import fake_backend as fake  # noqa: E402
from tests.servers import BIN, free_port  # noqa: E402

DIM, PER_FILE, WORDS_PER_CHUNK, TOPICS = 384, 1000, 24, 400
MODEL = "nomic-embed-text"
ADMIN = {"email": "bench@example.com", "password": "bench-password"}
SYLLABLES = ("ka lo mi ne ru sa te vo zu pe ri go ba di fu ha ji ko lu ma no pi qu re si to vu wa xe "
             "yo").split()


# ---------------------------------------------------------------- a corpus the fake backend would embed

def vocabulary(size: int = 6000) -> list[str]:
    rng = np.random.default_rng(42)
    words = {"".join(rng.choice(SYLLABLES, rng.integers(2, 4))) for _ in range(size * 2)}
    return sorted(words)[:size]


VOCAB = vocabulary()
WORD_DIM = np.array([int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "big") % DIM
                     for w in VOCAB])
TOPIC_WORDS = np.random.default_rng(7).integers(0, len(VOCAB), (TOPICS, 60))


def chunk_words(rng, count: int, topic: int) -> np.ndarray:
    """(count, WORDS_PER_CHUNK) word indexes: two thirds from the file's topic, the rest from anywhere."""
    topical = TOPIC_WORDS[topic][rng.integers(0, 60, (count, WORDS_PER_CHUNK))]
    anywhere = rng.integers(0, len(VOCAB), (count, WORDS_PER_CHUNK))
    return np.where(rng.random((count, WORDS_PER_CHUNK)) < 0.67, topical, anywhere)


def embed_words(words: np.ndarray) -> np.ndarray:
    """fake_backend.embed_text, vectorised: counts per hashed dimension, L2-normalised."""
    vectors = np.zeros((len(words), DIM), np.float32)
    np.add.at(vectors, (np.repeat(np.arange(len(words)), words.shape[1]), WORD_DIM[words].ravel()), 1.0)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def queries(count: int, seed: int = 99) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(VOCAB[i] for i in chunk_words(rng, 1, int(rng.integers(0, TOPICS)))[0][:6])
            for _ in range(count)]


# ---------------------------------------------------------------- building a collection through the store

def bind(data_dir: str):
    from webui_api import db
    from webui_api.config import Settings
    from webui_api.services import build_services

    os.environ.update(server_env(data_dir, "http://127.0.0.1:9"))
    settings = Settings.from_env()
    if not db.database.is_closed():
        db.database.close()
    db.init_database(settings.DATABASE_URL)
    return build_services(settings)


def insert_file(owner_id: str, rng, topic: int, name: str) -> str:
    from webui_api import db
    from webui_api.db import File
    from webui_api.rag.pipeline import _INSERT_CHUNK

    words = chunk_words(rng, PER_FILE, topic)
    vectors = embed_words(words)
    file = File.create(user=owner_id, filename=name, storage_name=name, file_hash=db.new_id(),
                       status="completed", content=None)
    rows = [(file.id, i, " ".join(VOCAB[w] for w in words[i]), 0, 1, vectors[i].tobytes(), DIM, MODEL)
            for i in range(PER_FILE)]
    with db.write_transaction():
        db.database.cursor().executemany(_INSERT_CHUNK, rows)
    return file.id


def build(data_dir: str, chunks: int) -> str:
    """A knowledge collection of `chunks` chunk rows; returns its id (reused when already built)."""
    from webui_api import db
    from webui_api.auth import accounts
    from webui_api.db import Knowledge, KnowledgeFile, User
    from webui_api.rag import index_sync

    services = bind(data_dir)
    kb = Knowledge.get_or_none(Knowledge.name == f"bench-{chunks}")
    if kb is not None:
        return kb.id
    owner = User.get_or_none(User.email == ADMIN["email"]) or accounts.add_user(
        services.settings, "Bench", ADMIN["email"], ADMIN["password"], "admin")
    kb = Knowledge.create(user=owner.id, name=f"bench-{chunks}")
    rng = np.random.default_rng(chunks)
    started = time.perf_counter()
    for i in range(chunks // PER_FILE):
        file_id = insert_file(owner.id, rng, i % TOPICS, f"doc-{i}.txt")
        with db.write_transaction():
            KnowledgeFile.create(knowledge=kb.id, file=file_id)
    inserted = time.perf_counter() - started
    import faiss
    faiss.omp_set_num_threads(2)  # building is offline: use both cores
    index_sync.rebuild_all(services.vectors)
    indexed = time.perf_counter() - started - inserted
    print(f"built {chunks} chunks: rows {inserted:.0f} s, indexes {indexed:.0f} s", flush=True)
    return kb.id


# ---------------------------------------------------------------- servers

def server_env(data_dir: str, backend_url: str) -> dict:
    return {"DATA_DIR": data_dir, "OLLAMA_BASE_URLS": backend_url, "OPENAI_API_BASE_URLS": "",
            "RAG_EMBEDDING_MODEL": MODEL, "PASSWORD_HASH_COST": "1024", "WEB_CONCURRENCY": "2",
            "GUNICORN_THREADS": "32", "LOG_LEVEL": "warning"}


class Server:
    def __init__(self, data_dir: str, backend_url: str, kb_id: str):
        self.data_dir, self.kb_id, self.port = data_dir, kb_id, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **server_env(data_dir, backend_url), "HOST": "127.0.0.1",
                    "PORT": str(self.port)}
        self.proc = None
        self.headers = None
        self.session = requests.Session()

    def start(self) -> float:
        """Seconds from exec to the first successful collection query."""
        started = time.perf_counter()
        log = open(os.path.join(self.data_dir, "gunicorn.log"), "ab")
        self.proc = subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"], cwd=ROOT,
                                     env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            try:
                if self.headers is None:
                    signin = requests.post(self.url + "/api/v1/auths/signin", json=ADMIN, timeout=30)
                    token = signin.json()["token"]
                    self.headers = {"Authorization": f"Bearer {token}"}
                if self.query("first query").status_code == 200:
                    return time.perf_counter() - started
            except (requests.ConnectionError, KeyError, ValueError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {self.data_dir}/gunicorn.log")
            time.sleep(0.02)

    def query(self, text: str) -> requests.Response:
        return self.session.post(self.url + "/api/v1/retrieval/query/collection", headers=self.headers,
                                 timeout=60, json={"collection_names": [self.kb_id], "query": text, "k": 10})

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)
        self.session = requests.Session()

    def pss_mb(self) -> tuple[float, float]:
        """(mean PSS per worker, PSS of master + workers) in MB."""
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        pss = {pid: _pss_kb(pid) / 1024 for pid in [self.proc.pid] + workers}
        return statistics.mean(pss[p] for p in workers), sum(pss.values())


def _pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("Pss:"))


# ---------------------------------------------------------------- measurements in-process

def faiss_alone(data_dir: str, kb_id: str, texts: list[str], threads: int) -> list[float]:
    import faiss
    services = bind(data_dir)
    faiss.omp_set_num_threads(threads)
    vectors = [np.asarray(fake.embed_text(t, DIM), np.float32) for t in texts]
    services.vectors.search([kb_id], vectors[0], 10)  # load (memory-map) first
    times = []
    for vector in vectors:
        started = time.perf_counter()
        services.vectors.search([kb_id], vector, 10)
        times.append((time.perf_counter() - started) * 1000)
    faiss.omp_set_num_threads(1)
    return times


def recall_at_10(data_dir: str, kb_id: str, texts: list[str]) -> float:
    from webui_api.rag.collection_rows import collection_vectors
    services = bind(data_dir)
    ids, matrix = collection_vectors(kb_id)
    found = []
    for text in texts:
        vector = np.asarray(fake.embed_text(text, DIM), np.float32)
        scores = matrix @ vector
        top = np.argpartition(-scores, 10)[:10]
        exact_scores = np.sort(scores[top])[::-1]
        got = services.vectors.search([kb_id], vector, 10)
        # ties (equal scores) make several top-10 sets exact: compare by score, not by id
        found.append(sum(1 for _id, score, _c in got if score >= exact_scores[-1] - 1e-6) / 10)
    del matrix
    return float(np.mean(found))


def add_and_remove(data_dir: str, kb_id: str, seed: int) -> tuple[float, float]:
    """(seconds to add a 1,000-chunk file to the collection, seconds to take it out again), store path."""
    from webui_api import db
    from webui_api.db import KnowledgeFile, User
    from webui_api.rag import index_sync
    services = bind(data_dir)
    owner = User.get(User.email == ADMIN["email"])
    started = time.perf_counter()
    file_id = insert_file(owner.id, np.random.default_rng(seed), seed % TOPICS, f"added-{seed}.txt")
    with db.write_transaction():
        KnowledgeFile.create(knowledge=kb_id, file=file_id)
    index_sync.link(services.vectors, kb_id, file_id)
    added = time.perf_counter() - started
    started = time.perf_counter()
    with db.write_transaction():
        KnowledgeFile.delete().where(KnowledgeFile.knowledge == kb_id,
                                     KnowledgeFile.file == file_id).execute()
    index_sync.unlink(services.vectors, kb_id)
    return added, time.perf_counter() - started


def add_through_http(server: Server, seed: int) -> float:
    from webui_api.db import User
    bind(server.data_dir)
    owner = User.get(User.email == ADMIN["email"])
    file_id = insert_file(owner.id, np.random.default_rng(seed), seed % TOPICS, f"http-{seed}.txt")
    started = time.perf_counter()
    response = server.session.post(f"{server.url}/api/v1/knowledge/{server.kb_id}/file/add",
                                   headers=server.headers, json={"file_id": file_id}, timeout=120)
    response.raise_for_status()
    return time.perf_counter() - started


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _s, files in os.walk(path) for f in files)


# ---------------------------------------------------------------- report

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def plot(rows: dict, path: str) -> None:
    """Query p50 and add time against collection size, log-log, drawn with Pillow."""
    from PIL import Image, ImageDraw
    width, height, pad = 720, 440, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    sizes = sorted(rows)
    series = {"query p50 (API), ms": ([rows[s]["query_p50"] for s in sizes], (200, 40, 40)),
              "add 1,000-chunk file, ms": ([rows[s]["add"] * 1000 for s in sizes], (40, 80, 200)),
              "FAISS alone (1 thread), ms": ([rows[s]["faiss_1"] for s in sizes], (40, 150, 60))}
    x_lo, x_hi = np.log10(min(sizes)) - 0.2, np.log10(max(sizes)) + 0.2
    y_lo, y_hi = -1.0, 4.0
    to_x = lambda v: pad + (np.log10(v) - x_lo) / (x_hi - x_lo) * (width - 2 * pad)  # noqa: E731
    to_y = lambda v: (height - pad  # noqa: E731
                      - (np.log10(max(v, 0.1)) - y_lo) / (y_hi - y_lo) * (height - 2 * pad))
    for exp in range(int(y_lo), int(y_hi) + 1):
        y = to_y(10 ** exp)
        draw.line([(pad, y), (width - pad, y)], fill=(225, 225, 225))
        draw.text((8, y - 6), f"{10 ** exp:g} ms", fill="black")
    for size in sizes:
        x = to_x(size)
        draw.line([(x, pad), (x, height - pad)], fill=(225, 225, 225))
        draw.text((x - 18, height - pad + 8), f"{size:,}", fill="black")
    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    for row, (label, (values, colour)) in enumerate(series.items()):
        points = [(to_x(s), to_y(v)) for s, v in zip(sizes, values)]
        draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        draw.line([(pad + 10, 18 + 16 * row), (pad + 40, 18 + 16 * row)], fill=colour, width=3)
        draw.text((pad + 48, 12 + 16 * row), label, fill="black")
    draw.text((width // 2 - 90, height - 24), "chunks in the collection (log scale)", fill="black")
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--data", default=None, help="keep the built collections here (reused next run)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=40, help="queries per size per round")
    parser.add_argument("--plot", default=str(ROOT / "bench" / "rag_scale.png"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",")]
    base = args.data or tempfile.mkdtemp(prefix="rag-scale-")
    backend = fake.FakeBackend()
    backend.embed_dims.update({MODEL: DIM, f"{MODEL}:latest": DIM})
    dirs = {n: os.path.join(base, f"c{n}") for n in sizes}
    kbs = {n: build(dirs[n], n) for n in sizes}
    texts = queries(args.n)
    results = {n: {"query": [], "restart": [], "faiss_1": [], "faiss_omp": [], "add": [], "remove": [],
                   "http_add": []} for n in sizes}
    servers = {n: Server(dirs[n], backend.url, kbs[n]) for n in sizes}
    try:
        for round_ in range(args.rounds):  # interleaved: each round visits every size, noise hits all alike
            for n in sizes:
                res, server = results[n], servers[n]
                server.stop()
                res["restart"].append(server.start())
                for text in texts:
                    started = time.perf_counter()
                    assert server.query(text).status_code == 200
                    res["query"].append((time.perf_counter() - started) * 1000)
                res["pss"] = server.pss_mb()
                res["faiss_1"] += faiss_alone(dirs[n], kbs[n], texts, 1)
                res["faiss_omp"] += faiss_alone(dirs[n], kbs[n], texts, os.cpu_count() or 2)
                added, removed = add_and_remove(dirs[n], kbs[n], seed=10_000 + round_)
                res["add"].append(added)
                res["remove"].append(removed)
                if n == 100_000:
                    res["http_add"].append(add_through_http(server, seed=20_000 + round_))
                so_far = statistics.median(res["query"])
                print(f"round {round_ + 1} size {n}: query p50 so far {so_far:.1f} ms", flush=True)
        for n in sizes:
            results[n]["recall"] = recall_at_10(dirs[n], kbs[n], queries(100, seed=5))
            results[n]["bytes"] = disk_bytes(os.path.join(dirs[n], "vector_db", kbs[n]))
    finally:
        for server in servers.values():
            server.stop()
        backend.stop()
    rows = {n: {"query_p50": statistics.median(r["query"]), "add": statistics.median(r["add"]),
                "faiss_1": statistics.median(r["faiss_1"])} for n, r in results.items()}
    print_table(results, args)
    plot(rows, args.plot)
    print(f"plot: {args.plot}\ndata: {base}")


def print_table(results: dict, args) -> None:
    sizes = sorted(results)
    def med(key, scale=1.0, fmt="{:.1f}"):
        return [fmt.format(statistics.median(results[n][key]) * scale) if results[n][key] else "-"
                for n in sizes]
    lines = [
        ("query p50 / p99 via API, ms", [f"{statistics.median(results[n]['query']):.1f} / "
                                         f"{percentile(results[n]['query'], 0.99):.1f}" for n in sizes]),
        ("FAISS alone p50, 1 thread / OpenMP default, ms",
         [f"{statistics.median(results[n]['faiss_1']):.2f} / {statistics.median(results[n]['faiss_omp']):.2f}"
          for n in sizes]),
        ("add a 1,000-chunk file (store), ms", med("add", 1000, "{:.0f}")),
        ("add a 1,000-chunk file (HTTP file/add), ms", med("http_add", 1000, "{:.0f}")),
        ("remove that file (store), ms", med("remove", 1000, "{:.0f}")),
        ("gunicorn start to first query, s", med("restart", 1, "{:.2f}")),
        ("PSS per worker / gunicorn tree, MB", [f"{results[n]['pss'][0]:.0f} / {results[n]['pss'][1]:.0f}"
                                                for n in sizes]),
        ("index bytes on disk, MB", [f"{results[n]['bytes'] / 1e6:.0f}" for n in sizes]),
        ("recall@10 vs exact", [f"{results[n]['recall']:.3f}" for n in sizes]),
    ]
    print(f"\n{args.rounds} interleaved rounds x {args.n} queries per size; medians. 2 workers x 32 threads, "
          f"{DIM} dims, fake backend embedding the query.\n")
    print("| chunks in one collection | " + " | ".join(f"{n:,}" for n in sizes) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    for label, values in lines:
        print(f"| {label} | " + " | ".join(values) + " |")


if __name__ == "__main__":
    main()
