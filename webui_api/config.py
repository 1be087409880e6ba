"""Settings read once from the environment (Open WebUI's variable names where it has one)."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import ConfigError

POSTGRES_SCHEMES = ("postgresql", "postgres")  # DATABASE_URL schemes that mean PostgreSQL


def url_scheme(url: str) -> str:
    return url.split(":", 1)[0].lower()


INGEST_WORKERS = 2  # background ingestion threads per worker
DEFAULT_BM25_TOKENIZER = "porter unicode61 remove_diacritics 2"  # FTS5: Porter stemming for English
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float | None:
    """Open WebUI's duration syntax (`4w`, `1h30m`); `-1` or `0` mean "never" (None)."""
    text = str(text).strip()
    if text in ("-1", "0", ""):
        return None
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or total <= 0:
        raise ConfigError(f"JWT_EXPIRES_IN: cannot read duration {text!r} (use e.g. 4w, 1h30m, -1)")
    return total


def parse_bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"not a boolean: {text!r}")


def parse_list(text: Any, sep: str = ";") -> list[str]:
    if isinstance(text, (list, tuple)):
        return [str(item).strip() for item in text]
    return [part.strip() for part in str(text).split(sep) if part.strip()]


def parse_json_object(text: Any) -> dict:
    """A JSON object such as OLLAMA_API_CONFIGS (`{"0": {"enable": true, ...}}`); empty means `{}`."""
    if isinstance(text, dict):
        return text
    value = json.loads(text) if str(text).strip() else {}
    if not isinstance(value, dict):
        raise ConfigError(f"expected a JSON object, got {text!r}")
    return value


def _opt_float(text: Any) -> float | None:
    return None if str(text).strip() in ("", "none", "None") else float(text)


def _setting(env: str | tuple[str, ...], default: Any, parse: Callable[[Any], Any] = str) -> Any:
    names = (env,) if isinstance(env, str) else env
    metadata = {"env": names, "parse": parse}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Settings:
    """Every knob of the service. Field metadata names the environment variables that set it."""

    # --- storage
    DATA_DIR: str = _setting("DATA_DIR", "./data")
    DATABASE_URL: str = _setting("DATABASE_URL", "")  # sqlite:///<path> (default) or postgresql://…
    DATABASE_POOL_SIZE: int = _setting("DATABASE_POOL_SIZE", 0, int)  # 0: derived from the thread count
    # SQLite page cache per connection; a worker keeps one connection per thread for the thread's life, so
    # it holds up to threads x this (at 16 MB and 32 threads a worker grew for as long as the file did).
    SQLITE_CACHE_MB: float = _setting("SQLITE_CACHE_MB", 2.0, float)
    # Vector collections a worker keeps loaded (least recently used leave): every upload is a collection.
    RAG_CACHED_COLLECTIONS: int = _setting("RAG_CACHED_COLLECTIONS", 256, int)
    # How long the index log keeps what changed in each vector collection (`webui-api compact` prunes older
    # rows): a host whose cache is older than this rebuilds those collections from the database instead.
    INDEX_LOG_RETENTION: float | None = _setting("INDEX_LOG_RETENTION", 7 * 86400.0, parse_duration)
    # Uploaded bytes (default DATA_DIR/uploads). Several hosts share one directory on a network filesystem.
    UPLOAD_DIR: str = _setting("UPLOAD_DIR", "")
    # --- auth
    WEBUI_SECRET_KEY: str = _setting(("WEBUI_SECRET_KEY", "WEBUI_JWT_SECRET_KEY"), "")
    JWT_EXPIRES_IN: float | None = _setting("JWT_EXPIRES_IN", 4 * 604800.0, parse_duration)
    ENABLE_SIGNUP: bool | None = _setting("ENABLE_SIGNUP", None, parse_bool)
    DEFAULT_USER_ROLE: str = _setting("DEFAULT_USER_ROLE", "pending")
    ENABLE_API_KEYS: bool = _setting("ENABLE_API_KEYS", True, parse_bool)
    # Open WebUI's global allowlist for API keys: a path equal to an entry or under `entry/` (403 otherwise).
    ENABLE_API_KEYS_ENDPOINT_RESTRICTIONS: bool = _setting(
        ("ENABLE_API_KEYS_ENDPOINT_RESTRICTIONS", "ENABLE_API_KEY_ENDPOINT_RESTRICTIONS"), False, parse_bool)
    API_KEYS_ALLOWED_ENDPOINTS: list[str] = _setting(
        ("API_KEYS_ALLOWED_ENDPOINTS", "API_KEY_ALLOWED_ENDPOINTS"), [], lambda v: parse_list(v, ","))
    WEBUI_ADMIN_EMAIL: str = _setting("WEBUI_ADMIN_EMAIL", "")
    WEBUI_ADMIN_PASSWORD: str = _setting("WEBUI_ADMIN_PASSWORD", "")
    WEBUI_ADMIN_NAME: str = _setting("WEBUI_ADMIN_NAME", "Admin")
    SIGNIN_RATE_LIMIT: int = _setting("SIGNIN_RATE_LIMIT", 15, int)
    SIGNIN_RATE_WINDOW: float = _setting("SIGNIN_RATE_WINDOW", 180.0, float)
    PASSWORD_HASH_COST: int = _setting("PASSWORD_HASH_COST", 2**14, int)
    # --- http
    ENV: str = _setting("ENV", "prod")
    CORS_ALLOW_ORIGIN: list[str] = _setting("CORS_ALLOW_ORIGIN", [], parse_list)
    TRUSTED_PROXY_HOPS: int = _setting("TRUSTED_PROXY_HOPS", 0, int)
    # Any request body but an upload (413 beyond, before parsing): room for a long chat with images inline.
    MAX_JSON_BODY_MB: float = _setting("MAX_JSON_BODY_MB", 16.0, float)
    LOG_FORMAT: str = _setting("LOG_FORMAT", "text")
    # --- backends (gateway)
    ENABLE_OLLAMA_API: bool = _setting("ENABLE_OLLAMA_API", True, parse_bool)
    OLLAMA_BASE_URLS: list[str] = _setting(("OLLAMA_BASE_URLS", "OLLAMA_BASE_URL"),
                                           ["http://localhost:11434"], parse_list)
    ENABLE_OPENAI_API: bool = _setting("ENABLE_OPENAI_API", True, parse_bool)
    OPENAI_API_BASE_URLS: list[str] = _setting(("OPENAI_API_BASE_URLS", "OPENAI_API_BASE_URL"),
                                               [], parse_list)
    OPENAI_API_KEYS: list[str] = _setting(("OPENAI_API_KEYS", "OPENAI_API_KEY"), [], parse_list)
    # Per connection, keyed by index (or URL): enable, key, prefix_id, model_ids, tags, headers.
    OLLAMA_API_CONFIGS: dict = _setting("OLLAMA_API_CONFIGS", {}, parse_json_object)
    OPENAI_API_CONFIGS: dict = _setting("OPENAI_API_CONFIGS", {}, parse_json_object)
    ENABLE_FORWARD_USER_INFO_HEADERS: bool = _setting("ENABLE_FORWARD_USER_INFO_HEADERS", False, parse_bool)
    UPSTREAM_CONNECT_TIMEOUT: float = _setting("UPSTREAM_CONNECT_TIMEOUT", 5.0, float)
    AIOHTTP_CLIENT_TIMEOUT: float = _setting("AIOHTTP_CLIENT_TIMEOUT", 300.0, float)
    AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST: float = _setting(
        ("AIOHTTP_CLIENT_TIMEOUT_MODEL_LIST", "AIOHTTP_CLIENT_TIMEOUT_OPENAI_MODEL_LIST"), 3.0, float)
    MODELS_CACHE_TTL: float = _setting("MODELS_CACHE_TTL", 10.0, float)
    UPSTREAM_POOL_SIZE: int = _setting(("UPSTREAM_POOL_SIZE", "GUNICORN_THREADS"), 16, int)
    # --- function ("pipe") models: Open WebUI Pipe classes loaded at start-up, never uploaded over HTTP
    PIPES_DIR: str = _setting("PIPES_DIR", "")
    PIPES_VALVES_FILE: str = _setting("PIPES_VALVES_FILE", "")  # {"<pipe id>": {"<VALVE>": value}}
    # Pipe calls running at once per worker (503 beyond): a pipe that never returns holds its thread, so
    # this bounds the threads a hung pipe can pile up.
    PIPES_MAX_RUNNING: int = _setting("PIPES_MAX_RUNNING", 32, int)
    # --- RAG
    RAG_EMBEDDING_ENGINE: str = _setting("RAG_EMBEDDING_ENGINE", "ollama")
    RAG_EMBEDDING_MODEL: str = _setting("RAG_EMBEDDING_MODEL", "nomic-embed-text")
    RAG_EMBEDDING_BATCH_SIZE: int = _setting(("RAG_EMBEDDING_BATCH_SIZE", "RAG_EMBEDDING_OPENAI_BATCH_SIZE"),
                                             64, int)
    RAG_OLLAMA_BASE_URL: str = _setting("RAG_OLLAMA_BASE_URL", "")
    RAG_OLLAMA_API_KEY: str = _setting("RAG_OLLAMA_API_KEY", "")
    RAG_OPENAI_API_BASE_URL: str = _setting("RAG_OPENAI_API_BASE_URL", "")
    RAG_OPENAI_API_KEY: str = _setting("RAG_OPENAI_API_KEY", "")
    CHUNK_SIZE: int = _setting("CHUNK_SIZE", 1000, int)
    CHUNK_OVERLAP: int = _setting("CHUNK_OVERLAP", 100, int)
    RAG_TOP_K: int = _setting("RAG_TOP_K", 3, int)
    RAG_RELEVANCE_THRESHOLD: float = _setting("RAG_RELEVANCE_THRESHOLD", 0.0, float)
    ENABLE_RAG_HYBRID_SEARCH: bool = _setting("ENABLE_RAG_HYBRID_SEARCH", False, parse_bool)
    # Weight and fusion chosen on Cranfield's development split with all-MiniLM-L6-v2 (bench/rag_quality.py):
    # weighted score fusion at 0.2 beat reciprocal rank (Open WebUI's default weight is 0.5).
    RAG_HYBRID_BM25_WEIGHT: float = _setting("RAG_HYBRID_BM25_WEIGHT", 0.2, float)
    RAG_HYBRID_FUSION: str = _setting("RAG_HYBRID_FUSION", "score")  # "score" (weighted) | "rrf"
    RAG_BM25_TOKENIZER: str = _setting("RAG_BM25_TOKENIZER", DEFAULT_BM25_TOKENIZER)
    RAG_TOP_K_RERANKER: int = _setting("RAG_TOP_K_RERANKER", 3, int)
    RAG_RERANKING_ENGINE: str = _setting("RAG_RERANKING_ENGINE", "")
    RAG_RERANKING_MODEL: str = _setting("RAG_RERANKING_MODEL", "")
    RAG_EXTERNAL_RERANKER_URL: str = _setting("RAG_EXTERNAL_RERANKER_URL", "")
    RAG_EXTERNAL_RERANKER_API_KEY: str = _setting("RAG_EXTERNAL_RERANKER_API_KEY", "")
    RAG_EXTERNAL_RERANKER_TIMEOUT: float = _setting("RAG_EXTERNAL_RERANKER_TIMEOUT", 60.0, float)
    RAG_TEMPLATE: str = _setting("RAG_TEMPLATE", "")
    RAG_SYSTEM_CONTEXT: bool = _setting("RAG_SYSTEM_CONTEXT", False, parse_bool)
    RAG_FILE_MAX_SIZE: float | None = _setting("RAG_FILE_MAX_SIZE", 100.0, _opt_float)
    # Characters of text one file may yield (413 beyond): 20 million is ~10,000 pages, 20,000 chunks at the
    # default CHUNK_SIZE, minutes of embedding; it refuses the DOCX/PDF/CSV that unpack to hundreds of
    # millions (254 M from a 646 KB DOCX once held a worker for half an hour) and passes any real document.
    RAG_MAX_EXTRACTED_CHARS: int = _setting("RAG_MAX_EXTRACTED_CHARS", 20_000_000, int)
    # A file being processed is leased in the database for this long and renewed every third of it; a lease
    # not renewed (its host died) lets another process, on any host, take the file over.
    INGEST_LEASE_SECONDS: float = _setting("INGEST_LEASE_SECONDS", 60.0, float)
    RAG_ALLOWED_FILE_EXTENSIONS: list[str] = _setting(
        "RAG_ALLOWED_FILE_EXTENSIONS", [], lambda v: [e.lower().lstrip(".") for e in parse_list(v, ",")])

    extra: dict = field(default_factory=dict)
    pipe_valve_env: dict = field(default_factory=dict)  # every PIPE_<ID>_<VALVE> variable (gateway/pipes.py)

    @classmethod
    def from_env(cls, env: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> "Settings":
        """Build settings from `env` (default: os.environ), then `overrides` (env names, typed or text)."""
        source = dict(os.environ if env is None else env)
        source.update(overrides or {})
        values, known = {}, set()
        for fld in dataclasses.fields(cls):
            names = fld.metadata.get("env")
            if not names:
                continue
            known.update(names)
            for name in names:
                if name in source and source[name] is not None:
                    values[fld.name] = _parse(fld, name, source[name])
                    break
        settings = cls(**values)
        settings.extra = {k: v for k, v in (overrides or {}).items() if k not in known}
        settings.pipe_valve_env = {k: v for k, v in source.items() if k.startswith("PIPE_")}
        settings.finish()
        return settings

    def finish(self) -> None:
        """Derive defaults that depend on other settings and check values."""
        if self.DEFAULT_USER_ROLE not in ("pending", "user", "admin"):
            raise ConfigError("DEFAULT_USER_ROLE must be pending, user or admin")
        if self.RAG_MAX_EXTRACTED_CHARS < 1:
            raise ConfigError("RAG_MAX_EXTRACTED_CHARS must be a positive number of characters")
        if self.INGEST_LEASE_SECONDS < 1:
            raise ConfigError("INGEST_LEASE_SECONDS must be at least 1 second")
        self.DATA_DIR = str(Path(self.DATA_DIR).resolve())
        self.UPLOAD_DIR = str(Path(self.UPLOAD_DIR or Path(self.DATA_DIR) / "uploads").resolve())
        if not self.DATABASE_URL:
            self.DATABASE_URL = f"sqlite:///{self.DATA_DIR}/webui.db"
        if self.shared_database and not self.WEBUI_SECRET_KEY:
            raise ConfigError("WEBUI_SECRET_KEY must be set with a PostgreSQL DATABASE_URL: every host must sign "
                              "and check tokens with the same key, and a generated one would differ per host")
        self.OLLAMA_BASE_URLS = [u.rstrip("/") for u in self.OLLAMA_BASE_URLS]
        self.OPENAI_API_BASE_URLS = [u.rstrip("/") for u in self.OPENAI_API_BASE_URLS]

    @property
    def shared_database(self) -> bool:
        """PostgreSQL: several hosts may share the database (and must then share the secret key)."""
        return url_scheme(self.DATABASE_URL) in POSTGRES_SCHEMES

    @property
    def database_pool_size(self) -> int:
        """PostgreSQL connections per worker at most: one per request thread, one per ingest thread, and
        two for start-up and background sweeps. Opened lazily, so an idle worker holds few."""
        return self.DATABASE_POOL_SIZE or self.UPSTREAM_POOL_SIZE + INGEST_WORKERS + 2

    @property
    def docs_enabled(self) -> bool:
        return self.ENV == "dev"


def _parse(fld: dataclasses.Field, name: str, raw: Any) -> Any:
    if not isinstance(raw, str) and fld.metadata["parse"] is not parse_duration:
        return raw  # already typed (tests and callers may hand in real values)
    try:
        return fld.metadata["parse"](raw)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: invalid value {raw!r}") from exc


def load_secret_key(data_dir: str) -> str:
    """Read DATA_DIR/.webui_secret_key, creating it (mode 0600) exactly once even when workers race."""
    path = Path(data_dir) / ".webui_secret_key"
    if path.exists():
        return _read_secret(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".webui_secret_key.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48))
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # atomic: the first worker wins, the others read its complete file
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    secret = path.read_text().strip()
    if not secret:
        raise ConfigError(f"{path} is empty; delete it or set WEBUI_SECRET_KEY")
    return secret
