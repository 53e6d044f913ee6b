"""End-to-end: proxy-cache answers repeated GET/HEAD requests without the backend, stores
only what RFC 9111 lets a shared cache store, and never mixes callers or variants."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from tests.helpers import Backend, RawClient, RedisServer, free_port, gateway_config, request

KEYS = {"ada": "ada-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef"}


def cached_gateway(gateway: Any, backend: Backend, port: int, **settings: Any) -> Any:
    cfg = gateway_config(port, backend.url, {
        "/{path*}": {"ANY": {"plugins": [{"name": "proxy-cache", "config": settings}]}},
        "/private/{path*}": {"ANY": {"plugins": [
            {"name": "key-auth"}, {"name": "proxy-cache", "config": settings}]}},
    })
    cfg["consumers"] = [{"name": n, "credentials": {"key-auth": [k]}} for n, k in KEYS.items()]
    return gateway(cfg)


def respond(*headers: str, status: int = 200, extra: str = "") -> str:
    """A path on the test backend that answers with these header lines."""
    q = "&".join(f"h={quote(h)}" for h in headers)
    return f"/respond?status={status}{'&' if q else ''}{q}{extra}"


def backend_calls(backend: Backend, path: str) -> int:
    return sum(1 for r in backend.requests if r["path"] == path)


def test_a_repeated_get_is_answered_from_the_cache(backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port)
    first = request(g.port, "GET", "/orders/7?x=1")
    assert first.status == 200 and first.headers["x-cache-status"] == "Miss"
    with RawClient(g.port) as c:
        for _ in range(3):
            hit = c.request("GET", "/orders/7?x=1")
            assert hit.status == 200 and hit.body == first.body
            assert hit.headers["x-cache-status"] == "Hit" and int(hit.headers["age"]) >= 0
            assert hit.headers["content-type"] == "application/json"
            assert int(hit.headers["content-length"]) == len(first.body)
        head = c.request("HEAD", "/orders/7?x=1")        # HEAD is served from the GET's entry
        assert head.status == 200 and head.body == b"" and head.headers["x-cache-status"] == "Hit"
        assert int(head.headers["content-length"]) == len(first.body)
        other = c.request("GET", "/orders/7?x=2")         # the query is part of the key
        assert other.headers["x-cache-status"] == "Miss"
    assert backend_calls(backend, "/orders/7") == 2


def test_a_large_body_read_in_many_pieces_is_stored_whole(backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port, max_body=1 << 21)
    first = request(g.port, "GET", "/bytes/600000")
    assert first.status == 200 and len(first.body) == 600000
    hit = request(g.port, "GET", "/bytes/600000")
    assert hit.headers["x-cache-status"] == "Hit" and hit.body == first.body
    assert backend_calls(backend, "/bytes/600000") == 1
    # Over max_body: passed through, never stored.
    for _ in range(2):
        assert len(request(g.port, "GET", "/bytes/3000000").body) == 3000000
    assert backend_calls(backend, "/bytes/3000000") == 2


def test_a_chunked_answer_is_stored_decoded(backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port, max_body=50_000)
    path = "/chunked?n=40&size=1000"
    with RawClient(g.port) as c:
        first = c.request("GET", path)
        assert first.status == 200 and first.chunked and first.headers["x-cache-status"] == "Miss"
        assert first.body == b"".join(bytes([97 + i % 26]) * 1000 for i in range(40))
        for _ in range(2):
            hit = c.request("GET", path)        # the same connection: the framing is right
            assert hit.status == 200 and hit.headers["x-cache-status"] == "Hit" and not hit.chunked
            assert "transfer-encoding" not in hit.headers and int(hit.headers["content-length"]) == 40000
            assert hit.body == first.body and hit.headers["content-type"] == "text/plain"
    assert backend_calls(backend, "/chunked") == 1
    # An HTTP/1.0 caller gets the payload decoded (and closed); it is stored all the same.
    with RawClient(g.port) as c:
        c.send(f"GET /chunked?n=3&size=7 HTTP/1.0\r\nHost: 127.0.0.1:{g.port}\r\n\r\n".encode())
        old = c.read_response()
        assert old.headers["x-cache-status"] == "Miss" and old.body == b"a" * 7 + b"b" * 7 + b"c" * 7
    hit = request(g.port, "GET", "/chunked?n=3&size=7")
    assert hit.headers["x-cache-status"] == "Hit" and hit.body == old.body
    # Larger than max_body once decoded: passed on whole, not stored.
    for _ in range(2):
        big = request(g.port, "GET", "/chunked?n=60&size=1000")
        assert big.headers["x-cache-status"] == "Miss" and len(big.body) == 60000
    # With trailer fields: passed on with them, not stored without them.
    for _ in range(2):
        r = request(g.port, "GET", "/chunked?n=2&trailer=1")
        assert r.headers["x-cache-status"] == "Miss" and r.body == b"a" * 5 + b"b" * 5
    assert backend_calls(backend, "/chunked") == 6


def test_what_a_shared_cache_may_not_store_is_not_stored(backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port)
    for path in (respond("Cache-Control: no-store"), respond("Cache-Control: private, max-age=60"),
                 respond("Cache-Control: no-cache"), respond("Cache-Control: max-age=0"),
                 respond("Set-Cookie: session=abc"), respond("Vary: Accept-Language"),
                 respond("Vary: *"), respond(status=500), respond(status=201),
                 "/chunked?n=3&trailer=1"):
        for _ in range(2):
            r = request(g.port, "GET", path)
            assert r.headers["x-cache-status"] == "Miss", path
    assert len(backend.requests) == 20
    for _ in range(2):                                    # not a GET or HEAD: not even looked at
        assert "x-cache-status" not in request(g.port, "POST", "/orders", body=b"{}").headers
    assert len(backend.requests) == 22


def test_lifetime_from_cache_control_and_ttl(backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port, ttl=60)
    short = respond("Cache-Control: public, max-age=1")
    shared = respond("Cache-Control: max-age=0, s-maxage=1")      # s-maxage wins for a shared cache
    aged = respond("Age: 100", "Cache-Control: max-age=101")      # 1 s left when it arrives
    for path in (short, shared, aged):
        assert request(g.port, "GET", path).headers["x-cache-status"] == "Miss"
        hit = request(g.port, "GET", path)
        assert hit.headers["x-cache-status"] == "Hit"
    assert int(request(g.port, "GET", aged).headers["age"]) >= 100
    time.sleep(1.2)
    for path in (short, shared, aged):
        assert request(g.port, "GET", path).headers["x-cache-status"] == "Miss", path
    assert request(g.port, "GET", "/plain").headers["x-cache-status"] == "Miss"
    assert request(g.port, "GET", "/plain").headers["x-cache-status"] == "Hit"   # ttl: 60 s


def test_cache_control_off_keeps_everything_for_ttl(backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port, cache_control=False, ttl=1)
    path = respond("Cache-Control: no-cache, max-age=0")
    assert request(g.port, "GET", path).headers["x-cache-status"] == "Miss"
    assert request(g.port, "GET", path, headers={"Cache-Control": "no-store"}).headers["x-cache-status"] == "Hit"
    time.sleep(1.2)
    assert request(g.port, "GET", path).headers["x-cache-status"] == "Miss"
    # Set-Cookie is never stored, whatever the setting.
    cookie = respond("Set-Cookie: s=1")
    request(g.port, "GET", cookie)
    assert request(g.port, "GET", cookie).headers["x-cache-status"] == "Miss"


def test_request_cache_control(backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port)
    assert request(g.port, "GET", "/a").headers["x-cache-status"] == "Miss"
    assert request(g.port, "GET", "/a").headers["x-cache-status"] == "Hit"
    fresh = request(g.port, "GET", "/a", headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-cache-status"] == "Refresh"
    assert request(g.port, "GET", "/a", headers={"Cache-Control": "max-age=0"}).headers["x-cache-status"] == "Refresh"
    assert request(g.port, "GET", "/a", headers={"Cache-Control": "no-store"}).headers["x-cache-status"] == "Bypass"
    assert backend_calls(backend, "/a") == 4
    # no-store neither reads nor writes: a new path asked with it stays uncached.
    request(g.port, "GET", "/b", headers={"Cache-Control": "no-store"})
    assert request(g.port, "GET", "/b").headers["x-cache-status"] == "Miss"


def test_callers_never_get_each_others_answers(backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port)
    ada = {"apikey": KEYS["ada"]}
    bob = {"apikey": KEYS["bob"]}
    assert request(g.port, "GET", "/private/me").status == 401          # key-auth runs first
    a1 = request(g.port, "GET", "/private/me", headers=ada)
    assert a1.headers["x-cache-status"] == "Miss" and a1.json()["headers"]["x-consumer-name"] == "ada"
    b1 = request(g.port, "GET", "/private/me", headers=bob)
    assert b1.headers["x-cache-status"] == "Miss" and b1.json()["headers"]["x-consumer-name"] == "bob"
    a2 = request(g.port, "GET", "/private/me", headers=ada)
    assert a2.headers["x-cache-status"] == "Hit" and a2.json()["headers"]["x-consumer-name"] == "ada"
    assert request(g.port, "GET", "/private/me").status == 401          # no key, no cached answer
    # Authorization that the gateway did not check: the backend decides, every time.
    for _ in range(2):
        r = request(g.port, "GET", "/me", headers={"Authorization": "Bearer x"})
        assert r.headers["x-cache-status"] == "Bypass"
    assert backend_calls(backend, "/me") == 2
    # A Range request answers part of the resource: never from nor into the cache.
    request(g.port, "GET", "/part")
    r = request(g.port, "GET", "/part", headers={"Range": "bytes=0-3"})
    assert r.headers["x-cache-status"] == "Bypass" and r.json()["headers"]["range"] == "bytes=0-3"


def test_vary_headers_are_part_of_the_key(backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port, vary_headers=["Accept-Language"])
    path = respond("Vary: Accept-Language")
    en = request(g.port, "GET", path, headers={"Accept-Language": "en"})
    fr = request(g.port, "GET", path, headers={"Accept-Language": "fr"})
    assert en.headers["x-cache-status"] == fr.headers["x-cache-status"] == "Miss"
    en2 = request(g.port, "GET", path, headers={"Accept-Language": "en"})
    fr2 = request(g.port, "GET", path, headers={"Accept-Language": "fr"})
    assert en2.headers["x-cache-status"] == fr2.headers["x-cache-status"] == "Hit"
    assert en2.json()["headers"]["accept-language"] == "en" and fr2.json()["headers"]["accept-language"] == "fr"


def test_if_none_match_on_a_hit_answers_304(backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port)
    path = respond('ETag: "v1"', "Cache-Control: max-age=60")
    request(g.port, "GET", path)
    with RawClient(g.port) as c:
        r = c.request("GET", path, {"If-None-Match": 'W/"v0", "v1"'})
        assert r.status == 304 and r.body == b"" and r.headers["etag"] == '"v1"'
        assert r.headers["x-cache-status"] == "Hit" and "content-type" not in r.headers
        r = c.request("GET", path, {"If-None-Match": '"v2"'})
        assert r.status == 200 and r.json()["path"] == "/respond"        # the connection goes on
    assert backend_calls(backend, "/respond") == 1


def test_memory_bound_drops_the_least_recently_used(backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port, max_memory=250_000, max_body=200_000)
    request(g.port, "GET", "/bytes/100000")
    request(g.port, "GET", "/bytes/100001")
    assert request(g.port, "GET", "/bytes/100000").headers["x-cache-status"] == "Hit"   # now most recent
    request(g.port, "GET", "/bytes/100002")              # over the bound: /bytes/100001 goes
    assert request(g.port, "GET", "/bytes/100000").headers["x-cache-status"] == "Hit"
    assert request(g.port, "GET", "/bytes/100002").headers["x-cache-status"] == "Hit"
    assert request(g.port, "GET", "/bytes/100001").headers["x-cache-status"] == "Miss"


def test_the_nodes_workers_share_answers_and_the_fill_lock(backend: Backend, port: int, gateway: Any) -> None:
    cfg = gateway_config(port, backend.url, {
        "/{path*}": {"GET": {"plugins": [{"name": "proxy-cache", "config": {"lock_timeout": 5}}]}}})
    g = gateway(cfg, workers=4)
    slow = respond("Cache-Control: max-age=60", extra="&ms=400")
    answers = concurrently(g.port, slow, 12)             # on their own connections: every worker
    assert backend_calls(backend, "/respond") == 1        # one asked; the others, on any worker, waited
    assert all(r.status == 200 and r.body == answers[0].body for r in answers)
    assert sorted(r.headers["x-cache-status"] for r in answers) == ["Hit"] * 11 + ["Miss"]
    assert misses(g.port, slow) == 0
    # The asking worker's answer is not stored: the waiting ones ask as soon as it gives the
    # lock up, not after lock_timeout.
    t0 = time.monotonic()
    refused = concurrently(g.port, respond("Cache-Control: no-store", extra="&ms=300"), 6)
    assert all(r.status == 200 and r.headers["x-cache-status"] == "Miss" for r in refused)
    assert time.monotonic() - t0 < 3
    assert backend_calls(backend, "/respond") == 7


def cache_files(g: Any) -> list[str]:
    """The node store files of this gateway's supervisor."""
    import glob

    return sorted(glob.glob(f"/dev/shm/fastgw-cache-{g.pid}-*") + glob.glob(f"/tmp/fastgw-cache-{g.pid}-*"))


def test_the_nodes_answers_outlive_a_reload_of_the_same_size(backend: Backend, port: int, gateway: Any) -> None:
    settings: dict[str, Any] = {"max_memory": 1 << 20}
    cfg = gateway_config(port, backend.url, {
        "/{path*}": {"GET": {"plugins": [{"name": "proxy-cache", "config": settings}]}}})
    g = gateway(cfg, workers=2)
    assert request(g.port, "GET", "/kept").headers["x-cache-status"] == "Miss"
    first = cache_files(g)
    assert len(first) == 1

    cfg["services"][0]["resources"]["/other"] = {"GET": {}}   # another route, the same store size
    g.reload(cfg)
    g.wait_log("reload done: generation 2")
    assert misses(g.port, "/kept", 8) == 0                  # the new workers answer from it
    assert cache_files(g) == first

    settings["ttl"] = 30                                      # what decides freshness: still the same key
    settings["statuses"] = [200]                              # what decides storing: not the same answers
    g.reload(cfg)
    g.wait_log("reload done: generation 3")
    assert misses(g.port, "/kept", 8) == 1

    settings["max_memory"] = 2 << 20                          # another size: a new, empty store
    g.reload(cfg)
    g.wait_log("reload done: generation 4")
    assert misses(g.port, "/kept", 8) == 1
    second = cache_files(g)
    assert len(second) == 1 and second != first              # the old one's file is gone

    del cfg["services"][0]["resources"]["/{path*}"]           # nobody caches: no store
    g.reload(cfg)
    g.wait_log("reload done: generation 5")
    assert cache_files(g) == []
    info = request(cfg["admin"]["port"], "GET", "/cache", headers={"Authorization": "Bearer test-token"})
    assert info.json() == {"store": "none"}
    pid = g.pid
    g.close()
    assert cache_files(type("G", (), {"pid": pid})()) == []


def redis_nodes(gateway: Any, backend: Backend, redis: RedisServer) -> list[Any]:
    """Two gateway nodes of two workers each, caching every GET in one Redis."""
    nodes = []
    for _ in range(2):
        cfg = gateway_config(free_port(), backend.url, {
            "/{path*}": {"GET": {"plugins": [{"name": "proxy-cache", "config": {"policy": "redis"}}]}}})
        cfg["redis"] = {"url": redis.url, "timeout": 0.5}
        nodes.append(gateway(cfg, workers=2))
    return nodes


def test_nodes_sharing_redis_share_the_cache(backend: Backend, gateway: Any, redis: RedisServer) -> None:
    nodes = redis_nodes(gateway, backend, redis)
    def first_hit(port: int, path: str) -> Any:
        deadline = time.monotonic() + 5                   # the store is written after the answer
        while True:
            r = request(port, "GET", path)
            if r.headers["x-cache-status"] == "Hit" or time.monotonic() > deadline:
                return r
            time.sleep(0.05)

    first = request(nodes[0].port, "GET", "/shared?q=1")
    assert first.headers["x-cache-status"] == "Miss"
    hit = first_hit(nodes[1].port, "/shared?q=1")
    assert hit.headers["x-cache-status"] == "Hit" and hit.body == first.body and int(hit.headers["age"]) >= 0
    for i in range(4):                                   # any worker of either node
        assert request(nodes[i % 2].port, "GET", "/shared?q=1").headers["x-cache-status"] == "Hit"
    short = respond("Cache-Control: max-age=2")
    request(nodes[0].port, "GET", short)
    assert first_hit(nodes[1].port, short).headers["x-cache-status"] == "Hit"
    time.sleep(2.2)                                       # expired in Redis with its freshness
    assert request(nodes[1].port, "GET", short).headers["x-cache-status"] == "Miss"
    calls = len(backend.requests)
    # Redis gone: every request goes to the backend, none fails.
    redis.stop()
    for i in range(2):
        r = request(nodes[i].port, "GET", "/shared?q=1")
        assert r.status == 200 and r.headers["x-cache-status"] == "Miss"
    assert len(backend.requests) == calls + 2
    nodes[0].wait_log("proxy-cache: Redis unavailable")


def two_cached_services(backend: Backend, port: int, **settings: Any) -> dict[str, Any]:
    """Service ``test`` on ``/``, service ``other`` on ``/other``: both cache every GET."""
    cached = {"/{path*}": {"GET": {"plugins": [{"name": "proxy-cache", "config": settings}]}}}
    cfg = gateway_config(port, backend.url, cached)
    cfg["services"].append({"name": "other", "resources": cached, "stages": {
        "prod": {"path_prefix": "/other", "backend": {"targets": [backend.url]}}}})
    return cfg


def purge(cfg: dict[str, Any], query: str = "", token: str = "test-token") -> Any:
    return request(cfg["admin"]["port"], "POST", "/cache/purge" + query,
                   headers={"Authorization": f"Bearer {token}"})


def misses(port: int, path: str, n: int = 24) -> int:
    """Of ``n`` requests, each on a new connection (so on either worker), how many missed."""
    return sum(request(port, "GET", path).headers["x-cache-status"] == "Miss" for _ in range(n))


def test_the_admin_api_purges_the_nodes_answers(backend: Backend, port: int, gateway: Any) -> None:
    cfg = two_cached_services(backend, port)
    g = gateway(cfg, workers=2)
    # The node's workers share one store: of 24 requests (on either worker), one misses.
    assert misses(g.port, "/a") == 1 and misses(g.port, "/other/b") == 1
    assert misses(g.port, "/a") == 0 and misses(g.port, "/other/b") == 0
    calls = len(backend.requests)

    r = purge(cfg, "?service=other")
    assert r.status == 200
    assert r.json() == {"ok": True, "service": "other", "stage": None, "workers": "purged", "answers": 1}
    assert misses(g.port, "/a") == 0                     # another service's answers stay
    assert misses(g.port, "/other/b") == 1               # gone for every worker
    r = purge(cfg, "?service=test&stage=prod")
    assert r.status == 200 and r.json()["stage"] == "prod" and r.json()["answers"] == 1
    assert misses(g.port, "/a") == 1 and misses(g.port, "/other/b") == 0
    info = request(cfg["admin"]["port"], "GET", "/cache", headers={"Authorization": "Bearer test-token"})
    assert info.status == 200 and info.json()["store"] == "node" and info.json()["answers"] == 2
    assert info.json()["capacity_bytes"] == 16 << 20 and info.json()["purges"] == 2
    assert info.json()["written_bytes"] > 0
    assert request(cfg["admin"]["port"], "GET", "/cache").status == 401         # the token, as everywhere
    from prometheus_client.parser import text_string_to_metric_families

    metrics = request(cfg["admin"]["port"], "GET", "/metrics", headers={"Authorization": "Bearer test-token"})
    fams = {f.name: f for f in text_string_to_metric_families(metrics.body.decode())}
    assert fams["fastgw_cache_answers"].samples[0].value == 2
    assert fams["fastgw_cache_capacity_bytes"].samples[0].value == 16 << 20
    assert fams["fastgw_cache_purges"].samples[0].value == 2        # (the parser drops _total)
    assert "fastgw_requests" in fams                                 # beside the stats
    r = purge(cfg)                                       # everything
    assert r.status == 200 and r.json()["answers"] == 2
    info = request(cfg["admin"]["port"], "GET", "/cache", headers={"Authorization": "Bearer test-token"})
    assert info.json()["answers"] == 0 and info.json()["purges"] == 3
    assert misses(g.port, "/a") == 1 and misses(g.port, "/other/b") == 1
    assert len(backend.requests) == calls + 4
    g.wait_log("proxy-cache: purged 1 stored answers (service other)")

    # Refused, and nothing purged: a clear 4xx.
    for query, status, words in (("?service=nope", 400, "no service 'nope'"),
                                 ("?service=test&stage=beta", 400, "no stage 'beta'"),
                                 ("?stage=prod", 400, "stage needs service"),
                                 ("?servce=test", 400, "unknown parameter 'servce'")):
        r = purge(cfg, query)
        assert r.status == status and words in r.json()["error"], query
    assert purge(cfg, token="wrong").status == 401
    assert request(cfg["admin"]["port"], "GET", "/cache/purge",
                   headers={"Authorization": "Bearer test-token"}).status == 405
    assert misses(g.port, "/a") == 0 and misses(g.port, "/other/b") == 0


def test_a_purge_deletes_the_answers_nodes_share_in_redis(backend: Backend, gateway: Any,
                                                          redis: RedisServer) -> None:
    nodes, cfgs = [], []
    for _ in range(2):
        cfg = two_cached_services(backend, free_port(), policy="redis")
        cfg["redis"] = {"url": redis.url, "timeout": 0.5}
        cfgs.append(cfg)
        nodes.append(gateway(cfg))

    def stored(port: int, path: str) -> bool:
        deadline = time.monotonic() + 5                   # the store is written after the answer
        while request(port, "GET", path).headers["x-cache-status"] != "Hit":
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    for path in ("/a", "/b", "/other/c"):
        assert stored(nodes[0].port, path)
    r = purge(cfgs[1], "?service=test")                   # on the other node: Redis is shared
    assert r.status == 200 and r.json()["redis_keys"] == 2
    # Gone for both nodes (each asks for its own path: a miss stores the answer again).
    assert request(nodes[0].port, "GET", "/a").headers["x-cache-status"] == "Miss"
    assert request(nodes[1].port, "GET", "/b").headers["x-cache-status"] == "Miss"
    for node in nodes:                                    # another service's answers stay
        assert request(node.port, "GET", "/other/c").headers["x-cache-status"] == "Hit"
    redis.stop()
    r = purge(cfgs[0])
    assert r.status == 502 and r.json()["error"].startswith("Redis: ") and r.json()["workers"] == "purged"


def concurrently(port: int, path: str, n: int, method: str = "GET") -> list[Any]:
    """``n`` requests for ``path`` at once, each on its own connection."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: request(port, method, path), range(n)))


def test_requests_for_an_answer_on_its_way_wait_for_it(backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port)
    slow = respond(extra="&ms=400")
    answers = concurrently(g.port, slow, 8)
    assert backend_calls(backend, "/respond") == 1        # one asked the backend, seven waited
    assert all(r.status == 200 and r.body == answers[0].body for r in answers)
    assert sorted(r.headers["x-cache-status"] for r in answers) == ["Hit"] * 7 + ["Miss"]
    # A HEAD waits as well, but only a GET asks for an answer others may wait on.
    other = respond(extra="&ms=300&v=2")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        get = pool.submit(request, g.port, "GET", other)
        time.sleep(0.1)
        head = pool.submit(request, g.port, "HEAD", other)
        assert get.result().headers["x-cache-status"] == "Miss"
        assert head.result().headers["x-cache-status"] == "Hit" and head.result().body == b""
    assert backend_calls(backend, "/respond") == 2


def test_waiting_requests_go_to_the_backend_when_the_answer_is_not_stored(
        backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port, lock_timeout=5)
    t0 = time.monotonic()
    answers = concurrently(g.port, respond("Cache-Control: no-store", extra="&ms=300"), 6)
    assert all(r.status == 200 and r.headers["x-cache-status"] == "Miss" for r in answers)
    assert backend_calls(backend, "/respond") == 6        # each in turn, once the first's was refused
    assert time.monotonic() - t0 < 3                       # not after the lock's 5 s
    # The backend is down: the first gets a 502, and the others do not wait out the lock.
    down = gateway_config(free_port(), f"http://127.0.0.1:{free_port()}", {
        "/{path*}": {"GET": {"plugins": [{"name": "proxy-cache", "config": {"lock_timeout": 5}}]}}})
    g2 = gateway(down)
    t0 = time.monotonic()
    assert [r.status for r in concurrently(g2.port, "/x", 4)] == [502] * 4
    assert time.monotonic() - t0 < 3


def test_the_lock_waits_no_longer_than_lock_timeout(backend: Backend, port: int, gateway: Any) -> None:
    g = cached_gateway(gateway, backend, port, lock_timeout=0.2)
    answers = concurrently(g.port, respond(extra="&ms=1200"), 4)
    assert all(r.status == 200 for r in answers)
    assert backend_calls(backend, "/respond") == 4         # three gave up after 0.2 s and asked too
    g0 = cached_gateway(gateway, backend, free_port(), lock_timeout=0)
    concurrently(g0.port, respond(extra="&ms=300&v=3"), 4)
    assert backend_calls(backend, "/respond") == 8         # lock_timeout 0: nobody waits


def test_with_redis_the_lock_holds_across_workers_and_nodes(backend: Backend, gateway: Any,
                                                             redis: RedisServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    nodes = redis_nodes(gateway, backend, redis)

    def at_once(path: str, n: int = 8) -> list[Any]:
        """``n`` requests for ``path`` at once, spread over both nodes (and so their workers)."""
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda i: request(nodes[i % 2].port, "GET", path), range(n)))

    slow = respond("Cache-Control: max-age=60", extra="&ms=400")
    answers = at_once(slow)
    assert backend_calls(backend, "/respond") == 1        # one asked; the rest, on any node, waited
    assert all(r.status == 200 and r.body == answers[0].body for r in answers)
    assert sorted(r.headers["x-cache-status"] for r in answers) == ["Hit"] * 7 + ["Miss"]
    # The holder's answer is not stored: the others go to the backend as soon as it gives up
    # the lock, not after lock_timeout (5 s).
    t0 = time.monotonic()
    refused = at_once(respond("Cache-Control: no-store", extra="&ms=300"), 4)
    assert all(r.status == 200 and r.headers["x-cache-status"] == "Miss" for r in refused)
    assert time.monotonic() - t0 < 3
    assert backend_calls(backend, "/respond") == 5
    # Redis gone: no cluster lock and no store, and none fails. Each node asks the backend;
    # two requests that land on one worker still share its in-flight answer (a Hit).
    redis.stop()
    gone = at_once(respond("Cache-Control: max-age=60", extra="&ms=100&v=9"), 4)
    assert all(r.status == 200 for r in gone)
    statuses = [r.headers["x-cache-status"] for r in gone]
    assert set(statuses) <= {"Hit", "Miss"} and "Miss" in statuses
    assert 2 <= backend_calls(backend, "/respond") - 5 <= 4


def stale_gateway(gateway: Any, up_url: str, port: int, workers: int = 2, **extra: Any) -> Any:
    settings = {"ttl": 1, "stale_if_error": 2.5, **extra}
    return gateway(gateway_config(port, up_url, {
        "/{path*}": {"GET": {"timeouts": {"read": 1, "connect": 1},
                             "plugins": [{"name": "proxy-cache", "config": settings}]}}}), workers=workers)


def test_a_stale_answer_stands_in_for_a_backend_that_fails(port: int, gateway: Any) -> None:
    import socket

    up = Backend(port=free_port()).start()
    g = stale_gateway(gateway, up.url, port)
    kept = request(g.port, "GET", "/kept")
    assert kept.headers["x-cache-status"] == "Miss"
    revalidate = respond("Cache-Control: max-age=1, must-revalidate")
    own = respond("Cache-Control: max-age=1, stale-if-error=0")
    for path in (revalidate, own):
        assert request(g.port, "GET", path).headers["x-cache-status"] == "Miss"
    t0 = time.monotonic()
    time.sleep(1.2)                                    # past their freshness
    up.stop()                                          # and the backend is gone: refused
    for _ in range(4):                                 # any worker: the node's store
        r = request(g.port, "GET", "/kept")
        assert r.status == 200 and r.body == kept.body
        assert r.headers["x-cache-status"] == "Stale" and int(r.headers["age"]) >= 1
    head = request(g.port, "HEAD", "/kept")
    assert head.status == 200 and head.body == b"" and head.headers["x-cache-status"] == "Stale"
    for path in (revalidate, own):                     # the answer said no: the error
        r = request(g.port, "GET", path)
        assert r.status == 502 and r.json()["error"] == "upstream connection failed"
        assert r.headers["x-cache-status"] == "Miss"
    assert request(g.port, "GET", "/never-stored").status == 502

    # A backend that takes the connection and never answers: the 504 is replaced as well.
    hung = socket.socket()
    hung.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hung.bind(("127.0.0.1", up.port))
    hung.listen(16)
    try:
        r = request(g.port, "GET", "/kept")
        assert r.status == 200 and r.headers["x-cache-status"] == "Stale" and r.body == kept.body
        time.sleep(max(0.0, t0 + 1 + 2.6 - time.monotonic()))     # past the stale window too
        r = request(g.port, "GET", "/kept")
        assert r.status == 504 and r.headers["x-cache-status"] == "Miss"
    finally:
        hung.close()


def test_without_stale_if_error_a_failing_backend_gets_its_error(port: int, gateway: Any) -> None:
    up = Backend(port=free_port()).start()
    g = stale_gateway(gateway, up.url, port, workers=1, stale_if_error=0)
    assert request(g.port, "GET", "/kept").headers["x-cache-status"] == "Miss"
    time.sleep(1.2)
    up.stop()
    assert request(g.port, "GET", "/kept").status == 502


def test_with_redis_a_stale_answer_stands_in_on_every_node(gateway: Any, redis: RedisServer) -> None:
    up = Backend(port=free_port()).start()
    nodes = []
    for _ in range(2):
        cfg = gateway_config(free_port(), up.url, {"/{path*}": {"GET": {"plugins": [
            {"name": "proxy-cache", "config": {"policy": "redis", "ttl": 1, "stale_if_error": 30}}]}}})
        cfg["redis"] = {"url": redis.url, "timeout": 0.5}
        nodes.append(gateway(cfg))
    kept = request(nodes[0].port, "GET", "/kept")
    assert kept.headers["x-cache-status"] == "Miss"
    deadline = time.monotonic() + 5                      # stored in a task, after the answer
    while request(nodes[1].port, "GET", "/kept").headers["x-cache-status"] != "Hit":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.2)
    up.stop()
    for node in nodes:
        r = request(node.port, "GET", "/kept")
        assert r.status == 200 and r.headers["x-cache-status"] == "Stale" and r.body == kept.body


class _Flaky:
    """A backend whose answers the test turns: status, and framing (Content-Length or chunked)."""

    def __init__(self) -> None:
        import http.server
        import threading

        flaky = self
        self.status = 200
        self.chunked = False
        self.calls = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                flaky.calls += 1
                body = f'{{"status": {flaky.status}, "call": {flaky.calls}}}'.encode()
                self.send_response(flaky.status)
                self.send_header("Content-Type", "application/json")
                if flaky.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_stale_answer_stands_in_for_an_error_answer(port: int, gateway: Any) -> None:
    up = _Flaky()
    try:
        g = stale_gateway(gateway, up.url, port, workers=1)
        kept = request(g.port, "GET", "/kept")
        assert kept.headers["x-cache-status"] == "Miss" and kept.json()["status"] == 200
        t0 = time.monotonic()
        time.sleep(1.2)
        with RawClient(g.port) as c:                       # one client connection throughout
            for status, chunked in ((503, False), (500, True), (502, False), (504, True)):
                up.status, up.chunked = status, chunked
                r = c.request("GET", "/kept")
                assert r.status == 200 and r.body == kept.body, (status, chunked)
                assert r.headers["x-cache-status"] == "Stale" and int(r.headers["content-length"]) == len(kept.body)
            up.status = 503
            head = c.request("HEAD", "/kept")
            assert head.status == 200 and head.body == b"" and head.headers["x-cache-status"] == "Stale"
            up.status = 501                                # not an error (RFC 5861 4): passed on
            r = c.request("GET", "/kept")
            assert r.status == 501 and r.json()["status"] == 501 and r.headers["x-cache-status"] == "Miss"
            up.status, up.chunked = 503, False
            time.sleep(max(0.0, t0 + 1 + 2.6 - time.monotonic()))     # past the stale window
            r = c.request("GET", "/kept")
            assert r.status == 503 and r.json()["status"] == 503 and r.headers["x-cache-status"] == "Miss"
        assert up.calls == 8                               # every request asked the backend first
    finally:
        up.close()


def test_a_worker_restarted_without_the_node_store_file_serves_on_its_own(port: int, gateway: Any,
                                                                          backend: Backend) -> None:
    import os
    import signal

    g = gateway(gateway_config(port, backend.url, {
        "/{path*}": {"GET": {"plugins": [{"name": "proxy-cache"}]}}}), workers=1)
    assert request(g.port, "GET", "/kept").headers["x-cache-status"] == "Miss"
    (path,) = cache_files(g)
    os.unlink(path)                                    # a cleaner of /dev/shm, say
    os.kill(g.worker_pids()[0], signal.SIGKILL)
    g.wait_log("ready (restarted)", timeout=10)
    g.wait_log("proxy-cache: node store")
    assert "this worker keeps its own answers" in g.log()
    statuses = [request(g.port, "GET", "/kept").headers["x-cache-status"] for _ in range(3)]
    assert statuses == ["Miss", "Hit", "Hit"]          # its own store


def _timed_at_once(ports: list[int], path: str, n: int) -> list[tuple[Any, float]]:
    """``n`` GETs of ``path`` at once over ``ports`` (each tagged ``X-Tag: r<i>``, which the
    backend echoes): (answer, seconds it took)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> tuple[Any, float]:
        t0 = time.monotonic()
        r = request(ports[i % len(ports)], "GET", path, {"X-Tag": f"r{i}"})
        return r, time.monotonic() - t0

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def _tag(r: Any) -> str:
    return r.json()["headers"]["x-tag"]


def test_stale_while_revalidate_answers_at_once_while_one_request_refreshes(
        backend: Backend, port: int, gateway: Any) -> None:
    """Past its freshness, within stale_while_revalidate: the first request asks the
    backend (a miss, 0.8 s), every other one, of either worker, gets the stale answer at
    once (Updating) instead of waiting; then the new answer is the hit."""
    g = cached_gateway(gateway, backend, port, stale_while_revalidate=30)
    path = respond("Cache-Control: max-age=1", extra="&ms=800")
    first = request(g.port, "GET", path, {"X-Tag": "first"})
    assert first.headers["x-cache-status"] == "Miss"
    time.sleep(1.1)                                     # stale now
    calls = backend_calls(backend, "/respond")
    answers = _timed_at_once([g.port], path, 8)
    assert backend_calls(backend, "/respond") == calls + 1
    statuses = sorted(r.headers["x-cache-status"] for r, _ in answers)
    assert statuses == ["Miss"] + ["Updating"] * 7, statuses
    for r, took in answers:
        assert r.status == 200
        if r.headers["x-cache-status"] == "Updating":
            assert _tag(r) == "first" and int(r.headers["age"]) >= 1 and took < 0.6, took
        else:
            refreshed = _tag(r)
            assert refreshed != "first" and took >= 0.8
    after = request(g.port, "GET", path, {"X-Tag": "later"})
    assert after.headers["x-cache-status"] == "Hit" and _tag(after) == refreshed


def test_stale_while_revalidate_not_for_an_answer_that_must_revalidate(
        backend: Backend, port: int, gateway: Any) -> None:
    """must-revalidate (RFC 9111 5.2.2.2) and the answer's own stale-while-revalidate=0 rule
    the stale answer out: the others wait for the new one (Hit), as without the setting."""
    g = cached_gateway(gateway, backend, port, stale_while_revalidate=30)
    for header in ("Cache-Control: max-age=1, must-revalidate", "Cache-Control: max-age=1, stale-while-revalidate=0"):
        path = respond(header, extra="&ms=500")
        assert request(g.port, "GET", path).headers["x-cache-status"] == "Miss"
        time.sleep(1.1)
        answers = _timed_at_once([g.port], path, 4)
        statuses = sorted(r.headers["x-cache-status"] for r, _ in answers)
        assert statuses == ["Hit"] * 3 + ["Miss"], (header, statuses)


def test_with_redis_stale_while_revalidate_spans_the_nodes(backend: Backend, gateway: Any, redis: RedisServer) -> None:
    """policy redis: one request of either node refreshes (it holds the lock in Redis); the
    others, on both nodes, are answered with the stale answer at once."""
    nodes = []
    for _ in range(2):
        cfg = gateway_config(free_port(), backend.url, {"/{path*}": {"GET": {"plugins": [
            {"name": "proxy-cache", "config": {"policy": "redis", "stale_while_revalidate": 30}}]}}})
        cfg["redis"] = {"url": redis.url, "timeout": 0.5}
        nodes.append(gateway(cfg, workers=2))
    path = respond("Cache-Control: max-age=1", extra="&ms=800")
    assert request(nodes[0].port, "GET", path, {"X-Tag": "first"}).headers["x-cache-status"] == "Miss"
    deadline = time.monotonic() + 5                      # stored in a task, after the answer
    while request(nodes[1].port, "GET", path).headers["x-cache-status"] != "Hit":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.1)
    calls = backend_calls(backend, "/respond")
    answers = _timed_at_once([n.port for n in nodes], path, 8)
    assert backend_calls(backend, "/respond") == calls + 1
    statuses = sorted(r.headers["x-cache-status"] for r, _ in answers)
    assert statuses == ["Miss"] + ["Updating"] * 7, statuses
    assert all(_tag(r) == "first" and took < 0.6 for r, took in answers if r.headers["x-cache-status"] == "Updating")
