"""Retrieval quality through the API: Cranfield's development split, recall@10 / nDCG@10 / MRR@10 per mode.

Needs a real embedding server (../shared/tools/README.md), e.g. all-MiniLM-L6-v2 on 127.0.0.1:18765:

    PY=$(../shared/tools/setup-embed.sh); $PY ../shared/tools/embed_server.py --port 18765 &
    .venv/bin/python bench/rag_quality.py [--data-dir /tmp/cran] [--reranker-url URL] [--weights 0.3,0.5]

Starts one gunicorn worker of the app (its embeddings from the embed server), uploads the 1,398 non-empty
documents (title + abstract) into one knowledge collection through the API (a reused --data-dir skips this),
then sends every development query to POST /api/v1/retrieval/query/collection in each mode: vector
(`hybrid: false`), BM25 (`hybrid: true, hybrid_bm25_weight: 1`), hybrid at each weight, hybrid + rerank when
--reranker-url (or --fake-reranker) is given. "RRF (client)" is plain reciprocal-rank fusion (k = 60) of the
vector and BM25 runs above, computed here: the baseline the hybrid mode has to beat. Chunks map to their
document; a document counts once, at its best chunk. Time per query is the HTTP round trip (query embedding
included); the modes take turns query by query, so a busy machine slows them alike.

Measured 2026-11-29 (2 busy cores, embed_server.py --threads 2, CHUNK_SIZE 1000 → 2,226 chunks):
    vector 0.430 / 0.379 / 0.556 (recall@10 / nDCG@10 / MRR@10), p50 109 ms; BM25 0.384 / 0.366 / 0.543;
    client RRF 0.440 / 0.397 / 0.545; hybrid (score fusion, w=0.2, default) 0.483 / 0.420 / 0.565, p50 124 ms.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
_PLACES = (ROOT.parent / "shared/data/cranfield", Path("/work/shared/data/cranfield"))  # beside main or a worktree
CRANFIELD = next((p for p in _PLACES if p.is_dir()), _PLACES[0])
ADMIN = ("bench@example.com", "correct horse battery staple")
CUTOFF = 10


# ---------------------------------------------------------------- the collection

def documents(path: Path) -> dict[str, str]:
    """Cranfield doc id → title + abstract; the empty documents (471, 995) are left out."""
    docs = {}
    for record in re.split(r"^\.I ", path.read_text(), flags=re.M)[1:]:
        ident, _, rest = record.partition("\n")
        fields = dict(re.findall(r"^\.([TABW])\n(.*?)(?=^\.[TABW]\n|\Z)", rest, flags=re.M | re.S))
        text = " ".join((fields.get("T", "") + "\n" + fields.get("W", "")).split())
        if text.strip(" ."):
            docs[ident.strip()] = text
    return docs


def queries(path: Path) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in path.read_text().splitlines() if line.strip())


def judgements(path: Path) -> dict[str, dict[str, int]]:
    """query → {doc id: gain}: Cleverdon's codes 1–4 give gain 5 − code; −1 is not relevant."""
    out: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines():
        qid, doc, code = line.split("\t")
        if 1 <= int(code) <= 4:
            out.setdefault(qid, {})[doc] = 5 - int(code)
    return out


# ---------------------------------------------------------------- metrics

def metrics(ranked: list[str], gains: dict[str, int]) -> tuple[float, float, float]:
    """(recall@10, nDCG@10 with 2^gain − 1, MRR@10) of one ranked document list."""
    top = ranked[:CUTOFF]
    recall = sum(doc in gains for doc in top) / len(gains) if gains else 0.0
    dcg = sum((2 ** gains.get(doc, 0) - 1) / math.log2(i + 2) for i, doc in enumerate(top))
    ideal = sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(sorted(gains.values(), reverse=True)[:CUTOFF]))
    mrr = next((1 / (i + 1) for i, doc in enumerate(top) if doc in gains), 0.0)
    return recall, (dcg / ideal if ideal else 0.0), mrr


def rrf(*runs: list[str], k: int = 60) -> list[str]:
    scores: dict[str, float] = {}
    for run in runs:
        for rank, doc in enumerate(run, start=1):
            scores[doc] = scores.get(doc, 0.0) + 1 / (k + rank)
    return sorted(scores, key=lambda doc: -scores[doc])


# ---------------------------------------------------------------- the app

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(args, data_dir: str, rerank: bool = False) -> tuple[subprocess.Popen, str]:
    """One gunicorn worker on `data_dir`; `rerank`: with the reranker (it then reranks every hybrid query)."""
    port = free_port()
    env = dict(os.environ, DATA_DIR=data_dir, HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY="1",
               GUNICORN_THREADS="8", ENABLE_OLLAMA_API="false", OPENAI_API_BASE_URLS="",
               RAG_EMBEDDING_ENGINE="openai", RAG_OPENAI_API_BASE_URL=args.embed_url, RAG_OPENAI_API_KEY="x",
               RAG_EMBEDDING_MODEL=args.model, WEBUI_ADMIN_EMAIL=ADMIN[0], WEBUI_ADMIN_PASSWORD=ADMIN[1],
               RAG_HYBRID_FUSION=args.fusion, PYTHONPATH=str(ROOT))
    if args.local_model:  # the in-process engine instead of the embedding server
        env.update(RAG_EMBEDDING_ENGINE="local", RAG_EMBEDDING_MODEL=args.local_model)
    if args.chunk_size:
        env.update(CHUNK_SIZE=str(args.chunk_size))
    if rerank:
        env.update(RAG_RERANKING_ENGINE="external", RAG_EXTERNAL_RERANKER_URL=args.reranker_url,
                   RAG_RERANKING_MODEL=args.reranker_model, RAG_EXTERNAL_RERANKER_API_KEY=args.reranker_key)
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen([str(gunicorn), "-c", "gunicorn.conf.py"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(data_dir, "app.log"), "a"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/health", timeout=1).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit(f"the app did not start; see {data_dir}/app.log")


def sign_in(url: str) -> dict:
    token = requests.post(url + "/api/v1/auths/signin", json={"email": ADMIN[0], "password": ADMIN[1]},
                          timeout=30).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def load_collection(session, url: str, docs: dict[str, str], data_dir: str) -> str:
    """The knowledge id holding every document (uploaded once per data dir)."""
    marker = Path(data_dir) / "bench-collection.json"
    if marker.exists():
        return json.loads(marker.read_text())["id"]
    kb = session.post(url + "/api/v1/knowledge/create", json={"name": "cranfield"}, timeout=30).json()["id"]

    def put(item):
        doc, text = item
        file = session.post(url + "/api/v1/files/", files={"file": (f"cran-{doc}.txt", text.encode(), "text/plain")},
                            timeout=600)
        file.raise_for_status()
        session.post(url + f"/api/v1/knowledge/{kb}/file/add", json={"file_id": file.json()["id"]},
                     timeout=600).raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, docs.items()))
    print(f"uploaded {len(docs)} documents in {time.perf_counter() - started:.0f} s", flush=True)
    marker.write_text(json.dumps({"id": kb}))
    return kb


def ask(session, url: str, kb: str, text: str, k: int, params: dict) -> tuple[list[str], float]:
    """Ranked doc ids (a document once, at its best chunk) for one query, and the round-trip time."""
    started = time.perf_counter()
    response = session.post(url + "/api/v1/retrieval/query/collection",
                            json={"collection_names": [kb], "query": text, "k": k, **params}, timeout=120)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    names = [meta["name"] for meta in response.json()["metadatas"][0]]
    return list(dict.fromkeys(re.sub(r"^cran-|\.txt$", "", name) for name in names)), elapsed


def run_all(session, kb: str, texts: dict[str, str], k: int, modes: list[tuple[str, str, dict]]) -> dict:
    """label → (query id → ranked doc ids, times). Modes take turns query by query, so a busy machine
    slows them alike and the time ratios stay fair."""
    out = {label: ({}, []) for label, _, _ in modes}
    for qid, text in texts.items():
        for label, url, params in modes:
            ranked, elapsed = ask(session, url, kb, text, k, params)
            out[label][0][qid] = ranked
            out[label][1].append(elapsed)
    return out


def report(label: str, ranked: dict, gains: dict, times: list[float] | None) -> None:
    scores = [metrics(ranked[q], gains.get(q, {})) for q in ranked]
    recall, ndcg, mrr = (statistics.fmean(s[i] for s in scores) for i in range(3))
    timing = f"{statistics.median(times) * 1000:8.1f}  {statistics.fmean(times) * 1000:8.1f}" if times else \
        f"{'—':>8}  {'—':>8}"
    print(f"| {label:<28} | {recall:9.3f} | {ndcg:7.3f} | {mrr:6.3f} | {timing} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embed-url", default="http://127.0.0.1:18765/v1")
    parser.add_argument("--model", default="all-minilm")
    parser.add_argument("--local-model", help="embed in the app instead (RAG_EMBEDDING_ENGINE=local): a model "
                                              "directory or Hugging Face repo id")
    parser.add_argument("--data", default=str(CRANFIELD), help="the Cranfield directory")
    parser.add_argument("--data-dir", help="the app's DATA_DIR (reused: no second upload)")
    parser.add_argument("--weights", default="0.5", help="hybrid_bm25_weight values, comma-separated")
    parser.add_argument("--fusion", default="score", help="RAG_HYBRID_FUSION of the app: score | rrf")
    parser.add_argument("-k", type=int, default=30, help="chunks asked for (documents are cut at 10)")
    parser.add_argument("--chunk-size", type=int, help="CHUNK_SIZE of the app (default: its own, 1000)")
    parser.add_argument("--reranker-url", help="RAG_EXTERNAL_RERANKER_URL (…/v1/rerank) for hybrid + rerank")
    parser.add_argument("--reranker-model", default="")
    parser.add_argument("--reranker-key", default="")
    parser.add_argument("--fake-reranker", action="store_true",
                        help="rerank with tests/fake_backend.py's term-overlap /v1/rerank (not a model: it only "
                             "exercises the path and its cost)")
    args = parser.parse_args()
    fake = None
    if args.fake_reranker:
        sys.path.insert(0, str(ROOT))
        from tests.fake_backend import FakeBackend
        fake = FakeBackend()
        args.reranker_url, args.reranker_key = fake.openai_url + "/rerank", fake.openai_key
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="rag-quality-")
    os.makedirs(data_dir, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the app below on a kill too
    apps = [start_app(args, data_dir)]
    try:
        if args.reranker_url:
            apps.append(start_app(args, data_dir, rerank=True))
        measure(args, data_dir, apps[0][1], apps[-1][1] if args.reranker_url else None)
    finally:
        for proc, _ in apps:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        if fake is not None:
            fake.stop()


def measure(args, data_dir: str, url: str, rerank_url: str | None) -> None:
    data = Path(args.data)
    docs, texts, gains = documents(data / "cran.all.1400"), queries(data / "queries-dev.tsv"), \
        judgements(data / "qrels-dev.tsv")
    session = requests.Session()
    session.headers.update(sign_in(url))
    kb = load_collection(session, url, docs, data_dir)
    modes = [("vector", url, {"hybrid": False}),
             ("BM25 (FTS5, porter)", url, {"hybrid": True, "hybrid_bm25_weight": 1.0})]
    for weight in (float(w) for w in args.weights.split(",")):
        modes.append((f"hybrid {args.fusion} w={weight:g}", url, {"hybrid": True, "hybrid_bm25_weight": weight}))
        if rerank_url:
            modes.append((f"hybrid {args.fusion} w={weight:g} + rerank", rerank_url,
                          {"hybrid": True, "hybrid_bm25_weight": weight, "k_reranker": CUTOFF}))
    run_all(session, kb, dict(list(texts.items())[:5]), args.k, modes)  # warm up
    print(f"\n{len(texts)} development queries, {len(docs)} documents, k={args.k} chunks, "
          f"fusion={args.fusion}, CHUNK_SIZE={args.chunk_size or 'default'}, DATA_DIR={data_dir}\n")
    print(f"| {'mode':<28} | recall@10 | nDCG@10 | MRR@10 | p50 (ms)  mean (ms) |")
    print(f"|{'-' * 30}|-----------|---------|--------|--------------------|")
    results = run_all(session, kb, texts, args.k, modes)
    for label, (ranked, times) in results.items():
        report(label, ranked, gains, times)
    vector, bm25 = results["vector"][0], results["BM25 (FTS5, porter)"][0]
    report("RRF k=60 of the two (client)", {q: rrf(vector[q], bm25[q]) for q in texts}, gains, None)


if __name__ == "__main__":
    main()
