"""Which request fields belong to whom: Open WebUI's own, Ollama's options, what an OpenAI backend may see."""
from __future__ import annotations

# Open WebUI request fields that steer this server and are never forwarded to a backend.
WEBUI_FIELDS = frozenset({
    "files", "params", "tool_ids", "features", "variables", "chat_id", "id", "parent_id", "session_id",
    "user_message", "message_ids", "background_tasks", "filter_ids", "folder_id", "skill_ids", "terminal_id",
    "tool_servers", "chat_variables", "regeneration_prompt", "model_item", "automation_id", "metadata"})
# On /api/chat/completions `top_k` is the retrieval depth; on the passthroughs it is a sampling parameter.
# `rag_dry_run` asks chat for the messages it would send instead of an answer.
CHAT_OWN_FIELDS = WEBUI_FIELDS | {"top_k", "rag_dry_run"}
# Preset/request `params` keys that only steer this server.
WEBUI_PARAMS = frozenset({
    "system", "stream_response", "stream_delta_chunk_size", "function_calling", "reasoning_tags",
    "compact_token_threshold", "note_id", "tool_approval_mode", "model_controls", "custom_params"})

# OpenAI sampling parameters that have a same-named Ollama option.
OPENAI_SAMPLING = frozenset({"temperature", "top_p", "seed", "stop", "frequency_penalty", "presence_penalty"})
# Ollama option names a client may also send at the top level or in `params`.
OLLAMA_OPTIONS = frozenset({
    "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n", "temperature",
    "repeat_penalty", "presence_penalty", "frequency_penalty", "penalize_newline", "stop", "numa", "num_ctx",
    "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "mirostat", "mirostat_tau", "mirostat_eta",
    "tfs_z", "low_vram", "f16_kv", "use_mlock", "vocab_only", "num_gqa", "rope_frequency_base",
    "rope_frequency_scale"})
# Ollama options without an OpenAI name (those with one are converted like a request's own fields).
OLLAMA_NATIVE_OPTIONS = OLLAMA_OPTIONS - OPENAI_SAMPLING
# Keys Ollama takes at the top level of /api/chat rather than inside `options`.
OLLAMA_TOP_LEVEL = frozenset({"format", "keep_alive", "think"})
# Params an OpenAI-compatible server would refuse (top_k/min_p are accepted by many, so they pass).
OLLAMA_ONLY = (OLLAMA_NATIVE_OPTIONS | OLLAMA_TOP_LEVEL) - {"top_k", "min_p"}
