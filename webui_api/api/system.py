"""Service-level routes: health, version and the public feature flags."""
from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from ..version import API_COMPAT_VERSION, __version__
from ..auth import accounts
from ..errors import ServiceUnavailable
from ..gateway import readiness
from .deps import access, current_caller, ext
from .json_input import Blueprint
from .schemas import Schema

blp = Blueprint("system", __name__, description="Health, version and configuration")


class HealthSchema(Schema):
    status = ma.fields.Boolean()


class VersionSchema(Schema):
    version = ma.fields.String()
    deployment_id = ma.fields.String()
    server = ma.fields.String()


class FeaturesSchema(Schema):
    auth = ma.fields.Boolean()
    enable_signup = ma.fields.Boolean()
    enable_login_form = ma.fields.Boolean()
    enable_api_keys = ma.fields.Boolean()


class ConfigSchema(Schema):
    status = ma.fields.Boolean()
    name = ma.fields.String()
    version = ma.fields.String()
    features = ma.fields.Nested(FeaturesSchema)
    onboarding = ma.fields.Boolean(metadata={"description": "Present (true) until the first account exists"})


@blp.route("/health")
class Health(MethodView):
    @access("public")
    @blp.response(200, HealthSchema)
    def get(self):
        """Liveness, including a round trip to the database."""
        try:
            readiness.check_database()
        except Exception as exc:  # any database failure means "not healthy", never a traceback
            raise ServiceUnavailable(f"database unavailable: {exc.__class__.__name__}") from exc
        return {"status": True}


@blp.route("/api/version")
class Version(MethodView):
    @access("public")
    @blp.response(200, VersionSchema)
    def get(self):
        """The Open WebUI API version we speak, and our own version."""
        return {"version": API_COMPAT_VERSION, "deployment_id": "", "server": f"webui_api/{__version__}"}


@blp.route("/api/config")
class PublicConfig(MethodView):
    @access("public")
    @blp.response(200, ConfigSchema)
    def get(self):
        """Public feature flags; a signed-in caller also sees the API-key flag."""
        settings = ext().settings
        features = {"auth": True, "enable_signup": accounts.signup_open(settings), "enable_login_form": True,
                    "enable_api_keys": settings.ENABLE_API_KEYS}
        config = {"status": True, "name": "webui_api", "version": API_COMPAT_VERSION, "features": features}
        if current_caller() is None and accounts.awaiting_first_account():
            config["onboarding"] = True
        return config
