"""/api/v1/users: admin user management."""
from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from ..auth import accounts
from ..rag import files, knowledge
from .deps import access, ext
from .json_input import Blueprint
from .schemas import TRUE, Schema, UserSchema, image_url_field, name_field, page_number

blp = Blueprint("users", __name__, url_prefix="/api/v1/users", description="Admin user management")


class UserListArgs(Schema):
    query = ma.fields.String(load_default=None)
    page = page_number(load_default=1)


class UserRecordSchema(UserSchema):
    """The admin view of a user (Open WebUI's UserModel)."""

    last_active_at = ma.fields.Integer()
    created_at = ma.fields.Integer()
    updated_at = ma.fields.Integer()


class UserPageSchema(Schema):
    users = ma.fields.List(ma.fields.Nested(UserRecordSchema))
    total = ma.fields.Integer()


class UserUpdateSchema(Schema):
    role = ma.fields.String(validate=ma.validate.OneOf(accounts.ROLES), allow_none=True)
    name = name_field(allow_none=True)
    email = ma.fields.String(allow_none=True)
    password = ma.fields.String(allow_none=True)
    profile_image_url = image_url_field(allow_none=True)

    @ma.validates_schema
    def _changes_something(self, data, **_kwargs):
        if not data:  # an empty or missing body is a client mistake, not a successful update
            raise ma.ValidationError("Give at least one of role, name, email, password, profile_image_url.")


@blp.route("/")
class Users(MethodView):
    @access("admin")
    @blp.arguments(UserListArgs, location="query")
    @blp.response(200, UserPageSchema)
    def get(self, args):
        """List accounts, newest first, 30 a page; `query` matches name or email."""
        users, total = accounts.list_users(args["query"], args["page"])
        return {"users": users, "total": total}


@blp.route("/<string:user_id>")
class UserView(MethodView):
    @access("admin")
    @blp.response(200, UserRecordSchema)
    def get(self, user_id):
        """One account."""
        return accounts.get_user(user_id)

    @access("admin")
    @blp.response(200, TRUE)
    def delete(self, user_id):
        """Delete an account and everything it owns. The last admin cannot be deleted."""
        accounts.delete_user(user_id, purge=_purge_content)
        return True


def _purge_content(user) -> None:
    """Uploaded bytes, FAISS vectors and collection indexes of a user being deleted."""
    files.purge_user(ext(), user.id)
    knowledge.purge_user(ext(), user)


@blp.route("/<string:user_id>/update")
class UserUpdate(MethodView):
    @access("admin")
    @blp.arguments(UserUpdateSchema)
    @blp.response(200, UserRecordSchema)
    def post(self, body, user_id):
        """Change role, name, email or password. A new password revokes the user's tokens and API key."""
        return accounts.update_user(ext().settings, user_id, body)
