"""A minimal plugin used by tests/test_config.py to check plugin-config validation and merging."""

from __future__ import annotations

from typing import Any

from fastgw.plugins.base import Plugin as BasePlugin

NAME = "demo"
PRIORITY = 10

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "limit": {"type": "integer", "exclusiveMinimum": 0, "default": 5, "description": "A positive count."},
        "mode": {"enum": ["a", "b"], "default": "a", "description": "A choice."},
        "nested": {
            "type": "object", "default": {}, "description": "Defaults apply inside too.",
            "properties": {"flag": {"type": "boolean", "default": True, "description": "A flag."}},
        },
    },
}


class Plugin(BasePlugin):
    """Does nothing; only its schema matters."""
