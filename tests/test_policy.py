"""The access policy as a plain module over a real SQLite database: who reads and writes files, knowledge
collections and presets, the row filters that must agree with it, and how grants are read and shown."""
from __future__ import annotations

import uuid

import pytest

from webui_api import db
from webui_api.auth import policy
from webui_api.errors import BadRequest, Forbidden, NotFound

from . import engine

PUBLIC = {"principal_type": "user", "principal_id": "*", "permission": "read"}


@pytest.fixture
def database(request, tmp_path):
    db.init_database(engine.database_url(request, str(tmp_path)))
    yield db.database
    db.close_database()


@pytest.fixture
def people(database) -> dict[str, db.User]:
    return {role: db.User.create(email=f"{role}@example.com", name=role, role=role_of, password_hash="x")
            for role, role_of in (("owner", "user"), ("other", "user"), ("admin", "admin"),
                                  ("pending", "pending"))}


def make(kind: str, owner: db.User, public: bool):
    """One row of each resource type; a file is public through a public collection it belongs to."""
    if kind == "preset":
        return db.Preset.create(id=db.new_id(), user=owner.id, base_model_id="llama3.2", name="P",
                                is_public=public)
    if kind == "knowledge":
        return db.Knowledge.create(user=owner.id, name="K", is_public=public)
    file = db.File.create(user=owner.id, filename="a.txt", storage_name="s", file_hash="h")
    collection = db.Knowledge.create(user=owner.id, name="holder", is_public=public)
    db.KnowledgeFile.create(knowledge=collection.id, file=file.id)
    return file


def test_only_the_admin_role_is_admin(people):
    assert [name for name, user in people.items() if policy.is_admin(user)] == ["admin"]


@pytest.mark.parametrize("kind", ["file", "knowledge", "preset"])
@pytest.mark.parametrize("public", [False, True])
@pytest.mark.parametrize("who, reads_private, writes", [
    ("owner", True, True), ("admin", True, True), ("other", False, False), ("pending", False, False)])
def test_read_and_write(people, kind, public, who, reads_private, writes):
    row = make(kind, people["owner"], public)
    user = people[who]
    assert policy.can_read(user, row) is (reads_private or public)
    assert policy.can_write(user, row) is writes  # sharing is read-only, even when public


def test_a_file_in_a_private_collection_stays_private(people):
    file = make("file", people["owner"], public=False)
    db.Knowledge.create(user=people["other"].id, name="private too", is_public=False)
    assert not policy.is_public(file) and not policy.can_read(people["other"], file)
    public = db.Knowledge.create(user=people["owner"].id, name="shared", is_public=True)
    db.KnowledgeFile.create(knowledge=public.id, file=file.id)
    assert policy.is_public(file) and policy.can_read(people["other"], file)


def test_a_link_shows_a_file_only_while_the_collection_owner_may_write_it(people):
    """Un-sharing revokes: someone else's public collection holding the file (a link made before the
    add rule, or by an admin since demoted) does not make it public."""
    file = make("file", people["owner"], public=False)
    theirs = db.Knowledge.create(user=people["other"].id, name="theirs", is_public=True)
    db.KnowledgeFile.create(knowledge=theirs.id, file=file.id)
    assert not policy.is_public(file) and not policy.can_read(people["pending"], file)
    assert policy.readable_rows(people["pending"], db.File.select()).count() == 0
    db.User.update(role="admin").where(db.User.id == people["other"].id).execute()
    assert policy.is_public(file)  # an admin may write every file, so an admin's collection shows it
    with pytest.raises(Forbidden):  # readable through that collection, yet not theirs to link elsewhere
        policy.linkable_or_403(people["pending"], file)
    with pytest.raises(NotFound):
        policy.linkable_or_403(people["pending"], None)
    assert policy.linkable_or_403(people["owner"], file) is file


def share(row, *grants: tuple[str, str, str]) -> None:
    """Grant `row` (a collection or preset; a file: its holder collection) to named principals."""
    if isinstance(row, db.File):
        row = db.Knowledge.get_by_id(db.KnowledgeFile.get(db.KnowledgeFile.file == row.id).knowledge_id)
    policy.store_sharing(row, policy.Sharing(row.is_public, grants))


@pytest.mark.parametrize("kind", ["file", "knowledge", "preset"])
@pytest.mark.parametrize("permission", ["read", "write"])
def test_grants_to_a_user_or_their_group_and_their_revocation(people, kind, permission):
    row, other = make(kind, people["owner"], False), people["other"]
    group = db.Group.create(user_id=people["admin"].id, name="team")
    writes = permission == "write" and kind != "file"  # a file is changed by its owner only
    share(row, ("user", other.id, permission))
    assert (policy.can_read(other, row), policy.can_write(other, row)) == (True, writes)
    share(row, ("group", group.id, permission))
    assert not policy.can_read(other, row)
    db.GroupMember.create(group=group.id, user=other.id)
    assert (policy.can_read(other, row), policy.can_write(other, row)) == (True, writes)
    assert not policy.can_read(people["pending"], row)
    db.GroupMember.delete().execute()
    assert (policy.can_read(other, row), policy.can_write(other, row)) == (False, False)


def test_a_write_grant_lets_its_holder_show_their_own_files_until_revoked(people):
    collection = make("knowledge", people["owner"], False)
    theirs = db.File.create(user=people["other"].id, filename="b.txt", storage_name="s", file_hash="h")
    db.KnowledgeFile.create(knowledge=collection.id, file=theirs.id)
    assert not policy.can_read(people["owner"], theirs)  # linked without the right to
    share(collection, ("user", people["other"].id, "write"))
    assert policy.can_read(people["owner"], theirs)
    share(collection, ("user", people["other"].id, "read"))
    assert not policy.can_read(people["owner"], theirs)


def test_grants_go_with_the_object_and_the_principal(people):
    preset, group = make("preset", people["owner"], False), db.Group.create(user_id="x", name="team")
    share(preset, ("user", people["other"].id, "read"), ("group", group.id, "read"))
    db.Group.delete().execute()
    assert [(g.principal_type, g.principal_id) for g in db.AccessGrant.select()] == [("user", people["other"].id)]
    db.User.delete().where(db.User.id == people["other"].id).execute()
    share(preset, ("user", people["pending"].id, "read"))
    db.Preset.delete().execute()
    assert db.AccessGrant.select().count() == 0  # a new preset with the freed id starts private


@pytest.mark.parametrize("model", [db.File, db.Knowledge, db.Preset])
def test_row_filters_say_what_the_row_checks_say(people, model):
    kind = {db.File: "file", db.Knowledge: "knowledge", db.Preset: "preset"}[model]
    for owner in (people["owner"], people["other"]):
        for public in (False, True):
            make(kind, owner, public)
    group = db.Group.create(user_id=people["admin"].id, name="team")
    db.GroupMember.create(group=group.id, user=people["pending"].id)
    share(make(kind, people["owner"], False), ("user", people["other"].id, "read"))
    share(make(kind, people["owner"], False), ("group", group.id, "write"))
    for user in people.values():
        rows = list(model.select())
        readable = {r.id for r in policy.readable_rows(user, model.select())}
        writable = {r.id for r in policy.writable_rows(user, model.select())}
        assert readable == {r.id for r in rows if policy.can_read(user, r)}, user.name
        assert writable == {r.id for r in rows if policy.can_write(user, r)}, user.name
    assert 0 < policy.readable_rows(people["other"], model.select()).count() < model.select().count()


@pytest.mark.parametrize("grants, public", [
    (None, False),
    ([], False),
    ([PUBLIC], True),
    ([PUBLIC, PUBLIC], True),
    ([{**PUBLIC, "id": "x", "resource_type": "model", "created_at": 1}], True),  # an echoed response grant
])
def test_grant_parser_accepts_private_and_public_read(database, grants, public):
    assert policy.sharing_from_grants(grants) == policy.Sharing(public, ())


@pytest.mark.parametrize("grants", [
    "all",
    {"user": "*"},
    [PUBLIC, "public"],
    [{**PUBLIC, "permission": "write"}],
    [{**PUBLIC, "principal_id": "some-user-id"}],
    [{**PUBLIC, "principal_type": "group", "principal_id": "g1"}],
    [PUBLIC, {**PUBLIC, "principal_type": "group", "principal_id": "g1"}],  # no silent partial sharing
    [{"principal_type": "user", "principal_id": "*"}],  # the permission is not guessed
    [{"principal_type": "role", "principal_id": "admin", "permission": "read"}],
    [{"principal_type": "user", "principal_id": "", "permission": "read"}],
    [{"principal_type": "user", "principal_id": 7, "permission": "read"}],
    [PUBLIC] * (policy.MAX_GRANTS + 1),
])
def test_grant_parser_refuses_what_it_cannot_honour(database, grants):
    with pytest.raises(BadRequest) as refused:
        policy.sharing_from_grants(grants)
    assert refused.value.status == 400 and refused.value.detail


def test_grant_parser_names_unknown_principals_and_keeps_known_ones(people):
    group = db.Group.create(user_id=people["admin"].id, name="team")
    grants = [PUBLIC, {"principal_type": "user", "principal_id": people["other"].id, "permission": "read"},
              {"principal_type": "group", "principal_id": group.id, "permission": "write"}]
    assert policy.sharing_from_grants(grants) == policy.Sharing(True, tuple(sorted(
        [("user", people["other"].id, "read"), ("group", group.id, "write")])))
    with pytest.raises(BadRequest, match="no such group: nope"):
        policy.sharing_from_grants([{"principal_type": "group", "principal_id": "nope", "permission": "read"}])


@pytest.mark.parametrize("kind, resource_type", [("knowledge", "knowledge"), ("preset", "model")])
def test_grants_render_in_open_webui_shape_and_read_back(people, kind, resource_type):
    private, public = make(kind, people["owner"], False), make(kind, people["owner"], True)
    assert policy.render_grants(private) == []
    [grant] = policy.render_grants(public)
    assert grant == {"id": grant["id"], "resource_type": resource_type, "resource_id": public.id, **PUBLIC,
                     "created_at": public.created_at}
    assert uuid.UUID(grant["id"]) and policy.render_grants(public)[0]["id"] == grant["id"]
    assert grant["id"] not in {g["id"] for g in policy.render_grants(make(kind, people["owner"], True))}
    assert policy.sharing_from_grants([grant]).public is True
