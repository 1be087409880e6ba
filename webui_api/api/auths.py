"""/api/v1/auths: sign-up, sign-in, sign-out, the current session, password and API key."""
from __future__ import annotations

import marshmallow as ma
from flask import request
from flask.views import MethodView

from ..auth import accounts
from .deps import access, bearer_token, current_caller, current_user, ext
from .json_input import Blueprint
from .observability import from_this_machine
from .schemas import TRUE, Schema, StatusSchema, UserSchema, image_url_field, name_field

blp = Blueprint("auths", __name__, url_prefix="/api/v1/auths", description="Accounts and credentials")


class SignupSchema(Schema):
    name = name_field(min_length=0, required=True)  # empty: accounts answers 400 as Open WebUI does
    email = ma.fields.String(required=True)
    password = ma.fields.String(required=True)
    profile_image_url = image_url_field(load_default=None)


class AddUserSchema(SignupSchema):
    role = ma.fields.String(load_default="pending")


class SigninSchema(Schema):
    email = ma.fields.String(required=True)
    password = ma.fields.String(required=True)


class PasswordSchema(Schema):
    password = ma.fields.String(required=True)
    new_password = ma.fields.String(required=True)


class SessionSchema(UserSchema):
    """Open WebUI's answer to sign-in and sign-up: the user, the token and its expiry, the permissions."""

    token = ma.fields.String(allow_none=True)
    token_type = ma.fields.Constant("Bearer", metadata={"type": "string"})
    expires_at = ma.fields.Integer(allow_none=True)
    permissions = ma.fields.Dict()


class AddedUserSchema(UserSchema):
    """A new account made by an admin: no session (the user signs in themself)."""

    token = ma.fields.Constant(None, metadata={"type": "string", "nullable": True})
    token_type = ma.fields.Constant("Bearer", metadata={"type": "string"})


class ApiKeySchema(Schema):
    api_key = ma.fields.String(metadata={"description": "The full key on creation; a masked form afterwards"})


@blp.route("/signup")
class Signup(MethodView):
    @access("public")
    @blp.arguments(SignupSchema)
    @blp.response(200, SessionSchema)
    @blp.doc(parameters=[{"in": "header", "name": accounts.SETUP_TOKEN_HEADER, "required": False,
                          "schema": {"type": "string"},
                          "description": "While no account exists, a sign-up from another machine must carry "
                                         "the setup token printed in the server's start-up log (else 403)."}])
    def post(self, body):
        """Create an account; the first one becomes admin. Answers with a session."""
        settings = ext().settings
        may_claim = accounts.may_claim_instance(settings, from_this_machine(),
                                                request.headers.get(accounts.SETUP_TOKEN_HEADER))
        user = accounts.signup(settings, body["name"], body["email"], body["password"],
                               body["profile_image_url"], may_claim=may_claim)
        return accounts.issue_session(settings, user)


@blp.route("/signin")
class Signin(MethodView):
    @access("public")
    @blp.arguments(SigninSchema)
    @blp.response(200, SessionSchema)
    def post(self, body):
        """Sign in with email and password (rate-limited per email across all workers)."""
        settings = ext().settings
        user = accounts.signin(settings, body["email"], body["password"])
        return accounts.issue_session(settings, user)


@blp.route("/signout")
class Signout(MethodView):
    @access("public")
    @blp.response(200, StatusSchema)
    def post(self):
        """Revoke the presented JWT on every worker (an API key is not revoked; delete it instead)."""
        accounts.signout(current_caller())
        return {"status": True}

    get = post


@blp.route("/")
class Session(MethodView):
    @access("authenticated")
    @blp.response(200, SessionSchema)
    def get(self):
        """The current user; with a JWT, the same token and its expiry."""
        caller = current_caller()
        claims = caller.claims or {}
        token = None if caller.via_api_key else bearer_token()
        return accounts.session_of(ext().settings, caller.user, token, claims)


@blp.route("/update/password")
class UpdatePassword(MethodView):
    @access("authenticated")
    @blp.arguments(PasswordSchema)
    @blp.response(200, TRUE)
    def post(self, body):
        """Change the password; every earlier JWT and the API key stop working."""
        accounts.change_password(ext().settings, current_user(), body["password"], body["new_password"])
        return True


@blp.route("/add")
class AddUser(MethodView):
    @access("admin")
    @blp.arguments(AddUserSchema)
    @blp.response(200, AddedUserSchema)
    def post(self, body):
        """Admin: create an account. No session token is returned (the new user signs in themself)."""
        user = accounts.add_user(ext().settings, body["name"], body["email"], body["password"], body["role"],
                                 body["profile_image_url"])
        return user


@blp.route("/api_key")
class ApiKeyView(MethodView):
    @access("verified")  # keys are for verified users: a pending account waits for an admin first
    @blp.response(200, ApiKeySchema)
    def post(self):
        """Create (or replace) the caller's API key. The full key is shown only in this answer."""
        return {"api_key": accounts.create_api_key(ext().settings, current_user())}

    @access("authenticated")
    @blp.response(200, ApiKeySchema)
    def get(self):
        """The caller's key in masked form (keys are stored only as hashes)."""
        return {"api_key": accounts.get_api_key(ext().settings, current_user())}

    @access("authenticated")
    @blp.response(200, TRUE)
    def delete(self):
        """Delete the caller's API key."""
        accounts.delete_api_key(ext().settings, current_user())
        return True
