"""Fixtures for end-to-end tests over real sockets and processes.

- ``engine_available()``: whether the real engine (``fastgw.server.run_worker``) and the
  config loader (``fastgw.config.load``) exist, so e2e tests can skip cleanly without them.
- ``requires_engine``: a skip marker for tests that need both.
"""

from __future__ import annotations

import importlib

import pytest


def engine_available() -> bool:
    """True when ``fastgw.server.run_worker`` and ``fastgw.config.load`` can be imported."""
    try:
        server = importlib.import_module("fastgw.server")
        config = importlib.import_module("fastgw.config")
    except ImportError:
        return False
    return hasattr(server, "run_worker") and hasattr(config, "load")


requires_engine = pytest.mark.skipif(
    not engine_available(), reason="needs fastgw.server.run_worker and fastgw.config.load"
)
