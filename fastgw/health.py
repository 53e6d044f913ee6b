"""Active health checks: one worker of the node probes the targets of the stages that ask
for it, and every worker follows its verdicts.

A stage's ``backend.health_check`` (``path``, ``interval``, ``timeout``, ``healthy``,
``unhealthy``) makes the node send ``GET <path>`` to each of the stage's targets every
``interval`` seconds, on a connection of its own (``Connection: close``; TLS for an https
target). An answer below 400 within ``timeout`` is a pass; a refused or slow connection,
a timeout or a status of 400 and up is a failure. After ``unhealthy`` failures in a row the
target is passed over (``UpstreamPool.checked_down``, read by ``Backend.pick_live`` beside
the passive marks), after ``healthy`` passes in a row it is used again; every change is
logged once. As with the passive marks, when all of a stage's targets are passed over they
are all tried in turn: health checks never make an outage of their own.

Worker 0 probes (a target gets 1/interval probes whatever the number of workers) and
writes each verdict in the node's shared region (fastgw.shared.HealthTable); the other
workers read them every half interval (at most every 0.5 s). Every worker starts from the
verdicts there, so a reload or a restarted worker does not put a passed-over target back
in use. While worker 0 restarts the verdicts stay as they were. Without a shared region
(a worker on its own) the worker probes for itself. A target named by several stages is
checked once, with the first stage's settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("fastgw.health")


@dataclass(frozen=True)
class CheckSettings:
    path: str = "/"
    interval: float = 5.0
    timeout: float = 2.0
    healthy: int = 2
    unhealthy: int = 2

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> CheckSettings:
        return cls(raw.get("path", "/"), float(raw.get("interval", 5)), float(raw.get("timeout", 2)),
                   int(raw.get("healthy", 2)), int(raw.get("unhealthy", 2)))


async def probe(pool: Any, settings: CheckSettings) -> str | None:
    """None when the target answers ``GET path`` below 400 in time, else what went wrong."""
    writer = None
    try:
        async with asyncio.timeout(settings.timeout):
            reader, writer = await asyncio.open_connection(pool.host, pool.port, ssl=pool.ssl)
            writer.write(f"GET {settings.path} HTTP/1.1\r\nHost: {pool.host_header.decode('latin-1')}\r\n"
                         f"User-Agent: fastgw-health-check\r\nConnection: close\r\n\r\n".encode("latin-1"))
            line = await reader.readline()
    except TimeoutError:
        return f"no answer within {settings.timeout:g} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return "not an HTTP answer"
    status = int(parts[1])
    return None if status < 400 else f"status {status}"


def ident(pool: Any, settings: CheckSettings) -> str:
    """What a verdict is about: the target and the check (another path is another verdict)."""
    return check_ident(pool.host, pool.port, bool(pool.ssl), settings.path)


def check_ident(host: str, port: int, tls: bool, path: str) -> str:
    """``ident`` from a target's address and the check's path (the admin API's way)."""
    return f"{'https' if tls else 'http'}://{host}:{port}{path}"


class HealthChecker:
    """The health checks of one worker's compiled config (``Runtime.health``): the probing
    tasks, or, when another worker probes, a task that follows its verdicts."""

    def __init__(self) -> None:
        self.targets: dict[Any, CheckSettings] = {}     # UpstreamPool -> settings (first wins)
        self._tasks: list[asyncio.Task[None]] = []
        self.table: Any = None          # fastgw.shared.HealthTable: the node's verdicts
        self.prober = True

    def add(self, pool: Any, settings: CheckSettings) -> None:
        self.targets.setdefault(pool, settings)

    def share(self, table: Any, prober: bool) -> None:
        """Use the node's verdicts in ``table``; ``prober``: this worker probes and writes them."""
        self.table = table
        self.prober = prober

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.table is not None:
            for pool, settings in self.targets.items():
                pool.checked_down = bool(self.table.get(ident(pool, settings)))
        if self.prober:
            self._tasks = [loop.create_task(self._watch(pool, settings))
                           for pool, settings in self.targets.items()]
        else:
            self._tasks = [loop.create_task(self._follow())]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    async def _follow(self) -> None:
        """Take the prober's verdicts as they change."""
        every = min(0.5, min(s.interval for s in self.targets.values()) / 2)
        idents = [(pool, ident(pool, settings)) for pool, settings in self.targets.items()]
        while True:
            await asyncio.sleep(every)
            for pool, key in idents:
                down = self.table.get(key)
                if down is not None and pool.checked_down != down:
                    pool.checked_down = down

    async def _watch(self, pool: Any, settings: CheckSettings) -> None:
        passes = fails = 0
        full = False
        name = f"{pool.host}:{pool.port}"
        key = ident(pool, settings)
        while True:
            problem = await probe(pool, settings)
            if problem is None:
                passes, fails = passes + 1, 0
                if pool.checked_down and passes >= settings.healthy:
                    pool.checked_down = False
                    log.warning("upstream %s: healthy again (%d passed checks); in use", name, passes)
            else:
                passes, fails = 0, fails + 1
                if not pool.checked_down and fails >= settings.unhealthy:
                    pool.checked_down = True
                    log.warning("upstream %s: passed over after %d failed health checks (%s)", name, fails, problem)
            if self.table is not None and not self.table.set(key, pool.checked_down) and not full:
                full = True
                log.warning("upstream %s: the node's health table is full; the other workers "
                            "do not see this target's checks", name)
            await asyncio.sleep(settings.interval)
