"""Access log: JSON lines, buffered off the hot path, reopened on SIGUSR1.

The server writes each finished request's line from C into :attr:`AccessLog.lines`
(``fastgw._core.AccessLines``, one C buffer). Python callers may queue a record tuple
with :meth:`AccessLog.append` (order in :data:`FIELDS`), formatted at flush time. A timer
on the worker's loop (every ``interval`` seconds), or ``max_bytes`` of lines (or
``max_records`` queued records) waiting, flushes with one ``write`` (``O_APPEND``, so workers sharing a file never interleave
inside a line). ``SIGUSR1`` reopens the file, for logrotate.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

import orjson

FIELDS = ("time", "request_id", "client_ip", "consumer", "service", "stage", "resource", "method",
          "path", "status", "bytes_in", "bytes_out", "total_ms", "upstream_ms")


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError


def format_records_py(records: list[tuple[Any, ...]]) -> bytes:
    """JSON lines for ``records``; ``time`` becomes ISO 8601 UTC with milliseconds.

    The pure-Python twin (and reference) of ``fastgw._core.format_access_records``, which
    is what :func:`format_records` is when the extension is built; a property test holds
    both to the same bytes. The date part is formatted once per second, each line is one
    dict literal and one ``orjson.dumps`` appended to one bytearray.

    >>> format_records_py([(0.5, "r1", "127.0.0.1", None, "s", "p", "/a", "GET", "/a", 200, 0, 2, 1.5, 1.0)])[:48]
    b'{"time":"1970-01-01T00:00:00.500Z","request_id":'
    """
    dumps = orjson.dumps
    opt = orjson.OPT_APPEND_NEWLINE
    out = bytearray()
    last_sec = -1
    prefix = ""
    for (ts, rid, ip, consumer, service, stage, resource, method, path, status, bytes_in, bytes_out,
         total_ms, upstream_ms) in records:
        sec = int(ts)
        if sec != last_sec:
            last_sec = sec
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        out += dumps({
            "time": f"{prefix}.{int((ts - sec) * 1000):03d}Z", "request_id": rid, "client_ip": ip,
            "consumer": consumer, "service": service, "stage": stage, "resource": resource,
            "method": method, "path": path, "status": status, "bytes_in": bytes_in,
            "bytes_out": bytes_out, "total_ms": round(total_ms, 3), "upstream_ms": round(upstream_ms, 3),
        }, default=_default, option=opt)
    return bytes(out)


try:
    # PERF: the compiled formatter writes the batch into one C buffer (~0.3 µs a record).
    from fastgw._core import AccessLines
    from fastgw._core import format_access_records as format_records
except ImportError:  # pragma: no cover - extension not built
    format_records = format_records_py
    AccessLines = None


class AccessLog:
    """Buffered JSON-lines access log to ``path`` (``"-"`` or ``None`` = stdout)."""

    def __init__(self, path: str | None = "-", interval: float = 0.1, max_records: int = 1000,
                 max_bytes: int = 65536) -> None:
        self.path = path if path not in (None, "", "-", "stdout") else None
        self.interval = interval
        self.max_records = max_records
        # PERF (tail latency): a flush stalls every connection of the worker for the time
        # of one write; 64 KiB (as nginx's ``buffer=64k``) keeps that stall short, where
        # 1 000 lines (~350 KB) showed in the gateway p99.
        self.max_bytes = max_bytes
        # Lines the server wrote from C (PERF: no Python call and no record per request).
        self.lines = AccessLines() if AccessLines is not None else None
        # Records queued from Python (append), formatted at the next flush.
        self.buffer: list[tuple[Any, ...]] = []
        self._fd = -1
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.errors = 0
        self._open()

    def _open(self) -> None:
        if self.path is None:
            self._fd = sys.stdout.fileno()
        else:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def append(self, record: tuple[Any, ...]) -> None:
        """Queue one record (hot path: a list append, plus a flush every ``max_records``)."""
        buf = self.buffer
        buf.append(record)
        if len(buf) >= self.max_records:
            self.flush()

    def flush(self) -> None:
        """Format and write everything queued."""
        data = self.lines.take() if self.lines is not None and len(self.lines) else b""
        if self.buffer:
            records, self.buffer = self.buffer, []
            try:
                data += format_records(records)
            except Exception:
                # A record that can't be formatted costs its batch, never the log itself.
                self.errors += 1
        if not data:
            return
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            # PERF/robustness: a full disk or a closed stdout drops the batch, never the request.
            self.errors += 1

    def reopen(self) -> None:
        """Flush, then reopen the file (after logrotate moved it)."""
        self.flush()
        if self.path is not None:
            old = self._fd
            self._open()
            os.close(old)

    def start(self, loop: asyncio.AbstractEventLoop | None = None, handle_sigusr1: bool = True) -> None:
        """Flush every ``interval`` seconds on ``loop``; reopen on SIGUSR1 (main thread only)."""
        self._loop = loop or asyncio.get_running_loop()
        self._timer = self._loop.call_later(self.interval, self._tick)
        if handle_sigusr1:
            self._loop.add_signal_handler(signal.SIGUSR1, self.reopen)

    def _tick(self) -> None:
        try:
            self.flush()
        finally:
            if self._loop is not None:
                self._timer = self._loop.call_later(self.interval, self._tick)

    def close(self) -> None:
        """Stop the timer, flush, close the file."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not None:
            try:
                self._loop.remove_signal_handler(signal.SIGUSR1)
            except (RuntimeError, ValueError):
                pass
            self._loop = None
        self.flush()
        if self.path is not None and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
