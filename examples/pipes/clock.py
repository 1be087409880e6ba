"""
title: Clock
description: An example function model for webui_api (and Open WebUI): answers with the time in a
  configurable time zone, streamed word by word. Copy it into PIPES_DIR; set its valve with
  PIPE_CLOCK_TIMEZONE=Europe/Paris or in PIPES_VALVES_FILE as {"clock": {"TIMEZONE": "Europe/Paris"}}.
"""
from datetime import datetime
from typing import Iterator
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field


class Pipe:
    class Valves(BaseModel):
        TIMEZONE: str = Field(default="UTC", description="An IANA time zone name.")

    def __init__(self):
        self.valves = self.Valves()

    def pipe(self, body: dict, __user__: dict) -> Iterator[str]:
        now = datetime.now(ZoneInfo(self.valves.TIMEZONE))
        answer = f"Hello {__user__.get('name') or 'there'}, it is {now:%H:%M} in {self.valves.TIMEZONE}."
        for word in answer.split(" "):
            yield word + " "
