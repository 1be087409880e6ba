"""Catalog: base models merged across real (fake) backends, one cache, dead backends, presets, resolution
and the passthroughs' host lookup."""
from __future__ import annotations

import time

import pytest

from webui_api import db
from webui_api.gateway import presets
from webui_api.errors import BadRequest, NotFound, UpstreamError
from webui_api.gateway.catalog import Catalog, untagged_alias

from .test_upstream import make_upstream


@pytest.fixture
def second(make_backend):
    return make_backend(ollama_models=["llama3.2:latest", "qwen2.5:0.5b"], openai_models=["gpt-4o-mini", "o3"])


@pytest.fixture
def settings_overrides(data_dir, fake_backend, second):
    return {"OLLAMA_BASE_URLS": f"{fake_backend.url};{second.url}",
            "OPENAI_API_BASE_URLS": f"{fake_backend.openai_url};{second.openai_url}",
            "OPENAI_API_KEYS": f"{fake_backend.openai_key};{second.openai_key}",
            "AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST": 1.0, "MODELS_CACHE_TTL": 60}


@pytest.fixture
def catalog(app) -> Catalog:
    return app.extensions["webui_api"].catalog


def owner(creds: dict) -> db.User:
    return db.User.get_by_id(creds["id"])


def ids(entries: list[dict]) -> list[str]:
    return [e["id"] for e in entries]


def test_ollama_models_merge_by_name_with_urls(catalog, admin):
    entries = {e["id"]: e for e in catalog.list_models(owner(admin))}
    assert entries["llama3.2:latest"]["ollama"]["urls"] == [0, 1]
    assert entries["llama3.1:latest"]["ollama"]["urls"] == [0]
    assert entries["qwen2.5:0.5b"]["ollama"]["urls"] == [1]
    llama = entries["llama3.2:latest"]
    assert {k: llama[k] for k in ("object", "owned_by", "connection_type", "created", "loaded")} == \
        {"object": "model", "owned_by": "ollama", "connection_type": "local", "created": 0, "loaded": False}
    assert llama["ollama"]["details"]["family"] == "llama" and llama["ollama"]["model"] == "llama3.2:latest"


def test_openai_models_per_connection_first_wins(catalog, admin):
    entries = catalog.list_models(owner(admin))
    openai = [e for e in entries if e["owned_by"] == "openai"]
    assert ids(openai) == ["gpt-4o-mini", "gpt-4-turbo", "text-embedding-3-small", "o3"]
    by_id = {e["id"]: e for e in openai}
    assert by_id["gpt-4o-mini"]["urlIdx"] == 0 and by_id["o3"]["urlIdx"] == 1
    assert by_id["o3"]["openai"]["id"] == "o3" and by_id["o3"]["openai"]["connection_type"] == "external"
    assert by_id["o3"]["connection_type"] == "external" and by_id["o3"]["provider"] == ""


def test_order_is_ollama_then_openai_then_presets(catalog, admin):
    presets.create(owner(admin), {"id": "bot", "base_model_id": "gpt-4o-mini", "name": "Bot"})
    kinds = [("preset" if e.get("preset") else e["owned_by"]) for e in catalog.list_models(owner(admin))]
    assert kinds == sorted(kinds, key=["ollama", "openai", "preset"].index)
    assert kinds[-1] == "preset"


def test_loaded_models_come_from_ps(catalog, admin, fake_backend):
    fake_backend.loaded_models = ["llama3.1:latest"]
    entry = {e["id"]: e for e in catalog.list_models(owner(admin), refresh=True)}["llama3.1:latest"]
    assert entry["loaded"] is True and entry["ollama"]["expires_at"] == 1893456000


def test_cache_and_refresh(catalog, admin, fake_backend):
    catalog.list_models(owner(admin))
    catalog.list_models(owner(admin))
    assert len(fake_backend.requests_to("/api/tags")) == 1
    catalog.list_models(owner(admin), refresh=True)
    assert len(fake_backend.requests_to("/api/tags")) == 2


def test_zero_ttl_asks_every_time(catalog, admin, fake_backend):
    catalog.settings.MODELS_CACHE_TTL = 0
    catalog.list_models(owner(admin))
    catalog.list_models(owner(admin))
    assert len(fake_backend.requests_to("/api/tags")) == 2


def test_dead_backend_is_skipped(catalog, admin, second):
    second.stop()
    found = ids(catalog.list_models(owner(admin)))
    assert "llama3.1:latest" in found and "qwen2.5:0.5b" not in found and "o3" not in found


def test_hanging_backend_never_delays_past_the_timeout(catalog, admin, second):
    second.fault = {"kind": "hang", "path": "/"}
    catalog.settings.AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST = 0.5
    started = time.monotonic()
    found = ids(catalog.list_models(owner(admin)))
    assert time.monotonic() - started < 1.2
    assert "llama3.1:latest" in found and "gpt-4o-mini" in found and "qwen2.5:0.5b" not in found


def test_presets_visibility(catalog, admin, user, make_user):
    other = make_user("user")
    presets.create(owner(user), {"id": "mine", "base_model_id": "llama3.2", "name": "Mine"})
    presets.create(owner(other), {"id": "theirs", "base_model_id": "llama3.2", "name": "Theirs"})
    presets.create(owner(other), {"id": "shared", "base_model_id": "llama3.2", "name": "Shared", "is_public": True})
    presets.create(owner(user), {"id": "off", "base_model_id": "llama3.2", "name": "Off", "is_active": False})
    assert [e["id"] for e in catalog.list_models(owner(user)) if e.get("preset")] == ["mine", "shared"]
    admin_view = ids(catalog.list_models(owner(admin)))
    assert {"mine", "theirs", "shared"} <= set(admin_view) and "off" not in admin_view


def test_preset_entry_shape_hides_params(catalog, user):
    presets.create(owner(user), {"id": "bot", "base_model_id": "llama3.2", "name": "Bot",
                                 "meta": {"tags": ["support"], "profile_image_url": "/x.png"},
                                 "params": {"system": "secret prompt", "temperature": 0.1}})
    entry = catalog.list_models(owner(user))[-1]
    assert entry["id"] == "bot" and entry["preset"] is True and entry["owned_by"] == "ollama"
    assert entry["info"]["params"] == {} and "profile_image_url" not in entry["info"]["meta"]
    assert entry["tags"] == [{"name": "support"}]


def test_resolve_untagged_name_to_latest(catalog, user):
    target = catalog.resolve(owner(user), "llama3.1")
    assert target.upstream_model == "llama3.1:latest" and target.backend.kind == "ollama"
    assert target.entry["id"] == "llama3.1:latest" and target.preset is None


def test_resolve_openai_model_uses_its_connection(catalog, user, second):
    target = catalog.resolve(owner(user), "o3")
    assert target.backend.kind == "openai" and target.backend.idx == 1 and target.backend.key == second.openai_key


def test_resolve_spreads_over_hosting_backends(catalog, user):
    hosts = catalog.resolve(owner(user), "llama3.2").hosts
    assert sorted(host.idx for host in hosts) == [0, 1]
    assert {catalog.upstream.order(hosts)[0].idx for _ in range(4)} == {0, 1}


@pytest.mark.parametrize("model", ["nope", "", None, 42, "llama3.1:7b", "gpt-4o-mini:latest"])
def test_resolve_unknown_is_model_not_found(catalog, user, model):
    with pytest.raises(BadRequest) as err:
        catalog.resolve(owner(user), model)
    assert err.value.detail == "Model not found"


def test_resolve_preset_chain_and_access(catalog, admin, user, make_user):
    other = make_user("user")
    presets.create(owner(other), {"id": "base-bot", "base_model_id": "gpt-4-turbo", "name": "B", "is_public": True,
                                  "params": {"temperature": 0.1, "top_p": 0.5}})
    presets.create(owner(user), {"id": "outer", "base_model_id": "base-bot", "name": "O",
                                 "params": {"temperature": 0.9}})
    target = catalog.resolve(owner(user), "outer")
    assert target.upstream_model == "gpt-4-turbo" and target.backend.kind == "openai"
    assert target.preset.id == "outer" and target.params == {"temperature": 0.9, "top_p": 0.5}
    presets.create(owner(other), {"id": "hidden", "base_model_id": "gpt-4-turbo", "name": "H"})
    with pytest.raises(BadRequest):
        catalog.resolve(owner(user), "hidden")
    assert catalog.resolve(owner(admin), "hidden").upstream_model == "gpt-4-turbo"


def test_disabled_or_deleted_preset_stops_resolving_at_once(catalog, user):
    presets.create(owner(user), {"id": "bot", "base_model_id": "llama3.2", "name": "Bot"})
    assert catalog.resolve(owner(user), "bot").upstream_model == "llama3.2:latest"
    presets.toggle(owner(user), "bot")
    with pytest.raises(BadRequest):
        catalog.resolve(owner(user), "bot")
    presets.toggle(owner(user), "bot")
    presets.delete(owner(user), "bot")
    with pytest.raises(BadRequest):
        catalog.resolve(owner(user), "bot")


def test_preset_cycle_resolves_to_not_found(catalog, admin):
    presets.create(owner(admin), {"id": "a", "base_model_id": "b", "name": "A"})
    presets.create(owner(admin), {"id": "b", "base_model_id": "a", "name": "B"})
    with pytest.raises(BadRequest):
        catalog.resolve(owner(admin), "a")


def test_preset_with_missing_base_is_listed_but_not_usable(catalog, user):
    presets.create(owner(user), {"id": "orphan", "base_model_id": "gone:latest", "name": "Orphan"})
    entry = catalog.list_models(owner(user))[-1]
    assert entry["id"] == "orphan" and entry["base_model_missing"] is True
    with pytest.raises(BadRequest):
        catalog.resolve(owner(user), "orphan")


def test_override_row_renames_and_disabling_hides_base(catalog, admin, user):
    presets.create(owner(admin), {"id": "gpt-4o-mini", "base_model_id": None, "name": "Mini",
                                  "params": {"system": "Be brief."}})
    entry = {e["id"]: e for e in catalog.list_models(owner(user))}["gpt-4o-mini"]
    assert entry["name"] == "Mini" and entry["info"]["params"] == {}
    assert catalog.resolve(owner(user), "gpt-4o-mini").params == {"system": "Be brief."}
    presets.toggle(owner(admin), "gpt-4o-mini")
    assert "gpt-4o-mini" not in ids(catalog.list_models(owner(user)))
    with pytest.raises(BadRequest):
        catalog.resolve(owner(user), "gpt-4o-mini")


def test_taken_ids_include_untagged_names(catalog):
    taken = catalog.taken_ids()
    assert {"llama3.2:latest", "llama3.2", "gpt-4o-mini", "qwen2.5:0.5b"} <= taken and "qwen2.5" not in taken


def test_untagged_alias():
    assert untagged_alias("llama3.1") == "llama3.1:latest"
    assert untagged_alias("llama3.1:8b") is None
    assert untagged_alias("hf.co/org/model") == "hf.co/org/model:latest"


@pytest.mark.parametrize("settings_overrides", [{"ENABLE_OLLAMA_API": False, "OPENAI_API_BASE_URLS": ""}])
def test_disabled_backends_list_nothing(catalog, admin):
    assert catalog.list_models(owner(admin)) == []


# --- one cache, invalidated by every model-changing route ---------------------------------------

def test_invalidate_asks_the_backends_again(catalog, admin, fake_backend):
    catalog.list_models(owner(admin))
    fake_backend.ollama_models.append("fresh:latest")
    assert "fresh:latest" not in ids(catalog.list_models(owner(admin)))  # cached
    catalog.invalidate()
    assert "fresh:latest" in ids(catalog.list_models(owner(admin)))
    assert len(fake_backend.requests_to("/api/tags")) == 2


def test_an_invalidation_reaches_the_other_workers(app, catalog, admin, fake_backend):
    """Two catalogues on one data dir stand for two gunicorn workers: one's invalidate() is the other's too."""
    other = Catalog(catalog.settings, catalog.upstream)
    user = owner(admin)
    catalog.list_models(user), other.list_models(user)
    fake_backend.ollama_models.append("fresh:latest")
    assert "fresh:latest" not in ids(other.list_models(user))  # cached
    catalog.invalidate()
    assert "fresh:latest" in ids(other.list_models(user))
    fake_backend.ollama_models.remove("fresh:latest")
    other.invalidate()
    assert "fresh:latest" not in ids(catalog.list_models(user))
    assert "fresh:latest" not in ids(other.list_models(user))


def test_a_pull_reaches_chat_and_the_model_list_at_once(client, admin, fake_backend):
    headers = admin["headers"]

    def listed() -> list[str]:
        return ids(client.get("/api/models", headers=headers).get_json()["data"])

    def chat(model: str):
        return client.post("/api/chat/completions", headers=headers,
                           json={"model": model, "messages": [{"role": "user", "content": "hi"}]})

    assert "qwen:latest" not in listed()  # the catalogue is cached now
    pull = client.post("/ollama/api/pull", headers=headers, json={"model": "qwen"})
    assert pull.status_code == 200 and pull.data.splitlines()[-1] == b'{"status": "success"}'
    assert "qwen:latest" in listed()
    answer = chat("qwen")
    assert answer.status_code == 200, answer.get_json()
    assert fake_backend.last("/api/chat")["json"]["model"] == "qwen:latest"
    copy = client.post("/ollama/api/copy", headers=headers, json={"source": "qwen", "destination": "qwen-copy"})
    assert copy.status_code == 200 and "qwen-copy:latest" in listed()
    assert client.delete("/ollama/api/delete", headers=headers, json={"model": "qwen"}).status_code == 200
    assert "qwen:latest" not in listed()
    assert chat("qwen").get_json()["detail"] == "Model not found"


def test_preset_changes_invalidate_the_catalog(client, admin, fake_backend):
    headers = admin["headers"]
    changes = [("/api/v1/models/create", {"id": "bot", "base_model_id": "llama3.2", "name": "Bot"}),
               ("/api/v1/models/model/update?id=bot", {"name": "Bot 2", "meta": {}, "params": {}}),
               ("/api/v1/models/model/access/update?id=bot", {"is_public": True}),
               ("/api/v1/models/model/toggle?id=bot", None),
               ("/api/v1/models/model/delete?id=bot", None)]
    client.get("/api/models", headers=headers)
    for n, (path, body) in enumerate(changes):
        assert client.post(path, headers=headers, json=body).status_code == 200, path
        client.get("/api/models", headers=headers)
        assert len(fake_backend.requests_to("/api/tags")) == n + 2, path


# --- the passthroughs' lookup (no database involved) --------------------------------------------

def bare_catalog(upstream) -> Catalog:
    return Catalog(upstream.settings, upstream)


def test_merged_tags_and_host_lookup(tmp_path, make_backend):
    one = make_backend(ollama_models=["llama3.2:latest", "qwen2.5:0.5b"])
    two = make_backend(ollama_models=["llama3.2:latest", "mistral:7b"])
    catalog = bare_catalog(make_upstream(tmp_path, [one.url, two.url]))
    merged = catalog.ollama_tags()["models"]
    assert [(m["model"], m["urls"]) for m in merged] == [
        ("llama3.2:latest", [0, 1]), ("qwen2.5:0.5b", [0]), ("mistral:7b", [1])]
    hosts, name = catalog.hosts_for("ollama", "mistral:7b")
    assert [host.idx for host in hosts] == [1] and name == "mistral:7b"
    with pytest.raises(NotFound):  # only an untagged name means :latest
        catalog.hosts_for("ollama", "mistral")
    assert catalog.hosts_for("ollama", "llama3.2")[1] == "llama3.2:latest"
    assert [host.idx for host in catalog.hosts_for("ollama", "llama3.2")[0]] == [0, 1]  # both replicas
    with pytest.raises(NotFound) as info:
        catalog.hosts_for("ollama", "nope")
    assert info.value.detail == "Model 'nope' was not found"


def test_lookup_skips_a_hung_backend_and_refetches_new_models(tmp_path, make_backend, monkeypatch):
    monkeypatch.setattr("webui_api.gateway.catalog.REFETCH_AFTER", 0.0)
    good, hung = make_backend(ollama_models=["a:latest"]), make_backend()
    hung.fault = {"kind": "hang"}
    catalog = bare_catalog(make_upstream(tmp_path, [hung.url, good.url]))
    start = time.monotonic()
    assert [host.idx for host in catalog.hosts_for("ollama", "a")[0]] == [1]
    assert time.monotonic() - start < 1.0
    good.ollama_models.append("b:latest")  # pulled after the list was cached
    assert catalog.hosts_for("ollama", "b:latest")[1] == "b:latest"


def test_lookup_with_every_backend_down_is_502(tmp_path, make_backend):
    dead = make_backend()
    dead.stop()
    catalog = bare_catalog(make_upstream(tmp_path, [dead.url]))
    with pytest.raises(UpstreamError):
        catalog.hosts_for("ollama", "llama3.2")


def test_openai_host_lookup(tmp_path, fake_backend):
    upstream = make_upstream(tmp_path, [fake_backend.url], [fake_backend.openai_url], [fake_backend.openai_key])
    catalog = bare_catalog(upstream)
    (backend, *_), name = catalog.hosts_for("openai", "gpt-4o-mini")
    assert backend is upstream.openai[0] and name == "gpt-4o-mini"
    assert [m["id"] for m in catalog.openai_models()] == fake_backend.openai_models
