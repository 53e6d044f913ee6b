"""A plugin whose request step returns an asyncio future (not a coroutine), resolved
``delay`` seconds later as the request's ``X-Wait`` header says: ``pass`` (the request
goes on, with ``X-Waited: yes`` added), ``answer`` (403 from the gateway), ``raise`` (the
step fails), ``then-pass`` / ``then-answer`` (the future's result is a coroutine, which
waits ``delay`` more and then passes with ``X-Waited: twice`` or answers 409: the step
waits on it next, as proxy-cache's Redis lookup hands on its miss). A future cancelled before it is resolved (the client went away, the step
timed out) is noted in ``cancel_file``. For the e2e tests of the server's future path."""

from __future__ import annotations

import asyncio
from typing import Any

from fastgw.plugins.base import CONTINUE
from fastgw.plugins.base import Plugin as BasePlugin

NAME = "future"
PRIORITY = 20

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "delay": {"type": "number", "minimum": 0, "default": 0.05},
        "cancel_file": {"type": "string"},
    },
}


class Plugin(BasePlugin):
    def on_request(self, ctx: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        how = ctx.get_header("x-wait") or "pass"

        def resolve() -> None:
            if fut.done():
                return
            if how == "answer":
                fut.set_result(ctx.error(403, "refused after waiting"))
            elif how == "raise":
                fut.set_exception(RuntimeError("the awaited thing failed"))
            elif how.startswith("then-"):
                fut.set_result(self._then(ctx, how))
            else:
                ctx.set_header("x-waited", "yes")
                fut.set_result(CONTINUE)

        handle = loop.call_later(float(self.config["delay"]), resolve)

        def cancelled(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                handle.cancel()
                if "cancel_file" in self.config:
                    with open(self.config["cancel_file"], "a") as out:
                        out.write(f"cancelled {ctx.path}\n")

        fut.add_done_callback(cancelled)
        return fut

    async def _then(self, ctx: Any, how: str) -> int:
        await asyncio.sleep(float(self.config["delay"]))
        if how == "then-answer":
            return ctx.error(409, "refused after waiting twice")
        ctx.set_header("x-waited", "twice")
        return CONTINUE
