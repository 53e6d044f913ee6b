"""One worker process: loads the config, compiles it, serves the inherited sockets on uvloop.

The per-connection work happens in ``fastgw._core`` (ClientConnection, UpstreamConnection);
this module wires a worker together: the event loop, the compiled runtime, stats and access
log, and the signals (SIGTERM drains, SIGUSR1 reopens the access log).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
import sys
from typing import Any

import orjson

from fastgw import _core
from fastgw.compile import Runtime, compile_config
from fastgw.config import Config, ConfigError, load
from fastgw.pipeline import PipelineError, build_pipeline, make_scope_factory
from fastgw.workers import CONFIG_ERRORS, EX_CONFIG

# FASTGW_UVLOOP_TRANSPORTS=1 serves plain-TCP clients and plain-HTTP upstreams through
# uvloop transports (as TLS always is) instead of fastgw's own epoll set: for comparison
# and as a fallback.
UVLOOP_TRANSPORTS = os.environ.get("FASTGW_UVLOOP_TRANSPORTS", "") not in ("", "0")

log = logging.getLogger("fastgw.worker")


def _ssl_context(tls: dict[str, Any]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls["cert"], tls["key"])
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Worker:
    """A worker's serving state: engine, runtime, servers; built from a validated config."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, index: int = 0,
                 stats_name: str | None = None, generation: int = 0, shared_name: str | None = None,
                 cache_name: str | None = None) -> None:
        limits = config.limits
        self._generation = generation
        self.config = config
        self.loop = loop
        self.index = index
        self.engine = _core.Engine(
            loop, None,
            idle_timeout=float(limits.get("client_idle_timeout", 75)),
            header_timeout=float(limits.get("client_header_timeout", 30)),
            lingering_timeout=float(limits.get("client_lingering_timeout", 5)),
            lingering_time=float(limits.get("client_lingering_time", 30)),
            max_head=int(limits.get("max_head_bytes", 65536)),
        )
        self.stats_region: Any = None
        slot_for = None
        if stats_name:
            slot_for = self._attach_stats(stats_name, index)
        self.shared_region: Any = None
        self.services: dict[str, Any] = {}      # PluginScope.services: shared per worker
        if shared_name:
            from fastgw.shared import SharedRegion

            self.shared_region = SharedRegion.attach(shared_name)
            self.services["replay"] = self.shared_region.replay_guard()
            self.services["counters"] = self.shared_region.counters()
            self.services["cache_purge"] = self.shared_region.purge_watch()
        self.cache_region: Any = None
        if cache_name:
            from fastgw.cache_region import CacheRegion

            # proxy-cache's node-wide store (policy memory): every worker's answers. A cache is
            # no reason not to serve: without it (its file removed by a cleaner of /dev/shm,
            # say) this worker keeps its own answers.
            try:
                self.cache_region = CacheRegion.attach(cache_name)
                self.services["cache_region"] = self.cache_region
            except (OSError, ValueError) as exc:
                log.error("proxy-cache: node store %s unavailable (%s); this worker keeps its own answers",
                          cache_name, exc)
        self.services.update(redis_services(config))
        if slot_for is not None and "redis" in self.services:
            from fastgw.stats import redis_observer

            self.services["redis"].observe = redis_observer(self.engine.stats, slot_for)
        self.access_log = self._open_access_log(config)
        self.engine.access_log = self.access_log
        self.runtime: Runtime = compile_config(config, self.engine, slot_for, self._scope_factory())
        self.engine.router = self.runtime.router
        self.servers: list[Any] = []      # asyncio Servers (TLS) and _core.Listeners
        self.poller: Any = None

    def _scope_factory(self) -> Any:
        return make_scope_factory(self.config, self.services)

    def _attach_stats(self, name: str, index: int) -> Any:
        from fastgw.stats import CONSUMER_PREFIX, UNMATCHED_PREFIX, StatsRegion, config_keys

        region = StatsRegion.attach(name)
        self.stats_region = region
        self.engine.stats = region.writer(index, self._generation)
        table = region.slots
        table.assign(config_keys(self.config))   # the supervisor did this already: lookups only
        # Unmatched requests count per configured stage host; any other Host under "*"
        # (SECURITY: a client can't grow the key table by inventing hosts).
        unmatched = {
            key[len(UNMATCHED_PREFIX):].encode("latin-1"): slot
            for key, slot in table.items() if key.startswith(UNMATCHED_PREFIX)
        }
        fallback = unmatched.get(b"*", -1)
        self.engine.unmatched_slot = lambda host: unmatched.get(host, fallback)
        self.engine.consumer_slots = {
            key[len(CONSUMER_PREFIX):]: slot for key, slot in table.items() if key.startswith(CONSUMER_PREFIX)
        }
        return table.slot_for

    @staticmethod
    def _open_access_log(config: Config) -> Any:
        cfg = config.access_log or {}
        if not cfg.get("enabled"):
            return None
        from fastgw.accesslog import AccessLog

        return AccessLog(cfg.get("path", "-"), interval=cfg.get("flush_interval", 0.1),
                         max_bytes=cfg.get("buffer", 65536))

    async def start(self, sockets: list[socket.socket]) -> None:
        self.engine.start()
        if not UVLOOP_TRANSPORTS:
            # Plain-TCP clients and plain-HTTP upstreams use it (fastgw/_poller.pxi).
            self.poller = self.engine.poller = _core.Poller(self.loop)
        for sock, listen in zip(sockets, self.config.listen, strict=False):
            tls = listen.get("tls")
            ctx = _ssl_context(tls) if tls else None
            port = str(sock.getsockname()[1]).encode()
            fwd = _core.ForwardInfo(b"https" if tls else b"http", port)
            factory = _core.ClientFactory(self.engine, fwd)
            if ctx is None and self.poller is not None:
                # PERF: plain TCP clients on fastgw's own epoll set (fastgw/_poller.pxi).
                self.servers.append(_core.Listener(self.poller, sock, factory, 4096))
            else:
                self.servers.append(await self.loop.create_server(factory, sock=sock, ssl=ctx, backlog=4096))
        if self.access_log is not None and hasattr(self.access_log, "start"):
            self.access_log.start(self.loop)
        if self.shared_region is not None:
            self._share_passive_marks(self.shared_region.passive_marks())
        if self.runtime.health is not None:
            if self.shared_region is not None:
                # One prober per node (worker 0); the others follow its verdicts.
                self.runtime.health.share(self.shared_region.health_table(), prober=self.index == 0)
            self.runtime.health.start(self.loop)

    def _share_passive_marks(self, marks: _core.PassiveMarks) -> None:
        """Every target's passive mark is the node's (fastgw/_marks.pxi): a target one worker
        passes over after failed connections is passed over by all of them."""
        from fastgw.shared import target_key

        # (one pool a target URL, which several stages' backends may share)
        pools = {id(pool): pool for backend in self.runtime.backends for pool in backend.pools}
        full = 0
        for pool in pools.values():
            if not marks.share(pool, target_key(pool.host, pool.port, pool.ssl is not None)):
                full += 1
        if full:
            log.warning("passive marks: the node's table is full; %d target(s) keep their marks to this worker", full)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, finish in-flight requests, close idle connections, then stop."""
        for server in self.servers:
            server.close()
        drained = self.loop.create_future()
        self.engine.on_drained = lambda: drained.done() or drained.set_result(None)
        self.engine.drain()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(drained, timeout)
        for conn in list(self.engine.connections):
            conn.transport.close() if conn.transport is not None else None
        self.engine.stop()
        if self.poller is not None:
            self.poller.close()
        self.runtime.close()
        if self.access_log is not None:
            self.access_log.close()
        client = self.services.get("redis")
        if client is not None:         # the Redis client's connection
            with contextlib.suppress(Exception):
                await client.aclose()


def redis_services(config: Config) -> dict[str, Any]:
    """The PluginScope.services parts kept in the top-level ``redis`` (none without it).

    Many nodes: the replay set is one set in the Redis they share, and rate limits and
    proxy-cache with policy "redis" keep their state there. The client connects when
    first used."""
    if not config.redis:
        return {}
    from fastgw.counters import RedisCounters
    from fastgw.replay import RedisReplayGuard
    from fastgw.resp import RespClient

    # PERF: requests wait on these (a count, a signature's first use, a cached answer): one
    # pipelined connection per worker of fastgw.resp's client, not redis-py's (~80 µs a call).
    client = RespClient(config.redis["url"], float(config.redis.get("timeout", 0.25)))
    prefix = config.redis.get("key_prefix", "fastgw:")
    return {"redis": client, "redis_prefix": prefix, "replay": RedisReplayGuard(client, prefix),
            "redis_counters": RedisCounters(client, prefix)}


def plugin_errors(config: Config) -> list[str]:
    """What the plugins refuse of ``config`` when built as a worker builds them (settings a
    schema can't judge: a CORS origin ``*`` with credentials, a short JWT secret, a bad JSON
    Pointer...), each line once; for ``fastgw validate``. Nothing connects or serves."""
    # Never empty, as a worker's: a plugin that needs a part the config lacks (policy redis
    # without a redis section) refuses its settings here as it would there.
    scope_for = make_scope_factory(config, {"validating": True, **redis_services(config)})
    errors: list[str] = []
    for spec in config.routes:
        if not spec.plugins:
            continue
        try:
            pipeline = build_pipeline(spec, scope_for(spec))
        except PipelineError as exc:
            errors.extend(line for line in exc.errors if line not in errors)
        else:
            if pipeline is not None:
                pipeline.close()
    return errors


def run_worker(config_path: str, sockets: list[socket.socket], index: int = 0, generation: int = 0,
               stats_name: str | None = None, ready_fd: int | None = None,
               shared_name: str | None = None, cache_name: str | None = None) -> None:
    """Entry point of a worker process (``fastgw worker``): serve until SIGTERM, then drain."""
    import uvloop

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"fastgw[worker {index}.{generation}] %(levelname)s %(message)s")
    _core.reset_request_id_prefix()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        config = load(config_path)
        worker = Worker(config, loop, index, stats_name, generation, shared_name, cache_name)
    except (ConfigError, PipelineError) as exc:
        # Settings the schema can't judge (a plugin refusing its config when built): the
        # supervisor gets the lines through the ready pipe, names them and keeps the old
        # generation serving, or does not start (EX_CONFIG).
        errors = list(exc.errors) or [str(exc)]
        if isinstance(exc, PipelineError):
            # The build stops at the first route refused: name every refused setting at once.
            with contextlib.suppress(Exception):
                errors = plugin_errors(config) or errors
        for line in errors:
            log.error("config error: %s", line)
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, CONFIG_ERRORS + orjson.dumps(errors))
                os.close(ready_fd)
        loop.close()
        raise SystemExit(EX_CONFIG) from None
    stop = loop.create_future()

    def on_term() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the supervisor decides; Ctrl-C reaches it too

    async def main() -> None:
        await worker.start(sockets)
        gc.collect()
        gc.freeze()      # PERF: the config objects live for the worker's life; keep gc off them
        # PERF: each new connection allocates a handful of container objects (transport,
        # protocol, tuples) that die by refcount; at the default gen0 threshold (700) the
        # collector ran every ~100 connections and cost ~7% of a keep-alive-off request
        # (bench, close scenario: 46 -> 43 us/request). Garbage cycles are still collected.
        gc.set_threshold(50_000, 50, 100)
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, b"1")
                os.close(ready_fd)
        log.info("serving %d route(s) on %s", len(worker.runtime.routes),
                 ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in sockets))
        await stop
        log.info("draining")
        await worker.drain(float(config.limits.get("drain_timeout", 30)))

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        # Drained and leaving: a second SIGTERM (the supervisor forwards one, and a whole
        # process group may get one from a terminal or `timeout`) must not turn a clean
        # exit into "killed by SIGTERM" now that the loop's handler is gone.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
