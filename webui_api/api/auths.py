"""/api/v1/auths: sign-up, sign-in, sign-out, the current session, password and API keys."""
from __future__ import annotations

import marshmallow as ma
from flask import request
from flask.views import MethodView

from ..auth import accounts, keys
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


def _optional_list(description: str) -> ma.fields.List:
    return ma.fields.List(ma.fields.String(), allow_none=True, load_default=None,
                          metadata={"description": description})


def _per_minute(what: str) -> ma.fields.Integer:
    description = f"{what} per minute at most (counted across every worker and host); null: no limit"
    return ma.fields.Integer(strict=True, allow_none=True, load_default=None,
                             metadata={"description": description})


class NewKeySchema(Schema):
    """A named key for a service. Every restriction is optional; null means none."""

    name = ma.fields.String(required=True, metadata={"example": "billing-service"})
    expires_at = ma.fields.Integer(strict=True, allow_none=True, load_default=None,
                                   metadata={"description": "Epoch seconds after which the key is refused"})
    expires_in = ma.fields.Integer(strict=True, allow_none=True, load_default=None,
                                   metadata={"description": "Seconds from now (instead of expires_at)"})
    allowed_models = _optional_list("Model ids the key may use (untagged means :latest); null: all")
    allowed_endpoints = _optional_list("Path prefixes the key may call (`/api/chat` allows "
                                       "`/api/chat/completions`); null: all")
    requests_per_minute = _per_minute("Requests")
    tokens_per_minute = _per_minute("Tokens (prompt + completion, as the backend reports them)")


class KeyInfoSchema(Schema):
    """A key as lists show it: never the key itself, only `masked` (its first and last characters)."""

    id = ma.fields.String()
    name = ma.fields.String(allow_none=True, metadata={"description": "null on the default key"})
    is_default = ma.fields.Boolean(metadata={"description": "The key of Open WebUI's /auths/api_key routes"})
    masked = ma.fields.String(metadata={"example": "sk-1a2...9f0e"})
    expires_at = ma.fields.Integer(allow_none=True)
    allowed_models = ma.fields.List(ma.fields.String(), allow_none=True)
    allowed_endpoints = ma.fields.List(ma.fields.String(), allow_none=True)
    requests_per_minute = ma.fields.Integer(allow_none=True)
    tokens_per_minute = ma.fields.Integer(allow_none=True)
    created_at = ma.fields.Integer()


class CreatedKeySchema(KeyInfoSchema):
    api_key = ma.fields.String(metadata={"description": "The key itself: shown only in this answer"})


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
        """Create (or replace) the caller's default API key; named keys stay. The full key is shown only in
        this answer."""
        return {"api_key": accounts.create_api_key(ext().settings, current_user(), current_caller().key)}

    @access("authenticated")
    @blp.response(200, ApiKeySchema)
    def get(self):
        """The caller's key in masked form (keys are stored only as hashes)."""
        return {"api_key": accounts.get_api_key(ext().settings, current_user())}

    @access("authenticated")
    @blp.response(200, TRUE)
    def delete(self):
        """Delete the caller's default API key (named keys stay)."""
        accounts.delete_api_key(ext().settings, current_user(), current_caller().key)
        return True


@blp.route("/api_keys")
class ApiKeys(MethodView):
    @access("authenticated")
    @blp.response(200, KeyInfoSchema(many=True))
    def get(self):
        """The caller's keys, the default one included, oldest first (masked: keys are stored as hashes)."""
        return keys.list_keys(ext().settings, current_user())

    @access("verified")
    @blp.arguments(NewKeySchema)
    @blp.response(200, CreatedKeySchema)
    def post(self, body):
        """Create a named key, optionally expiring, limited to models and endpoints, and rate-limited
        (429 with Retry-After beyond a limit). The key is shown only in this answer. Any number of keys
        live side by side, so a service can rotate without downtime."""
        row, key = keys.create_key(ext().settings, current_user(), current_caller().key, body)
        return {**row.__data__, "api_key": key}


@blp.route("/api_keys/<string:key_id>")
class ApiKeyById(MethodView):
    @access("authenticated")
    @blp.response(200, TRUE)
    def delete(self, key_id: str):
        """Delete one of the caller's keys: refused on every worker and host at once. Another user's key
        answers 404."""
        keys.delete_key(ext().settings, current_user(), current_caller().key, key_id)
        return True
