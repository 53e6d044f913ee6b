"""The compiled pipeline: plain path, priority order, phase split, early answers, async
plugins, user plugins by dotted name, config errors, identity headers, inheritance."""

from __future__ import annotations

import asyncio
import importlib
import textwrap

import pytest

from fastgw.pipeline import PipelineError, build_pipeline

from .plugins.util import hdrs, make_ctx, make_pipeline, make_spec, run

RECORDER = '''
"""A test plugin that records its calls."""
from fastgw.plugins.base import CONTINUE, Plugin as Base

NAME = "{name}"
PRIORITY = {priority}
SCHEMA = {{"type": "object", "additionalProperties": False, "properties": {{
    "answer": {{"type": "integer", "default": 0, "description": "status to answer with (0: none)"}}}}}}
CALLS = []


class Plugin(Base):
    def on_request(self, ctx):
        CALLS.append(("request", NAME))
        if self.config["answer"]:
            return ctx.error(self.config["answer"], "stop")
        return CONTINUE

    def on_log(self, ctx):
        CALLS.append(("log", NAME))
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    counter = iter(range(10_000))
    pkg = f"tp_{tmp_path.name.replace('-', '_')}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("")

    def make(priority: int, body: str = RECORDER) -> str:
        mod = f"p{next(counter)}"
        name = f"{pkg}.{mod}"
        (tmp_path / pkg / f"{mod}.py").write_text(body.format(name=name, priority=priority))
        return name

    return make


def test_route_without_plugins_has_no_pipeline():
    assert build_pipeline(make_spec([]), None) is None


def test_priority_orders_the_request_phase_not_declaration(plugin_dir):
    low, high, mid = plugin_dir(10), plugin_dir(1000), plugin_dir(500)
    pipe = make_pipeline([{"name": low}, {"name": high}, {"name": mid}])
    assert pipe.names == (high, mid, low)
    ctx = make_ctx()
    assert pipe.run_request(ctx) is False
    calls = importlib.import_module(low).CALLS
    assert [n for _, n in importlib.import_module(high).CALLS + importlib.import_module(mid).CALLS + calls] == [high, mid, low]


def test_builtin_priorities():
    pipe = make_pipeline([
        {"name": "response-headers", "config": {"set": {"X-A": "1"}}},
        {"name": "acl", "config": {"allow_groups": ["g"]}},
        {"name": "key-auth"}, {"name": "cors"}, {"name": "request-id"},
        {"name": "ip-restriction", "config": {"allow": ["127.0.0.1"]}},
    ])
    assert pipe.names == ("request-id", "cors", "key-auth", "ip-restriction", "acl", "response-headers")


def test_only_implementing_plugins_are_in_a_phase():
    pipe = make_pipeline([{"name": "response-headers", "config": {"set": {"X-A": "1"}}}, {"name": "key-auth"}])
    assert len(pipe.chain.req) == 1 and len(pipe.chain.resp) == 1
    assert pipe.has_response and not pipe.has_log and not pipe.is_async


RESPONDER = '''
"""A test plugin with a Python response phase."""
from fastgw.plugins.base import Plugin as Base

NAME = "{name}"
PRIORITY = {priority}
SCHEMA = {{"type": "object", "properties": {{}}}}


class Plugin(Base):
    def on_response(self, ctx):
        ctx.response_headers.append((b"X-Py", b"1"))
'''


def test_built_in_response_edits_go_on_the_head_only_when_no_python_code_needs_the_list(plugin_dir):
    edits = {"name": "response-headers", "config": {"add": {"X-A": "1"}}}
    assert make_pipeline([edits, {"name": "key-auth"}, {"name": "request-id"}]).chain.head_only_response
    assert not make_pipeline([edits, {"name": plugin_dir(10, RESPONDER)}]).chain.head_only_response
    assert not make_pipeline([edits, {"name": plugin_dir(10)}]).chain.head_only_response  # has on_log
    assert not make_pipeline([{"name": "key-auth"}]).chain.head_only_response  # no response phase


def test_native_only_chains_are_the_ones_whose_context_may_keep_headers_on_the_scan(plugin_dir):
    edits = {"name": "response-headers", "config": {"add": {"X-A": "1"}}}
    assert make_pipeline([edits, {"name": "key-auth"}, {"name": "request-id"}]).chain.native_only
    assert make_pipeline([{"name": "key-auth"}]).chain.native_only
    assert not make_pipeline([{"name": "key-auth"}, {"name": plugin_dir(10, RESPONDER)}]).chain.native_only
    assert not make_pipeline([{"name": "key-auth"}, {"name": plugin_dir(10)}]).chain.native_only  # on_log
    assert not make_pipeline([{"name": "key-auth"}, {"name": "mock", "config": {"json": {"a": 1}}}]
                             ).chain.native_only
    # Steps in C with the plugin's Python method as their fallback count as C steps: the
    # fallback reads the headers through the context's API, which works in both modes.
    assert make_pipeline([{"name": "key-auth"}, {"name": "acl", "config": {"allow_groups": ["g"]}},
                          {"name": "cors", "config": {"origins": ["https://a.example"]}},
                          {"name": "ip-restriction", "config": {"allow": ["127.0.0.1"]}}]).chain.native_only


def test_early_answer_skips_the_rest_but_log_runs(plugin_dir):
    first = plugin_dir(900)
    stopper = plugin_dir(800)
    after = plugin_dir(700)
    pipe = make_pipeline([{"name": first}, {"name": stopper, "config": {"answer": 429}}, {"name": after}])
    ctx = make_ctx()
    assert pipe.run_request(ctx) is True
    assert ctx.answer_status == 429 and ctx.status == 429
    assert ctx.response_headers is ctx.answer_headers
    pipe.run_log(ctx)  # the server always calls the log phase
    mod_after = importlib.import_module(after)
    assert ("request", after) not in mod_after.CALLS
    assert ("log", after) in mod_after.CALLS
    assert ("log", first) in importlib.import_module(first).CALLS and ("log", stopper) in importlib.import_module(stopper).CALLS


def test_async_plugin_makes_the_pipeline_async(plugin_dir):
    body = RECORDER.replace("def on_request(self, ctx):", "async def on_request(self, ctx):\n        await __import__('asyncio').sleep(0)")
    name = plugin_dir(10, body)
    sync_name = plugin_dir(20)
    pipe = make_pipeline([{"name": name}, {"name": sync_name, "config": {"answer": 0}}])
    assert pipe.is_async
    ctx = make_ctx()
    assert asyncio.run(pipe.run_request_async(ctx)) is False
    assert importlib.import_module(name).CALLS[0] == ("request", name)


def test_async_pipelines_keep_the_request_phase_rules(plugin_dir):
    """The async path strips client identity headers, fails closed and answers like the sync one."""
    prefix = "async def on_request(self, ctx):\n        await __import__('asyncio').sleep(0)"
    passing = RECORDER.replace("def on_request(self, ctx):", prefix)
    pipe = make_pipeline([{"name": plugin_dir(10, passing)}])
    ctx = make_ctx(headers=[(b"Host", b"h"), (b"X-Consumer-Name", b"mallory")])
    assert asyncio.run(pipe.run_request_async(ctx)) is False
    assert ctx.headers == [(b"Host", b"h")]
    crashing = passing.replace('CALLS.append(("request", NAME))', "raise RuntimeError('bug')")
    ctx = make_ctx()
    assert asyncio.run(make_pipeline([{"name": plugin_dir(10, crashing)}]).run_request_async(ctx)) is True
    assert ctx.answer_status == 500 and ctx.status == 500 and ctx.response_headers is ctx.answer_headers


def test_user_plugin_by_dotted_name(tmp_path, monkeypatch):
    pkg = tmp_path / "mycompany"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "audit.py").write_text(textwrap.dedent('''
        """Audit: tags the request for the backend and records the status."""
        from fastgw.plugins.base import CONTINUE, Plugin as Base

        NAME = "mycompany.audit"
        PRIORITY = 5
        SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
            "tag": {"type": "string", "default": "audited", "description": "value of X-Audit"}}}
        SEEN = []

        class Plugin(Base):
            def __init__(self, config, scope):
                super().__init__(config, scope)
                self.tag = config["tag"].encode()

            def on_request(self, ctx):
                ctx.headers.append((b"X-Audit", self.tag))
                return CONTINUE

            def on_log(self, ctx):
                SEEN.append(ctx.status)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    pipe = make_pipeline([{"name": "mycompany.audit"}])
    ctx = make_ctx()
    assert pipe.run_request(ctx) is False
    assert hdrs(ctx.headers)["x-audit"] == "audited"
    ctx.status = 200
    pipe.run_log(ctx)
    import mycompany.audit
    assert mycompany.audit.SEEN == [200]
    with pytest.raises(PipelineError) as err:
        make_pipeline([{"name": "mycompany.audit", "config": {"tag": 5}}])
    assert "plugins[0].config.tag: 5 is not of type 'string'" in err.value.errors[0]


def test_config_errors_name_the_place():
    with pytest.raises(PipelineError) as err:
        make_pipeline([{"name": "no-such-plugin"}, {"name": "acl", "config": {"allow_groups": "gold"}},
                       {"name": "nosuch.module"}])
    errors = err.value.errors
    assert errors[0].startswith("services[0].resources./orders/{id}.GET.plugins[0].name: unknown plugin")
    assert errors[1].startswith("services[0].resources./orders/{id}.GET.plugins[1].config.allow_groups:")
    assert "cannot be imported" in errors[2]


def test_build_time_refusal_is_a_config_error():
    with pytest.raises(PipelineError) as err:
        make_pipeline([{"name": "cors", "config": {"origins": ["*"], "credentials": True}}])
    assert "plugins[0].config: credentials: true cannot be combined" in err.value.errors[0]


def test_crashing_plugin_fails_closed(plugin_dir):
    body = RECORDER.replace('CALLS.append(("request", NAME))', "raise RuntimeError('bug')")
    pipe = make_pipeline([{"name": plugin_dir(10, body)}])
    ctx = make_ctx()
    assert pipe.run_request(ctx) is True
    assert ctx.answer_status == 500


def test_identity_headers_stripped_without_auth():
    pipe = make_pipeline([{"name": "request-id"}])
    ctx = make_ctx(headers=[(b"X-Consumer-Name", b"admin"), (b"X-Consumer-Groups", b"root"), (b"A", b"1")])
    assert run(pipe, ctx) is False
    assert "x-consumer-name" not in hdrs(ctx.headers) and "x-consumer-groups" not in hdrs(ctx.headers)


def test_every_identity_header_stripped_in_any_case_and_position():
    from fastgw._core import IDENTITY_HEADER_NAMES

    pipe = make_pipeline([{"name": "request-id"}])
    for name in IDENTITY_HEADER_NAMES:
        for spelled in (name, name.upper(), name.title()):
            near = [(b"x-consumer", b"kept"), (b"X-Consumer-Named-Thing", b"kept"), (b"A", b"1")]
            ctx = make_ctx(headers=[*near, (spelled, b"forged"), (b"B", b"2"), (spelled, b"again")])
            assert run(pipe, ctx) is False
            left = hdrs(ctx.headers)
            assert name.decode() not in left, (spelled, left)
            assert left["x-consumer"] == "kept" and left["x-consumer-named-thing"] == "kept"


def test_max_body_and_preflight_published():
    pipe = make_pipeline([{"name": "request-size-limit", "config": {"allowed_payload_size": 10, "size_unit": "kilobytes"}},
                          {"name": "cors"}])
    assert pipe.max_body == 10240
    assert pipe.preflight is not None
    assert make_pipeline([{"name": "key-auth"}]).max_body == -1
    assert make_pipeline([{"name": "key-auth"}]).preflight is None


def test_inheritance_and_override_down_the_tree():
    config_mod = pytest.importorskip("fastgw.config")
    load_data = getattr(config_mod, "load_data", None)
    if load_data is None:
        pytest.skip("fastgw.config.load_data not available yet")
    data = {
        "listen": [{"host": "127.0.0.1", "port": 18080}],
        "consumers": [{"name": "alice", "groups": ["gold"], "credentials": {"key-auth": ["alice-key-1"]}}],
        "services": [{
            "name": "shop",
            "stages": {"prod": {"backend": {"targets": ["http://127.0.0.1:9001"]}}},
            "plugins": [{"name": "key-auth"}, {"name": "response-headers", "config": {"set": {"X-Level": "service"}}}],
            "resources": {
                "/orders": {
                    "plugins": [{"name": "response-headers", "config": {"set": {"X-Level": "path"}}}],
                    "GET": {},
                    "/{orderId}": {
                        "GET": {"plugins": [{"name": "response-headers", "config": {"set": {"X-Level": "method"}}}]},
                        "DELETE": {"plugins": [{"name": "acl", "config": {"allow_groups": ["gold"]}}]},
                    },
                },
                "/public": {"GET": {"plugins": [{"name": "key-auth", "enabled": False}]}},
            },
        }],
    }
    config = load_data(data)
    from fastgw.consumers import ConsumerTable
    from fastgw.plugins.base import PluginScope
    table = ConsumerTable(config.consumers)
    routes = {(r.method, r.resource): r for r in config.routes}

    def level(method, resource):
        spec = routes[(method, resource)]
        pipe = build_pipeline(spec, PluginScope(spec=spec, consumers=table, variables=spec.variables))
        if pipe is None:
            return None, ()
        ctx = make_ctx(headers=[(b"apikey", b"alice-key-1")], values=(b"7",) if "{" in resource else (),
                       resource=resource)
        assert run(pipe, ctx) is False
        ctx.response_headers = []
        pipe.run_response(ctx)
        return hdrs(ctx.response_headers).get("x-level"), pipe.names

    assert level("GET", "/orders") == ("path", ("key-auth", "response-headers"))
    assert level("GET", "/orders/{orderId}") == ("method", ("key-auth", "response-headers"))
    assert level("DELETE", "/orders/{orderId}") == ("path", ("key-auth", "acl", "response-headers"))
    public = routes[("GET", "/public")]
    assert [p["name"] for p in public.plugins] == ["response-headers"]

    bad = dict(data, services=[dict(data["services"][0], plugins=[{"name": "key-auth", "config": {"key_names": 3}}])])
    with pytest.raises(config_mod.ConfigError) as err:
        load_data(bad)
    assert any("services[0].plugins[0].config.key_names" in e for e in err.value.errors)


def test_compiled_routes_keep_request_headers_on_the_scan_only_for_built_in_chains(plugin_dir):
    """Route.ctx_lazy: set when only built-in C steps run (no Python step, no preflight,
    nothing async), never on the plain path."""
    from fastgw.config.loader import load_data
    from fastgw.server import Worker
    from tests.helpers import gateway_config

    edits = {"name": "response-headers", "config": {"add": {"X-A": "${header.x-t}"}}}
    resources = {
        "/native": {"GET": {"plugins": [{"name": "key-auth"}, {"name": "request-id"}, edits]}},
        "/python": {"GET": {"plugins": [{"name": "key-auth"}, {"name": plugin_dir(10, RESPONDER)}]}},
        "/cors": {"GET": {"plugins": [{"name": "key-auth"},
                                      {"name": "cors", "config": {"origins": ["https://a.example"]}}]}},
        "/plain": {"GET": {}},
    }
    loop = asyncio.new_event_loop()
    try:
        worker = Worker(load_data(gateway_config(1, "http://127.0.0.1:9", resources)), loop)
        lazy = {r.resource: r.ctx_lazy for r in worker.runtime.routes}
    finally:
        loop.close()
    assert lazy == {"/native": True, "/python": False, "/cors": False, "/plain": False}


WAITER = '''
"""A test plugin whose sync on_request returns an awaitable when configured to wait."""
import asyncio

from fastgw.plugins.base import CONTINUE, Plugin as Base

NAME = "{name}"
PRIORITY = {priority}
SCHEMA = {{"type": "object", "additionalProperties": False, "properties": {{
    "wait": {{"type": "string", "default": "no", "description": "no | continue | answer | raise"}}}}}}
CALLS = []


class Plugin(Base):
    def on_request(self, ctx):
        CALLS.append(("request", NAME))
        how = self.config["wait"]
        if how == "no":
            return CONTINUE
        return self._later(ctx, how)

    async def _later(self, ctx, how):
        await asyncio.sleep(0.01)
        CALLS.append(("resumed", NAME))
        if how == "raise":
            raise ValueError("backend of the plugin is down")
        if how == "answer":
            return ctx.error(403, "no")
        ctx.headers.append((b"X-Waited", b"yes"))
        return CONTINUE
'''


@pytest.mark.parametrize("how", ["no", "continue", "answer", "raise"])
def test_a_sync_step_may_return_an_awaitable_to_wait(plugin_dir, how):
    """The chain runs sync until a step returns an awaitable (start_request: 2); the server
    awaits it in a task (finish_request) and runs the steps after it; an answer from the
    awaitable ends the phase there, an exception answers 500 (fail closed). A step that
    answers at once never makes a task."""
    first = plugin_dir(1000, WAITER.replace('"default": "no"', f'"default": "{how}"'))
    after = plugin_dir(10)
    pipe = make_pipeline([{"name": first}, {"name": after}])
    assert not pipe.is_async                  # only the route's sync path, no task per request
    ctx = make_ctx(headers=[(b"Host", b"api.test"), (b"X-Consumer-Name", b"forged")])

    async def phase() -> tuple[int, bool]:
        state = pipe.chain.start_request(ctx)
        return state, (await pipe.finish_request(ctx)) if state == 2 else state == 1

    state, answered = asyncio.run(phase())
    later = list(importlib.import_module(after).CALLS)
    assert state == (0 if how == "no" else 2)
    if how in ("no", "continue"):
        assert answered is False and later == [("request", after)]
        assert (how == "continue") == (b"yes" in [v for k, v in ctx.headers if k == b"X-Waited"])
        assert "x-consumer-name" not in hdrs(ctx.headers)   # begin() still stripped it
    else:
        assert answered is True and later == []
        assert ctx.status == ctx.answer_status == (403 if how == "answer" else 500)
    # The same chain through the Python async path gives the same outcome.
    ctx2 = make_ctx()
    assert asyncio.run(pipe.run_request_async(ctx2)) is answered


def test_the_sync_api_refuses_a_step_that_waits(plugin_dir):
    import gc
    import warnings

    name = plugin_dir(1000, WAITER.replace('"default": "no"', '"default": "continue"'))
    pipe = make_pipeline([{"name": name}])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="waits"):
            pipe.run_request(make_ctx())
        gc.collect()
    # the step's coroutine was closed, not left never awaited
    assert not [w for w in seen if "never awaited" in str(w.message)]


def test_a_waiting_step_on_the_sync_phase_is_refused_and_its_coroutine_closed() -> None:
    """run_request (the sync phase) cannot wait: a step that returns a coroutine (aggregate's
    calls) is an error, and the coroutine is closed rather than left never awaited."""
    import gc
    import warnings

    pipe = make_pipeline([{"name": "aggregate", "config": {"calls": {"a": "/a"}}}])
    ctx = make_ctx()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="a request step waits"):
            pipe.run_request(ctx)
        gc.collect()
    assert not [w for w in seen if "never awaited" in str(w.message)]
    assert ctx._waiting is None
