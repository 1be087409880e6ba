"""The model catalogue: every backend's models (one cache), SQLite presets, and which backend serves what."""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from . import model_lists, presets
from .. import db
from ..auth import keys, policy
from ..errors import (MODEL_NOT_FOUND, ApiError, BadRequest, Forbidden, NotFound, ServiceUnavailable,
                      UpstreamError)
from ..upstream import Backend

MAX_PRESET_DEPTH = 5  # presets may wrap presets; deeper chains (or cycles) resolve to "Model not found"
REFETCH_AFTER = 1.0  # seconds: a lookup miss asks the backends again only if the cached lists are older
OLLAMA_DISABLED = "The Ollama API is disabled. Please enable it to use this feature."
OPENAI_DISABLED = "OpenAI API is disabled"
_NAMES = {"ollama": "Ollama", "openai": "OpenAI"}


def untagged_alias(model_id: str) -> str | None:
    """Ollama's rule: a name without a tag means `:latest`."""
    if ":" in model_id.rsplit("/", 1)[-1]:
        return None
    return f"{model_id}:latest"


def permit(model_id: Any) -> None:
    """403 naming the model when the calling API key's model allowlist leaves it out (an untagged name
    means `:latest` on both sides); every route that names a model passes here."""
    allowed = keys.model_allowlist()
    if allowed is not None and isinstance(model_id, str) and not _key_allows(allowed, model_id):
        raise Forbidden(f"This API key may not use the model '{model_id}'.")


def key_visible(entries: list[dict], id_key: str = "id") -> list[dict]:
    """A model list narrowed to what the calling API key may use."""
    allowed = keys.model_allowlist()
    if allowed is None:
        return entries
    return [entry for entry in entries if _key_allows(allowed, str(entry.get(id_key)))]


def _key_allows(allowed: frozenset, model_id: str) -> bool:
    return (untagged_alias(model_id) or model_id) in {untagged_alias(a) or a for a in allowed}


@dataclass
class Snapshot:
    """The backends' models as fetched at `fetched_at`, per kind and together."""

    ollama: list[dict]
    openai: list[dict]
    unanswered: dict  # kind -> why each backend whose model list did not arrive is missing (names it)
    fetched_at: float
    openai_hosts: dict = field(default_factory=dict)  # OpenAI model id -> every connection index listing it
    pipes: list[dict] = field(default_factory=list)  # function models, listed first as Open WebUI does
    by_id: dict[str, dict] = field(init=False, repr=False)  # every kind; the first of an id wins
    _by_kind: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.by_id = {}
        for entry in self.pipes + self.ollama + self.openai:
            self.by_id.setdefault(entry["id"], entry)
        self._by_kind = {None: self.by_id, "ollama": {e["id"]: e for e in self.ollama},
                         "openai": {e["id"]: e for e in self.openai}}

    def find(self, model_id: str, kind: str | None = None) -> dict | None:
        """The entry listed as `model_id`, or as `model_id:latest` when the name is untagged."""
        by_id = self._by_kind[kind]
        return by_id.get(model_id) or by_id.get(untagged_alias(model_id) or "")


@dataclass
class Resolved:
    """A chat/embedding target: the listed entry, the backends serving it and the model name they know."""

    entry: dict
    hosts: list[Backend]  # every backend listing the model (Upstream.send picks and fails over)
    upstream_model: str
    preset: Any = None                # the outermost db.Preset (preset or override row), if any
    params: dict = field(default_factory=dict)  # stored params along the preset chain, outer wins

    @property
    def backend(self) -> Backend:
        if not self.hosts:  # a function model: only chat runs it (gateway/pipes.py), no route may relay it
            raise BadRequest(f"Model '{self.entry['id']}' is a function (pipe) model, which only chat runs.")
        return self.hosts[0]

    @property
    def kind(self) -> str:
        """"ollama", "openai", or "pipe" (a function model: no backend, gateway/pipes.py runs it)."""
        return "pipe" if model_lists.is_pipe(self.entry) else self.backend.kind


class Catalog:
    """Lists and resolves models for every route. Cheap to build; the first call asks the backends."""

    def __init__(self, settings, upstream, pipes=None):
        self.settings = settings
        self.upstream = upstream
        self.pipes = pipes  # gateway.pipes.Pipes: the function models loaded at start-up, if any
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._changes = itertools.count(1)
        self._last_change = 0       # bumped by invalidate()
        self._snapshot_change = -1  # _last_change when the cached snapshot's fetch began
        self._last_lists: dict[tuple, list] = {}  # (backend, "tags"|"models") -> the last list it sent
        # Other gunicorn workers and hosts learn of a change through the database's "models" stamp.
        self._seen_stamp = self._shared_stamp()

    # --- the one cache -----------------------------------------------------------------------

    def snapshot(self, refresh: bool = False) -> Snapshot:
        """The backends' models, cached MODELS_CACHE_TTL s; concurrent misses share one fetch."""
        self._notice_other_workers()
        seen = self._snapshot
        with self._lock:
            if self._snapshot is not seen and self._snapshot_change == self._last_change:
                return self._snapshot  # another thread fetched while we waited: its answer is fresh
            if refresh or self._stale():
                change = self._last_change
                self._snapshot = self._fetch()
                self._snapshot_change = change
            return self._snapshot

    def invalidate(self) -> None:
        """The models changed (pulled, created, deleted, a preset edited): ask the backends next time.
        Never waits for a fetch under way; one that began before this call does not count as fresh."""
        self._last_change = next(self._changes)
        try:
            db.bump_stamp("models")  # every other worker and host drops its lists on its next lookup
            self._seen_stamp = self._shared_stamp()
        except pw.PeeweeException:
            pass  # a read-only or locked database only costs the other workers their TTL

    def _notice_other_workers(self) -> None:
        """One indexed read per lookup: another worker's invalidate() bumped the "models" stamp."""
        stamp = self._shared_stamp()
        if stamp != self._seen_stamp:
            self._seen_stamp = stamp
            self._last_change = next(self._changes)

    @staticmethod
    def _shared_stamp() -> tuple | None:
        try:
            return db.database.database, db.read_stamp("models")
        except pw.PeeweeException:
            return None

    def _stale(self) -> bool:
        ttl = self.settings.MODELS_CACHE_TTL
        if self._snapshot is None or self._snapshot_change != self._last_change or not ttl or ttl <= 0:
            return True
        return time.monotonic() - self._snapshot.fetched_at >= ttl

    def _fetch(self) -> Snapshot:
        results = model_lists.fetch(self.upstream, self.settings.AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST)
        unanswered = model_lists.failures(results)
        results = model_lists.remembered(results, self._last_lists)  # under self._lock (snapshot())
        pipes = self.pipes.model_entries() if self.pipes is not None else []
        return Snapshot(model_lists.ollama_entries(results), model_lists.openai_entries(results),
                        unanswered, time.monotonic(), model_lists.openai_hosts(results), pipes)

    def find(self, model_id: str, kind: str | None = None) -> dict | None:
        """The base entry for `model_id` (untagged means `:latest`). On a miss the backends are asked
        again if the cached lists are older than REFETCH_AFTER: the model may have been pulled elsewhere."""
        snapshot = self.snapshot()
        entry = snapshot.find(model_id, kind)
        if entry is None and time.monotonic() - snapshot.fetched_at > REFETCH_AFTER:
            entry = self.snapshot(refresh=True).find(model_id, kind)
        return entry

    # --- listing -----------------------------------------------------------------------------

    def base_models(self, refresh: bool = False) -> list[dict]:
        """Provider models: Ollama merged by name, then OpenAI per connection."""
        return list(self.snapshot(refresh).by_id.values())

    def taken_ids(self) -> set[str]:
        """Ids a preset may not use: every base model id, and the untagged form of `name:latest`."""
        ids = set()
        for entry in self.base_models():
            ids.add(entry["id"])
            if entry["id"].endswith(":latest"):
                ids.add(entry["id"][: -len(":latest")])
        return ids

    def list_models(self, user, refresh: bool = False) -> list[dict]:
        """Base models (overrides applied), then the presets this user may use."""
        rows = presets.overrides()
        out, by_id = [], {}
        for entry in self.base_models(refresh):
            row = rows.get(entry["id"])
            if row is not None and not row.is_active:
                continue  # a disabled override hides its base model from everyone
            shown = model_lists.with_override(entry, row) if row is not None else entry
            out.append(shown)
            by_id[entry["id"]] = shown
        for row in presets.usable_presets(user):
            if row.id in by_id:
                continue  # a base model with this id exists now; the base wins
            entry = model_lists.preset_entry(row, self._base_entry_for(row, by_id, user))
            out.append(entry)
            by_id[row.id] = entry
        return key_visible(out)

    def _base_entry_for(self, row, by_id: dict, user, depth: int = 0) -> dict | None:
        target = row.base_model_id
        entry = by_id.get(target) or by_id.get(untagged_alias(target) or "")
        if entry is not None or depth >= MAX_PRESET_DEPTH:
            return entry
        inner = presets.lookup(target)
        if inner is not None and inner.base_model_id and policy.can_read(user, inner):
            return self._base_entry_for(inner, by_id, user, depth + 1)
        return None

    def ollama_tags(self) -> dict:
        """Ollama's `/api/tags` body for all backends together: {"models": [... with "urls"]}."""
        self.pool("ollama")  # 503 when the Ollama API is disabled
        return {"models": key_visible([entry["ollama"] for entry in self.snapshot().ollama], "model")}

    def openai_models(self) -> list[dict]:
        """Every connection's models in Open WebUI's /openai/models shape (`urlIdx`, raw under `openai`)."""
        self.pool("openai")  # 503 when the OpenAI API is disabled
        return key_visible([model_lists.connection_entry(entry) for entry in self.snapshot().openai])

    # --- resolution --------------------------------------------------------------------------

    def resolve(self, user, model_id: Any) -> Resolved:
        """Chat's target for `model_id` (a base model or a preset), or BadRequest("Model not found"), or
        UpstreamError when it may be missing because a backend's model list did not arrive."""
        if not isinstance(model_id, str) or not model_id.strip():
            raise BadRequest(MODEL_NOT_FOUND)
        permit(model_id)
        return self._resolve(user, model_id, ())

    def _resolve(self, user, model_id: str, chain: tuple) -> Resolved:
        if model_id in chain or len(chain) > MAX_PRESET_DEPTH:
            raise BadRequest(MODEL_NOT_FOUND)
        listed = self.snapshot().by_id.get(model_id)
        row = None if listed is not None else presets.lookup(model_id)
        if row is not None and row.base_model_id:
            if not row.is_active or not policy.can_read(user, row):
                raise BadRequest(MODEL_NOT_FOUND)
            inner = self._resolve(user, row.base_model_id, chain + (model_id,))
            entry = model_lists.preset_entry(row, inner.entry)
            params = {**inner.params, **(row.params or {})}
            return Resolved(entry, inner.hosts, inner.upstream_model, row, params)
        entry = listed or self.find(model_id)
        if entry is None:
            raise self.missing(model_id, None, BadRequest(MODEL_NOT_FOUND))
        return self._resolve_base(entry)

    def _resolve_base(self, entry: dict) -> Resolved:
        row = presets.lookup(entry["id"])
        if row is not None and row.base_model_id is None:
            if not row.is_active:
                raise BadRequest(MODEL_NOT_FOUND)  # disabled override: the base model is switched off
        else:
            row = None
        hosts = self.hosts_of(entry)
        if not hosts and not model_lists.is_pipe(entry):
            raise BadRequest(MODEL_NOT_FOUND)
        shown = model_lists.with_override(entry, row) if row is not None else entry
        params = dict(row.params or {}) if row else {}
        return Resolved(shown, hosts, upstream_name(entry, hosts[0] if hosts else None), row, params)

    def hosts_for(self, kind: str, model: Any) -> tuple[list[Backend], str]:
        """A passthrough's backends of `kind` serving `model` and the name they know. NotFound("Model
        'x' was not found"), UpstreamError when a backend's list did not arrive, ServiceUnavailable when
        `kind` is off."""
        self.pool(kind)
        if not isinstance(model, str) or not model:
            raise NotFound(f"Model '{model or ''}' was not found")
        entry = self.find(model, kind)
        hosts = self.hosts_of(entry) if entry is not None else []
        if hosts:
            return hosts, upstream_name(entry, hosts[0])
        raise self.missing(model, kind, NotFound(f"Model '{model}' was not found"))

    def missing(self, model: str, kind: str | None, not_found: ApiError) -> ApiError:
        """The error for a model no model list names: `not_found` when every backend (of `kind`) sent its
        list, else a 502 naming those that did not: the model may be theirs."""
        unanswered = self.snapshot().unanswered
        reasons = [r for k in ([kind] if kind else list(unanswered)) for r in unanswered.get(k, [])]
        if not reasons:
            return not_found
        return UpstreamError(f"Model '{model}' could not be found: a backend's model list did not arrive "
                             f"({'; '.join(reasons)})")

    def pool(self, kind: str) -> list[Backend]:
        """The enabled backends of `kind`; ServiceUnavailable when there is none (the API is off)."""
        pool = self.upstream.ollama if kind == "ollama" else self.upstream.openai
        if not pool:
            raise ServiceUnavailable(OLLAMA_DISABLED if kind == "ollama" else OPENAI_DISABLED)
        return pool

    def backend_at(self, kind: str, idx: int) -> Backend:
        """The backend at position `idx` of OLLAMA_BASE_URLS / OPENAI_API_BASE_URLS, else NotFound (also
        when that connection is disabled in its *_API_CONFIGS)."""
        found = next((backend for backend in self.pool(kind) if backend.idx == idx), None)
        if found is None:
            raise NotFound(f"No {_NAMES[kind]} backend with index {idx}")
        return found

    def hosts_of(self, entry: dict) -> list[Backend]:
        """Every backend listing the model: Ollama's merged `urls`; for OpenAI, each connection whose list
        has the id (the entry shows the first one's `urlIdx`). Upstream.send spreads calls over them."""
        if model_lists.is_pipe(entry):
            return []  # run in-process by gateway/pipes.py
        if entry.get("owned_by") == "ollama":
            pool, indexes = self.upstream.ollama, entry["ollama"].get("urls", [])
        else:
            pool = self.upstream.openai
            listed = self._snapshot.openai_hosts if self._snapshot is not None else {}
            indexes = listed.get(entry["id"]) or [entry.get("urlIdx")]
        by_idx = {b.idx: b for b in pool}
        return [by_idx[i] for i in indexes if i in by_idx]

    # --- presets: each change drops the cache, so every route sees it at once ------------------

    def create_preset(self, user, form: dict) -> Any:
        return self._changed(presets.create(user, form, taken_ids=self.taken_ids()))

    def update_preset(self, user, preset_id: str, form: dict) -> Any:
        return self._changed(presets.update(user, preset_id, form))

    def set_preset_access(self, user, preset_id: str, form: dict) -> Any:
        return self._changed(presets.set_access(user, preset_id, form))

    def toggle_preset(self, user, preset_id: str) -> Any:
        return self._changed(presets.toggle(user, preset_id))

    def delete_preset(self, user, preset_id: str) -> Any:
        return self._changed(presets.delete(user, preset_id))

    def _changed(self, result: Any) -> Any:
        self.invalidate()
        return result


def upstream_name(entry: dict, host: Backend | None = None) -> str:
    """The name the backend itself knows the model by (without the connection's `prefix_id.`)."""
    if model_lists.is_pipe(entry):
        return entry["id"]  # a function model: the pipe gets its own id (`<function>.<sub>` in a manifold)
    name = entry["ollama"]["model"] if "ollama" in entry else entry["openai"].get("id") or entry["id"]
    prefix = f"{host.prefix_id}." if host is not None and host.prefix_id else ""
    return name[len(prefix):] if prefix and name.startswith(prefix) else name
