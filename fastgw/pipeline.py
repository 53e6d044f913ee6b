"""Compiled plugin pipelines: one per route, built once at config load.

``build_pipeline(spec, scope)`` turns the merged ``RouteSpec.plugins`` into a
:class:`Pipeline`: each plugin module found by the registry, its config validated
against its ``SCHEMA`` (defaults applied), one instance built, the instances ordered by
``PRIORITY`` (higher first, declaration order breaks ties) and split by phase, so a
phase only calls the plugins that implement it. A route without plugins gets ``None``:
the server's plain path builds no context and calls nothing.

The sync phases run in a compiled :class:`fastgw._core.StepChain` (``pipeline.chain``,
which the server calls directly): built-in plugins contribute their C steps
(``plugin.native``), custom plugins their bound phase methods.

Server contract (see docs/ARCHITECTURE.md, "Plugins")::

    answered = pipeline.run_request(ctx)            # or: await pipeline.run_request_async(ctx)
    # (the server: state = pipeline.chain.start_request(ctx); 2 = a step waits:
    #  answered = await pipeline.finish_request(ctx))
    # answered: send ctx.answer_status / ctx.answer_headers (+ ctx.response_headers_add)
    # else: forward ctx.headers, ctx.query, ctx.upstream_path; on the response head:
    ctx.status, ctx.response_headers = status, headers
    pipeline.run_response(ctx)                      # (await run_response_async if response_is_async)
    # send ctx.response_headers + ctx.response_headers_add; at the very end:
    pipeline.run_log(ctx)

When a step answers, ``run_request`` also sets ``ctx.status = ctx.answer_status`` and
``ctx.response_headers = ctx.answer_headers`` (the same list), so the server may call
``run_response`` for gateway answers as well and response plugins edit those headers.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from jsonschema import Draft202012Validator

from fastgw._core import NativeStep, StepChain
from fastgw.plugins import registry
from fastgw.plugins.base import Plugin, PluginScope

log = logging.getLogger("fastgw.pipeline")

PHASES = ("on_request", "on_response", "on_log")


class PipelineError(ValueError):
    """A plugin's settings are unusable; ``errors`` holds ``"<place>: <message>"`` lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


# -- schema: validation with defaults ---------------------------------------------------

_validators: dict[int, Draft202012Validator] = {}


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill ``default`` values of object properties, recursively (arrays of objects too)."""
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            props = schema.get("properties", {})
            for key in value:
                if key not in props:
                    value[key] = _apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_apply_defaults(schema["items"], v) for v in value]
    return value


def _place(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def validate_config(schema: dict[str, Any], config: dict[str, Any] | None, place: str) -> dict[str, Any]:
    """Validate ``config`` against ``schema`` and return a copy with defaults applied.

    Raises :class:`PipelineError` whose lines name ``<place>.config.<field>``.
    """
    validator = _validators.get(id(schema))
    if validator is None:
        validator = _validators[id(schema)] = Draft202012Validator(schema)
    data = copy.deepcopy(config) if config is not None else {}
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise PipelineError([f"{place}.config{_place(e.absolute_path)}: {e.message}" for e in errors])
    return _apply_defaults(schema, data)


# -- the pipeline -----------------------------------------------------------------------

def _implements(instance: Plugin, phase: str) -> bool:
    """True if the plugin overrides ``phase`` (on its class, or on the instance in __init__)."""
    return phase in vars(instance) or getattr(type(instance), phase) is not getattr(Plugin, phase)


def _step(instance: Plugin, phase: str) -> Any:
    """What the chain calls for ``phase``: the plugin's C step when it has one, else the method."""
    native = getattr(instance, "native", None)
    if isinstance(native, NativeStep) and phase in ("on_request", "on_response"):
        return native
    return getattr(instance, phase)


class Pipeline:
    """One route's plugin instances, split by phase and ordered by priority."""

    __slots__ = (
        "plugins", "names", "is_async", "has_response", "has_log", "response_is_async",
        "log_is_async", "max_body", "needs_body", "preflight", "chain", "_req_async",
        "_resp_async", "_tasks",
    )

    def __init__(self, plugins: list[Plugin]) -> None:
        self.plugins = tuple(plugins)
        self.names = tuple(p.NAME for p in plugins)
        req = [p.on_request for p in plugins if _implements(p, "on_request")]
        resp = [p.on_response for p in plugins if _implements(p, "on_response")]
        logs = [p.on_log for p in plugins if _implements(p, "on_log")]
        # PERF: the sync phases run in C (StepChain); built-in plugins as C steps.
        self.chain = StepChain(
            [_step(p, "on_request") for p in plugins if _implements(p, "on_request")],
            [_step(p, "on_response") for p in plugins if _implements(p, "on_response")],
            logs, self._log_task)
        self._req_async = tuple((fn, inspect.iscoroutinefunction(fn)) for fn in req)
        self._resp_async = tuple((fn, inspect.iscoroutinefunction(fn)) for fn in resp)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.is_async = any(a for _, a in self._req_async)
        self.response_is_async = any(a for _, a in self._resp_async)
        self.log_is_async = any(inspect.iscoroutinefunction(fn) for fn in logs)
        self.has_response = bool(resp)
        self.has_log = bool(logs)
        limits = [int(p.request_body_limit) for p in plugins if getattr(p, "request_body_limit", -1) >= 0]
        self.max_body = min(limits) if limits else -1
        self.needs_body = any(getattr(p, "needs_body", False) for p in plugins)
        pre = [p.preflight for p in plugins if callable(getattr(p, "preflight", None))]
        self.preflight: Callable[[Any], int] | None = pre[0] if pre else None

    def run_request(self, ctx: Any) -> bool:
        """Run the request phase (sync pipelines); True when a plugin answered."""
        return self.chain.run_request(ctx)

    async def run_request_async(self, ctx: Any) -> bool:
        """Run the request phase awaiting the async steps (and whatever a sync step returns
        to wait on); True when a plugin answered."""
        chain = self.chain    # the same rules as the sync phase (fastgw/_plugins.pxi)
        chain.begin(ctx)
        try:
            for step, is_async in self._req_async:
                result = step(ctx)
                if is_async or inspect.isawaitable(result):
                    result = await result
                if result:
                    return chain.answered(ctx)
        except Exception:
            return chain.crashed(ctx)
        return chain.passed(ctx)

    async def finish_request(self, ctx: Any) -> bool:
        """After ``chain.start_request(ctx)`` returned 2 (a step has to wait): await what the
        step returned, then run the steps after it (which may wait in turn); True when a
        step answered."""
        chain = self.chain
        while True:
            waiting, ctx._waiting = ctx._waiting, None
            try:
                answered = await waiting
            except asyncio.CancelledError:
                raise
            except Exception:
                return chain.crashed(ctx)
            state = chain.resume_request(ctx, answered)
            if state != 2:
                return state == 1

    def run_response(self, ctx: Any) -> None:
        """Run the response phase (sync steps) on ``ctx.status``/``ctx.response_headers``."""
        self.chain.run_response(ctx)

    async def run_response_async(self, ctx: Any) -> None:
        """Response phase awaiting async steps (use when ``response_is_async``)."""
        try:
            for step, is_async in self._resp_async:
                if is_async:
                    await step(ctx)
                else:
                    step(ctx)
        except Exception:
            log.exception("response plugin error (request %s)", ctx.request_id)

    def run_log(self, ctx: Any) -> None:
        """Run the log phase; always called, also after an early answer. Async steps become tasks."""
        self.chain.run_log(ctx)

    def _log_task(self, result: Any) -> None:
        """An ``on_log`` step returned a coroutine: run it as a task (kept until done)."""
        if inspect.iscoroutine(result):
            task = asyncio.get_running_loop().create_task(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for p in self.plugins:
            try:
                p.close()
            except Exception:
                log.exception("plugin %s close failed", p.NAME)

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(self.names)})"


def make_scope_factory(config: Any, services: dict[str, Any] | None = None) -> Callable[[Any], PluginScope]:
    """``spec -> PluginScope`` for one loaded config: the ConsumerTable is built once here.

    The server passes the result to ``compile_config``; every route's plugins then share
    the table (and ``services``: the worker's shared parts, e.g. the node-wide replay guard
    under ``"replay"``).
    """
    from fastgw.consumers import ConsumerTable

    table = ConsumerTable(getattr(config, "consumers", None) or [])
    shared = services if services is not None else {}

    def scope_for(spec: Any) -> PluginScope:
        return PluginScope(spec=spec, consumers=table, variables=dict(spec.variables or {}), services=shared)

    return scope_for


def build_pipeline(spec: Any, scope: PluginScope | None = None) -> Pipeline | None:
    """Compile the pipeline of one route, or None when it has no plugins (the plain path).

    Raises :class:`PipelineError` (``errors`` lines with places) for an unknown plugin,
    settings that fail the plugin's SCHEMA, or settings a plugin refuses when built.
    """
    entries = tuple(spec.plugins or ())
    if not entries:
        return None
    if scope is None:
        scope = PluginScope(spec=spec, variables=dict(getattr(spec, "variables", {}) or {}))
    elif scope.spec is not spec:
        scope = replace(scope, spec=spec)
    base_place = getattr(spec, "place", "") or "route"
    built: list[tuple[int, int, Plugin]] = []
    errors: list[str] = []
    for i, entry in enumerate(entries):
        name = entry.get("name", "")
        place = entry.get("place") or f"{base_place}.plugins[{i}]"
        try:
            module = registry.find(name)
        except LookupError as exc:
            errors.append(f"{place}.name: {exc}")
            continue
        try:
            config = validate_config(module.SCHEMA, entry.get("config"), place)
            instance = module.Plugin(config, scope)
        except PipelineError as exc:
            errors.extend(exc.errors)
            continue
        except (ValueError, OSError, TypeError) as exc:
            errors.append(f"{place}.config: {exc}")
            continue
        instance.NAME = module.NAME
        instance.PRIORITY = module.PRIORITY
        built.append((-int(module.PRIORITY), i, instance))
    if errors:
        raise PipelineError(errors)
    built.sort(key=lambda t: (t[0], t[1]))
    return Pipeline([p for _, _, p in built])
