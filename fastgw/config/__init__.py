"""Configuration: load a JSON or msgpack file, validate it whole, flatten it into routes.

Role in the flow: ``load(path)`` is the first step of ``fastgw run`` and of every reload.
It returns a :class:`Config` whose ``routes`` (one :class:`RouteSpec` per stage, resource
and method) feed ``fastgw.compile``; a bad file raises :class:`ConfigError` with one
``"<place>: <message>"`` line per problem.
"""

from fastgw.config.loader import load, load_data, load_read
from fastgw.config.model import Config, ConfigError, RouteSpec
from fastgw.config.validate import SCHEMA, validate

__all__ = ["SCHEMA", "Config", "ConfigError", "RouteSpec", "load", "load_data", "load_read", "validate"]
