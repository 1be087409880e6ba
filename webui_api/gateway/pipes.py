"""Function ("pipe") models: Open WebUI Pipe classes loaded at start-up from PIPES_DIR and entry points."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import pipe_run
from ..errors import MODEL_NOT_FOUND, BadRequest, ConfigError

log = logging.getLogger("webui_api.gateway.pipes")

ENTRY_POINT_GROUP = "webui_api.pipes"  # an installed package's pipes: `<pipe id> = module` or `module:Pipe`
PIPE_FLAG = {"type": "pipe"}  # what Open WebUI puts on a function model's entry
_TITLE = re.compile(r"^\s*title:\s*(.+?)\s*$", re.MULTILINE)


@dataclass(eq=False)  # hashable by identity: fan_out's results are keyed by the pipe
class LoadedPipe:
    """One function: its id (the file's stem or the entry point's name) and its Pipe instance."""

    id: str
    instance: Any
    name: str
    created: int
    source: str  # where it came from, for logs

    @property
    def label(self) -> str:  # how Upstream.fan_out names an item in its logs
        return f"pipe {self.id}"


class Pipes:
    """The pipes this process loaded at start-up, listed as models and called for chat."""

    def __init__(self, settings, upstream):
        self.upstream = upstream  # its fan_out asks every manifold for its sub-models at once
        self.timeout = float(settings.AIOHTTP_CLIENT_TIMEOUT)
        self.list_timeout = float(settings.AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST)
        self.slots = threading.BoundedSemaphore(max(1, settings.PIPES_MAX_RUNNING))
        self.loaded: dict[str, LoadedPipe] = {}
        self._listing: set[str] = set()  # manifolds whose pipes() has not returned yet: never asked twice
        self._last_listed: dict[str, list] = {}  # each manifold's last good pipes(), kept when one fails
        configured = configured_valves(settings)
        for found in discovered(settings.PIPES_DIR):
            if found.id in self.loaded:
                log.error("pipe %s from %s skipped: %s already has that id", found.id, found.source,
                          self.loaded[found.id].source)
            elif _with_valves(found, configured.get(found.id, {}), settings.pipe_valve_env):
                self.loaded[found.id] = found
                log.info("pipe %s loaded from %s", found.id, found.source)

    def model_entries(self) -> list[dict]:
        """Open WebUI's /api/models entries: one per single pipe, `<id>.<sub id>` per manifold sub-pipe."""
        out = []
        subs = self._manifold_lists()
        for pipe in self.loaded.values():
            if pipe.id not in subs:
                out.append(_entry(pipe, pipe.id, pipe.name))
                continue
            prefix = getattr(pipe.instance, "name", "")
            prefix = prefix if isinstance(prefix, str) else ""
            out += [_entry(pipe, f"{pipe.id}.{sub_id}", f"{prefix}{name}") for sub_id, name in subs[pipe.id]]
        return out

    def _manifold_lists(self) -> dict[str, list]:
        """Every manifold's sub-pipes, asked at once within the model-list timeout. One that fails, is late,
        or is still busy with an earlier call keeps its last list (none before a first success)."""
        manifolds = [p for p in self.loaded.values() if hasattr(p.instance, "pipes")]
        ready = [p for p in manifolds if p.id not in self._listing]
        self._listing.update(p.id for p in ready)
        results = self.upstream.fan_out(self._sub_pipes, ready, self.list_timeout) if ready else []
        for pipe, listed in results:
            if isinstance(listed, BaseException):
                log.warning("pipe %s: pipes() failed; its last list is kept: %s", pipe.id, listed)
            else:
                self._last_listed[pipe.id] = listed
        return {p.id: self._last_listed.get(p.id, []) for p in manifolds}

    def _sub_pipes(self, pipe: LoadedPipe) -> list[tuple[str, str]]:
        """A manifold's `pipes` (a list, or a sync or async function returning one) as (id, name) pairs."""
        try:
            listed = pipe.instance.pipes
            if callable(listed):
                listed = pipe_run.finished(listed())
        finally:
            self._listing.discard(pipe.id)
        if not isinstance(listed, list):
            raise TypeError(f"pipes() returned {type(listed).__name__}, not a list")
        out = []
        for sub in listed:
            if isinstance(sub, dict) and isinstance(sub.get("id"), str) and sub["id"]:
                out.append((sub["id"], str(sub.get("name") or sub["id"])))
            else:
                log.warning("pipe %s: pipes() listed %r, which has no string `id`; skipped", pipe.id, sub)
        return out

    def chat(self, user, target, body: dict, params: dict, sources: list):
        """Run the target's pipe on the OpenAI-shaped `body` (preset and RAG already applied)."""
        function_id = str(target.upstream_model).split(".", 1)[0]
        pipe = self.loaded.get(function_id)
        if pipe is None:  # only with a catalogue built apart from these pipes (tests hand some in)
            raise BadRequest(MODEL_NOT_FOUND)
        return pipe_run.chat(self, pipe, user, target, body, params, sources)


def _entry(pipe: LoadedPipe, model_id: str, name: str) -> dict:
    return {"id": model_id, "name": name, "object": "model", "created": pipe.created, "owned_by": "openai",
            "pipe": dict(PIPE_FLAG), "has_user_valves": hasattr(pipe.instance, "UserValves"),
            "tags": [], "actions": [], "filters": []}


# --- discovery ---------------------------------------------------------------------------------

def discovered(pipes_dir: str) -> list[LoadedPipe]:
    """Every pipe that imports and instantiates: PIPES_DIR/*.py (sorted), then installed entry points. One
    that fails is logged and skipped: a broken pipe must not keep the service from starting."""
    found = []
    for path in _pipe_files(pipes_dir):
        found.append(_guarded(path.stem, str(path), lambda p=path: _module_from_file(p)))
    for point in _entry_points():
        found.append(_guarded(point.name, f"entry point {point.value}", point.load))
    return [pipe for pipe in found if pipe is not None]


def _pipe_files(pipes_dir: str) -> list[Path]:
    """PIPES_DIR's *.py, sorted, but for _helpers.py and files anyone may write: whoever can change a pipe
    runs code inside the service, so a world-writable file (or folder) is refused, as ssh refuses keys."""
    folder = Path(pipes_dir) if pipes_dir else None
    if folder is None or not folder.is_dir():
        if folder is not None:
            log.error("PIPES_DIR %s is not a directory; no pipes loaded from it", pipes_dir)
        return []
    if folder.stat().st_mode & stat.S_IWOTH:
        log.error("PIPES_DIR %s is writable by anyone; no pipes loaded from it", pipes_dir)
        return []
    out = []
    for path in sorted(folder.glob("*.py")):
        if path.stem.startswith("_"):
            continue  # _helpers.py and __init__.py are not pipes
        if path.stat().st_mode & stat.S_IWOTH:
            log.error("pipe %s skipped: %s is writable by anyone", path.stem, path)
        else:
            out.append(path)
    return out


def _entry_points() -> list:
    try:
        return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # a broken installed distribution must not stop start-up
        log.error("pipes: could not read the %s entry points: %s", ENTRY_POINT_GROUP, exc)
        return []


def _guarded(pipe_id: str, source: str, load) -> LoadedPipe | None:
    """Import `source` and instantiate its Pipe; None (logged) if anything fails."""
    if not pipe_id.isidentifier():  # Open WebUI's rule for function ids; `.` separates manifold sub-ids
        log.error("pipe %s skipped: its id %r must be letters, digits and underscores", source, pipe_id)
        return None
    try:
        loaded = load()
        pipe_class = getattr(loaded, "Pipe", loaded)
        if not isinstance(pipe_class, type):
            raise TypeError("it defines no class Pipe")
        instance = pipe_class()
        if not callable(getattr(instance, "pipe", None)):
            raise TypeError("its Pipe class has no pipe() method")
    except ModuleNotFoundError as exc:
        hint = " (install it with: pip install 'webui_api[pipes]')" if exc.name == "pydantic" else ""
        log.error("pipe %s skipped: it imports %s, which is not installed%s", pipe_id, exc.name, hint)
        return None
    except Exception as exc:
        log.error("pipe %s skipped: loading %s failed: %s: %s", pipe_id, source, type(exc).__name__, exc)
        return None
    module = sys.modules.get(getattr(pipe_class, "__module__", ""))
    name = _title(getattr(module, "__doc__", None)) or pipe_id
    return LoadedPipe(pipe_id, instance, name, _created(module), source)


def _module_from_file(path: Path) -> Any:
    """Import one pipe file as its own module (`webui_api_pipe_<id>`), as Open WebUI loads a function."""
    name = f"webui_api_pipe_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic and dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _title(doc: Any) -> str | None:
    """The `title:` line of the frontmatter docstring Open WebUI functions open with."""
    match = _TITLE.search(doc) if isinstance(doc, str) else None
    return match.group(1) if match else None


def _created(module: Any) -> int:
    try:
        return int(os.path.getmtime(module.__file__))
    except (AttributeError, TypeError, OSError):
        return int(time.time())


# --- valves ------------------------------------------------------------------------------------

def configured_valves(settings) -> dict[str, dict]:
    """PIPES_VALVES_FILE's valve values per pipe id ({} without one); a file that is not such JSON stops
    start-up, as any bad setting does."""
    path = settings.PIPES_VALVES_FILE
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"PIPES_VALVES_FILE {path} cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"PIPES_VALVES_FILE {path} must be a JSON object of objects: "
                          '{"<pipe id>": {"<VALVE>": value}}')
    return data


def _with_valves(pipe: LoadedPipe, from_file: dict, env: dict) -> bool:
    """Set the pipe's valves from the file, then PIPE_<ID>_<VALVE> variables, validated by its Valves
    class (starting from the values its __init__ set). False (logged, never the values: they hold keys)
    if they do not validate."""
    instance = pipe.instance
    valves_class = getattr(instance, "Valves", None)
    if valves_class is None or not hasattr(instance, "valves"):
        if from_file:
            log.warning("pipe %s has no Valves; the configured values are ignored", pipe.id)
        return True
    current = _as_dict(instance.valves)
    names = list(getattr(valves_class, "model_fields", None) or current)
    values = {**current, **from_file, **_env_valves(pipe.id, names, env)}
    try:
        instance.valves = valves_class(**values)
    except Exception as exc:
        log.error("pipe %s skipped: its valves do not validate: %s", pipe.id, _safe_errors(exc))
        return False
    return True


def _env_valves(pipe_id: str, names: list[str], env: dict) -> dict:
    prefix = f"PIPE_{pipe_id.upper()}_"
    return {name: env[prefix + name.upper()] for name in names if prefix + name.upper() in env}


def _as_dict(valves: Any) -> dict:
    if hasattr(valves, "model_dump"):
        return valves.model_dump()
    return dict(valves) if isinstance(valves, dict) else {}


def _safe_errors(exc: Exception) -> str:
    """A validation error without the rejected values (pydantic's text quotes them)."""
    errors = getattr(exc, "errors", None)
    try:
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors())
    except Exception:
        return type(exc).__name__
