"""Which FAISS index a segment is, by its size, and how one is searched: exact below IVF_MIN_ROWS, IVF-SQ8
re-ranked on the exact vectors above it, with nprobe chosen by measured recall."""
from __future__ import annotations

from typing import Callable

import faiss
import numpy as np

# Segments at least this large are IVF (measured in bench/rag_scale.py: flat at 100k chunks costs ~40 ms
# a query on one thread; IVF-SQ8 re-ranked 1.3 ms at recall@10 0.987).
IVF_MIN_ROWS = 50_000
REFINE_FACTOR = 4  # IVF-SQ8 candidates per wanted hit that are re-ranked exactly
RECALL_TARGET = 0.98  # nprobe is raised until stand-in queries reach this recall@10 against exact search


def build_index(ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    """Exact inner-product search below IVF_MIN_ROWS, IVF above it with nprobe tuned to RECALL_TARGET."""
    dim = vectors.shape[1]
    if len(ids) < IVF_MIN_ROWS:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    else:  # candidates from IVF-SQ8, re-ranked on the exact vectors (which merges also read back)
        refine = faiss.IndexRefineFlat(_trained_ivf(vectors))
        refine.k_factor = REFINE_FACTOR
        index = faiss.IndexIDMap(refine)
    if len(ids):
        index.add_with_ids(vectors, ids)
    if len(ids) >= IVF_MIN_ROWS:
        _tune_nprobe(index, ids, vectors)
    return index


def _trained_ivf(vectors: np.ndarray) -> faiss.Index:
    nlist = int(np.sqrt(len(vectors)))  # ~1,000 lists at 1M: k-means on 40k samples trains in seconds
    # 8-bit scalar quantisation: a quarter of the bytes to scan and to keep in the page cache; at 1M chunks
    # it halved query time against IVF-Flat at the same nprobe for 0.01 of recall (bench/rag_scale.py).
    ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], nlist,
                                        faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(len(vectors), min(len(vectors), nlist * 40), replace=False)
    ivf.cp.max_points_per_centroid = 40
    ivf.train(vectors[np.sort(sample)])
    return ivf


def _tune_nprobe(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray, queries: int = 100,
                 k: int = 10) -> None:
    """Raise nprobe until recall@k against exact search reaches RECALL_TARGET on stored vectors with as much
    noise as signal: short queries sit that far from the chunks they find (measured in bench/rag_scale.py,
    where closer stand-ins under-tuned nprobe 4x). A hit counts when its score reaches the k-th exact score,
    so ties (common with bag-of-words vectors) are not misses."""
    rng = np.random.default_rng(1)
    sample = vectors[rng.choice(len(vectors), min(queries, len(vectors)), replace=False)]
    sample = sample + rng.normal(scale=1.0 / np.sqrt(vectors.shape[1]), size=sample.shape).astype(np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    kth = -np.partition(-(sample @ vectors.T), k - 1, axis=1)[:, k - 1]
    order = np.argsort(ids)
    ivf = faiss.extract_index_ivf(index)
    nprobe = 1
    while nprobe < ivf.nlist:
        ivf.nprobe = nprobe
        _, found = index.search(sample, k)
        rows = order[np.searchsorted(ids, found.clip(min=ids.min()), sorter=order)]
        exact = np.einsum("qd,qkd->qk", sample, vectors[rows])
        if np.mean((exact >= kth[:, None] - 1e-5) & (found >= 0)) >= RECALL_TARGET:
            break
        nprobe = max(nprobe + 1, int(nprobe * 1.5))  # finer than doubling: overshoots less
    ivf.nprobe = min(nprobe, ivf.nlist)


def search_segment(index: faiss.Index, query: np.ndarray, k: int, hidden: np.ndarray,
                   positions: Callable[[np.ndarray], np.ndarray]) -> list[tuple[int, float]]:
    """Top `k` (id, score) of one segment, leaving out `hidden` (sorted ids the segment holds; `positions`
    maps them to FAISS's internal positions)."""
    if not index.ntotal:
        return []
    if len(hidden) > FILTER_AFTER:  # many deletions since the last merge: FAISS skips them itself
        scores, ids = index.search(query, min(k, index.ntotal), params=_skipping(index, hidden, positions))
    else:
        scores, ids = index.search(query, min(k + len(hidden), index.ntotal))
    return [(chunk_id, score) for chunk_id, score in zip(ids[0].tolist(), scores[0].tolist())
            if chunk_id >= 0 and not (len(hidden) and _in_sorted(hidden, chunk_id))]


FILTER_AFTER = 256  # hidden ids per segment past which over-fetching and dropping costs more than a selector


def _skipping(index: faiss.Index, hidden: np.ndarray, positions) -> faiss.SearchParameters:
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexRefine):  # IndexIDMap does not translate nested selectors: use positions
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(positions(hidden)))
        base = faiss.SearchParametersIVF(sel=selector, nprobe=faiss.extract_index_ivf(inner).nprobe)
        params = faiss.IndexRefineSearchParameters(base_index_params=base, k_factor=inner.k_factor)
        params.keep_alive = (selector, base)
        return params
    selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(hidden))
    if isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=selector, nprobe=inner.nprobe)
    else:
        params = faiss.SearchParameters(sel=selector)
    params.keep_alive = selector  # the SWIG object must outlive the search
    return params


def _in_sorted(sorted_ids: np.ndarray, value: int) -> bool:
    where = int(np.searchsorted(sorted_ids, value))
    return where < len(sorted_ids) and int(sorted_ids[where]) == value


def index_rows(index: faiss.Index, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) stored in a segment: exact ones (flat, or a refine index's own copy); a bare IVF's lists
    are read from a private copy of the file (readers share the cached index; reconstructing needs a
    direct map)."""
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexIVF):
        inner = faiss.downcast_index(faiss.read_index(path).index)
        inner.make_direct_map()
    return ids, inner.reconstruct_n(0, inner.ntotal)
