"""What one host pays to cache a collection: FAISS index bytes and build time by size (384 dims, one thread).

The CPU part of filling a cold cache (a host with an empty DATA_DIR builds each collection's index from the
vectors it reads from the database); vectors are bench/rag_scale.py's topical stand-ins.

    .venv/bin/python bench/index_build.py [--sizes 40000,100000,1000000]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rag_scale import DIM, PER_FILE, TOPICS, chunk_words, embed_words  # noqa: E402
from webui_api.rag import index_types  # noqa: E402


def stand_in_vectors(count: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    files = [chunk_words(rng, PER_FILE, int(rng.integers(0, TOPICS))) for _ in range(count // PER_FILE)]
    return embed_words(np.concatenate(files)).astype(np.float32)


def measure(count: int) -> tuple[str, float, int]:
    """(index kind, seconds to build, bytes on disk) for one segment of `count` vectors."""
    vectors = stand_in_vectors(count)
    started = time.perf_counter()
    index = index_types.build_index(np.arange(count, dtype=np.int64), vectors)
    seconds = time.perf_counter() - started
    kind = "flat" if count < index_types.IVF_MIN_ROWS else "IVF-SQ8 + exact copy"
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "segment.faiss")
        faiss.write_index(index, path)
        return kind, seconds, os.path.getsize(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="40000,100000,1000000")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    print(f"| chunks | index | build, 1 thread | bytes on disk | bytes per chunk ({DIM} dims) |\n|---|---|---|---|---|")
    for count in (int(size) for size in args.sizes.split(",")):
        kind, seconds, size = measure(count)
        print(f"| {count:,} | {kind} | {seconds:.1f} s | {size / 1e6:,.0f} MB | {size / count:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
