"""Config → runtime tables, built once per load: router, routes, pipelines, upstream pools, stats slots.

Everything the per-request path reads is decided here (DESIGN.md: "resolve once, run
many times"): the trie, each route's compiled pipeline, backend-path template, upstream
pool and stats slot. Nothing here runs per request.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fastgw._core import Backend, Engine, Route, Router, UpstreamPool, compile_template
from fastgw.config import Config, ConfigError
from fastgw.config.model import RouteSpec
from fastgw.health import CheckSettings, HealthChecker
from fastgw.pipeline import build_pipeline

SlotFor = Callable[[str], int]


@dataclass
class Runtime:
    """The compiled form of one config, as one worker uses it."""

    config: Config
    router: Router
    routes: list[Route]
    backends: list[Backend] = field(default_factory=list)
    plugins: list[Any] = field(default_factory=list)
    health: HealthChecker | None = None     # active checks of the stages that ask for them

    def close(self) -> None:
        if self.health is not None:
            self.health.stop()
        for backend in self.backends:
            backend.close()
        for plugin in self.plugins:
            close = getattr(plugin, "close", None)
            if close is not None:
                close()


def target_address(url: str) -> tuple[str, int, bool]:
    """A target URL's host, port and whether it is TLS, as its UpstreamPool has them."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    return parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80), tls


def _target_pool(engine: Engine, url: str, cache: dict[str, UpstreamPool]) -> UpstreamPool:
    pool = cache.get(url)
    if pool is None:
        host, port, tls = target_address(url)
        pool = UpstreamPool(engine, host, port, ssl.create_default_context() if tls else None)
        cache[url] = pool
    return pool


def _build_pipeline(spec: RouteSpec, scope_factory: Callable[[RouteSpec], Any] | None) -> Any:
    if not spec.plugins:
        return None
    return build_pipeline(spec, scope_factory(spec) if scope_factory else None)


def compile_config(config: Config, engine: Engine, slot_for: SlotFor | None = None,
                   scope_factory: Callable[[RouteSpec], Any] | None = None) -> Runtime:
    """Build the router and every Route of ``config`` for ``engine``'s worker."""
    router = Router()
    pools: dict[str, UpstreamPool] = {}
    backends: dict[tuple[tuple[str, ...], tuple[int, ...], int, float], Backend] = {}
    routes: list[Route] = []
    plugins: list[Any] = []
    health = HealthChecker()
    for spec in config.routes:
        route = Route()
        route.key = spec.key
        route.spec = spec
        route.service = spec.service
        route.stage = spec.stage
        route.resource = spec.resource
        route.method = spec.method
        route.variables = dict(spec.variables)
        route.prefix_len = len(spec.path_prefix.rstrip("/")) if spec.path_prefix else 0
        max_fails = int(spec.backend.get("max_fails", 1))
        fail_timeout = float(spec.backend.get("fail_timeout", 10))
        balance = str(spec.backend.get("balance", "round_robin"))
        tries = int(spec.backend.get("tries", 0))
        tries_timeout = float(spec.backend.get("tries_timeout", 0))
        hash_key = str(spec.backend.get("hash_key", "ip"))
        retry_unanswered = bool(spec.backend.get("retry_unanswered", True))
        backend_key = (spec.targets, spec.weights, max_fails, fail_timeout, balance, tries, tries_timeout, hash_key,
                       retry_unanswered)
        backend = backends.get(backend_key)
        if backend is None:
            backend = Backend([_target_pool(engine, t, pools) for t in spec.targets], max_fails, fail_timeout,
                              list(spec.weights), balance, tries, tries_timeout, hash_key, retry_unanswered)
            backends[backend_key] = backend
        route.backend = backend
        check = spec.backend.get("health_check")
        if check is not None:
            for pool in backend.pools:
                health.add(pool, CheckSettings.from_config(check))
        route.host_from_target = spec.backend.get("host_header", "client") == "target"
        route.connect_timeout = float(spec.timeouts.get("connect", 5))
        route.read_timeout = float(spec.timeouts.get("read", 60))
        route.send_timeout = float(spec.timeouts.get("send", 60))
        route.stats_slot = slot_for(spec.key) if slot_for is not None else -1
        route.param_names = router.add(spec.hosts, spec.path_prefix, spec.resource, spec.method, route)
        route.template = (compile_template(spec.backend_path, route.param_names, route.variables)
                          if spec.backend_path else None)
        pipeline = _build_pipeline(spec, scope_factory)
        route.pipeline = pipeline
        if pipeline is not None:
            route.chain = pipeline.chain
            if getattr(pipeline, "response_is_async", False):
                raise ConfigError([f"{spec.place}.plugins: an async on_response is not supported "
                                   f"(do async work in on_request; on_response must be synchronous)"])
            route.pipeline_async = bool(pipeline.is_async)
            route.needs_body = bool(getattr(pipeline, "needs_body", False))
            route.has_response_phase = bool(pipeline.has_response)
            route.has_log_phase = bool(pipeline.has_log)
            route.max_body = int(pipeline.max_body)
            # Only built-in C steps touch the context: its headers stay on the scan.
            route.ctx_lazy = (pipeline.chain.native_only and not route.pipeline_async
                              and getattr(pipeline, "preflight", None) is None)
            plugins.append(pipeline)
        routes.append(route)
    return Runtime(config=config, router=router, routes=routes, backends=list(backends.values()),
                   plugins=plugins, health=health if health.targets else None)
