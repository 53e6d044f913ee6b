"""Active health checks: each worker probes the targets of the stages that ask for it.

A stage's ``backend.health_check`` (``path``, ``interval``, ``timeout``, ``healthy``,
``unhealthy``) makes every worker send ``GET <path>`` to each of the stage's targets every
``interval`` seconds, on a connection of its own (``Connection: close``; TLS for an https
target). An answer below 400 within ``timeout`` is a pass; a refused or slow connection,
a timeout or a status of 400 and up is a failure. After ``unhealthy`` failures in a row the
target is passed over (``UpstreamPool.checked_down``, read by ``Backend.pick_live`` beside
the passive marks), after ``healthy`` passes in a row it is used again; every change is
logged once. As with the passive marks, when all of a stage's targets are passed over they
are all tried in turn: health checks never make an outage of their own.

Each worker checks on its own (so the probes a target gets are workers x 1/interval), and
a target named by several stages is checked once per worker, with the first stage's settings.
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


class HealthChecker:
    """The probing tasks of one worker's compiled config (``Runtime.health``)."""

    def __init__(self) -> None:
        self.targets: dict[Any, CheckSettings] = {}     # UpstreamPool -> settings (first wins)
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, pool: Any, settings: CheckSettings) -> None:
        self.targets.setdefault(pool, settings)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tasks = [loop.create_task(self._watch(pool, settings)) for pool, settings in self.targets.items()]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    async def _watch(self, pool: Any, settings: CheckSettings) -> None:
        passes = fails = 0
        name = f"{pool.host}:{pool.port}"
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
            await asyncio.sleep(settings.interval)
