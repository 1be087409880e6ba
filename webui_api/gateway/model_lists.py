"""Model lists of every backend: asked for together, merged into the entry shapes Open WebUI lists."""
from __future__ import annotations

import copy
import logging
import re
from datetime import datetime
from typing import Any

from . import presets
from ..errors import ApiError, UpstreamError

log = logging.getLogger(__name__)

_PATHS = {"tags": "/api/tags", "ps": "/api/ps", "models": "/models"}
_LIST_KEYS = {"tags": "models", "ps": "models", "models": "data"}
_API_MODELS_ONLY = ("tags", "actions", "filters")  # not in /openai/models entries
MODEL_LISTS = ("tags", "models")  # the lists that name a backend's models ("ps" only says which are loaded)


def fetch(upstream, timeout: float) -> list[tuple]:
    """[((Backend, "tags"|"ps"|"models"), [model dicts] or the exception that skipped it)] for every
    backend, asked concurrently; one slower than `timeout` is skipped."""
    jobs = [(b, "tags") for b in upstream.ollama] + [(b, "ps") for b in upstream.ollama]
    jobs += [(b, "models") for b in upstream.openai]
    if not jobs:
        return []
    results = upstream.fan_out(lambda job: _fetch_one(upstream, job, timeout), jobs, timeout)
    for (backend, what), result in results:
        if isinstance(result, BaseException):
            log.warning("model list: skipping %s (%s %s): %s", backend.label, what, _PATHS[what], result)
    return results


def _fetch_one(upstream, job: tuple, timeout: float) -> list[dict]:
    backend, what = job
    if what == "models" and backend.model_ids:  # as Open WebUI: an allowlisted connection is not asked
        return as_configured(backend, [{"id": mid, "object": "model", "owned_by": "openai"}
                                       for mid in backend.model_ids])
    resp = upstream.request(backend, "GET", _PATHS[what], timeout=timeout)
    if resp.status_code >= 400:
        raise UpstreamError(f"{backend.label} answered HTTP {resp.status_code}")
    try:
        data = resp.json()
    except ValueError as exc:
        raise UpstreamError(f"{backend.label} sent a model list that is not JSON") from exc
    if not isinstance(data, dict):
        raise UpstreamError(f"{backend.label} sent a model list that is not a JSON object")
    items = data.get(_LIST_KEYS[what])
    models = [m for m in items if isinstance(m, dict)] if isinstance(items, list) else []
    return as_configured(backend, models)


def as_configured(backend, models: list[dict]) -> list[dict]:
    """A connection's list as its settings shape it: only `model_ids` (when set), every name as
    `<prefix_id>.<name>` (when set), the connection's `tags` on each."""
    keys = ("model", "name") if backend.kind == "ollama" else ("id",)
    allowed = set(backend.model_ids)
    out = []
    for model in models:
        own = next((model[k] for k in keys if isinstance(model.get(k), str)), "")
        if allowed and own not in allowed and own.removesuffix(":latest") not in allowed:
            continue
        model = dict(model)
        names = [k for k in keys if isinstance(model.get(k), str)]
        if backend.prefix_id:
            model.update({k: f"{backend.prefix_id}.{model[k]}" for k in names})
        if backend.tags:
            model["tags"] = [{"name": tag} for tag in backend.tags]
        out.append(model)
    return out


def failures(results: list[tuple]) -> dict[str, list[str]]:
    """Per kind, why each backend's model list is missing; every reason names its backend."""
    out: dict[str, list[str]] = {"ollama": [], "openai": []}
    for (backend, what), result in results:
        if what in MODEL_LISTS and isinstance(result, BaseException):
            reason = result.detail if isinstance(result, ApiError) else type(result).__name__
            out[backend.kind].append(reason if backend.label in reason else f"{backend.label}: {reason}")
    return out


def remembered(results: list[tuple], last: dict) -> list[tuple]:
    """`results` with each failed model list replaced by the last one its backend sent (kept in `last`): a
    failed fetch is not an empty list, so a backend failing for a moment keeps its models, and a call to one
    of them names the backend failing instead of answering "Model not found"."""
    out = []
    for (backend, what), result in results:
        if what in MODEL_LISTS:
            if isinstance(result, BaseException):
                result = last.get((backend, what), result)
            else:
                last[(backend, what)] = result
        out.append(((backend, what), result))
    return out


def merge_tags(lists: list[tuple]) -> list[dict]:
    """Ollama entries merged by `model`: the first occurrence is kept, `urls` lists every backend index."""
    merged: dict[str, dict] = {}
    for backend, entries in lists:
        if isinstance(entries, BaseException):
            continue
        for entry in entries:
            name = entry.get("model") or entry.get("name")
            if not isinstance(name, str) or not name:
                continue
            if name in merged:
                merged[name]["urls"].append(backend.idx)
            else:
                merged[name] = {**entry, "connection_type": entry.get("connection_type", "local"),
                                "urls": [backend.idx]}
    return list(merged.values())


def ollama_entries(results: list[tuple]) -> list[dict]:
    """/api/models entries of the Ollama models, `loaded` (and `ollama.expires_at`) from /api/ps."""
    loaded = {}
    for (_, what), models in results:
        if what == "ps" and not isinstance(models, BaseException):
            loaded.update({m.get("model") or m.get("name"): _epoch(m.get("expires_at")) for m in models})
    out = []
    for raw in merge_tags([(b, r) for (b, what), r in results if what == "tags"]):
        name = raw.get("model") or raw["name"]
        raw.update(model=name, name=raw.get("name") or name)
        entry = {"id": name, "name": raw["name"], "object": "model", "created": 0, "owned_by": "ollama",
                 "ollama": raw, "loaded": name in loaded, "connection_type": "local",
                 "tags": list(raw.get("tags") or []), "actions": [], "filters": []}
        if loaded.get(name) is not None:
            raw["expires_at"] = loaded[name]
        out.append(entry)
    return out


def openai_entries(results: list[tuple]) -> list[dict]:
    """/api/models entries of the OpenAI models; the first connection listing an id serves it."""
    out, seen = [], set()
    for (backend, what), models in results:
        if what != "models" or isinstance(models, BaseException):
            continue
        for model in models:
            model_id = model.get("id")
            if not isinstance(model_id, str) or not model_id or model_id in seen:
                continue
            seen.add(model_id)
            raw = {**model, "connection_type": "external"}
            # "pipe" marks a function model run here; a backend that is itself an Open WebUI lists its own
            # pipes with it, but to us they are that backend's models (the raw entry keeps the flag).
            shown = {k: v for k, v in model.items() if k != "pipe"}
            out.append({**shown, "id": model_id, "object": "model", "created": model.get("created") or 0,
                        "owned_by": "openai", "connection_type": "external",
                        "name": model.get("name") or model_id,
                        "openai": raw, "provider": "", "urlIdx": backend.idx,
                        "tags": list(model.get("tags") or []), "actions": [], "filters": []})
    return out


def openai_hosts(results: list[tuple]) -> dict[str, list[int]]:
    """Each OpenAI model id and every connection that lists it (replicas of one another), in order."""
    hosts: dict[str, list[int]] = {}
    for (backend, what), models in results:
        if what == "models" and not isinstance(models, BaseException):
            for model in models:
                if isinstance(model.get("id"), str) and backend.idx not in hosts.setdefault(model["id"], []):
                    hosts[model["id"]].append(backend.idx)
    return hosts


def is_pipe(entry: dict) -> bool:
    """Open WebUI's rule: an entry with `pipe` is a function model, run in-process (gateway/pipes.py)."""
    return "pipe" in entry


def connection_entry(entry: dict) -> dict:
    """An OpenAI model as /openai/models lists it: the /api/models entry without the listing extras."""
    return {k: v for k, v in entry.items() if k not in _API_MODELS_ONLY}


def with_override(entry: dict, row) -> dict:
    """A base model as an admin's override row renames and describes it."""
    shown = copy.copy(entry)
    shown["name"] = row.name or entry["name"]
    shown["info"] = presets.public_info(row)
    shown["tags"] = presets.tags(row)
    return shown


def preset_entry(row, base: dict | None) -> dict:
    """A preset as /api/models lists it; `base` is its base model's entry, if that is listed."""
    base = base or {}
    entry = {"id": row.id, "name": row.name, "object": "model", "created": row.created_at,
             "owned_by": base.get("owned_by", "openai"),
             "connection_type": base.get("connection_type", "external"),
             "preset": True, "loaded": bool(base.get("loaded", False)), "info": presets.public_info(row),
             "tags": presets.tags(row), "actions": [], "filters": []}
    if is_pipe(base):
        entry["pipe"] = base["pipe"]  # as Open WebUI: a preset over a function model is one too
    if not base:
        # Listed, but chat answers "Model not found" until the base model is back.
        entry["base_model_missing"] = True
    return entry


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _epoch(value: Any) -> int | None:
    """Ollama's RFC 3339 `expires_at` (nanosecond precision) as epoch seconds."""
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00"))).timestamp())
    except ValueError:
        return None
