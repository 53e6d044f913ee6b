"""The ``fastgw`` command: ``run``, ``validate``, ``routes``, ``stats``, ``reload``, ``purge``,
``targets``, ``demo`` and the internal ``worker``.

Examples::

    fastgw validate examples/demo.json       # "ok: 14 routes", or one line per error, exit 1
    fastgw routes examples/demo.json         # the resource tree per service and stage
    fastgw run -c examples/demo.json -w 4    # the supervisor with 4 workers
    fastgw demo                              # demo backends + gateway on :8080
    fastgw reload --token T                  # reload through the admin API; errors printed
    fastgw purge shop/prod --token T         # drop that stage's proxy-cache answers
    fastgw targets --token T                 # each backend target: in use, or passed over and why
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import signal
import socket
import sys
from collections.abc import Iterable
from typing import Any

from fastgw import __version__


def _load_config(path: str) -> tuple[Any, list[str]]:
    from fastgw import config as fconfig

    try:
        return fconfig.load(path), []
    except fconfig.ConfigError as exc:
        return None, list(exc.errors) or [str(exc)]
    except OSError as exc:
        return None, [f"{path}: {exc.strerror or exc}"]


# ---------------------------------------------------------------------- validate


def cmd_validate(args: argparse.Namespace) -> int:
    cfg, errors = _load_config(args.file)
    if not errors:
        from fastgw.server import plugin_errors

        errors = plugin_errors(cfg)
    if errors:
        for line in errors:
            print(line)
        print(f"{args.file}: {len(errors)} error(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(cfg.routes)} routes")
    return 0


# ---------------------------------------------------------------------- routes

_STAGE_VAR = re.compile(r"\$\{stage\.([A-Za-z0-9_.-]+)\}")


def _show_backend_path(spec: Any) -> str:
    """The backend path with stage variables filled in; '(same path)' when it is forwarded."""
    if spec.backend_path is None:
        return "(same path)"
    variables = spec.variables or {}
    return _STAGE_VAR.sub(lambda m: str(variables.get(m.group(1), m.group(0))), spec.backend_path)


def _split_template(resource: str) -> list[str]:
    """``'/orders/{id}'`` -> ``['/orders', '/{id}']``; ``'/'`` -> ``[]``."""
    return ["/" + part for part in resource.strip("/").split("/") if part]


def format_routes(routes: Iterable[Any]) -> str:
    """The route specs as an indented tree: service > stage > path segments > methods.

    Example output::

        service shop
          stage prod  hosts: *  prefix: -  targets: http://127.0.0.1:9101
            /orders
              GET     -> /v1/orders
              POST    -> /v1/orders  plugins: key-auth
              /{id}
                GET     -> /v1/orders/{id}
    """
    tree: dict[str, dict[str, Any]] = {}
    for spec in routes:
        stages = tree.setdefault(spec.service, {})
        stage = stages.setdefault(spec.stage, {"spec": spec, "paths": {}})
        node = stage["paths"]
        for segment in _split_template(spec.resource):
            node = node.setdefault(segment, {})
        node.setdefault("", []).append(spec)
    lines: list[str] = []
    for service, stages in tree.items():
        lines.append(f"service {service}")
        for stage_name, stage in stages.items():
            first = stage["spec"]
            hosts = ", ".join(first.hosts) if first.hosts else "*"
            prefix = first.path_prefix or "-"
            weighted = len(set(first.weights)) > 1
            targets = ", ".join(f"{t} (weight {w})" if weighted else t
                                for t, w in zip(first.targets, first.weights, strict=True)) or "-"
            balance = first.backend.get("balance", "round_robin")
            if balance == "hash":
                balance += f" on {first.backend.get('hash_key', 'ip')}"
            if balance != "round_robin" and len(first.targets) > 1:
                targets += f" ({balance})"
            lines.append(f"  stage {stage_name}  hosts: {hosts}  prefix: {prefix}  targets: {targets}")
            root = stage["paths"]
            if root.get(""):
                lines.append("    /")
                _format_methods(root[""], 6, lines)
            _format_node(root, 4, lines)
    return "\n".join(lines)


_METHOD_ORDER = {m: i for i, m in enumerate(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "ANY"])}


def _format_methods(specs: list[Any], indent: int, lines: list[str]) -> None:
    for spec in sorted(specs, key=lambda s: (_METHOD_ORDER.get(s.method, 99), s.method)):
        line = f"{' ' * indent}{spec.method:<7} -> {_show_backend_path(spec)}"
        names = [plugin["name"] for plugin in spec.plugins]
        if names:
            line += "  plugins: " + ", ".join(names)
        lines.append(line)


def _format_node(node: dict[str, Any], indent: int, lines: list[str]) -> None:
    """Children of ``node`` (static segments first); a segment without methods of its
    own and with one child is shown joined to it (``/static/{path*}``)."""
    for key in sorted((k for k in node if k), key=lambda k: (k.startswith("/{"), k)):
        label, child = key, node[key]
        while not child.get("") and len([k for k in child if k]) == 1:
            (only,) = [k for k in child if k]
            label, child = label + only, child[only]
        lines.append(" " * indent + label)
        _format_methods(child.get("", []), indent + 2, lines)
        _format_node(child, indent + 2, lines)


def cmd_routes(args: argparse.Namespace) -> int:
    cfg, errors = _load_config(args.file)
    if errors:
        for line in errors:
            print(line, file=sys.stderr)
        return 1
    print(format_routes(cfg.routes))
    return 0


# ---------------------------------------------------------------------- run / worker / demo / stats


def cmd_run(args: argparse.Namespace) -> int:
    from fastgw import workers

    return workers.run(args.config, workers=args.workers)


def _set_parent_death_signal() -> None:
    """Linux: SIGTERM this worker if the supervisor dies (so no orphan keeps the port)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return


def cmd_worker(args: argparse.Namespace) -> int:
    # The supervisor forwards Ctrl-C as SIGTERM (drain) and owns reload, so a worker
    # ignores the SIGINT and SIGHUP a terminal sends to the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _set_parent_death_signal()
    if os.getppid() == 1:
        return 1  # the supervisor died before we got here
    sockets = [socket.socket(fileno=fd) for fd in args.fd or []]
    from fastgw import server

    server.run_worker(args.config, sockets, args.index, args.generation, args.stats, args.ready_fd,
                      args.shared, args.cache)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fastgw import demo

    return demo.main(port=args.port, workers=args.workers, config=args.config)


def cmd_stats(argv: list[str]) -> int:
    if importlib.util.find_spec("fastgw.cli_stats") is None:
        print("fastgw stats: not available in this build (fastgw.cli_stats is missing)", file=sys.stderr)
        return 2
    module = importlib.import_module("fastgw.cli_stats")
    result = module.main(argv)
    return int(result or 0)


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgw", description="fastgw: a high-performance API gateway.")
    parser.add_argument("--version", action="version", version=f"fastgw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="run the gateway (supervisor + workers)")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="config file (.json or .msgpack)")
    p.add_argument("-w", "--workers", type=int, default=None, metavar="N",
                   help="worker processes (default: the config's 'workers')")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a config file: 'ok: N routes' or one line per error")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("routes", help="print the resource tree per service and stage")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_routes)

    p = sub.add_parser("demo", help="start demo backends and the gateway on examples/demo.json")
    p.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    p.add_argument("-w", "--workers", type=int, default=2, metavar="N", help="worker processes (default 2)")
    p.add_argument("-c", "--config", default=None, metavar="FILE", help="another demo config")
    p.set_defaults(func=cmd_demo)

    sub.add_parser("stats", help="show live stats from a running gateway (see 'fastgw stats --help')",
                   add_help=False)
    sub.add_parser("reload", help="reload a running gateway's config through its admin API, errors printed",
                   add_help=False)
    sub.add_parser("purge", help="drop a running gateway's proxy-cache answers (all, or SERVICE[/STAGE])",
                   add_help=False)
    sub.add_parser("targets", help="show a running gateway's backend targets and whether each is in use",
                   add_help=False)

    p = sub.add_parser("worker", help="internal: one worker process, started by the supervisor")
    p.add_argument("--config", required=True)
    p.add_argument("--fd", type=int, action="append", help="inherited listening socket (one per listen address)")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--generation", type=int, default=1)
    p.add_argument("--ready-fd", type=int, default=None)
    p.add_argument("--stats", default=None, help="name of the stats shared-memory region")
    p.add_argument("--shared", default=None, help="name of the node's shared-memory region (replay set, counters)")
    p.add_argument("--cache", default=None, help="name of the node's proxy-cache region (policy memory)")
    p.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastgw`` console script and ``python -m fastgw``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "stats":
        return cmd_stats(argv[1:])
    if argv and argv[0] in ("purge", "reload", "targets"):
        from fastgw import cli_admin

        command = {"purge": cli_admin.purge_main, "reload": cli_admin.reload_main,
                   "targets": cli_admin.targets_main}[argv[0]]
        return command(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
