"""``fastgw purge``, ``fastgw reload`` and ``fastgw targets``: commands that act on, or
look at, a running gateway through its admin API (``POST /cache/purge``, ``POST /reload``,
``GET /targets``), for scripts, deploy hooks and operators.

They take ``--admin`` (default ``http://127.0.0.1:9901``) and ``--token`` (default
``$FASTGW_ADMIN_TOKEN``); they print what the gateway answered and exit 0, or print the
errors and exit 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

DEFAULT_ADMIN = "http://127.0.0.1:9901"


class AdminError(RuntimeError):
    """The admin API could not be reached, refused the token or answered an error;
    ``answer`` holds its JSON body when there was one."""

    def __init__(self, message: str, answer: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.answer = answer or {}


def admin_call(admin: str, token: str, method: str, path: str, params: dict[str, str] | None = None,
               timeout: float = 5.0) -> dict[str, Any]:
    """``METHOD {admin}{path}?params`` with the bearer token: the JSON answer, or AdminError."""
    query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v})
    url = admin.rstrip("/") + path + (f"?{query}" if query else "")
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:  # noqa: S310 - operator-given URL
            return orjson.loads(res.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise AdminError("the admin API refused the token (401)") from None
        try:
            answer = orjson.loads(exc.read())
        except (orjson.JSONDecodeError, OSError):
            answer = None
        raise AdminError(f"admin API answered {exc.code}", answer if isinstance(answer, dict) else None) from None
    except (urllib.error.URLError, OSError) as exc:
        raise AdminError(f"cannot reach {admin}: {getattr(exc, 'reason', exc)}") from None


def admin_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command's parser with ``--admin`` and ``--token`` (fastgw stats, reload, purge)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--admin", default=DEFAULT_ADMIN, help=f"admin listener URL (default {DEFAULT_ADMIN})")
    p.add_argument("--token", default=os.environ.get("FASTGW_ADMIN_TOKEN", ""),
                   help="admin token (default: $FASTGW_ADMIN_TOKEN)")
    return p


def parse_admin_args(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code instead (0 after --help; 2 for bad ones or no token)."""
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if not args.token:
        print(f"{p.prog}: --token (or FASTGW_ADMIN_TOKEN) is required", file=sys.stderr)
        return 2
    return args


def _fail(prog: str, exc: AdminError) -> int:
    lines = [str(x) for x in exc.answer.get("errors") or ()] or \
        ([str(exc.answer["error"])] if exc.answer.get("error") else [])
    print(f"{prog}: {exc}" + (":" if lines else ""), file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)
    return 1


def purge_main(argv: list[str]) -> int:
    """``fastgw purge [SERVICE[/STAGE]]``: drop proxy-cache answers, all or one service's."""
    p = admin_parser("fastgw purge", "Drop stored proxy-cache answers of a running gateway: every "
                                     "worker's, and Redis's with policy redis.")
    p.add_argument("scope", nargs="?", default="", metavar="SERVICE[/STAGE]",
                   help="only this service (and stage); default: everything")
    args = parse_admin_args(p, argv)
    if isinstance(args, int):
        return args
    service, _, stage = args.scope.partition("/")
    try:
        answer = admin_call(args.admin, args.token, "POST", "/cache/purge", {"service": service, "stage": stage})
    except AdminError as exc:
        return _fail("fastgw purge", exc)
    print(orjson.dumps(answer).decode())
    return 0


def reload_main(argv: list[str]) -> int:
    """``fastgw reload``: load the config file again; prints the errors when it is refused."""
    p = admin_parser("fastgw reload", "Reload a running gateway's config file; the old config keeps "
                                      "serving when the new one is refused.")
    args = parse_admin_args(p, argv)
    if isinstance(args, int):
        return args
    try:
        # New workers have to start and answer ready (up to the supervisor's ready timeout).
        admin_call(args.admin, args.token, "POST", "/reload", timeout=60.0)
    except AdminError as exc:
        return _fail("fastgw reload", exc)
    print("reloaded: the new workers serve")
    return 0


def target_state(target: dict[str, Any]) -> str:
    """Whether a target of ``GET /targets`` is in use, and if not, why."""
    left = target.get("passed_over_for") or 0.0
    if left > 0:
        return f"passed over: failed connections ({left:.1f} s left)"
    if target.get("active") == "unhealthy":
        return "passed over: health checks"
    notes = ["not checked yet"] if target.get("active") == "unchecked" else []
    fails = target.get("failed_connects") or 0
    if fails:
        notes.append(f"{fails} failed connection{'s' if fails != 1 else ''} counted")
    return f"in use ({'; '.join(notes)})" if notes else "in use"


def targets_main(argv: list[str]) -> int:
    """``fastgw targets``: each backend target, by service and stage, and whether it is in use."""
    p = admin_parser("fastgw targets", "Show a running gateway's backend targets and whether each is in "
                                       "use: passed over after failed connections (for how long more) or "
                                       "by its health checks.")
    p.add_argument("--json", action="store_true", help="print the admin API's JSON instead of a table")
    args = parse_admin_args(p, argv)
    if isinstance(args, int):
        return args
    try:
        answer = admin_call(args.admin, args.token, "GET", "/targets")
    except AdminError as exc:
        return _fail("fastgw targets", exc)
    if args.json:
        print(orjson.dumps(answer).decode())
        return 0
    rows = [("SERVICE/STAGE", "TARGET", "WEIGHT", "STATE")] + [
        (f"{t['service']}/{t['stage']}", t["target"], str(t["weight"]), target_state(t))
        for t in answer.get("targets", [])]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    return 0
