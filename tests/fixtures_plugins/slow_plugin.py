"""A plugin whose request phase waits ``seconds`` (an async ``on_request``), for the e2e
test that a request step cannot hold a connection beyond the route's read timeout."""

from __future__ import annotations

import asyncio
from typing import Any

from fastgw.plugins.base import CONTINUE
from fastgw.plugins.base import Plugin as BasePlugin

NAME = "slow"
PRIORITY = 10

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "seconds": {"type": "number", "minimum": 0, "default": 30, "description": "How long on_request waits."},
    },
}


class Plugin(BasePlugin):
    """Waits, then lets the request go on."""

    async def on_request(self, ctx: Any) -> int:
        await asyncio.sleep(float(self.config["seconds"]))
        return CONTINUE
