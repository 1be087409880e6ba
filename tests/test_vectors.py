"""The on-disk FAISS store: add/remove/search, idempotence, rebuilds from the source of truth, processes."""
from __future__ import annotations

import glob
import multiprocessing
import os
import shutil

import numpy as np
import pytest

from webui_api.errors import BadRequest, Conflict
from webui_api.rag.vectors import VectorStore


def unit(*rows):
    matrix = np.asarray(rows, dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def rows_loader(table):
    """A loader over an in-memory stand-in for the chunk table: {name: (ids, vectors)}."""
    calls = []

    def load(name):
        calls.append(name)
        ids, vectors = table.get(name, ([], np.zeros((0, 3), np.float32)))
        return np.asarray(ids, np.int64), vectors
    load.calls = calls
    return load


@pytest.fixture
def store(tmp_path):
    return VectorStore(str(tmp_path / "idx"), loader=rows_loader({}))


def test_add_search_ranks_by_cosine_and_reports_collection(store):
    store.add("file-a", [1, 2], unit([1, 0, 0], [0, 1, 0]))
    store.add("kb1", [3], unit([0.9, 0.1, 0]))
    hits = store.search(["file-a", "kb1"], unit([1, 0, 0])[0], 2)
    assert [h[0] for h in hits] == [1, 3]
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert hits[1][2] == "kb1"
    assert store.count("file-a") == 2 and store.dim("file-a") == 3


def test_add_is_idempotent_and_remove_deletes(store):
    store.add("kb", [1, 2], unit([1, 0, 0], [0, 1, 0]))
    store.add("kb", [1, 2], unit([1, 0, 0], [0, 1, 0]))
    assert store.count("kb") == 2
    store.remove("kb", [1])
    assert store.ids("kb") == {2}
    assert [h[0] for h in store.search(["kb"], unit([1, 0, 0])[0], 5)] == [2]


def test_chunk_in_two_collections_is_reported_once(store):
    store.add("file-a", [7], unit([1, 1, 0]))
    store.add("kb", [7], unit([1, 1, 0]))
    hits = store.search(["kb", "file-a"], unit([1, 1, 0])[0], 5)
    assert len(hits) == 1 and hits[0][2] == "kb"


def test_rebuild_and_drop(store):
    store.add("kb", [1, 2, 3], unit([1, 0, 0], [0, 1, 0], [0, 0, 1]))
    store.rebuild("kb", [9], unit([0, 0, 1]))
    assert store.ids("kb") == {9}
    store.drop("kb")
    assert not os.path.exists(store.path("kb"))
    assert store.search(["kb"], unit([0, 0, 1])[0], 3) == []


def test_dimension_change_is_a_conflict_not_a_crash(store):
    store.add("kb", [1], unit([1, 0, 0]))
    with pytest.raises(Conflict) as err:
        store.add("kb", [2], unit([1, 0, 0, 0]))
    assert "embedding model changed" in err.value.detail
    with pytest.raises(Conflict):
        store.search(["kb"], unit([1, 0, 0, 0])[0], 1)
    assert store.count("kb") == 1


def test_invalid_collection_name_is_rejected(store):
    with pytest.raises(BadRequest):
        store.search(["../etc/passwd"], unit([1, 0, 0])[0], 1)


def test_deleted_index_file_is_rebuilt_from_loader(tmp_path):
    vectors = unit([1, 0, 0], [0, 1, 0])
    loader = rows_loader({"kb": ([4, 5], vectors)})
    store = VectorStore(str(tmp_path), loader=loader)
    store.rebuild("kb", [4, 5], vectors)
    shutil.rmtree(store.path("kb"))
    fresh = VectorStore(str(tmp_path), loader=loader)
    assert [h[0] for h in fresh.search(["kb"], unit([0, 1, 0])[0], 1)] == [5]
    assert loader.calls == ["kb"] and os.path.exists(store.path("kb"))
    # the old instance notices the file changed under it and still answers
    assert [h[0] for h in store.search(["kb"], unit([1, 0, 0])[0], 1)] == [4]


def test_corrupt_index_file_is_rebuilt(tmp_path):
    vectors = unit([1, 0, 0])
    store = VectorStore(str(tmp_path), loader=rows_loader({"kb": ([4], vectors)}))
    store.rebuild("kb", [4], vectors)
    for segment in glob.glob(os.path.join(store.path("kb"), "seg-*")):
        with open(segment, "wb") as handle:
            handle.write(b"not a faiss index at all")
    other = VectorStore(str(tmp_path), loader=rows_loader({"kb": ([4], vectors)}))
    assert other.ids("kb") == {4}


def test_no_temp_files_left_behind(store):
    store.add("kb", [1], unit([1, 0, 0]))
    store.remove("kb", [1])
    leftovers = [n for n in os.listdir(store.index_dir) if ".tmp-" in n]
    assert leftovers == []


def _writer(index_dir, start):
    store = VectorStore(index_dir, loader=rows_loader({}))
    for i in range(start, start + 20):
        store.add("shared", [i], unit([1, i % 7 + 1, 0]))


def test_two_processes_write_one_collection_and_readers_reload(tmp_path):
    index_dir = str(tmp_path)
    reader = VectorStore(index_dir, loader=rows_loader({}))
    reader.add("shared", [0], unit([1, 0, 0]))
    assert reader.count("shared") == 1
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(index_dir, 1 + 100 * n)) for n in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    # the reader's cached copy is stale; it must notice the newer file (no lost writes under the lock)
    assert reader.count("shared") == 41
