"""Flattening of a validated resource tree into one ``RouteSpec`` per (stage, resource, method).

Role in the flow: the last step of ``fastgw.config.load_data``. Plugins and timeouts are
merged from the outside in (service -> stage -> path levels -> method): the nearest level
wins per plugin name, and ``enabled: false`` removes an inherited plugin from that level
down. ``fastgw.compile`` builds the runtime tables from the result.
"""

from __future__ import annotations

from typing import Any

from fastgw.config.model import RouteSpec
from fastgw.config.validate import DEFAULT_TIMEOUTS, METHODS

Plugins = dict[str, dict[str, Any]]


def merge_plugins(inherited: Plugins, level: list[dict[str, Any]] | None, place: str = "") -> Plugins:
    """``inherited`` overridden by ``level`` (nearest wins; ``enabled: false`` removes).

    Each entry keeps the place it was written at (``place`` is the level's: an error in a
    plugin's settings names ``services[0].plugins[1]``, not each route that inherits it)."""
    if not level:
        return inherited
    out = dict(inherited)
    for j, entry in enumerate(level):
        name = entry["name"]
        if entry.get("enabled", True) is False:
            out.pop(name, None)
        else:
            out[name] = {"name": name, "config": entry.get("config", {}),
                         **({"place": f"{place}.plugins[{j}]"} if place else {})}
    return out


def merge_timeouts(inherited: dict[str, float], level: dict[str, float] | None) -> dict[str, float]:
    return {**inherited, **level} if level else inherited


def _walk(node: dict[str, Any], template: str, place: str, plugins: Plugins, timeouts: dict[str, float],
          make: Any, out: list[RouteSpec]) -> None:
    for key, value in node.items():
        if not key.startswith("/"):
            continue
        child = key if template in ("", "/") else template + key
        p = f"{place}.{key}"
        here_plugins = merge_plugins(plugins, value.get("plugins"), p)
        here_timeouts = merge_timeouts(timeouts, value.get("timeouts"))
        for method in METHODS:
            op = value.get(method)
            if op is None:
                continue
            out.append(make(
                resource=child, method=method, backend_path=op.get("backend_path"),
                plugins=tuple(merge_plugins(here_plugins, op.get("plugins"), f"{p}.{method}").values()),
                timeouts=dict(merge_timeouts(here_timeouts, op.get("timeouts"))),
                place=f"{p}.{method}",
            ))
        _walk(value, child, p, here_plugins, here_timeouts, make, out)


def flatten(raw: dict[str, Any]) -> list[RouteSpec]:
    """All routes of a valid configuration, in document order (stage by stage)."""
    out: list[RouteSpec] = []
    for si, service in enumerate(raw.get("services", [])):
        svc_plugins = merge_plugins({}, service.get("plugins"), f"services[{si}]")
        svc_timeouts = merge_timeouts(dict(DEFAULT_TIMEOUTS), service.get("timeouts"))
        for stname, stage in service["stages"].items():
            backend = stage["backend"]
            common = {
                "service": service["name"],
                "stage": stname,
                "hosts": tuple(h.lower() for h in (stage.get("hosts") or ["*"])),
                "path_prefix": stage.get("path_prefix", ""),
                "targets": tuple(t["url"] if isinstance(t, dict) else t for t in backend["targets"]),
                "weights": tuple(int(t.get("weight", 1)) if isinstance(t, dict) else 1
                                 for t in backend["targets"]),
                "backend": {k: v for k, v in backend.items() if k != "targets"},
                "variables": {k: str(v) for k, v in stage.get("variables", {}).items()},
            }

            def make(common: dict[str, Any] = common, **kw: Any) -> RouteSpec:
                return RouteSpec(**common, **kw)

            _walk(service["resources"], "", f"services[{si}].resources",
                  merge_plugins(svc_plugins, stage.get("plugins"), f"services[{si}].stages.{stname}"),
                  merge_timeouts(svc_timeouts, stage.get("timeouts")), make, out)
    return out
