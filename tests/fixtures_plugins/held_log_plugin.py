"""A plugin whose log phase blocks the worker until a file exists (at most 10 s), for the
e2e test that a connection's last answer reaches the client before the log phase runs."""

from __future__ import annotations

import os
import time
from typing import Any

from fastgw.plugins.base import Plugin as BasePlugin

NAME = "held-log"
PRIORITY = 10

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["release_file"],
    "properties": {
        "release_file": {"type": "string", "description": "on_log returns once this file exists."},
    },
}


class Plugin(BasePlugin):
    """Holds the log phase (and so the worker) until ``release_file`` appears."""

    def on_log(self, ctx: Any) -> None:
        deadline = time.monotonic() + 10
        while not os.path.exists(self.config["release_file"]) and time.monotonic() < deadline:
            time.sleep(0.01)
