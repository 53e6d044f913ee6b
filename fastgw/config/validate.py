"""Validation of a configuration: the JSON Schema, then the checks a schema cannot express.

Role in the flow: ``fastgw.config.load_data`` calls :func:`check`, which returns every
problem as a ``"<place>: <message>"`` line (all of them, not the first) and the data with
defaults applied; only a file with no error is flattened into routes. Places join object
keys with ``.`` and list indexes as ``[i]``:
``services[0].resources./orders./{orderId}.GET.backend_path``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from importlib import resources as _resources
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from fastgw.router_ref import parse_template

SCHEMA: dict[str, Any] = json.loads(_resources.files("fastgw.config").joinpath("schema.json").read_text())
_VALIDATOR = Draft202012Validator(SCHEMA)
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY")
DEFAULT_TIMEOUTS: dict[str, float] = {"connect": 5, "read": 60, "send": 60}
_PLACEHOLDER = re.compile(r"\$\{([^{}]*)\}|\{([^{}]*)\}")
_HOST = re.compile(r"(\*|(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)\Z")
_plugin_validators: dict[int, Any] = {}


def place_of(path: Iterable[Any], base: str = "") -> str:
    """``["services", 0, "name"]`` -> ``"services[0].name"``."""
    out = base
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out or "config"


# ---------------------------------------------------------------------- defaults


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while isinstance(schema, dict) and "$ref" in schema and schema["$ref"].startswith("#/"):
        node: Any = root
        for part in schema["$ref"][2:].split("/"):
            node = node[part]
        schema = node
    return schema


def apply_defaults(schema: Any, instance: Any, root: dict[str, Any] | None = None) -> None:
    """Fill missing object fields from ``default`` in ``schema`` (follows $ref, items, patterns)."""
    if not isinstance(schema, dict):
        return
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key, sub in props.items():
            sub_r = _resolve(sub, root)
            if key not in instance and isinstance(sub_r, dict) and "default" in sub_r:
                instance[key] = copy.deepcopy(sub_r["default"])
        patterns = [(re.compile(p), s) for p, s in schema.get("patternProperties", {}).items()]
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if key in props:
                apply_defaults(props[key], value, root)
                continue
            matched = False
            for rx, sub in patterns:
                if isinstance(key, str) and rx.search(key):
                    apply_defaults(sub, value, root)
                    matched = True
            if not matched and isinstance(extra, dict):
                apply_defaults(extra, value, root)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            apply_defaults(schema["items"], item, root)


# ---------------------------------------------------------------------- schema errors


def _allowed_keys(schema: dict[str, Any]) -> str:
    names = list(schema.get("properties", {}))
    pats = schema.get("patternProperties", {})
    if any(p.startswith("^/") for p in pats):
        names.append("child paths starting with '/'")
    if any("GET" in p for p in pats):
        names.append("methods " + ", ".join(METHODS))
    return ", ".join(names) or "none"


def schema_errors(validator: Any, instance: Any, base: str = "") -> list[str]:
    """Every JSON Schema violation as ``"<place>: <message>"``, in document order."""
    out: list[str] = []
    for err in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
        place = place_of(err.absolute_path, base)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            props = err.schema.get("properties", {})
            pats = [re.compile(p) for p in err.schema.get("patternProperties", {})]
            for key in err.instance:
                if key in props or any(isinstance(key, str) and p.search(key) for p in pats):
                    continue
                out.append(f"{place_of([key], place if place != 'config' else '')}: unknown key "
                           f"(allowed: {_allowed_keys(err.schema)})")
        elif err.validator == "required":
            missing = [k for k in err.validator_value if isinstance(err.instance, dict) and k not in err.instance]
            for key in missing:
                out.append(f"{place_of([key], place if place != 'config' else '')}: required")
        elif err.validator == "oneOf" and err.absolute_path and list(err.absolute_path)[-1] == "workers":
            out.append(f"{place}: must be \"auto\" or an integer >= 1 (got {err.instance!r})")
        else:
            out.append(f"{place}: {err.message}")
    return out


# ---------------------------------------------------------------------- semantic checks


def _plugin_validator(mod: Any) -> Any:
    v = _plugin_validators.get(id(mod))
    if v is None:
        cls = validator_for(mod.SCHEMA, default=Draft202012Validator)
        cls.check_schema(mod.SCHEMA)
        v = _plugin_validators[id(mod)] = cls(mod.SCHEMA)
    return v


def check_plugins(plugins: Any, place: str, errors: list[str]) -> None:
    """Names resolve through the registry; each ``config`` is valid for its module (defaults applied)."""
    from fastgw.plugins import registry

    if not isinstance(plugins, list):
        return
    seen: dict[str, int] = {}
    for j, entry in enumerate(plugins):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        p = f"{place}[{j}]"
        name = entry["name"]
        if name in seen:
            errors.append(f"{p}.name: plugin {name!r} is listed twice at this level (also {place}[{seen[name]}])")
        seen.setdefault(name, j)
        try:
            mod = registry.find(name)
        except LookupError as exc:
            errors.append(f"{p}.name: {exc}")
            continue
        if entry.get("enabled") is False:
            continue
        cfg = entry.get("config")
        if not isinstance(cfg, dict):
            continue
        try:
            validator = _plugin_validator(mod)
        except SchemaError as exc:
            errors.append(f"{p}.name: plugin {name!r} has an invalid SCHEMA: {exc.message}")
            continue
        apply_defaults(mod.SCHEMA, cfg)
        errors.extend(schema_errors(validator, cfg, f"{p}.config"))


def _check_backend_path(bp: str, names: tuple[str, ...], service: dict[str, Any], si: int,
                        place: str, errors: list[str]) -> None:
    if not bp.startswith("/"):
        errors.append(f"{place}: must start with '/' (got {bp!r})")
    known = ", ".join(names) or "none"
    pos = 0
    for m in _PLACEHOLDER.finditer(bp):
        lit = bp[pos:m.start()]
        pos = m.end()
        if "{" in lit or "}" in lit:
            errors.append(f"{place}: stray brace in {bp!r}")
        if m.group(1) is not None:
            scope, dot, name = m.group(1).partition(".")
            if scope == "stage" and name:
                stages = service.get("stages")
                for sname, stage in (stages.items() if isinstance(stages, dict) else ()):
                    vars_ = stage.get("variables") if isinstance(stage, dict) else None
                    if not isinstance(vars_, dict) or name not in vars_:
                        errors.append(f"{place}: ${{stage.{name}}} is not defined in stage {sname!r} "
                                      f"(services[{si}].stages.{sname}.variables)")
            elif scope not in ("query", "header") or not name:
                errors.append(f"{place}: unknown placeholder ${{{m.group(1)}}} "
                              f"(use ${{stage.x}}, ${{query.x}} or ${{header.x}})")
        else:
            var = m.group(2)
            if var.rstrip("*") not in names:
                errors.append(f"{place}: unknown variable {{{var}}} (known: {known})")
    if "{" in bp[pos:] or "}" in bp[pos:]:
        errors.append(f"{place}: stray brace in {bp!r}")


def _shape(segs: list[tuple[int, bytes]]) -> tuple[Any, ...]:
    return tuple(key if kind == 0 else ("{}" if kind == 1 else "{*}") for kind, key in segs)


def _walk_resources(node: dict[str, Any], template: str, place: str, service: dict[str, Any], si: int,
                    errors: list[str], routes: list[tuple[str, str, tuple[Any, ...]]]) -> None:
    for key, value in node.items():
        if not isinstance(key, str) or not isinstance(value, dict):
            continue
        p = f"{place}.{key}"
        if key.startswith("/"):
            child = key if template in ("", "/") else template + key
            if template and template != "/" and key == "/":
                errors.append(f"{p}: empty child path")
                continue
            try:
                segs, names = parse_template("", child)
            except ValueError as exc:
                errors.append(f"{p}: {exc}")
                continue
            check_plugins(value.get("plugins"), f"{p}.plugins", errors)
            for method in METHODS:
                op = value.get(method)
                if not isinstance(op, dict):
                    continue
                bp = op.get("backend_path")
                if isinstance(bp, str):
                    _check_backend_path(bp, names, service, si, f"{p}.{method}.backend_path", errors)
                check_plugins(op.get("plugins"), f"{p}.{method}.plugins", errors)
                routes.append((f"{p}.{method}", method, _shape(segs)))
            _walk_resources(value, child, p, service, si, errors, routes)


def _check_target(url: Any, place: str, errors: list[str]) -> None:
    if not isinstance(url, str):
        return
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or port is None
            or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username):
        errors.append(f"{place}: must be http://host:port or https://host:port (got {url!r})")


def _plugin_entries(node: Any, place: str) -> Any:
    """(place, entry) of every plugin entry under ``node`` (services, stages, paths, methods)."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{place}.{key}" if place else str(key)
            if key == "plugins" and isinstance(value, list):
                for j, entry in enumerate(value):
                    if isinstance(entry, dict):
                        yield f"{here}[{j}]", entry
            else:
                yield from _plugin_entries(value, here)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _plugin_entries(item, f"{place}[{i}]")


# Plugins with a ``policy: redis`` setting, and the name of their other policy.
_REDIS_POLICY_PLUGINS = {"rate-limiting": "node", "proxy-cache": "memory"}


def _needs_redis(raw: dict[str, Any]) -> list[str]:
    """Plugin settings that keep their state in Redis need the top-level ``redis`` section."""
    if raw.get("redis") is not None:
        return []
    return [f"{place}.config.policy: 'redis' needs the top-level redis section "
            f"(or policy '{_REDIS_POLICY_PLUGINS[entry['name']]}')"
            for place, entry in _plugin_entries(raw.get("services"), "services")
            if entry.get("name") in _REDIS_POLICY_PLUGINS and entry.get("enabled", True) is not False
            and isinstance(entry.get("config"), dict) and entry["config"].get("policy") == "redis"]


def _redis_url_errors(raw: dict[str, Any]) -> list[str]:
    """A ``redis.url`` the client can't use (a bad port, a sentinel URL without its master)."""
    redis = raw.get("redis")
    url = redis.get("url") if isinstance(redis, dict) else None
    if not isinstance(url, str):
        return []
    from fastgw.resp import url_error

    why = url_error(url)
    return [] if why is None else [f"redis.url: {why} (got {url!r})"]


def semantic_errors(raw: dict[str, Any]) -> list[str]:
    """The checks beyond the schema (variables, templates, targets, collisions, plugins)."""
    errors: list[str] = _needs_redis(raw) + _redis_url_errors(raw)
    consumers = raw.get("consumers")
    if isinstance(consumers, list) and all(isinstance(c, dict) for c in consumers):
        from fastgw.consumers import check_consumers

        errors.extend(check_consumers(consumers))
    services = raw.get("services")
    if not isinstance(services, list):
        return errors
    names: dict[str, int] = {}
    # (host, full shape, method) -> (route place, stage place)
    taken: dict[tuple[str, tuple[Any, ...], str], tuple[str, str, str]] = {}
    stage_clash: set[tuple[str, str, str]] = set()
    reported: set[tuple[str, str]] = set()
    for si, service in enumerate(services):
        if not isinstance(service, dict):
            continue
        sp = f"services[{si}]"
        name = service.get("name")
        if isinstance(name, str):
            if name in names:
                errors.append(f"{sp}.name: duplicate service name {name!r} (also services[{names[name]}])")
            names.setdefault(name, si)
        check_plugins(service.get("plugins"), f"{sp}.plugins", errors)
        routes: list[tuple[str, str, tuple[Any, ...]]] = []
        res = service.get("resources")
        if isinstance(res, dict):
            _walk_resources(res, "", f"{sp}.resources", service, si, errors, routes)
        stages = service.get("stages")
        if not isinstance(stages, dict):
            continue
        for stname, stage in stages.items():
            if not isinstance(stage, dict):
                continue
            stp = f"{sp}.stages.{stname}"
            check_plugins(stage.get("plugins"), f"{stp}.plugins", errors)
            backend = stage.get("backend")
            if isinstance(backend, dict) and isinstance(backend.get("targets"), list):
                for ti, target in enumerate(backend["targets"]):
                    if isinstance(target, dict):
                        _check_target(target.get("url"), f"{stp}.backend.targets[{ti}].url", errors)
                    else:
                        _check_target(target, f"{stp}.backend.targets[{ti}]", errors)
            prefix = stage.get("path_prefix", "")
            prefix_shape: tuple[Any, ...] = ()
            if isinstance(prefix, str) and prefix:
                try:
                    segs, _ = parse_template(prefix, "/")
                    prefix_shape = _shape(segs)
                except ValueError as exc:
                    errors.append(f"{stp}.path_prefix: {exc}")
                    continue
            hosts = stage.get("hosts") or ["*"]
            if not isinstance(hosts, list):
                continue
            for hi, host in enumerate(hosts):
                if not isinstance(host, str):
                    continue
                h = host.lower()
                if not _HOST.match(h):
                    errors.append(f"{stp}.hosts[{hi}]: not a host name, '*.suffix' or '*' (got {host!r})")
                    continue
                for rplace, method, shape in routes:
                    key = (h, prefix_shape + shape, method)
                    other = taken.get(key)
                    if other is None:
                        taken[key] = (rplace, stp, sp)
                        continue
                    oplace, ostage, osp = other
                    if osp == sp and ostage != stp:
                        clash = (stp, ostage, h)
                        if clash not in stage_clash:
                            stage_clash.add(clash)
                            errors.append(
                                f"{stp}.hosts[{hi}]: host {host!r} with path_prefix {prefix!r} is also served "
                                f"by {ostage}: its routes can never match (first: {rplace})")
                    elif (rplace, oplace) not in reported:
                        reported.add((rplace, oplace))
                        errors.append(f"{rplace}: can never match on host {host!r}: shadowed by {oplace}")
    return errors


def check(data: Any) -> tuple[list[str], dict[str, Any]]:
    """(errors, data with defaults applied); the input is not modified."""
    if not isinstance(data, dict):
        return [f"config: must be an object (got {type(data).__name__})"], {}
    raw = copy.deepcopy(data)
    apply_defaults(SCHEMA, raw)
    errors = schema_errors(_VALIDATOR, raw)
    errors.extend(semantic_errors(raw))
    return errors, raw


def validate(data: Any) -> list[str]:
    """Every problem of ``data`` as ``"<place>: <message>"`` lines; empty when it is valid."""
    return check(data)[0]
