"""Placeholder: per-request telemetry that plain modules can report into without Flask (being written)."""


def request_id():
    return None


def record_backend(seconds, backend, error=False):
    pass


def record_tokens(prompt_tokens, completion_tokens):
    pass
