"""Segments of the vector store: writes add files, deletes are tombstones, merges, pickup, kills mid-write."""
from __future__ import annotations

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

from webui_api.rag import vectors as vector_module
from webui_api.rag import index_types
from webui_api.rag.index_types import build_index
from webui_api.rag.vectors import VectorStore


def unit_rows(count: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def no_rows(_name):
    return np.zeros(0, np.int64), np.zeros((0, 8), np.float32)


@pytest.fixture
def index_dir(tmp_path):
    return str(tmp_path / "idx")


@pytest.fixture
def store(index_dir):
    return VectorStore(index_dir, loader=no_rows, auto_merge=False)


def files_of(store, name) -> set[str]:
    return set(os.listdir(store.path(name)))


def top_ids(store, name, query, k=5) -> list[int]:
    return [hit[0] for hit in store.search([name], query, k)]


def test_an_add_writes_one_new_segment_and_leaves_the_others_untouched(store):
    rows = unit_rows(6)
    store.add("kb", [1, 2, 3], rows[:3])
    before = {entry: os.stat(os.path.join(store.path("kb"), entry)).st_ino for entry in files_of(store, "kb")}
    store.add("kb", [4, 5, 6], rows[3:])
    after = files_of(store, "kb")
    assert set(before) < after and len(after - set(before)) == 1
    assert all(os.stat(os.path.join(store.path("kb"), e)).st_ino == ino for e, ino in before.items())
    assert store.segment_counts("kb") == (2, 0) and store.ids("kb") == {1, 2, 3, 4, 5, 6}


def test_a_remove_is_a_tombstone_that_hides_the_vector(store):
    rows = unit_rows(3)
    store.add("kb", [1, 2, 3], rows)
    store.remove("kb", [2, 99])  # 99 was never there: the tombstone records only what it hides
    assert store.segment_counts("kb") == (1, 1)
    assert store.ids("kb") == {1, 3} and store.count("kb") == 2
    assert 2 not in top_ids(store, "kb", rows[1]) and top_ids(store, "kb", rows[2])[0] == 3
    store.remove("kb", [2])  # already hidden: no new file
    assert store.segment_counts("kb") == (1, 1)


def test_an_id_added_again_after_its_removal_is_visible_again(store):
    rows = unit_rows(2)
    store.add("kb", [1, 2], rows)
    store.remove("kb", [1])
    store.add("kb", [1], rows[:1])
    assert store.ids("kb") == {1, 2} and store.count("kb") == 2
    assert top_ids(store, "kb", rows[0])[0] == 1


def test_replacing_vectors_is_one_write_and_never_duplicates(store):
    rows = unit_rows(4)
    store.add("kb", [1, 2], rows[:2])
    store.add("kb", [3, 4], rows[2:], replacing=[1, 2])
    store.add("kb", [3, 4], rows[2:])  # the same ids again
    assert store.ids("kb") == {3, 4} and store.count("kb") == 2
    assert len(store.search(["kb"], rows[2], 10)) == 2


def test_compact_merges_every_segment_and_drops_deleted_vectors(store):
    rows = unit_rows(40)
    for start in range(0, 40, 10):
        store.add("kb", range(start, start + 10), rows[start:start + 10])
    store.remove("kb", [3, 17, 25])
    queries = [rows[i] for i in (0, 12, 39)]
    before = [top_ids(store, "kb", q) for q in queries]
    assert store.segment_counts("kb") == (4, 1)
    assert store.compact("kb") and store.segment_counts("kb") == (1, 0)
    assert [top_ids(store, "kb", q) for q in queries] == before
    assert store.ids("kb") == set(range(40)) - {3, 17, 25} and store.count("kb") == 37
    assert len(files_of(store, "kb")) == 1 and not store.compact("kb")


def test_merging_small_segments_keeps_the_big_one_and_tombstone_counts(store):
    rows = unit_rows(120)
    store.add("kb", range(100), rows[:100])
    store.remove("kb", [5])
    for start in range(100, 120, 5):
        store.add("kb", range(start, start + 5), rows[start:start + 5])
    big = next(e for e in files_of(store, "kb") if e.startswith("seg-0-"))
    assert store.segment_counts("kb") == (5, 1) and store._merge("kb", full=False)
    assert big in files_of(store, "kb") and store.segment_counts("kb") == (2, 1)
    assert store.count("kb") == 119 == len(store.ids("kb")) and 5 not in store.ids("kb")


def test_too_many_segments_are_merged_in_the_background(index_dir):
    store = VectorStore(index_dir, loader=no_rows)
    rows = unit_rows(vector_module.MAX_SEGMENTS + 4)
    for i in range(len(rows)):
        store.add("kb", [i], rows[i:i + 1])
    deadline = time.monotonic() + 10
    while store.segment_counts("kb")[0] > vector_module.MAX_SEGMENTS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.segment_counts("kb")[0] <= vector_module.MAX_SEGMENTS
    assert store.ids("kb") == set(range(len(rows)))


def test_another_worker_picks_up_only_what_is_new(index_dir):
    writer, reader = (VectorStore(index_dir, loader=no_rows, auto_merge=False) for _ in range(2))
    rows = unit_rows(4)
    writer.add("kb", [1, 2], rows[:2])
    assert top_ids(reader, "kb", rows[0])[0] == 1
    loaded = dict(reader._cache["kb"].segments)
    writer.add("kb", [3, 4], rows[2:])
    writer.remove("kb", [1])
    assert top_ids(reader, "kb", rows[3])[0] == 4 and 1 not in top_ids(reader, "kb", rows[0])
    assert all(reader._cache["kb"].segments[file] is segment for file, segment in loaded.items())  # kept
    assert len(reader._cache["kb"].segments) == len(loaded) + 1
    writer.compact("kb")  # a merge elsewhere: the reader swaps the files and forgets the old ones
    assert reader.ids("kb") == {2, 3, 4} and len(reader._cache["kb"].segments) == 1


def test_a_worker_keeps_at_most_its_bound_of_collections_loaded(index_dir):
    """Every upload is a collection: a worker that met thousands of them kept every one loaded (issue 11,
    item 14). Now the least recently used leave, and come back from disk when asked for again."""
    store = VectorStore(index_dir, loader=no_rows, auto_merge=False, cached_collections=5)
    rows = unit_rows(60)
    for i in range(60):
        store.add(f"file-{i}", [i], rows[i:i + 1])
        assert top_ids(store, f"file-{i}", rows[i])[0] == i
        assert len(store.cached_names()) <= 5
    assert store.cached_names() == [f"file-{i}" for i in range(55, 60)]
    assert top_ids(store, "file-0", rows[0])[0] == 0  # evicted long ago: loaded again from its files
    assert store.cached_names()[-1] == "file-0" and len(store.cached_names()) == 5
    store.drop("file-0")
    assert "file-0" not in store.cached_names()


def test_ivf_above_the_threshold_keeps_recall_against_exact_search(monkeypatch):
    monkeypatch.setattr(index_types, "IVF_MIN_ROWS", 2_000)
    rng = np.random.default_rng(3)
    centres = unit_rows(50, 32, seed=4)
    rows = centres[rng.integers(0, 50, 6_000)] + rng.normal(scale=0.15, size=(6_000, 32)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    index = build_index(np.arange(6_000, dtype=np.int64), rows)
    ivf = index_types.faiss.extract_index_ivf(index)
    assert ivf.nprobe < ivf.nlist
    queries = rows[rng.choice(6_000, 200, replace=False)] + rng.normal(scale=0.05, size=(200, 32))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    exact = np.argsort(-(queries @ rows.T), axis=1)[:, :10]
    _, found = index.search(queries, 10)
    recall = np.mean([len(set(e) & set(f)) / 10 for e, f in zip(exact.tolist(), found.tolist())])
    assert recall >= 0.95


# ---------------------------------------------------------------- kill -9 at a controlled point

def _killed_at(index_dir: str, point: str) -> None:
    """In a child process: patch the store so the process SIGKILLs itself at `point`, then write."""
    store = VectorStore(index_dir, loader=no_rows, auto_merge=False)
    die = lambda *_a, **_k: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    if point == "segment before rename":
        vector_module.os.replace = die
        store.add("kb", [10, 11], unit_rows(2, seed=9))
    elif point == "merge before rename":
        vector_module.os.replace = die
        store.compact("kb")
    elif point == "merge before sweep":
        store._sweep = die
        store.compact("kb")


def kill_child_at(index_dir: str, point: str) -> None:
    child = multiprocessing.get_context("fork").Process(target=_killed_at, args=(index_dir, point))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL


@pytest.mark.parametrize("point", ["segment before rename", "merge before rename", "merge before sweep"])
def test_a_kill_mid_write_or_mid_merge_leaves_the_last_committed_state(store, index_dir, point):
    rows = unit_rows(6)
    store.add("kb", [1, 2, 3], rows[:3])
    store.add("kb", [4, 5, 6], rows[3:])
    store.remove("kb", [2])
    expected = {1, 3, 4, 5, 6}
    kill_child_at(index_dir, point)
    fresh = VectorStore(index_dir, loader=no_rows, auto_merge=False)
    assert fresh.ids("kb") == expected and fresh.count("kb") == len(expected)
    assert [h[0] for h in fresh.search(["kb"], rows[4], 1)] == [5]
    assert VectorStore(index_dir).rows_on_disk() == {"kb": len(expected)}  # the start-up check agrees
    _, leftovers = fresh.index_files()
    fresh.add("kb", [7], unit_rows(1, seed=5))  # the next write sweeps what the dead process left
    layout = vector_module.layout_of(os.listdir(fresh.path("kb")))
    assert not layout.temps and not layout.leftovers
    assert fresh.ids("kb") == expected | {7} and (leftovers or point != "segment before rename")
    assert fresh.compact("kb") and fresh.ids("kb") == expected | {7}


@pytest.mark.parametrize("rows_total", [3_000, 60_000])
def test_many_deletions_are_skipped_inside_faiss_for_flat_and_ivf(store, monkeypatch, rows_total):
    monkeypatch.setattr(index_types, "IVF_MIN_ROWS", 50_000)  # 60k: IVF-SQ8 re-ranked exactly
    rows = unit_rows(rows_total, dim=16, seed=2)
    store.add("kb", range(rows_total), rows)
    gone = list(range(0, rows_total, 2))  # far more than the over-fetch margin
    store.remove("kb", gone)
    for i in (1, 7, 501):
        hits = store.search(["kb"], rows[i], 10)
        assert len(hits) == 10 and not {h[0] for h in hits} & set(gone) and hits[0][0] == i
