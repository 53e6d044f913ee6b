"""acl: allow or deny the authenticated consumer by group (run after an auth plugin).

No consumer: 401 (the route needs an auth plugin before acl). A consumer in a
``deny_groups`` group, or in none of the ``allow_groups`` (when given): 403.
"""

from __future__ import annotations

from typing import Any

from fastgw._core import AclStep
from fastgw.plugins.base import Plugin as BasePlugin
from fastgw.plugins.base import PluginScope

NAME = "acl"
PRIORITY = 950

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "allow_groups": {"type": "array", "default": [], "items": {"type": "string", "minLength": 1},
                         "description": "Groups allowed in (empty: any group not denied)."},
        "deny_groups": {"type": "array", "default": [], "items": {"type": "string", "minLength": 1},
                        "description": "Groups refused (checked first)."},
        "message": {"type": "string", "default": "You cannot consume this service",
                    "description": "Error message of the 403."},
    },
    "anyOf": [
        {"properties": {"allow_groups": {"minItems": 1}}, "required": ["allow_groups"]},
        {"properties": {"deny_groups": {"minItems": 1}}, "required": ["deny_groups"]},
    ],
}


class Plugin(BasePlugin):
    """The rules run in C (``AclStep``, fastgw/_plugins.pxi)."""

    def __init__(self, config: dict[str, Any], scope: PluginScope) -> None:
        super().__init__(config, scope)
        self.allow = frozenset(config["allow_groups"])
        self.deny = frozenset(config["deny_groups"])
        self.message = config["message"]
        self.native = AclStep(self.allow, self.deny, self.message)

    def on_request(self, ctx: Any) -> int:
        return self.native.on_request(ctx)
