"""Database <-> index consistency report: vector and BM25 index drift, plus files nobody will ever finish."""
from __future__ import annotations

from . import lexical
from .index_sync import Drift, catch_up_cached, index_drift
from .jobs import abandoned_files as unheld_files


def find_drift(ext, progress=None) -> list[Drift]:
    """Every disagreement between the database and this host's index cache (once it caught up with what
    other hosts wrote, as its next query would), plus files nobody will ever finish."""
    catch_up_cached(ext.vectors)
    return index_drift(ext.vectors, progress) + lexical_drift() + abandoned_files(ext)


def lexical_drift() -> list[Drift]:
    """The BM25 index against the chunk rows it is built from."""
    return [] if lexical.is_consistent() else [Drift("BM25 index", "does not match the chunk rows")]


def abandoned_files(ext) -> list[Drift]:
    """Files left pending/processing that no live process holds (a crash, before anyone took them over)."""
    return [Drift(f"file {file_id}", f"left {status!r} and nobody is processing it")
            for file_id, status in unheld_files()]
