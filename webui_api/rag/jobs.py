"""Background processing of files, owned by the services object, and start-up recovery of interrupted ones."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from .. import db
from ..config import INGEST_WORKERS
from ..db import File
from ..errors import ApiError
from .pipeline import UNSETTLED, file_lock, process_locked
from .storage import sweep_incoming

log = logging.getLogger("webui_api.rag")


class Jobs:
    """A small thread pool for files processed in the background; created lazily, one per services object."""

    def __init__(self, workers: int = INGEST_WORKERS):
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._guard = threading.Lock()
        self._pending: set[Future] = set()

    def submit(self, ext, file_id: str) -> Future:
        """Process in the background; the status is polled through the file routes."""
        with self._guard:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="rag-ingest")
            future = self._executor.submit(_background, ext, file_id)
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future) -> None:
        with self._guard:
            self._pending.discard(future)

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
        """Let running work finish (up to `timeout`), then stop the threads."""
        self.drain(timeout)
        with self._guard:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)


def _background(ext, file_id: str) -> None:
    # A pooled thread outlives requests: use a fresh connection per job, never one left from earlier.
    if not db.database.is_closed():
        db.database.close()
    try:
        with file_lock(ext.settings, file_id):
            file = File.get_or_none(File.id == file_id)
            if file is not None and file.status in UNSETTLED:  # nobody (e.g. recovery) finished it first
                process_locked(ext, file_id, None)
    except ApiError as exc:
        log.info("background processing of file %s failed: %s", file_id, exc.detail)
    except Exception:
        log.exception("background processing of file %s failed", file_id)
    finally:
        if not db.database.is_closed():
            db.database.close()


def recover_interrupted(ext) -> int:
    """At start-up: resume files a crashed worker left pending/processing (those nobody holds the lock
    of), and sweep abandoned temp uploads. Returns how many files were queued."""
    sweep_incoming(ext.settings)
    queued = 0
    try:
        stuck = [f.id for f in File.select(File.id).where(File.status.in_(UNSETTLED))]
    except Exception:  # a database problem must not stop the app from starting
        log.exception("could not look for interrupted uploads")
        return 0
    for file_id in stuck:
        with file_lock(ext.settings, file_id, blocking=False) as free:
            if not free:
                continue  # a live worker is processing it
        ext.jobs.submit(ext, file_id)
        queued += 1
    if queued:
        log.info("resuming %d interrupted file(s) in the background", queued)
    return queued
