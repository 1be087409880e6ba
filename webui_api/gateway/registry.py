"""Model registry: base models gathered from every backend (cached per process), presets read from SQLite."""
from __future__ import annotations

import copy
import itertools
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import presets
from ..auth import policy
from ..errors import MODEL_NOT_FOUND, BadRequest, UpstreamError

log = logging.getLogger(__name__)

MAX_PRESET_DEPTH = 5  # presets may wrap presets; deeper chains (or cycles) resolve to "Model not found"
_PATHS = {"tags": "/api/tags", "ps": "/api/ps", "models": "/models"}


@dataclass
class Resolved:
    """A chat/embedding target: the listed entry, the backend to call and the model name it knows."""

    entry: dict
    backend: Any                      # upstream.Backend
    upstream_model: str
    preset: Any = None                # the outermost db.Preset (preset or override row), if any
    params: dict = field(default_factory=dict)  # stored params along the preset chain, outer wins

    @property
    def kind(self) -> str:
        return self.backend.kind


def untagged_alias(model_id: str) -> str | None:
    """Ollama's rule: a name without a tag means `:latest`."""
    if ":" in model_id.rsplit("/", 1)[-1]:
        return None
    return f"{model_id}:latest"


class Registry:
    """Lists and resolves models. Cheap to build; the first call asks the backends."""

    def __init__(self, settings, upstream):
        self.settings = settings
        self.upstream = upstream
        self._lock = threading.Lock()
        self._base: list[dict] = []
        self._fetched_at: float | None = None
        self._generation = 0
        self._rr = itertools.count()

    # --- base models -------------------------------------------------------------------------

    def base_models(self, refresh: bool = False) -> list[dict]:
        """Provider models (Ollama merged by name, then OpenAI per connection), cached MODELS_CACHE_TTL s."""
        seen = self._generation
        with self._lock:
            if self._generation != seen and self._fetched_at is not None:
                return self._base  # another thread refreshed while we waited: its answer is fresh
            if refresh or self._stale():
                self._base = self._fetch_all()
                self._fetched_at = time.monotonic()
                self._generation += 1
            return self._base

    def invalidate(self) -> None:
        with self._lock:
            self._fetched_at = None

    def _stale(self) -> bool:
        ttl = self.settings.MODELS_CACHE_TTL
        if self._fetched_at is None or ttl is None or ttl <= 0:
            return True
        return time.monotonic() - self._fetched_at >= ttl

    def _fetch_all(self) -> list[dict]:
        jobs = [(b, "tags") for b in self.upstream.ollama] + [(b, "ps") for b in self.upstream.ollama]
        jobs += [(b, "models") for b in self.upstream.openai]
        if not jobs:
            return []
        timeout = self.settings.AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST
        results = self.upstream.fan_out(self._fetch_one, jobs, timeout)
        good = []
        for (backend, what), result in results:
            if isinstance(result, BaseException):
                log.warning("model list: skipping %s (%s %s): %s", backend.label, what, _PATHS[what], result)
            else:
                good.append(((backend, what), result))
        entries = _ollama_entries(good) + _openai_entries(good)
        unique: dict[str, dict] = {}
        for entry in entries:
            unique.setdefault(entry["id"], entry)  # first occurrence wins, as across OpenAI connections
        return list(unique.values())

    def _fetch_one(self, job) -> dict:
        backend, what = job
        timeout = self.settings.AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST
        resp = self.upstream.request(backend, "GET", _PATHS[what], timeout=timeout)
        if resp.status_code >= 400:
            raise UpstreamError(f"{backend.label} answered HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError as exc:
            raise UpstreamError(f"{backend.label} sent a model list that is not JSON") from exc
        if not isinstance(data, dict):
            raise UpstreamError(f"{backend.label} sent a model list that is not a JSON object")
        return data

    def taken_ids(self) -> set[str]:
        """Ids a preset may not use: every base model id, and the untagged form of `name:latest`."""
        ids = set()
        for entry in self.base_models():
            ids.add(entry["id"])
            if entry["id"].endswith(":latest"):
                ids.add(entry["id"][: -len(":latest")])
        return ids

    # --- listing -----------------------------------------------------------------------------

    def list_models(self, user, refresh: bool = False) -> list[dict]:
        """Base models (overrides applied), then the presets this user may use."""
        bases = self.base_models(refresh)
        rows = presets.overrides()
        out, by_id = [], {}
        for entry in bases:
            row = rows.get(entry["id"])
            if row is not None and not row.is_active:
                continue  # a disabled override hides its base model from everyone
            shown = _with_override(entry, row) if row is not None else entry
            out.append(shown)
            by_id[entry["id"]] = shown
        for row in presets.usable_presets(user):
            if row.id in by_id:
                continue  # a base model with this id exists now; the base wins
            base = self._base_entry_for(row, by_id, user)
            entry = _preset_entry(row, base)
            out.append(entry)
            by_id[row.id] = entry
        return out

    def _base_entry_for(self, row, by_id: dict, user, depth: int = 0) -> dict | None:
        target = row.base_model_id
        entry = by_id.get(target) or by_id.get(untagged_alias(target) or "")
        if entry is not None or depth >= MAX_PRESET_DEPTH:
            return entry
        inner = presets.get_row(target)
        if inner is not None and inner.base_model_id and policy.can_read(user, inner):
            return self._base_entry_for(inner, by_id, user, depth + 1)
        return None

    # --- resolution --------------------------------------------------------------------------

    def resolve(self, user, model_id: Any) -> Resolved:
        """The backend and upstream name for `model_id`, or BadRequest("Model not found")."""
        if not isinstance(model_id, str) or not model_id.strip():
            raise BadRequest(MODEL_NOT_FOUND)
        return self._resolve(user, model_id, ())

    def _resolve(self, user, model_id: str, chain: tuple) -> Resolved:
        if model_id in chain or len(chain) > MAX_PRESET_DEPTH:
            raise BadRequest(MODEL_NOT_FOUND)
        bases = {e["id"]: e for e in self.base_models()}
        if model_id in bases:
            return self._resolve_base(bases[model_id])
        row = presets.get_row(model_id)
        if row is not None and row.base_model_id:
            if not row.is_active or not policy.can_read(user, row):
                raise BadRequest(MODEL_NOT_FOUND)
            inner = self._resolve(user, row.base_model_id, chain + (model_id,))
            entry = _preset_entry(row, inner.entry)
            params = {**inner.params, **(row.params or {})}
            return Resolved(entry, inner.backend, inner.upstream_model, row, params)
        alias = untagged_alias(model_id)
        if alias and alias in bases:
            return self._resolve_base(bases[alias])
        raise BadRequest(MODEL_NOT_FOUND)

    def _resolve_base(self, entry: dict) -> Resolved:
        row = presets.get_row(entry["id"])
        if row is not None and row.base_model_id is None:
            if not row.is_active:
                raise BadRequest(MODEL_NOT_FOUND)  # disabled override: the base model is switched off
        else:
            row = None
        backend = self._backend_for(entry)
        if backend is None:
            raise BadRequest(MODEL_NOT_FOUND)
        shown = _with_override(entry, row) if row is not None else entry
        if "ollama" in entry:
            upstream_model = entry["ollama"]["model"]
        else:
            upstream_model = entry["openai"].get("id") or entry["id"]
        return Resolved(shown, backend, upstream_model, row, dict(row.params or {}) if row else {})

    def _backend_for(self, entry: dict):
        if entry.get("owned_by") == "ollama":
            by_idx = {b.idx: b for b in self.upstream.ollama}
            hosts = [by_idx[i] for i in entry["ollama"].get("urls", []) if i in by_idx]
            return hosts[next(self._rr) % len(hosts)] if hosts else None  # spread load across hosts
        by_idx = {b.idx: b for b in self.upstream.openai}
        return by_idx.get(entry.get("urlIdx"))


# --- entry shapes ------------------------------------------------------------------------------

def _ollama_entries(results: list) -> list[dict]:
    merged: dict[str, dict] = {}
    loaded: dict[str, int | None] = {}
    for (backend, what), data in results:
        if what == "ps":
            for model in _models_of(data, "models"):
                loaded[model.get("model") or model.get("name")] = _epoch(model.get("expires_at"))
        elif what == "tags":
            for model in _models_of(data, "models"):
                name = model.get("model") or model.get("name")
                if not isinstance(name, str) or not name:
                    continue
                if name in merged:
                    merged[name]["ollama"]["urls"].append(backend.idx)
                else:
                    merged[name] = _ollama_entry(name, model, backend.idx)
    for name, entry in merged.items():
        if name in loaded:
            entry["loaded"] = True
            if loaded[name] is not None:
                entry["ollama"]["expires_at"] = loaded[name]
    return list(merged.values())


def _ollama_entry(name: str, model: dict, idx: int) -> dict:
    raw = {**model, "model": name, "name": model.get("name") or name, "connection_type": "local",
           "urls": [idx]}
    return {"id": name, "name": raw["name"], "object": "model", "created": 0, "owned_by": "ollama",
            "ollama": raw, "loaded": False, "connection_type": "local",
            "tags": [], "actions": [], "filters": []}


def _openai_entries(results: list) -> list[dict]:
    out = []
    for (backend, what), data in results:
        if what != "models":
            continue
        for model in _models_of(data, "data"):
            model_id = model.get("id")
            if not isinstance(model_id, str) or not model_id:
                continue
            raw = {**model, "connection_type": "external"}
            out.append({**model, "id": model_id, "object": "model", "created": model.get("created") or 0,
                        "owned_by": "openai", "connection_type": "external",
                        "name": model.get("name") or model_id,
                        "openai": raw, "provider": "", "urlIdx": backend.idx,
                        "tags": [], "actions": [], "filters": []})
    return out


def _with_override(entry: dict, row) -> dict:
    shown = copy.copy(entry)
    shown["name"] = row.name or entry["name"]
    shown["info"] = presets.public_info(row)
    shown["tags"] = presets.tags(row)
    return shown


def _preset_entry(row, base: dict | None) -> dict:
    base = base or {}
    entry = {"id": row.id, "name": row.name, "object": "model", "created": row.created_at,
             "owned_by": base.get("owned_by", "openai"),
             "connection_type": base.get("connection_type", "external"),
             "preset": True, "loaded": bool(base.get("loaded", False)), "info": presets.public_info(row),
             "tags": presets.tags(row), "actions": [], "filters": []}
    if not base:
        # Listed, but chat answers "Model not found" until the base model is back.
        entry["base_model_missing"] = True
    return entry


def _models_of(data: dict, key: str) -> list[dict]:
    items = data.get(key)
    return [m for m in items if isinstance(m, dict)] if isinstance(items, list) else []


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _epoch(value: Any) -> int | None:
    """Ollama's RFC 3339 `expires_at` (nanosecond precision) as epoch seconds."""
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00"))).timestamp())
    except ValueError:
        return None
