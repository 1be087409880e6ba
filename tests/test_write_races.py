"""Writes that must not interleave keep their guarantee on either engine (SQLite's BEGIN IMMEDIATE,
PostgreSQL's advisory write lock): racing requests on separate connections, checked in the database."""
from concurrent.futures import ThreadPoolExecutor
import threading

import pytest

from webui_api.db import User

from .conftest import PASSWORD

RACERS = 12
ROUNDS = 15


@pytest.fixture
def settings_overrides():
    return {"ENABLE_SIGNUP": "true", "DEFAULT_USER_ROLE": "user"}


def _race(app, bodies):
    """POST every body to /signup at once, each from its own thread (its own database connection)."""
    start = threading.Barrier(len(bodies))

    def one(body):
        client = app.test_client()
        start.wait()
        return client.post("/api/v1/auths/signup", json=body).status_code

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def test_racing_first_signups_make_exactly_one_admin(app):
    for round_ in range(ROUNDS):  # the window is narrow: repeat it from an empty table
        User.delete().execute()
        bodies = [{"name": f"U{i}", "email": f"u{round_}-{i}@example.com", "password": PASSWORD}
                  for i in range(RACERS)]
        assert _race(app, bodies) == [200] * RACERS
        roles = sorted(role for (role,) in User.select(User.role).tuples())
        assert roles == ["admin"] + ["user"] * (RACERS - 1), f"round {round_}"


def test_racing_signups_with_one_email_create_one_account(app):
    bodies = [{"name": f"U{i}", "email": "same@example.com", "password": PASSWORD} for i in range(RACERS)]
    statuses = _race(app, bodies)
    assert sorted(statuses) == [200] + [400] * (RACERS - 1)
    assert User.select().where(User.email == "same@example.com").count() == 1
