"""Which backend has which model: short-cached model lists of every backend, merged as Open WebUI does.

Reusable helpers (all take the app's `upstream.Upstream`):
* `ollama_tag_lists(upstream, refresh=False)` -> [(Backend, [tag entries] | Exception)] per Ollama backend
* `list_ollama_tags(upstream, refresh=False)` -> {"models": [entry + "urls": [idx...], "connection_type"]}
* `openai_model_lists(upstream, refresh=False)` -> [(Backend, [model entries] | Exception)] per connection
* `list_openai_models(upstream, refresh=False)` -> [(Backend, entry)], first occurrence of an id wins
* `find_backend_for_model(upstream, model, kind="ollama")` -> (Backend, resolved upstream name)
* `backends_for_model(...)`, `backend_by_idx(upstream, kind, idx)`, `resolve_name(model, names)`
Lists are cached for MODELS_CACHE_TTL seconds; a backend that fails or is slower than
AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST is skipped (its slot holds the exception) and logged.
"""
from __future__ import annotations

import logging
import random
import time
from typing import Iterable

from ..errors import NotFound, ServiceUnavailable, UpstreamError
from ..upstream import Backend, Upstream

log = logging.getLogger("webui_api.backends")

REFETCH_AFTER = 1.0  # seconds: a lookup miss re-asks the backends only if the cached lists are older
OLLAMA_DISABLED = "The Ollama API is disabled. Please enable it to use this feature."
OPENAI_DISABLED = "OpenAI API is disabled"
_NAMES = {"ollama": "Ollama", "openai": "OpenAI"}


def resolve_name(model: str, names: Iterable[str]) -> str | None:
    """`model` itself if listed, else `model:latest` for an untagged name (Ollama's rule), else None."""
    names = set(names)
    if model in names:
        return model
    if ":" not in model and f"{model}:latest" in names:
        return f"{model}:latest"
    return None


def _fetch_lists(upstream: Upstream, backends: list[Backend], path: str, key: str) -> list[tuple]:
    def fetch(backend: Backend) -> list[dict]:
        body = upstream.json(backend, "GET", path, timeout=upstream.list_timeout)
        items = body.get(key) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise UpstreamError(f"{backend.label} returned a malformed model list")
        return [item for item in items if isinstance(item, dict)]

    results = upstream.fan_out(fetch, backends, upstream.list_timeout)
    for backend, result in results:
        if isinstance(result, Exception):
            log.warning("model list of %s skipped: %s", backend.label, result)
    return results


def _cached(upstream: Upstream, kind: str, refresh: bool) -> tuple[float, list[tuple]]:
    """(fetch time, per-backend lists) from the cache, fetching when stale or asked to."""
    def fetch() -> tuple[float, list[tuple]]:
        if kind == "ollama":
            return time.monotonic(), _fetch_lists(upstream, upstream.ollama, "/api/tags", "models")
        return time.monotonic(), _fetch_lists(upstream, upstream.openai, "/models", "data")
    return upstream.memo(f"backends:{kind}", fetch, refresh=refresh)


def ollama_tag_lists(upstream: Upstream, refresh: bool = False) -> list[tuple]:
    """[(Backend, list of /api/tags entries or the Exception that skipped it)] in URL order."""
    return _cached(upstream, "ollama", refresh)[1]


def openai_model_lists(upstream: Upstream, refresh: bool = False) -> list[tuple]:
    """[(Backend, list of /models entries or the Exception that skipped it)] in URL order."""
    return _cached(upstream, "openai", refresh)[1]


def merge_tags(lists: list[tuple]) -> list[dict]:
    """Merge per-backend tag entries by `model`: first occurrence kept, `urls` lists every backend index."""
    merged: dict[str, dict] = {}
    for backend, entries in lists:
        if isinstance(entries, Exception):
            continue
        for entry in entries:
            name = entry.get("model") or entry.get("name")
            if not name:
                continue
            if name in merged:
                merged[name]["urls"].append(backend.idx)
            else:
                merged[name] = {**entry, "connection_type": entry.get("connection_type", "local"),
                                "urls": [backend.idx]}
    return list(merged.values())


def list_ollama_tags(upstream: Upstream, refresh: bool = False) -> dict:
    """Ollama's `/api/tags` body for all backends together: {"models": [... with "urls"]}."""
    return {"models": merge_tags(ollama_tag_lists(upstream, refresh))}


def list_openai_models(upstream: Upstream, refresh: bool = False) -> list[tuple[Backend, dict]]:
    """Every OpenAI model entry with the connection that serves it; the first connection wins an id."""
    seen, out = set(), []
    for backend, entries in openai_model_lists(upstream, refresh):
        if isinstance(entries, Exception):
            continue
        for entry in entries:
            model_id = entry.get("id")
            if model_id and model_id not in seen:
                seen.add(model_id)
                out.append((backend, entry))
    return out


def _hosting(lists: list[tuple], model: str, kind: str) -> tuple[list[Backend], str | None, bool]:
    """(backends having the model, resolved name, whether any backend answered at all)."""
    hosts, resolved, answered = [], None, False
    for backend, entries in lists:
        if isinstance(entries, Exception):
            continue
        answered = True
        if kind == "ollama":
            name = resolve_name(model, [e.get("model") or e.get("name") for e in entries])
        else:
            name = model if model in [e.get("id") for e in entries] else None
        if name and (resolved is None or name == resolved):
            hosts.append(backend)
            resolved = name
    return hosts, resolved, answered


def backends_for_model(upstream: Upstream, model: str, kind: str = "ollama") -> tuple[list[Backend], str]:
    """All backends of `kind` hosting `model` and its resolved name (untagged Ollama names -> `:latest`).
    Raises NotFound("Model 'x' was not found"), UpstreamError when no backend answered, or
    ServiceUnavailable when that API is disabled."""
    if not (upstream.ollama if kind == "ollama" else upstream.openai):
        raise ServiceUnavailable(OLLAMA_DISABLED if kind == "ollama" else OPENAI_DISABLED)
    if not isinstance(model, str) or not model:
        raise NotFound(f"Model '{model or ''}' was not found")
    fetched_at, lists = _cached(upstream, kind, False)
    hosts, resolved, answered = _hosting(lists, model, kind)
    if not hosts and time.monotonic() - fetched_at > REFETCH_AFTER:  # maybe pulled since we last asked
        lists = _cached(upstream, kind, True)[1]
        hosts, resolved, answered = _hosting(lists, model, kind)
    if hosts:
        return hosts, resolved
    if not answered:
        raise UpstreamError(f"No {_NAMES[kind]} backend answered its model list")
    raise NotFound(f"Model '{model}' was not found")


def find_backend_for_model(upstream: Upstream, model: str, kind: str = "ollama") -> tuple[Backend, str]:
    """One backend hosting `model` and the resolved name. Ollama: random among several (same weights;
    spreads load). OpenAI: the first connection listing the id, matching the model list's urlIdx."""
    hosts, resolved = backends_for_model(upstream, model, kind)
    return (random.choice(hosts) if kind == "ollama" else hosts[0]), resolved


def backend_by_idx(upstream: Upstream, kind: str, idx: int) -> Backend:
    """The backend at position `idx` of OLLAMA_BASE_URLS / OPENAI_API_BASE_URLS, else NotFound."""
    pool = upstream.ollama if kind == "ollama" else upstream.openai
    if not pool:
        raise ServiceUnavailable(OLLAMA_DISABLED if kind == "ollama" else OPENAI_DISABLED)
    if not 0 <= idx < len(pool):
        raise NotFound(f"No {'Ollama' if kind == 'ollama' else 'OpenAI'} backend with index {idx}")
    return pool[idx]
