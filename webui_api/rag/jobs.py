"""Background processing of files, owned by the services object, and recovery of interrupted ones (at
start-up and periodically: a file whose lease expired, its host gone, is taken over here)."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import peewee as pw

from .. import db
from ..config import INGEST_WORKERS
from ..db import File, ProcessingLease
from ..errors import ApiError
from . import lease
from .pipeline import UNSETTLED, finish_unsettled
from .storage import sweep_incoming

log = logging.getLogger("webui_api.rag")


class Jobs:
    """A small thread pool for files processed in the background; created lazily, one per services object."""

    def __init__(self, workers: int = INGEST_WORKERS):
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._guard = threading.Lock()
        self._pending: set[Future] = set()
        self._queued: dict[str, Future] = {}  # file id -> its job not yet started: a sweep never queues twice
        self._sweeper: threading.Thread | None = None
        self._stopping = threading.Event()

    def submit(self, ext, file_id: str) -> Future:
        """Process in the background; the status is polled through the file routes."""
        with self._guard:
            if file_id in self._queued:
                return self._queued[file_id]
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="rag-ingest")
            future = self._executor.submit(self._run, ext, file_id)
            self._pending.add(future)
            self._queued[file_id] = future
        future.add_done_callback(self._forget)
        return future

    def _run(self, ext, file_id: str) -> None:
        with self._guard:
            self._queued.pop(file_id, None)
        _background(ext, file_id)

    def _forget(self, future: Future) -> None:
        with self._guard:
            self._pending.discard(future)

    def start_sweeping(self, ext) -> None:
        """Every half lease period, queue the files whose lease expired (their host died): one thread."""
        with self._guard:
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep_forever, args=(ext,), daemon=True,
                                                 name="rag-lease-sweep")
                self._sweeper.start()

    def _sweep_forever(self, ext) -> None:
        bound = db.database.database  # tests rebind the database per app: a stale sweeper just stops
        while not self._stopping.wait(ext.settings.INGEST_LEASE_SECONDS / 2) and db.database.database == bound:
            try:
                with db.database.connection_context():
                    take_over_abandoned(ext, ext.settings.INGEST_LEASE_SECONDS)  # fresh uploads are their own
            except Exception:  # a database hiccup must not end the sweeping
                log.exception("looking for abandoned files failed")

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait for the background work submitted here to finish (tests, shutdown); True when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._guard:
                futures = list(self._pending)
            if not futures:
                return True
            for future in futures:
                try:
                    future.result(timeout=max(0.0, deadline - time.monotonic()))
                except Exception:  # already logged by _background
                    pass
        with self._guard:
            return not self._pending

    def close(self, timeout: float = 30.0) -> None:
        """Stop sweeping, let running work finish (up to `timeout`), then stop the threads."""
        self._stopping.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout)
        self.drain(timeout)
        with self._guard:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)


def _background(ext, file_id: str) -> None:
    # A pooled thread outlives requests: use a fresh connection per job, never one left from earlier.
    db.close_thread_connection()
    try:
        finish_unsettled(ext, file_id)  # skipped when another process holds it or it is settled already
    except ApiError as exc:
        log.info("background processing of file %s failed: %s", file_id, exc.detail)
    except Exception:
        log.exception("background processing of file %s failed", file_id)
    finally:
        db.close_thread_connection()


def abandoned_files(grace: float = 0.0) -> list[tuple[str, str]]:
    """(id, status) of files left pending/processing that no live process holds: an expired lease, one whose
    owner died on this host, no lease while processing, or no lease for `grace` seconds since a pending row
    last changed (a fresh upload's request claims it a moment after committing it: taking it first made the
    two race and embed it twice). An indexed read of the unsettled files and their leases."""
    query = (File.select(File.id, File.status, File.updated_at, ProcessingLease.owner, ProcessingLease.expires_at)
             .join(ProcessingLease, pw.JOIN.LEFT_OUTER, on=(ProcessingLease.file == File.id))
             .where(File.status.in_(UNSETTLED)).tuples())
    now = time.time()
    return [(file_id, status) for file_id, status, changed, owner, expires_at in query
            if not lease.is_live(owner, expires_at, now)
            and (owner is not None or status != "pending" or changed <= now - grace)]


def take_over_abandoned(ext, grace: float = 0.0) -> int:
    """Queue every abandoned file for processing here (unleased pending ones after `grace` seconds); returns
    how many were queued."""
    found = abandoned_files(grace)
    for file_id, _status in found:
        ext.jobs.submit(ext, file_id)
    if found:
        log.info("queued %d unsettled file(s) that no live process holds (here: %s)", len(found), lease.PLACE)
    return len(found)


def recover_interrupted(ext) -> int:
    """At start-up: resume files a crashed process (on any host) left pending/processing, sweep abandoned
    temp uploads, and keep looking every half lease period. Returns how many files were queued."""
    sweep_incoming(ext.settings)
    try:
        queued = take_over_abandoned(ext)
    except Exception:  # a database problem must not stop the app from starting
        log.exception("could not look for interrupted uploads")
        queued = 0
    ext.jobs.start_sweeping(ext)
    return queued
