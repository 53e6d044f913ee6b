"""fastgw.config: loading (JSON, msgpack), schema and semantic errors with exact places, flattening."""

from __future__ import annotations

import copy
from typing import Any

import msgpack
import orjson
import pytest

from fastgw.config import ConfigError, RouteSpec, load, load_data, validate

DEMO = "tests.fixtures_plugins.demo_plugin"


def base() -> dict[str, Any]:
    return {
        "workers": 2,
        "admin": {"token": "t"},
        "consumers": [{"name": "alice", "groups": ["gold"], "credentials": {"key-auth": ["alice-key-0123456789abcdef"]}}],
        "services": [{
            "name": "shop",
            "stages": {
                "prod": {"hosts": ["api.shop.example"], "backend": {"targets": ["http://10.0.0.5:8000"]},
                         "variables": {"version": "v2"}},
                "alpha": {"hosts": ["alpha.shop.example"], "path_prefix": "/alpha",
                          "backend": {"targets": ["http://127.0.0.1:9001"], "host_header": "target"},
                          "variables": {"version": "v3"}, "timeouts": {"read": 30}},
            },
            "plugins": [{"name": DEMO, "config": {"limit": 1}}],
            "resources": {
                "/orders": {
                    "GET": {"backend_path": "/${stage.version}/orders"},
                    "POST": {"plugins": [{"name": DEMO, "config": {"limit": 10}}], "timeouts": {"send": 7}},
                    "/{orderId}": {
                        "plugins": [{"name": DEMO, "enabled": False}],
                        "timeouts": {"connect": 2},
                        "GET": {"backend_path": "/${stage.version}/orders/{orderId}"},
                        "DELETE": {"plugins": [{"name": DEMO, "config": {"mode": "b"}}]},
                    },
                },
                "/static/{path*}": {"GET": {"backend_path": "/assets/{path}"}},
            },
        }],
    }


def errors_of(data: dict[str, Any]) -> list[str]:
    errs = validate(data)
    with pytest.raises(ConfigError) as info:
        load_data(data)
    assert info.value.errors == errs
    return errs


def test_valid_config_flattens_routes() -> None:
    cfg = load_data(base())
    assert cfg.workers == 2
    assert cfg.admin == {"host": "127.0.0.1", "port": 9901, "token": "t"}
    assert cfg.listen == [{"host": "0.0.0.0", "port": 8080}]
    assert cfg.limits == {"max_head_bytes": 65536, "client_idle_timeout": 75, "client_header_timeout": 30,
                          "client_lingering_timeout": 5, "client_lingering_time": 30, "drain_timeout": 30}
    assert cfg.access_log == {"enabled": False, "path": "-", "buffer": 65536, "flush_interval": 0.1}
    assert cfg.stats["enabled"] is True
    keys = [r.key for r in cfg.routes]
    assert keys == [
        "shop/prod/GET /orders", "shop/prod/POST /orders", "shop/prod/GET /orders/{orderId}",
        "shop/prod/DELETE /orders/{orderId}", "shop/prod/GET /static/{path*}",
        "shop/alpha/GET /orders", "shop/alpha/POST /orders", "shop/alpha/GET /orders/{orderId}",
        "shop/alpha/DELETE /orders/{orderId}", "shop/alpha/GET /static/{path*}",
    ]
    by = {r.key: r for r in cfg.routes}
    get = by["shop/prod/GET /orders"]
    assert isinstance(get, RouteSpec)
    assert get.hosts == ("api.shop.example",) and get.path_prefix == ""
    assert get.backend_path == "/${stage.version}/orders"
    assert get.targets == ("http://10.0.0.5:8000",)
    assert get.backend == {"host_header": "client", "max_fails": 1, "fail_timeout": 10, "balance": "round_robin", "tries": 0, "tries_timeout": 0, "hash_key": "ip", "retry_unanswered": True}
    assert get.variables == {"version": "v2"}
    assert get.timeouts == {"connect": 5, "read": 60, "send": 60}
    assert get.plugins == ({"name": DEMO, "config": {"limit": 1, "mode": "a", "nested": {"flag": True}},
                            "place": "services[0].plugins[0]"},)       # where it is written, for errors
    assert get.place == "services[0].resources./orders.GET"
    # method level wins over service level; timeouts merge per field
    post = by["shop/prod/POST /orders"]
    assert post.plugins[0]["config"]["limit"] == 10 and post.backend_path is None
    assert post.plugins[0]["place"] == "services[0].resources./orders.POST.plugins[0]"
    assert post.timeouts == {"connect": 5, "read": 60, "send": 7}
    # enabled: false on the path removes the inherited plugin, a method may add it back
    assert by["shop/prod/GET /orders/{orderId}"].plugins == ()
    assert by["shop/prod/GET /orders/{orderId}"].timeouts["connect"] == 2
    assert by["shop/prod/DELETE /orders/{orderId}"].plugins[0]["config"] == {
        "limit": 5, "mode": "b", "nested": {"flag": True}}
    alpha = by["shop/alpha/GET /orders"]
    assert alpha.path_prefix == "/alpha" and alpha.timeouts == {"connect": 5, "read": 30, "send": 60}
    assert alpha.backend == {"host_header": "target", "max_fails": 1, "fail_timeout": 10, "balance": "round_robin", "tries": 0, "tries_timeout": 0, "hash_key": "ip", "retry_unanswered": True}


def test_input_not_modified_and_raw_has_defaults() -> None:
    data = base()
    before = copy.deepcopy(data)
    cfg = load_data(data)
    assert data == before
    assert cfg.raw["services"][0]["stages"]["prod"]["path_prefix"] == ""
    assert cfg.raw["services"][0]["plugins"][0]["config"]["mode"] == "a"


def test_redis_section() -> None:
    assert load_data(base()).redis is None                  # default: each node on its own
    data = base()
    data["redis"] = {"url": "redis://10.0.0.9:6379/2"}
    assert load_data(data).redis == {"url": "redis://10.0.0.9:6379/2", "timeout": 0.25, "key_prefix": "fastgw:"}
    data["redis"] = {"url": "http://10.0.0.9:6379", "timeout": 0}
    assert sorted(errors_of(data)) == [
        "redis.timeout: 0 is less than or equal to the minimum of 0",
        "redis.url: must start with redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel:// "
        "(got 'http://10.0.0.9:6379')",
    ]
    # URLs the client can't use are refused at load, naming the key, the value and why.
    data["redis"] = {"url": "redis://10.0.0.9:port/0"}
    assert errors_of(data) == ["redis.url: Port could not be cast to integer value as 'port' "
                               "(got 'redis://10.0.0.9:port/0')"]
    data["redis"] = {"url": "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379"}
    assert errors_of(data) == ["redis.url: the path must be /master-name or /master-name/db "
                               "(got 'redis+sentinel://10.0.0.1:26379,10.0.0.2:26379')"]
    data["redis"] = {"url": "redis+sentinel://:pw@10.0.0.1,10.0.0.2:26380/mymaster/1"}
    assert load_data(data).redis["url"] == "redis+sentinel://:pw@10.0.0.1,10.0.0.2:26380/mymaster/1"
    data["redis"] = {"host": "10.0.0.9"}
    assert sorted(errors_of(data)) == ["redis.host: unknown key (allowed: url, timeout, key_prefix)", "redis.url: required"]


def test_rate_limiting_in_redis_needs_the_redis_section() -> None:
    data = base()
    data["services"][0]["resources"]["/orders"]["GET"]["plugins"] = [
        {"name": "rate-limiting", "config": {"minute": 10, "policy": "redis"}}]
    assert errors_of(data) == ["services[0].resources./orders.GET.plugins[0].config.policy: "
                               "'redis' needs the top-level redis section (or policy 'node')"]
    data["services"][0]["plugins"] = [{"name": "proxy-cache", "config": {"policy": "redis"}}]
    assert errors_of(data) == [
        "services[0].plugins[0].config.policy: 'redis' needs the top-level redis section (or policy 'memory')",
        "services[0].resources./orders.GET.plugins[0].config.policy: "
        "'redis' needs the top-level redis section (or policy 'node')"]
    data["redis"] = {"url": "redis://127.0.0.1:6379/0"}
    assert validate(data) == []


def test_workers_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    data = base()
    data["workers"] = "auto"
    monkeypatch.setattr("os.cpu_count", lambda: 7)
    assert load_data(data).workers == 7
    data["workers"] = 0
    assert errors_of(data) == ['workers: must be "auto" or an integer >= 1 (got 0)']


def test_load_json_and_msgpack(tmp_path: Any) -> None:
    js = tmp_path / "c.json"
    js.write_bytes(orjson.dumps(base()))
    mp = tmp_path / "c.mpk"
    mp.write_bytes(msgpack.packb(base()))
    assert [r.key for r in load(str(js)).routes] == [r.key for r in load(str(mp)).routes]
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"{nope")
    with pytest.raises(ConfigError) as info:
        load(str(bad))
    assert info.value.errors[0].startswith(f"{bad}: cannot parse json")
    with pytest.raises(ConfigError):
        load(str(tmp_path / "c.yaml"))
    with pytest.raises(OSError):
        load(str(tmp_path / "missing.json"))


def test_unknown_keys_and_types_name_the_place() -> None:
    data = base()
    data["listen"] = [{"host": "0.0.0.0", "port": "80"}]
    data["admn"] = {}
    stage = data["services"][0]["stages"]["prod"]
    stage["hostz"] = ["x"]
    data["services"][0]["resources"]["/orders"]["get"] = {}
    data["services"][0]["resources"]["/orders"]["GET"]["backend"] = "/x"
    data["limits"] = {"max_head_bytes": 10}
    errs = errors_of(data)
    assert "admn: unknown key (allowed: listen, workers, admin, consumers, stats, redis, access_log, limits, services)" in errs
    assert "listen[0].port: '80' is not of type 'integer'" in errs
    assert any(e.startswith("services[0].stages.prod.hostz: unknown key (allowed: hosts,") for e in errs)
    assert any(e.startswith("services[0].resources./orders.get: unknown key") for e in errs)
    assert any(e.startswith("services[0].resources./orders.GET.backend: unknown key") for e in errs)
    assert "limits.max_head_bytes: 10 is less than the minimum of 1024" in errs
    assert errors_of({}) == ["services: required"]


def test_backend_path_variables() -> None:
    data = base()
    res = data["services"][0]["resources"]
    res["/orders"]["/{orderId}"]["GET"]["backend_path"] = "/${stage.version}/orders/{orderid}"
    res["/orders"]["GET"]["backend_path"] = "/${stage.missing}/o?${query.q}${header.x}"
    res["/static/{path*}"]["GET"]["backend_path"] = "/${consumer.name}/{path*}"
    del data["services"][0]["stages"]["alpha"]["variables"]
    errs = errors_of(data)
    p = "services[0].resources./orders./{orderId}.GET.backend_path"
    assert f"{p}: unknown variable {{orderid}} (known: orderId)" in errs
    assert f"{p}: ${{stage.version}} is not defined in stage 'alpha' (services[0].stages.alpha.variables)" in errs
    assert ("services[0].resources./orders.GET.backend_path: ${stage.missing} is not defined in stage 'prod' "
            "(services[0].stages.prod.variables)") in errs
    assert ("services[0].resources./static/{path*}.GET.backend_path: unknown placeholder ${consumer.name} "
            "(use ${stage.x}, ${query.x} or ${header.x})") in errs
    assert len(errs) == 5, errs  # query/header placeholders and {path*} are fine


@pytest.mark.parametrize(("key", "message"), [
    ("/a/{rest*}/b", "{rest*} must be the last segment of '/a/{rest*}/b'"),
    ("/a{x}", "'{' or '}' inside static segment 'a{x}' of '/a{x}'"),
    ("/a/../b", "dot segment '..' in '/a/../b'"),
    ("/a/./b", "dot segment '.' in '/a/./b'"),
    ("/a//b", "empty segment in '/a//b'"),
    ("/a%2Fb", "encoded '/' (%2F) in segment 'a%2Fb' of '/a%2Fb'"),
    ("/{x}/{x}", "variable {x} used twice in '/{x}/{x}'"),
    ("/{1x}", "bad variable name '{1x}' in '/{1x}'"),
])
def test_template_syntax(key: str, message: str) -> None:
    data = base()
    data["services"][0]["resources"][key] = {"GET": {}}
    assert errors_of(data) == [f"services[0].resources.{key}: {message}"]


def test_rest_var_with_children_is_an_error() -> None:
    data = base()
    data["services"][0]["resources"]["/static/{path*}"]["/more"] = {"GET": {}}
    assert errors_of(data) == [
        "services[0].resources./static/{path*}./more: {path*} must be the last segment of '/static/{path*}/more'"]


def test_targets_hosts_prefix_and_duplicate_services() -> None:
    data = base()
    prod = data["services"][0]["stages"]["prod"]
    prod["backend"]["targets"] = ["http://a:1", "10.0.0.1:80", "ftp://x:1", "http://x", "http://x:1/path"]
    prod["hosts"] = ["api.shop.example", "bad host"]
    data["services"][0]["stages"]["alpha"]["path_prefix"] = "/alpha/"
    data["services"].append(copy.deepcopy(data["services"][0]))
    data["services"][1]["stages"] = {"s": {"hosts": ["other"], "backend": {"targets": ["https://h:443"]},
                                           "variables": {"version": "1"}}}
    errs = errors_of(data)
    t = "services[0].stages.prod.backend.targets"
    for i, url in enumerate(prod["backend"]["targets"]):
        if i:
            assert f"{t}[{i}]: must be http://host:port or https://host:port (got {url!r})" in errs
    assert "services[0].stages.prod.hosts[1]: not a host name, '*.suffix' or '*' (got 'bad host')" in errs
    assert "services[0].stages.alpha.path_prefix: empty segment in '/alpha/'" in errs
    assert "services[1].name: duplicate service name 'shop' (also services[0])" in errs
    assert len(errs) == 7, errs


def test_weighted_targets_are_checked_and_flattened() -> None:
    data = base()
    prod = data["services"][0]["stages"]["prod"]
    prod["backend"]["targets"] = ["http://a:1", {"url": "http://b:2", "weight": 3}]
    spec = load_data(data).routes[0]
    assert spec.targets == ("http://a:1", "http://b:2") and spec.weights == (1, 3)
    prod["backend"]["targets"] = [{"url": "http://a:1"}, {"url": "http://b:2", "weight": 0}, {"weight": 2},
                                  {"url": "ftp://c:1"}, {"url": "http://d:4", "wieght": 2}, 7]
    errs = errors_of(data)
    t = "services[0].stages.prod.backend.targets"
    assert f"{t}[1].weight: 0 is less than the minimum of 1" in errs
    assert f"{t}[2].url: required" in errs
    assert f"{t}[3].url: must be http://host:port or https://host:port (got 'ftp://c:1')" in errs
    assert f"{t}[4].wieght: unknown key (allowed: url, weight)" in errs
    assert f"{t}[5]: 7 is not of type 'string', 'object'" in errs
    assert len(errs) == 5, errs


def test_balance_and_tries_are_checked() -> None:
    data = base()
    prod = data["services"][0]["stages"]["prod"]
    prod["backend"].update(balance="least_conn", tries=2, tries_timeout=1.5)
    backend = load_data(data).routes[0].backend
    assert (backend["balance"], backend["tries"], backend["tries_timeout"]) == ("least_conn", 2, 1.5)
    prod["backend"].update(balance="hash", hash_key="cookie:session")
    assert load_data(data).routes[0].backend["hash_key"] == "cookie:session"
    prod["backend"].update(balance="fewest", tries=-1, tries_timeout="1s", hash_key="header:")
    errs = errors_of(data)
    b = "services[0].stages.prod.backend"
    assert f"{b}.balance: 'fewest' is not one of ['round_robin', 'least_conn', 'hash']" in errs
    assert f"{b}.tries: -1 is less than the minimum of 0" in errs
    assert f"{b}.tries_timeout: '1s' is not of type 'number'" in errs
    assert any(e.startswith(f"{b}.hash_key: 'header:' does not match") for e in errs), errs
    assert len(errs) == 4, errs


def test_shadowed_routes_and_host_collisions() -> None:
    data = base()
    res = data["services"][0]["resources"]
    res["/orders/{id}"] = {"GET": {}, "PUT": {}}
    errs = errors_of(data)
    assert errs == ["services[0].resources./orders/{id}.GET: can never match on host 'api.shop.example': "
                    "shadowed by services[0].resources./orders./{orderId}.GET"]
    # two stages of one service on the same host and prefix
    data = base()
    data["services"][0]["stages"]["alpha"]["hosts"] = ["API.shop.example"]
    data["services"][0]["stages"]["alpha"]["path_prefix"] = ""
    assert errors_of(data) == [
        "services[0].stages.alpha.hosts[0]: host 'API.shop.example' with path_prefix '' is also served by "
        "services[0].stages.prod: its routes can never match (first: services[0].resources./orders.GET)"]
    # another service on the same host: route level, named by the other route's place
    data = base()
    other = copy.deepcopy(data["services"][0])
    other["name"] = "other"
    other["stages"] = {"x": {"hosts": ["api.shop.example"], "backend": {"targets": ["http://h:1"]},
                             "variables": {"version": "1"}}}
    other["resources"] = {"/orders/{x}": {"DELETE": {}, "PATCH": {}}}
    data["services"].append(other)
    assert errors_of(data) == ["services[1].resources./orders/{x}.DELETE: can never match on host "
                               "'api.shop.example': shadowed by services[0].resources./orders./{orderId}.DELETE"]
    # different prefixes or different hosts do not collide
    data = base()
    data["services"][0]["stages"]["alpha"]["hosts"] = ["api.shop.example"]
    assert validate(data) == []


def test_plugins_resolve_and_validate_with_exact_places() -> None:
    data = base()
    res = data["services"][0]["resources"]
    res["/orders"]["POST"]["plugins"] = [
        {"name": DEMO, "config": {"limit": 0, "mode": "c", "extra": 1}},
        {"name": "no-such-plugin"},
        {"name": "tests.fixtures_plugins.missing_module"},
    ]
    data["services"][0]["plugins"].append({"name": DEMO})
    errs = errors_of(data)
    p = "services[0].resources./orders.POST.plugins"
    assert f"{p}[0].config.limit: 0 is less than or equal to the minimum of 0" in errs
    assert f"{p}[0].config.mode: 'c' is not one of ['a', 'b']" in errs
    assert f"{p}[0].config.extra: unknown key (allowed: limit, mode, nested)" in errs
    assert any(e.startswith(f"{p}[1].name: unknown plugin 'no-such-plugin'") for e in errs)
    assert any(e.startswith(f"{p}[2].name: plugin 'tests.fixtures_plugins.missing_module' cannot be imported")
               for e in errs)
    assert (f"services[0].plugins[1].name: plugin '{DEMO}' is listed twice at this level "
            "(also services[0].plugins[0])") in errs
    assert len(errs) == 6, errs


def test_all_errors_are_collected() -> None:
    data = base()
    data["workers"] = "many"
    data["services"][0]["stages"]["prod"]["backend"]["targets"] = ["nope"]
    data["services"][0]["resources"]["/orders"]["/{orderId}"]["GET"]["backend_path"] = "/{nope}"
    data["services"][0]["resources"]["/x/.."] = {}
    errs = errors_of(data)
    assert len(errs) == 4, errs
    assert all(": " in e for e in errs)


def test_consumer_credentials_are_checked() -> None:
    data = base()
    data["consumers"].append({"name": "alice", "credentials": {}})
    errs = errors_of(data)
    assert len(errs) == 1 and errs[0].startswith("consumers"), errs
