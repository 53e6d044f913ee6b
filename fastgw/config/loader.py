"""Reading a configuration file (JSON or msgpack) into a validated :class:`Config`.

Role in the flow: the supervisor (``fastgw.workers``) and the CLI call :func:`load` at
start and on every reload; a refused file raises :class:`ConfigError` naming each place,
and a running gateway keeps its old config.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
import orjson

from fastgw.config.flatten import flatten
from fastgw.config.model import Config, ConfigError
from fastgw.config.validate import check


def load(path: str) -> Config:
    """Load ``.json`` (orjson) or ``.msgpack``/``.mpk``; OSError if the file cannot be read."""
    return load_read(path)[0]


def load_read(path: str) -> tuple[Config, bytes]:
    """:func:`load`, and the bytes it read (the supervisor keeps them for its workers)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".json", ".msgpack", ".mpk"):
        raise ConfigError([f"{path}: unknown config format {ext!r} (use .json, .msgpack or .mpk)"], path)
    with open(path, "rb") as f:
        blob = f.read()
    return load_bytes(blob, ext, path), blob


def load_bytes(blob: bytes, ext: str, path: str) -> Config:
    """A config file's contents (``ext``: its format), named ``path`` in errors."""
    try:
        data = orjson.loads(blob) if ext == ".json" else msgpack.unpackb(blob, raw=False)
    except (orjson.JSONDecodeError, ValueError, msgpack.UnpackException) as exc:
        raise ConfigError([f"{path}: cannot parse {ext[1:]}: {exc}"], path) from None
    return load_data(data, path)


def load_data(data: Any, source: str = "<data>") -> Config:
    """Validate ``data`` (not modified), apply defaults and flatten the routes."""
    errors, raw = check(data)
    if errors:
        raise ConfigError(errors, source)
    workers = raw["workers"]
    if workers == "auto":
        workers = os.cpu_count() or 1
    return Config(
        raw=raw,
        listen=raw["listen"],
        workers=int(workers),
        admin=raw["admin"],
        consumers=raw["consumers"],
        stats=raw["stats"],
        access_log=raw["access_log"],
        limits=raw["limits"],
        routes=flatten(raw),
        source=source,
        redis=raw["redis"],
    )
