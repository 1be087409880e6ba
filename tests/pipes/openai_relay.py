"""
title: OpenAI relay
author: webui_api tests
version: 0.1
description: A manifold pipe written for Open WebUI, using only its documented Pipe interface: Valves, pipes()
  listing the GPT models of an OpenAI-compatible API, pipe() relaying the chat there (stream and not).
"""
import requests
from pydantic import BaseModel, Field


class Pipe:
    class Valves(BaseModel):
        NAME_PREFIX: str = Field(default="RELAY/", description="Put before each model's name.")
        OPENAI_API_BASE_URL: str = Field(default="https://api.openai.com/v1")
        OPENAI_API_KEY: str = Field(default="")

    def __init__(self):
        self.valves = self.Valves()

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.valves.OPENAI_API_KEY}", "Content-Type": "application/json"}

    def pipes(self):
        if not self.valves.OPENAI_API_KEY:
            return [{"id": "error", "name": "API key not provided."}]
        r = requests.get(f"{self.valves.OPENAI_API_BASE_URL}/models", headers=self._headers(), timeout=10)
        r.raise_for_status()
        return [{"id": m["id"], "name": f'{self.valves.NAME_PREFIX}{m.get("name", m["id"])}'}
                for m in r.json()["data"] if "gpt" in m["id"]]

    def pipe(self, body: dict, __user__: dict):
        model_id = body["model"][body["model"].find(".") + 1:]
        payload = {**body, "model": model_id}
        r = requests.post(f"{self.valves.OPENAI_API_BASE_URL}/chat/completions", json=payload,
                          headers=self._headers(), stream=True, timeout=30)
        r.raise_for_status()
        if body.get("stream", False):
            return r.iter_lines()
        return r.json()
