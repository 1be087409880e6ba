"""Health, version, public config and the dev-only OpenAPI docs."""
import pytest


def test_health(client):
    assert client.get("/health").get_json() == {"status": True}


def test_version(client):
    body = client.get("/api/version").get_json()
    assert body["version"] == "0.12.4" and body["deployment_id"] == ""


def test_public_config_onboarding_then_flags(client):
    before = client.get("/api/config").get_json()
    assert before["onboarding"] is True and before["features"]["enable_signup"] is True
    client.post("/api/v1/auths/signup", json={"name": "A", "email": "a@example.com", "password": "pw"})
    after = client.get("/api/config").get_json()
    assert "onboarding" not in after and after["features"]["enable_signup"] is False
    assert after["features"]["enable_api_keys"] is True


def test_docs_are_off_in_prod(client):
    assert client.get("/docs").status_code == 404
    assert client.get("/openapi.json").status_code == 404
    assert client.get("/docs").get_json() == {"detail": "Not Found"}


@pytest.mark.parametrize("settings_overrides", [{"ENV": "dev"}])
def test_docs_in_dev_with_local_assets(client, settings_overrides):
    page = client.get("/docs")
    assert page.status_code == 200 and b"/static/swagger-ui/swagger-ui-bundle.js" in page.data
    assert b"cdn" not in page.data.lower()
    asset = client.get("/static/swagger-ui/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.data) > 100_000
    spec = client.get("/openapi.json").get_json()
    signup = spec["paths"]["/api/v1/auths/signup"]["post"]
    assert "requestBody" in signup and "200" in signup["responses"]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "/api/v1/users/{user_id}/update" in spec["paths"]
