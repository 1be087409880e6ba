"""Operations routes: readiness (public, for load balancers and probes) and Prometheus metrics (admin)."""
from __future__ import annotations

import marshmallow as ma
from flask import Response
from flask.views import MethodView

from ..gateway import readiness
from .. import telemetry
from ..auth.policy import is_admin
from .deps import access, current_caller, ext
from .json_input import Blueprint
from .schemas import JsonSchema, Schema

blp = Blueprint("ops", __name__, description="Readiness and metrics")


class ReadySchema(Schema):
    status = ma.fields.Boolean()
    failed = ma.fields.List(ma.fields.String())
    checks = ma.fields.Dict()
    detail = ma.fields.String()


@blp.route("/health/ready")
class Ready(MethodView):
    @access("public")
    @blp.response(200, ReadySchema)
    @blp.alt_response(503, schema=ReadySchema, description="Not ready: `failed` names the failing checks")
    def get(self):
        """Readiness: database, data dir writable, each backend reachable. Never shows a key; backend names
        (host and port) and error texts only to an admin, anyone else sees kinds and ok flags.

        503 when the database or the data dir fails, or when no configured backend answers. Results are
        cached for 2 s per worker. Liveness is `GET /health`."""
        caller = current_caller()
        result = readiness.report(ext(), detailed=caller is not None and is_admin(caller.user))
        if result["status"]:
            return result
        return {"detail": "Not ready: " + ", ".join(result["failed"]), **result}, 503


@blp.route("/metrics")
class Metrics(MethodView):
    @access("admin")
    @blp.response(200, JsonSchema(type="string", description="Prometheus exposition format"),
                  content_type="text/plain; version=0.0.4")
    def get(self):
        """Prometheus text format, summed over every gunicorn worker: requests and latency per route and
        status, backend latency and errors, tokens in and out. Admin only: scrape with an admin API key
        (Prometheus `authorization: {credentials: sk-...}`)."""
        body, content_type = telemetry.render_metrics()
        return Response(body, content_type=content_type)
