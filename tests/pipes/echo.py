"""
title: Echo
description: A single pipe written for Open WebUI: it answers with what it was given, in pieces.
"""
import json
from typing import Generator

from pydantic import BaseModel, Field


class Pipe:
    class Valves(BaseModel):
        GREETING: str = Field(default="hello")
        PIECES: int = Field(default=3)

    def __init__(self):
        self.valves = self.Valves()

    def pipe(self, body: dict, __user__: dict, __metadata__: dict = None) -> Generator[str, None, None]:
        seen = {"model": body.get("model"), "messages": body.get("messages"),
                "temperature": body.get("temperature"), "stream": body.get("stream"),
                "user": {k: __user__.get(k) for k in ("id", "email", "name", "role")},
                "greeting": self.valves.GREETING, "metadata_user": (__metadata__ or {}).get("user_id")}
        text = json.dumps(seen)
        size = max(1, len(text) // self.valves.PIECES + 1)
        for start in range(0, len(text), size):
            yield text[start:start + size]
