"""The loaded configuration as the rest of fastgw sees it: ``Config``, ``RouteSpec``, ``ConfigError``.

Role in the flow: ``fastgw.config.load`` validates a file and flattens its resource tree
into ``Config.routes`` (one :class:`RouteSpec` per stage, resource and method), which
``fastgw.compile`` turns into runtime tables. Nothing here runs per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConfigError(Exception):
    """A refused configuration; ``errors`` holds one ``"<place>: <message>"`` line per problem."""

    def __init__(self, errors: list[str], source: str = "<data>") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(f"{source}: {len(self.errors)} error(s)\n" + "\n".join(self.errors))


@dataclass(frozen=True)
class RouteSpec:
    """One (stage, resource, method) with everything merged from the levels above it."""

    service: str
    stage: str
    hosts: tuple[str, ...]
    path_prefix: str
    resource: str
    method: str
    backend_path: str | None
    plugins: tuple[dict[str, Any], ...]
    timeouts: dict[str, float]
    targets: tuple[str, ...]            # URLs
    weights: tuple[int, ...]            # each target's weight (1 unless given)
    backend: dict[str, Any]
    variables: dict[str, str]
    place: str

    @property
    def key(self) -> str:
        """The stats key, e.g. ``"shop/prod/GET /orders/{orderId}"``."""
        return f"{self.service}/{self.stage}/{self.method} {self.resource}"


@dataclass
class Config:
    """A validated configuration (defaults applied) and its flattened routes."""

    raw: dict[str, Any]
    listen: list[dict[str, Any]]
    workers: int
    admin: dict[str, Any]
    consumers: list[dict[str, Any]]
    stats: dict[str, Any]
    access_log: dict[str, Any]
    limits: dict[str, Any]
    routes: list[RouteSpec] = field(default_factory=list)
    source: str = "<data>"
    redis: dict[str, Any] | None = None   # shared by every node (url, timeout, key_prefix)
