"""Processing leases in the database: one claimant wins, a dead host's lease is taken over, a live one is not."""
from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

import pytest

from webui_api import locks
from webui_api import db
from webui_api.db import File, ProcessingLease, User
from webui_api.rag import files, jobs, lease, pipeline

from .rag_helpers import _drain_background, rag_settings  # noqa: F401

ELSEWHERE = "other-host~0badb00t~4026531836/4242/cafe0001"  # an owner on another host: never judged dead here


@pytest.fixture
def settings_overrides(fake_backend):
    return rag_settings(fake_backend, INGEST_LEASE_SECONDS="2")  # the sweep runs every second


@pytest.fixture
def ext(app):
    return app.extensions["webui_api"]


@pytest.fixture
def unsettled(ext, user):
    """A file left 'processing', as a crashed worker leaves it (no lease row yet)."""
    owner = User.get_by_id(user["id"])
    file, _ = files.upload(ext, owner, io.BytesIO(b"The heron stands in the shallow reed bed."), "heron.txt",
                           "text/plain", None, process=False)
    pipeline.set_status(file.id, "processing")
    return file


def leave_lease(file_id: str, owner: str, expires_in: float) -> None:
    ProcessingLease.insert(file=file_id, owner=owner, expires_at=time.time() + expires_in).execute()


def holder(file_id: str) -> str | None:
    row = ProcessingLease.get_or_none(ProcessingLease.file == file_id)
    return row.owner if row else None


def dead_local_owner() -> str:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    return f"{lease.PLACE}/{child.stdout.strip()}/deadbeef"


def race(file_id: str, claimants: int = 8) -> list[str]:
    """Claimants in threads (each its own database connection) start together; returns the winners."""
    gate, winners = threading.Barrier(claimants), []

    def attempt(owner: str) -> None:
        gate.wait()
        try:
            if lease.claim(file_id, owner, 30):
                winners.append(owner)
        finally:
            db.database.close()  # a thread that ends holding a pooled connection keeps its slot
    threads = [threading.Thread(target=attempt, args=(lease.new_owner(),)) for _ in range(claimants)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return winners


def test_of_concurrent_claimants_exactly_one_wins(unsettled):
    winners = race(unsettled.id)  # nobody holds it: the inserts race
    assert len(winners) == 1 and holder(unsettled.id) == winners[0]
    assert race(unsettled.id) == []  # a live lease excludes everyone else
    ProcessingLease.update(expires_at=time.time() - 1).execute()
    again = race(unsettled.id)  # expired: the conditional updates race
    assert len(again) == 1 and again != winners and holder(unsettled.id) == again[0]


def test_an_expired_lease_is_taken_over_and_a_live_one_is_not(unsettled):
    leave_lease(unsettled.id, ELSEWHERE, expires_in=30)
    assert not lease.claim(unsettled.id, lease.new_owner(), 30)
    assert holder(unsettled.id) == ELSEWHERE
    ProcessingLease.update(expires_at=time.time() - 1).execute()
    mine = lease.new_owner()
    assert lease.claim(unsettled.id, mine, 30) and holder(unsettled.id) == mine
    assert lease.renew(unsettled.id, mine, 30) and not lease.renew(unsettled.id, ELSEWHERE, 30)
    lease.release(unsettled.id, mine)
    assert holder(unsettled.id) is None


def test_a_lease_of_a_dead_process_on_this_host_is_void_before_it_expires(unsettled):
    leave_lease(unsettled.id, dead_local_owner(), expires_in=3600)  # kill -9 of a worker: the row stays
    assert jobs.abandoned_files() == [(unsettled.id, "processing")]
    assert lease.claim(unsettled.id, lease.new_owner(), 30)


def test_a_claim_on_a_deleted_file_fails_and_deleting_a_file_drops_its_lease(ext, unsettled, user):
    with lease.held(ext.settings, unsettled.id) as acquired:
        assert acquired and holder(unsettled.id)
        files.delete(ext, User.get_by_id(user["id"]), unsettled.id)
        assert ProcessingLease.select().count() == 0
    assert not lease.claim(unsettled.id, lease.new_owner(), 30)
    with lease.held(ext.settings, unsettled.id) as acquired:  # blocking, yet no endless wait
        assert not acquired


def test_a_lease_is_renewed_while_its_holder_works(ext, unsettled):
    with lease.held(ext.settings, unsettled.id) as acquired:  # 2 s lease, renewed every 0.67 s
        assert acquired
        first = ProcessingLease.get_by_id(unsettled.id).expires_at
        time.sleep(3)  # longer than the lease itself
        assert ProcessingLease.get_by_id(unsettled.id).expires_at > first
        assert not lease.claim(unsettled.id, lease.new_owner(), 30)
    assert holder(unsettled.id) is None  # released at the end


def test_an_unleased_pending_file_counts_as_abandoned_only_after_a_lease_period(unsettled):
    """A fresh upload is committed before its request claims it: the sweep must leave it to that request.
    Processing starts only under a lease, so an unleased file left processing is abandoned at once."""
    assert jobs.abandoned_files(grace=60) == [(unsettled.id, "processing")]
    pipeline.set_status(unsettled.id, "pending")
    assert jobs.abandoned_files(grace=60) == []
    File.update(updated_at=int(time.time()) - 61).where(File.id == unsettled.id).execute()
    assert jobs.abandoned_files(grace=60) == [(unsettled.id, "pending")]
    pipeline.set_status(unsettled.id, "pending")
    assert jobs.abandoned_files() == [(unsettled.id, "pending")]  # `webui-api check` takes it at once


def test_start_up_recovery_leaves_a_file_a_live_process_holds(ext, unsettled):
    leave_lease(unsettled.id, ELSEWHERE, expires_in=3600)
    assert jobs.abandoned_files() == [] and jobs.recover_interrupted(ext) == 0
    assert ext.jobs.drain(10) and File.get_by_id(unsettled.id).status == "processing"


def test_the_sweep_resumes_a_file_whose_host_died(ext, unsettled):
    """A host died mid-file and never returns: its lease expires and this server's periodic sweep (not its
    start-up recovery, which ran before the file existed) takes the file over and finishes it."""
    leave_lease(unsettled.id, ELSEWHERE, expires_in=1)
    deadline = time.monotonic() + 30
    while holder(unsettled.id) is not None and time.monotonic() < deadline:  # released when it is done
        time.sleep(0.1)
    assert holder(unsettled.id) is None and File.get_by_id(unsettled.id).status == "completed"
    assert ext.vectors.ids(f"file-{unsettled.id}")


def test_a_zombie_owner_is_gone():
    """A killed worker nobody has reaped yet (a container's PID 1 may be slow to) still answers kill(0)."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and locks._zombie(child.pid) is False:
        time.sleep(0.01)
    try:
        assert lease.owner_gone(f"{lease.PLACE}/{child.pid}/x")  # exited, not yet reaped
    finally:
        child.wait()
