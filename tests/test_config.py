"""Settings parsing and the generated secret key."""
import multiprocessing
import os
import stat

import pytest

from webui_api.config import Settings, load_secret_key, parse_bool, parse_duration, parse_list
from webui_api.errors import ConfigError


@pytest.mark.parametrize("text,seconds", [("4w", 4 * 604800), ("1h30m", 5400), ("90s", 90), ("500ms", 0.5),
                                          ("2d", 172800)])
def test_duration_syntax(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["-1", "0"])
def test_duration_never(text):
    assert parse_duration(text) is None


@pytest.mark.parametrize("text", ["4x", "h", "1h 30m", "abc"])
def test_duration_rejects_garbage(text):
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_bool_and_list_parsing():
    assert parse_bool("True") is True and parse_bool("0") is False
    with pytest.raises(ConfigError):
        parse_bool("maybe")
    assert parse_list("http://a; http://b;") == ["http://a", "http://b"]


def test_env_names_and_defaults(tmp_path):
    settings = Settings.from_env(env={"DATA_DIR": str(tmp_path), "OLLAMA_BASE_URL": "http://h:1/",
                                      "JWT_EXPIRES_IN": "-1", "ENABLE_API_KEYS": "false"})
    assert settings.OLLAMA_BASE_URLS == ["http://h:1"]
    assert settings.JWT_EXPIRES_IN is None
    assert settings.ENABLE_API_KEYS is False
    assert settings.DATABASE_URL == f"sqlite:///{tmp_path}/webui.db"
    assert settings.ENV == "prod" and settings.DEFAULT_USER_ROLE == "pending"


def test_plural_env_name_wins_over_singular(tmp_path):
    settings = Settings.from_env(env={"DATA_DIR": str(tmp_path), "OLLAMA_BASE_URLS": "http://a;http://b",
                                      "OLLAMA_BASE_URL": "http://c"})
    assert settings.OLLAMA_BASE_URLS == ["http://a", "http://b"]


def test_bad_values_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="CHUNK_SIZE"):
        Settings.from_env(env={"DATA_DIR": str(tmp_path), "CHUNK_SIZE": "big"})
    with pytest.raises(ConfigError, match="DEFAULT_USER_ROLE"):
        Settings.from_env(env={"DATA_DIR": str(tmp_path), "DEFAULT_USER_ROLE": "root"})


def test_secret_key_is_generated_once_with_mode_0600(tmp_path):
    first = load_secret_key(str(tmp_path))
    path = tmp_path / ".webui_secret_key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(first) >= 32
    assert load_secret_key(str(tmp_path)) == first


def _load(path, queue):
    queue.put(load_secret_key(path))


def test_racing_processes_agree_on_one_secret(tmp_path):
    queue = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(target=_load, args=(str(tmp_path), queue))
             for _ in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(10)
    secrets = {queue.get(timeout=5) for _ in procs}
    assert len(secrets) == 1
    assert [p.name for p in tmp_path.iterdir()] == [".webui_secret_key"]  # no temp files left


def test_extracted_text_limit_is_a_positive_character_count(tmp_path):
    assert Settings.from_env(env={"DATA_DIR": str(tmp_path)}).RAG_MAX_EXTRACTED_CHARS == 20_000_000
    assert Settings.from_env(env={"DATA_DIR": str(tmp_path),
                                  "RAG_MAX_EXTRACTED_CHARS": "5000"}).RAG_MAX_EXTRACTED_CHARS == 5000
    for bad in ("0", "-1", "lots"):
        with pytest.raises(ConfigError, match="RAG_MAX_EXTRACTED_CHARS"):
            Settings.from_env(env={"DATA_DIR": str(tmp_path), "RAG_MAX_EXTRACTED_CHARS": bad})


def test_upload_dir_defaults_under_data_dir_and_the_lease_has_a_floor(tmp_path):
    assert Settings.from_env(env={"DATA_DIR": str(tmp_path)}).UPLOAD_DIR == str(tmp_path / "uploads")
    shared = Settings.from_env(env={"DATA_DIR": str(tmp_path), "UPLOAD_DIR": str(tmp_path / "nfs" / ".." / "s")})
    assert shared.UPLOAD_DIR == str(tmp_path / "s") and shared.INGEST_LEASE_SECONDS == 60.0
    with pytest.raises(ConfigError, match="INGEST_LEASE_SECONDS"):
        Settings.from_env(env={"DATA_DIR": str(tmp_path), "INGEST_LEASE_SECONDS": "0.5"})
