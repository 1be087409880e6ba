"""/api/v1/groups: user groups that access grants can name (admins change them; members list theirs)."""
from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from ..auth import groups
from .deps import access, current_user
from .json_input import Blueprint
from .schemas import TRUE, Schema, UserSchema, description_field, name_field

blp = Blueprint("groups", __name__, url_prefix="/api/v1/groups", description="User groups for sharing")


class GroupSchema(Schema):
    """Open WebUI's GroupResponse."""

    id = ma.fields.String()
    user_id = ma.fields.String(metadata={"description": "The admin who created it"})
    name = ma.fields.String()
    description = ma.fields.String()
    permissions = ma.fields.Dict(allow_none=True)
    data = ma.fields.Dict(allow_none=True)
    meta = ma.fields.Dict(allow_none=True)
    member_count = ma.fields.Integer()
    created_at = ma.fields.Integer()
    updated_at = ma.fields.Integer()


def user_ids_field(**kwargs) -> ma.fields.List:
    return ma.fields.List(ma.fields.String(validate=ma.validate.Length(min=1, max=255)),
                          validate=ma.validate.Length(max=groups.MAX_USERS_PER_CALL), **kwargs)


class GroupFormSchema(Schema):
    name = name_field(required=True)
    description = description_field(load_default="")
    permissions = ma.fields.Dict(allow_none=True, metadata={"description": "Stored and returned as given"})
    data = ma.fields.Dict(allow_none=True)
    meta = ma.fields.Dict(allow_none=True)


class GroupUpdateSchema(GroupFormSchema):
    name = name_field()
    description = description_field(allow_none=True)
    user_ids = user_ids_field(allow_none=True, metadata={"description": "When given, replaces the members"})


class UserIdsSchema(Schema):
    user_ids = user_ids_field(required=True)


@blp.route("/")
class Groups(MethodView):
    @access("verified")
    @blp.response(200, GroupSchema(many=True))
    def get(self):
        """Every group for an admin; the caller's own groups for anyone else."""
        return groups.list_for(current_user())


@blp.route("/create")
class CreateGroup(MethodView):
    @access("admin")
    @blp.arguments(GroupFormSchema)
    @blp.response(200, GroupSchema)
    def post(self, form):
        """A new group without members."""
        return groups.create(current_user(), form)


@blp.route("/id/<string:group_id>")
class GroupView(MethodView):
    @access("admin")
    @blp.response(200, GroupSchema)
    def get(self, group_id):
        """One group with its member count."""
        return groups.get(group_id)


@blp.route("/id/<string:group_id>/users")
class GroupUsers(MethodView):
    @access("admin")
    @blp.response(200, UserSchema(many=True))
    def post(self, group_id):
        """The group's members (POST, as in Open WebUI)."""
        return groups.members(group_id)


@blp.route("/id/<string:group_id>/update")
class UpdateGroup(MethodView):
    @access("admin")
    @blp.arguments(GroupUpdateSchema)
    @blp.response(200, GroupSchema)
    def post(self, form, group_id):
        """Rename or describe the group; `user_ids` replaces its members."""
        return groups.update(group_id, form)


@blp.route("/id/<string:group_id>/users/add")
class AddGroupUsers(MethodView):
    @access("admin")
    @blp.arguments(UserIdsSchema)
    @blp.response(200, GroupSchema)
    def post(self, body, group_id):
        """Add users (unknown ids: 400); what the group is granted they may use at once."""
        return groups.add_users(group_id, body["user_ids"])


@blp.route("/id/<string:group_id>/users/remove")
class RemoveGroupUsers(MethodView):
    @access("admin")
    @blp.arguments(UserIdsSchema)
    @blp.response(200, GroupSchema)
    def post(self, body, group_id):
        """Remove users: what they could read only through the group is 404 for them from the next request."""
        return groups.remove_users(group_id, body["user_ids"])


@blp.route("/id/<string:group_id>/delete")
class DeleteGroup(MethodView):
    @access("admin")
    @blp.response(200, TRUE)
    def delete(self, group_id):
        """Delete the group, its memberships and every grant naming it."""
        return groups.delete(group_id)
