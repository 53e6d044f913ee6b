"""Log lines about a lasting condition (a store down, a table full) at most once per interval.

A request path that meets such a condition on every request would otherwise write one line
per request; :class:`SparseLog` keeps the first line of each ``interval`` and drops the rest.
"""

from __future__ import annotations

import logging
import time
from typing import Any


class SparseLog:
    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last = -interval

    def error(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._logger.error(message, *args)
