"""The one error path: every status answers JSON {"detail": ...}, never HTML or a traceback."""
import pytest
from flask.views import MethodView
from flask_smorest import Blueprint

from webui_api import errors
from webui_api.api import api
from webui_api.api.deps import access

RAISES = {400: errors.BadRequest, 401: errors.Unauthorized, 403: errors.Forbidden, 404: errors.NotFound,
          409: errors.Conflict, 413: errors.PayloadTooLarge, 415: errors.UnsupportedMediaType,
          429: errors.RateLimited, 502: errors.UpstreamError, 504: errors.UpstreamTimeout}


@pytest.fixture
def app(app):
    """The real app plus a probe blueprint that raises each domain error and one unexpected exception."""
    probe = Blueprint("probe", __name__, url_prefix="/probe")

    @probe.route("/<int:status>")
    class Raise(MethodView):
        @access("public")
        def get(self, status):
            if status == 500:
                raise RuntimeError("secret internal state")
            raise RAISES[status](f"probe {status}")

    api.register_blueprint(probe)
    return app


@pytest.mark.parametrize("status", sorted(RAISES))
def test_domain_errors_are_json_detail(client, status):
    response = client.get(f"/probe/{status}")
    assert response.status_code == status
    assert response.is_json and response.get_json() == {"detail": f"probe {status}"}


def test_unexpected_exception_is_json_500_without_traceback(client):
    response = client.get("/probe/500")
    assert response.status_code == 500 and response.get_json() == {"detail": "Internal server error"}
    assert b"secret internal state" not in response.data and b"Traceback" not in response.data


def test_unknown_route_and_wrong_method(client):
    assert client.get("/api/nope").get_json() == {"detail": "Not Found"}
    wrong = client.put("/api/v1/auths/signin", json={})
    assert wrong.status_code == 405 and wrong.get_json() == {"detail": "Method Not Allowed"}


@pytest.mark.parametrize("payload,content_type", [("{not json", "application/json"), ("[1, 2", "application/json")])
def test_malformed_json_is_400(client, payload, content_type):
    response = client.post("/api/v1/auths/signin", data=payload, content_type=content_type)
    assert response.status_code == 400 and response.get_json() == {"detail": "Invalid JSON body."}


def test_validation_is_422_with_field_messages(client):
    response = client.post("/api/v1/auths/signin", json={"email": ["x"]})
    assert response.status_code == 422
    assert {"loc": ["body", "password"], "msg": "Missing data for required field.",
            "type": "value_error"} in response.get_json()["detail"]


def test_rate_limit_and_auth_errors_carry_headers(client):
    response = client.get("/api/v1/auths/")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
