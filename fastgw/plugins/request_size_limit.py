"""request-size-limit: refuse request bodies larger than a limit with 413.

The limit is the plugin's ``request_body_limit``, published as ``Pipeline.max_body`` so the
server answers 413 as soon as the ``Content-Length`` or the streamed bytes pass it, without
buffering; the request step repeats the Content-Length check so the limit holds even on a
server path that skips it (in C: ``BodySizeStep``).
"""

from __future__ import annotations

from typing import Any

from fastgw._core import BodySizeStep
from fastgw.plugins.base import Plugin as BasePlugin
from fastgw.plugins.base import PluginScope

NAME = "request-size-limit"
PRIORITY = 951

_UNITS = {"bytes": 1, "kilobytes": 1024, "megabytes": 1024 * 1024}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "allowed_payload_size": {"type": "integer", "minimum": 0, "default": 128,
                                 "description": "Largest accepted request body, in size_unit."},
        "size_unit": {"type": "string", "enum": list(_UNITS), "default": "megabytes",
                      "description": "Unit of allowed_payload_size."},
    },
}


class Plugin(BasePlugin):
    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        self.request_body_limit = config["allowed_payload_size"] * _UNITS[config["size_unit"]]
        self.native = BodySizeStep(self.request_body_limit)

    def on_request(self, ctx: Any) -> int:
        return self.native.on_request(ctx)
