"""Helpers for plugin unit tests: a RouteSpec, a pipeline built from plugin entries, a context."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from fastgw.config.model import RouteSpec
from fastgw.consumers import ConsumerTable
from fastgw.context import RequestContext
from fastgw.pipeline import Pipeline, build_pipeline
from fastgw.plugins.base import PluginScope
from fastgw.plugins.template import param_names
from fastgw.replay import LocalReplayGuard

RESOURCE = "/orders/{id}"


def make_spec(plugins: list[dict[str, Any]], resource: str = RESOURCE, method: str = "GET",
              variables: dict[str, str] | None = None, service: str = "shop", stage: str = "prod") -> RouteSpec:
    return RouteSpec(
        service=service, stage=stage, hosts=("*",), path_prefix="", resource=resource, method=method,
        backend_path=None, plugins=tuple(plugins), timeouts={"connect": 5, "read": 60, "send": 60},
        targets=("http://127.0.0.1:9",), weights=(1,), backend={"host_header": "target"},
        variables=variables or {},
        place=f"services[0].resources.{resource}.{method}",
    )


def make_pipeline(plugins: list[dict[str, Any]], consumers: list[dict[str, Any]] | None = None,
                  services: dict[str, Any] | None = None, **kw: Any) -> Pipeline:
    """A route's pipeline; each gets its own replay guard unless ``services`` names one (a
    worker's pipelines share theirs, so tests signing the same request in the same second
    must not meet through the process-wide fallback)."""
    spec = make_spec(plugins, **kw)
    services = {"replay": LocalReplayGuard()} if services is None else services
    pipe = build_pipeline(spec, PluginScope(spec=spec, consumers=ConsumerTable(consumers), variables=spec.variables,
                                            services=services))
    assert pipe is not None
    return pipe


def make_ctx(method: str = "GET", path: str = "/orders/1", query: bytes = b"",
             headers: list[tuple[bytes, bytes]] | None = None, peer: str = "127.0.0.1",
             values: tuple[bytes, ...] = (b"1",), resource: str = RESOURCE,
             http_version: str = "1.1") -> RequestContext:
    route = SimpleNamespace(param_names=param_names(resource))
    return RequestContext(method, path, query, list(headers or [(b"Host", b"api.test")]), peer, "http",
                          route, values, "rid-1", http_version, peer_ip=peer)


def run(pipe: Pipeline, ctx: RequestContext) -> bool:
    """The server's request phase: an async pipeline in a task; else the sync chain, and the
    rest of it in a task when a step has to wait (returned an awaitable)."""
    if pipe.is_async:
        return asyncio.run(pipe.run_request_async(ctx))

    async def phase() -> bool:          # on a running loop, as in the server
        state = pipe.chain.start_request(ctx)
        if state == 2:
            return await pipe.finish_request(ctx)
        return state == 1

    return asyncio.run(phase())


def hdrs(pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode().lower(): v.decode() for k, v in pairs}


def error_of(ctx: RequestContext) -> str:
    import orjson
    return orjson.loads(ctx.answer_body)["error"]


def counting_fallbacks(step_type: Any, calls: list[int]) -> Any:
    """Stands in for a C step's class (monkeypatched into the plugin's module): builds the
    real step with a fallback that notes in ``calls`` each request it hands to the plugin's
    Python path, so a test tells the step's answers from the plugin's."""
    def build(fallback: Any, *args: Any) -> Any:
        def call(ctx: Any) -> Any:
            calls.append(1)
            return fallback(ctx)
        return step_type(call, *args)
    return build

