"""Who processes a file: a lease row in the database, so exactly one process on any host works on it."""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import peewee as pw

from .. import db, locks
from ..db import File, ProcessingLease

log = logging.getLogger("webui_api.rag")

CLAIM_POLL_SECONDS = 0.2  # a blocking claim retries this often while another process holds the lease


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()[:8]
    except OSError:
        return "-"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return "-"


# This kernel boot and pid namespace: within it, a lease owner's pid tells whether the owner still runs.
PLACE = f"{socket.gethostname()}~{_read('/proc/sys/kernel/random/boot_id')}~{_pid_namespace()}"


def new_owner() -> str:
    """A claimant's name: place/pid/random (unique per claim, so two threads of one process never share)."""
    return f"{PLACE}/{os.getpid()}/{secrets.token_hex(4)}"


def owner_gone(owner: str) -> bool:
    """True when `owner` ran in this boot and pid namespace and its process is dead: its lease is void at
    once (a restarted worker or server need not wait for the expiry). Other hosts' owners are never judged."""
    place, _, rest = owner.partition("/")
    pid = rest.partition("/")[0]
    if place != PLACE or not pid.isdigit():
        return False
    return not locks.alive(int(pid))


def is_live(owner: str | None, expires_at: float | None, now: float | None = None) -> bool:
    """Whether a lease (owner, expiry) still excludes others; no lease at all is not live."""
    if owner is None:
        return False
    return expires_at >= (time.time() if now is None else now) and not owner_gone(owner)


def claim(file_id: str, owner: str, seconds: float) -> bool:
    """Take the file's lease for `seconds` if nobody live holds it; one conditional write, so exactly one of
    several claimants (threads, workers, hosts) wins. False when held, or when the file no longer exists."""
    now = time.time()
    current = ProcessingLease.get_or_none(ProcessingLease.file == file_id)
    if current is None:
        return _insert(file_id, owner, now + seconds)
    if is_live(current.owner, current.expires_at, now):
        return False
    unchanged = (ProcessingLease.file == file_id) & (ProcessingLease.owner == current.owner)
    if not owner_gone(current.owner):  # a live owner may renew meanwhile: only while it is still expired
        unchanged &= ProcessingLease.expires_at < now
    taken = ProcessingLease.update(owner=owner, expires_at=now + seconds).where(unchanged).execute()
    if taken:
        log.info("file %s: lease of %s (expired or dead) taken over by %s", file_id, current.owner, owner)
    return taken == 1


def _insert(file_id: str, owner: str, expires_at: float) -> bool:
    try:
        with db.database.atomic():  # a savepoint when nested: the failed insert must not abort the caller
            ProcessingLease.insert(file=file_id, owner=owner, expires_at=expires_at).execute()
        return True
    except pw.IntegrityError:  # another claimant inserted first, or the file is gone
        return False


def renew(file_id: str, owner: str, seconds: float) -> bool:
    """Push the expiry forward; False when the lease is no longer ours (taken over, or the file deleted)."""
    return (ProcessingLease.update(expires_at=time.time() + seconds)
            .where(ProcessingLease.file == file_id, ProcessingLease.owner == owner).execute()) == 1


def release(file_id: str, owner: str) -> None:
    ProcessingLease.delete().where(ProcessingLease.file == file_id, ProcessingLease.owner == owner).execute()


@contextmanager
def held(settings, file_id: str, blocking: bool = True) -> Iterator[bool]:
    """Hold the file's lease while the block runs, renewed in the background; yields False when not
    acquired (`blocking` off and someone else holds it, or the file does not exist)."""
    seconds = settings.INGEST_LEASE_SECONDS
    owner = new_owner()
    while not claim(file_id, owner, seconds):
        if not blocking or File.get_or_none(File.id == file_id) is None:
            yield False
            return
        time.sleep(CLAIM_POLL_SECONDS)
    renewer = _Renewer(file_id, owner, seconds)
    try:
        yield True
    finally:
        renewer.stop()
        release(file_id, owner)


class _Renewer:
    """A thread renewing one lease every third of its length until stopped."""

    def __init__(self, file_id: str, owner: str, seconds: float):
        self.file_id, self.owner, self.seconds = file_id, owner, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{file_id[:8]}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                with db.database.connection_context():  # its own connection, closed between renewals
                    if not renew(self.file_id, self.owner, self.seconds):
                        log.warning("file %s: lease of %s lost (file deleted or taken over)", self.file_id,
                                    self.owner)
                        return
            except Exception:  # the database may be briefly away: try again next period
                log.exception("file %s: renewing the processing lease failed", self.file_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
