"""proxy-cache: Cache-Control parsing, what may be stored and for how long, the memory
bound, validators, and checked settings (the wire behaviour: tests/e2e/test_proxy_cache.py)."""

from __future__ import annotations

from typing import Any

import pytest

from fastgw.pipeline import PipelineError
from fastgw.plugins.proxy_cache import Entry, Store, _etag_matches, _Fill, cache_directives

from .util import hdrs, make_ctx, make_pipeline, run


def cache(config: dict[str, Any] | None = None) -> Any:
    return make_pipeline([{"name": "proxy-cache", "config": config or {}}])


def test_cache_directives() -> None:
    assert cache_directives(None) == {}
    assert cache_directives('Public, MAX-AGE=60, no-cache="Set-Cookie",,  s-maxage = 5') == {
        "public": None, "max-age": "60", "no-cache": "Set-Cookie", "s-maxage": "5"}


@pytest.mark.parametrize(("headers", "status", "length", "lifetime"), [
    ([], 200, 10, 60.0),
    ([(b"Cache-Control", b"max-age=5")], 200, 10, 5.0),
    ([(b"Cache-Control", b"max-age=5, s-maxage=9")], 200, 10, 9.0),
    ([(b"Cache-Control", b"max-age=abc")], 200, 10, 60.0),          # not delta-seconds: ignored
    ([(b"Age", b"3"), (b"Cache-Control", b"max-age=5")], 200, 10, 2.0),
    ([(b"Age", b"5"), (b"Cache-Control", b"max-age=5")], 200, 10, None),   # already stale
    ([(b"Cache-Control", b"public, no-store")], 200, 10, None),
    ([(b"cache-control", b"Private")], 200, 10, None),
    ([(b"Cache-Control", b"s-maxage=0")], 200, 10, None),
    ([(b"Set-Cookie", b"a=1")], 200, 10, None),
    ([(b"Vary", b"Accept-Encoding")], 200, 10, None),
    ([(b"Vary", b"accept-language")], 200, 10, 60.0),               # in vary_headers
    ([(b"Vary", b"*")], 200, 10, None),
    ([], 500, 10, None),
    ([], 301, 10, 60.0),
    ([], 200, 2000, None),                                            # over max_body
    ([(b"Date", b"Fri, 27 Nov 2026 10:00:00 GMT"), (b"Expires", b"Fri, 27 Nov 2026 10:00:30 GMT")], 200, 10, 30.0),
    ([(b"Date", b"Fri, 27 Nov 2026 10:00:00 GMT"), (b"Expires", b"Fri, 27 Nov 2026 09:00:00 GMT")], 200, 10, None),
    ([(b"Expires", b"0")], 200, 10, None),                           # invalid: already expired
    ([(b"Expires", b"Fri, 27 Nov 2026 09:00:00 GMT"), (b"Cache-Control", b"max-age=7")], 200, 10, 7.0),
])
def test_what_is_stored_and_for_how_long(headers: list[tuple[bytes, bytes]], status: int, length: int,
                                         lifetime: float | None) -> None:
    pipe = cache({"max_body": 1000, "vary_headers": ["Accept-Language"]})
    plugin = pipe.plugins[0]
    fill = _Fill(plugin, ("k",), 0)
    taken = fill.start(status, headers, length)
    assert taken == (lifetime is not None)
    if taken:
        assert fill.lifetime == lifetime
        assert all(n.lower() != b"age" for n, _ in fill.headers)      # recomputed per hit


def test_answer_size_settings_are_no_request_limits() -> None:
    # The route's request body limit comes from a plugin's ``request_body_limit``
    # (request-size-limit): proxy-cache's and response-transformer's max_body are about answers.
    for name in ("proxy-cache", "response-transformer"):
        pipe = make_pipeline([{"name": name, "config": {"max_body": 10}}])
        assert pipe.max_body == -1, name


def test_pragma_no_cache_refreshes_only_without_cache_control() -> None:
    pipe = cache()
    ctx = make_ctx(path="/p", headers=[(b"Pragma", b"no-cache")])
    run(pipe, ctx)
    assert hdrs(ctx.response_headers_add)["x-cache-status"] == "Refresh"
    ctx = make_ctx(path="/p", headers=[(b"Pragma", b"no-cache"), (b"Cache-Control", b"max-age=60")])
    run(pipe, ctx)
    assert hdrs(ctx.response_headers_add)["x-cache-status"] == "Miss"


def test_a_miss_taps_the_answer_and_the_next_request_hits() -> None:
    pipe = cache()
    ctx = make_ctx(path="/orders/1", query=b"a=1")
    assert run(pipe, ctx) is False and ctx.response_tap is not None
    assert hdrs(ctx.response_headers_add)["x-cache-status"] == "Miss"
    tap = ctx.response_tap
    assert tap.start(200, [(b"Content-Type", b"text/plain"), (b"ETag", b'"e"')], 5)
    tap.finish(b"hello")
    hit = make_ctx(path="/orders/1", query=b"a=1")
    assert run(pipe, hit) is True
    assert hit.answer_status == 200 and hit.answer_body == b"hello"
    h = hdrs(hit.answer_headers)
    assert h["x-cache-status"] == "Hit" and h["content-type"] == "text/plain" and h["age"] == "0"
    assert run(pipe, make_ctx(method="POST", path="/orders/1", query=b"a=1")) is False


def test_store_bound_and_expiry() -> None:
    store = Store(max_memory=3 * (100 + 256))
    def entry(expires: float) -> Entry:
        return Entry(200, [], b"x" * 100, None, 0.0, expires, 0)
    for k in "abc":
        store.put((k,), entry(10.0))
    assert len(store) == 3 and store.used == 3 * 356
    assert store.get(("a",), 1.0) is not None       # a is now the most recent
    store.put(("d",), entry(10.0))                   # b goes
    assert store.get(("b",), 1.0) is None and len(store) == 3
    assert store.get(("a",), 10.0) is None           # expired: dropped on read
    assert len(store) == 2 and store.used == 2 * 356
    store.put(("big",), Entry(200, [], b"x" * 5000, None, 0.0, 10.0, 0))   # larger than the bound
    assert store.get(("big",), 1.0) is None and len(store) == 2


def test_etag_matching_is_weak() -> None:
    assert _etag_matches('"a", W/"b"', b'"b"')
    assert _etag_matches('W/"b"', b'W/"b"')
    assert _etag_matches("*", b'"x"')
    assert not _etag_matches('"a"', b'"b"')


def test_settings_are_checked() -> None:
    for config, message in (({"ttl": 0}, "ttl"), ({"statuses": [100]}, "statuses"), ({"statuses": [200, 206]}, "statuses"),
                            ({"vary_headers": ["bad name"]}, "vary_headers"),
                            ({"max_memory": 10}, "max_memory"), ({"nope": 1}, "nope")):
        with pytest.raises(PipelineError) as err:
            cache(config)
        assert message in str(err.value.errors), config
    with pytest.raises(PipelineError) as err:      # a worker without the redis section
        make_pipeline([{"name": "proxy-cache", "config": {"policy": "redis"}}], services={"counters": object()})
    assert "top-level redis" in str(err.value.errors)


def test_one_store_per_worker_for_every_route() -> None:
    a, b = cache({"max_memory": 4096}), cache({"max_memory": 1 << 22})
    pa, pb = a.plugins[0], b.plugins[0]
    assert pa.store is pb.store and pa.store.max_memory >= 1 << 22   # one bound: the largest
    for pipe, body in ((a, b"from a"), (b, b"from b")):              # the same path on two routes
        ctx = make_ctx(path="/same")
        run(pipe, ctx)
        ctx.response_tap.start(200, [], len(body))
        ctx.response_tap.finish(body)
    for pipe, body in ((a, b"from a"), (b, b"from b")):
        hit = make_ctx(path="/same")
        assert run(pipe, hit) is True and hit.answer_body == body


def test_the_c_step_answers_a_hit_as_the_plugin_does(tmp_path: Any) -> None:
    """On a route caching in the node's store, the common hit is answered by CacheHitStep in C
    and every other request by the plugin's on_request: for each request both answer alike,
    and the step leaves to the plugin exactly what it can't answer itself."""
    import asyncio
    import time

    from fastgw._core import CacheHitStep

    from fastgw.cache_region import CacheRegion
    from fastgw.plugins.proxy_cache import _DECODED, Plugin

    region = CacheRegion.create(1 << 20, directory=str(tmp_path))
    pipe = make_pipeline([{"name": "proxy-cache", "config": {"vary_headers": ["Accept-Language"]}}],
                         services={"cache_region": region})
    plugin = pipe.plugins[0]
    assert isinstance(plugin.on_request, CacheHitStep)
    handed: list[str] = []

    def python_path(ctx: Any) -> Any:
        handed.append(f"{ctx.method} {ctx.path}")
        return Plugin.on_request(plugin, ctx)

    step = CacheHitStep(python_path, region.reader, plugin._names, _DECODED.items, plugin.vary_names)

    def request(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Any:
        return make_ctx(method=method, path=path, headers=[(b"Host", b"api.test"), *headers])

    def store(path: str, headers: list[tuple[bytes, bytes]]) -> None:
        ctx = request("GET", path, headers)
        assert step(ctx) == 0 and type(ctx.response_tap) is _Fill                 # a miss
        assert ctx.response_tap.start(200, [(b"Content-Type", b"text/plain"), (b"ETag", b'"v1"')], 4)
        ctx.response_tap.finish(path.encode()[-4:])

    cases = [
        ("GET", "/orders/1", [], True),
        ("HEAD", "/orders/1", [], True),
        ("GET", "/orders/2", [(b"Accept-Language", b"de")], True),
        ("GET", "/orders/2", [], False),                                   # another variant: a miss
        ("GET", "/orders/1", [(b"If-None-Match", b'"v1"')], False),        # 304: the plugin
        ("GET", "/orders/1", [(b"Cache-Control", b"max-age=0")], False),   # refresh: the plugin
        ("GET", "/orders/1", [(b"Range", b"bytes=0-1")], False),
        ("GET", "/orders/1", [(b"Authorization", b"Bearer x")], False),
        ("POST", "/orders/1", [], False),
    ]

    async def main() -> None:        # on a running loop, as in the server
        store("/orders/1", [])
        store("/orders/2", [(b"Accept-Language", b"de")])
        for method, path, headers, in_c in cases:
            handed.clear()
            a, b = request(method, path, headers), request(method, path, headers)
            got = []
            for ctx, call in ((a, step), (b, lambda c: Plugin.on_request(plugin, c))):
                got.append(call(ctx))
                if type(ctx.response_tap) is _Fill:
                    ctx.response_tap.release(None)     # a miss: nobody waits on it here
            assert (handed == []) == in_c, (method, path, headers)
            assert got[0] == got[1] and a.answer_status == b.answer_status and a.answer_body == b.answer_body
            assert hdrs(a.answer_headers) == hdrs(b.answer_headers)
            assert hdrs(a.response_headers_add) == hdrs(b.response_headers_add)
            if in_c:
                assert hdrs(a.answer_headers)["x-cache-status"] == "Hit" and hdrs(a.answer_headers)["age"] == "0"
        # The key's record replaced since this worker decoded it: the plugin decodes the new one.
        name = plugin._names[("/orders/1", b"", None, (None,))]
        region.put(name, b"not msgpack", time.monotonic() + 60, 1, 1, region.purges)
        handed.clear()
        ctx = request("GET", "/orders/1", [])
        assert step(ctx) == 0 and handed == ["GET /orders/1"]      # undecodable: a miss
        ctx.response_tap.release(None)

    try:
        asyncio.run(main())
    finally:
        region.close()


@pytest.mark.parametrize(("answer_headers", "grace"), [
    ([], 30.0),                                                        # the setting
    ([(b"Cache-Control", b"max-age=5, stale-if-error=7")], 7.0),       # the origin's word (RFC 5861)
    ([(b"Cache-Control", b"max-age=5, must-revalidate")], 0.0),        # never stale (RFC 9111 5.2.2.2)
    ([(b"Cache-Control", b"max-age=5, proxy-revalidate, stale-if-error=9")], 0.0),
])
def test_stale_if_error_window(answer_headers: list[tuple[bytes, bytes]], grace: float) -> None:
    plugin = cache({"stale_if_error": 30}).plugins[0]
    fill = _Fill(plugin, ("k",), 0)
    assert fill.start(200, answer_headers, 10)
    assert fill.grace == grace


def own_store(config: dict[str, Any]) -> Any:
    """A route's proxy-cache on a worker's own store (no supervisor: no node store)."""
    plugin = cache(config).plugins[0]
    assert plugin.node is None
    return plugin


def store(plugin: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    """A miss for ``path`` whose answer (200, ``body``) is stored; its response tap."""
    ctx = make_ctx(path=path)
    assert plugin.on_request(ctx) == 0
    fill = ctx.response_tap
    assert fill.start(200, headers or [], len(body))
    fill.finish(body)
    return fill


def test_a_worker_on_its_own_store_answers_stale_when_the_backend_fails() -> None:
    """Without the supervisor (each worker its own store): kept past freshness for the
    window, a miss meanwhile, and the stand-in for an upstream failure."""
    import asyncio
    import time

    plugin = own_store({"ttl": 0.2, "stale_if_error": 30})

    async def main() -> None:
        fill = store(plugin, "/stale/1", b"old", [(b"Content-Type", b"text/plain")])
        assert fill.upstream_failed(make_ctx()) is False            # it had nothing stale
        time.sleep(0.25)
        ctx = make_ctx(path="/stale/1")
        assert plugin.on_request(ctx) == 0 and hdrs(ctx.response_headers_add)["x-cache-status"] == "Miss"
        assert ctx.response_tap.upstream_failed(ctx) is True
        assert ctx.answer_status == 200 and ctx.answer_body == b"old"
        got = hdrs(ctx.answer_headers)
        assert got["x-cache-status"] == "Stale" and got["content-type"] == "text/plain" and "age" in got
        assert "x-cache-status" not in hdrs(ctx.response_headers_add)   # not "Miss" as well
        ctx.response_tap.release(None)

    asyncio.run(main())


@pytest.mark.parametrize(("answer_headers", "updating", "grace"), [
    ([], 20.0, 0.0),                                                              # the setting
    ([(b"Cache-Control", b"max-age=5, stale-while-revalidate=7")], 7.0, 0.0),     # the origin's word
    ([(b"Cache-Control", b"max-age=5, stale-while-revalidate=7, stale-if-error=3")], 7.0, 3.0),
    ([(b"Cache-Control", b"max-age=5, must-revalidate, stale-while-revalidate=7")], 0.0, 0.0),
    ([(b"Cache-Control", b"max-age=5, proxy-revalidate")], 0.0, 0.0),
])
def test_stale_while_revalidate_window(answer_headers: list[tuple[bytes, bytes]], updating: float,
                                       grace: float) -> None:
    plugin = cache({"stale_while_revalidate": 20}).plugins[0]
    fill = _Fill(plugin, ("k",), 0)
    assert fill.start(200, answer_headers, 10)
    assert (fill.updating, fill.grace) == (updating, grace)
    entry = fill._entry(b"x")
    assert entry.updating_until == entry.expires + updating and entry.stale_until == entry.expires + grace
    assert entry.kept_until == entry.expires + max(updating, grace)


def test_entries_pack_with_their_windows_and_older_records_still_read() -> None:
    import msgpack

    from fastgw.plugins.proxy_cache import _pack, _unpack

    entry = Entry(200, [(b"A", b"1")], b"body", b'"e"', 10.0, 20.0, 3, 25.0, 50.0)
    back = _unpack(_pack(entry))
    assert back is not None
    assert (back.status, back.headers, back.body, back.etag, back.stored, back.expires, back.age0,
            back.stale_until, back.updating_until, back.kept_until) == (
        200, [(b"A", b"1")], b"body", b'"e"', 10.0, 20.0, 3, 25.0, 50.0, 50.0)
    # A record stored before updating_until existed (eight fields): no such window.
    old = _unpack(msgpack.packb([200, [[b"A", b"1"]], b"body", None, 10.0, 3, 20.0, 25.0]))
    assert old is not None and old.updating_until == 20.0 and old.kept_until == 25.0
    assert _unpack(b"\x93\x01\x02\x03") is None


def test_a_worker_on_its_own_store_answers_stale_while_one_request_refreshes() -> None:
    """Without the supervisor: past freshness, the first request is the miss that asks the
    backend; one for the same answer meanwhile gets the stale one at once (Updating), not
    a wait; once the new answer is stored, it is the hit."""
    import asyncio
    import time

    plugin = own_store({"ttl": 0.2, "stale_while_revalidate": 30})

    async def main() -> None:
        store(plugin, "/swr/1", b"old")
        time.sleep(0.25)
        asking = make_ctx(path="/swr/1")
        assert plugin.on_request(asking) == 0 and hdrs(asking.response_headers_add)["x-cache-status"] == "Miss"
        meanwhile = make_ctx(path="/swr/1")
        assert plugin.on_request(meanwhile) != 0                    # answered, no coroutine to wait on
        assert meanwhile.answer_body == b"old" and hdrs(meanwhile.answer_headers)["x-cache-status"] == "Updating"
        head = make_ctx(method="HEAD", path="/swr/1")
        assert plugin.on_request(head) != 0 and hdrs(head.answer_headers)["x-cache-status"] == "Updating"
        asking.response_tap.start(200, [], 3)
        asking.response_tap.finish(b"new")
        after = make_ctx(path="/swr/1")
        assert plugin.on_request(after) != 0
        assert after.answer_body == b"new" and hdrs(after.answer_headers)["x-cache-status"] == "Hit"

    asyncio.run(main())
