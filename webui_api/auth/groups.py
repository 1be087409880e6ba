"""User groups: named sets of users that access grants can name; admins manage them, members see theirs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from peewee import fn

from .. import db
from ..db import Group, GroupMember, User
from ..errors import BadRequest, NotFound
from .policy import is_admin

MAX_USERS_PER_CALL = 1000  # user ids one request may add, remove or set; each is checked to exist
EDITABLE = ("name", "description", "permissions", "data", "meta")


@dataclass
class Shown:
    """A group with its member count (Open WebUI's GroupResponse)."""

    row: Group
    member_count: int

    def __getattr__(self, name):
        if name == "row":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.row, name)


def list_for(user: User) -> list[Shown]:
    """Every group for an admin; for anyone else the groups they belong to. Last changed first."""
    query = Group.select()
    if not is_admin(user):
        query = query.where(Group.id.in_(GroupMember.select(GroupMember.group).where(GroupMember.user == user.id)))
    rows = list(query.order_by(Group.updated_at.desc(), Group.id))
    counts = dict(GroupMember.select(GroupMember.group, fn.COUNT(GroupMember.user))
                  .where(GroupMember.group.in_([row.id for row in rows])).group_by(GroupMember.group).tuples())
    return [Shown(row, counts.get(row.id, 0)) for row in rows]


def get(group_id: str) -> Shown:
    return _shown(_find(group_id))


def create(admin: User, form: dict) -> Shown:
    with db.write_transaction():
        row = Group.create(id=db.new_id(), user_id=admin.id, **{key: form.get(key) for key in EDITABLE
                                                               if form.get(key) is not None})
    return _shown(row)


def update(group_id: str, form: dict) -> Shown:
    """Change name, description, permissions, data or meta; `user_ids`, when given, replaces the members."""
    with db.write_transaction():
        row = _find(group_id)
        changes = {key: form[key] for key in EDITABLE if form.get(key) is not None}
        Group.update(**changes, updated_at=db.now()).where(Group.id == row.id).execute()
        if form.get("user_ids") is not None:
            GroupMember.delete().where(GroupMember.group == row.id).execute()
            _add(row.id, form["user_ids"])
        return _shown(Group.get_by_id(row.id))


def add_users(group_id: str, user_ids: list[str]) -> Shown:
    with db.write_transaction():
        row = _find(group_id)
        _add(row.id, user_ids)
        return _touched(row)


def remove_users(group_id: str, user_ids: list[str]) -> Shown:
    """Take users out of the group: what they could read only through it is 404 for them on their next request."""
    with db.write_transaction():
        row = _find(group_id)
        GroupMember.delete().where(GroupMember.group == row.id, GroupMember.user.in_(_bounded(user_ids))).execute()
        return _touched(row)


def delete(group_id: str) -> bool:
    """Drop the group with its memberships and every grant naming it (a trigger, db.GRANT_CLEANUP_TRIGGERS)."""
    with db.write_transaction():
        Group.delete().where(Group.id == _find(group_id).id).execute()
    return True


def members(group_id: str) -> list[User]:
    row = _find(group_id)
    return list(User.select().join(GroupMember, on=(GroupMember.user == User.id))
                .where(GroupMember.group == row.id).order_by(User.name, User.id))


def _add(group_id: str, user_ids: list[str]) -> None:
    wanted = _bounded(user_ids)
    known = {user.id for user in User.select(User.id).where(User.id.in_(wanted))}
    unknown = sorted(wanted - known)
    if unknown:
        raise BadRequest(f"No such user: {', '.join(unknown[:10])}")
    present = {m.user_id for m in GroupMember.select(GroupMember.user).where(GroupMember.group == group_id)}
    new = [{"group": group_id, "user": user_id} for user_id in sorted(wanted - present)]
    if new:
        GroupMember.insert_many(new).execute()


def _bounded(user_ids: Iterable[str]) -> set[str]:
    wanted = set(user_ids)
    if len(wanted) > MAX_USERS_PER_CALL:
        raise BadRequest(f"At most {MAX_USERS_PER_CALL} user ids per request.")
    return wanted


def _touched(row: Group) -> Shown:
    Group.update(updated_at=db.now()).where(Group.id == row.id).execute()
    return _shown(Group.get_by_id(row.id))


def _find(group_id: str) -> Group:
    row = Group.get_or_none(Group.id == group_id)
    if row is None:
        raise NotFound()
    return row


def _shown(row: Group) -> Shown:
    return Shown(row, GroupMember.select().where(GroupMember.group == row.id).count())
