"""Cache purges through the shared region: the supervisor's purge record and the workers'
watches, and what proxy-cache drops (over the wire: tests/e2e/test_proxy_cache.py)."""

from __future__ import annotations

from typing import Any

import pytest

from fastgw.plugins import proxy_cache
from fastgw.plugins.proxy_cache import Entry, Store, _Fill
from fastgw.shared import PURGE_OFFSET, SharedRegion

from .plugins.util import make_pipeline


@pytest.fixture
def region(tmp_path: Any) -> Any:
    r = SharedRegion.create(replay_slots=64, counter_slots=1 << 10, directory=str(tmp_path))
    yield r
    r.close()


def test_each_watch_sees_each_purge_once(region: Any) -> None:
    a, b = SharedRegion.attach(region.name).purge_watch(), SharedRegion.attach(region.name).purge_watch()
    assert a.poll() is None and b.poll() is None
    region.publish_purge({"service": "shop"})
    assert a.poll() == {"service": "shop"}
    assert a.poll() is None
    region.publish_purge({"service": "shop", "stage": "alpha"})
    assert a.poll() == {"service": "shop", "stage": "alpha"}
    # b missed one of the two: it drops everything, whatever the last one's scope.
    assert b.poll() == {}
    assert b.poll() is None


def test_a_worker_started_after_a_purge_does_not_apply_it(region: Any) -> None:
    region.publish_purge({})
    late = SharedRegion.attach(region.name).purge_watch()
    assert late.poll() is None
    region.publish_purge({"service": "x"})
    assert late.poll() == {"service": "x"}


def test_a_record_being_written_is_read_next_time(region: Any) -> None:
    watch = SharedRegion.attach(region.name).purge_watch()
    seq = region.publish_purge({"service": "a"})
    region._mm[PURGE_OFFSET:PURGE_OFFSET + 8] = (seq + 1).to_bytes(8, "little")  # odd: mid-write
    assert watch.poll() is None
    region._mm[PURGE_OFFSET:PURGE_OFFSET + 8] = seq.to_bytes(8, "little")
    assert watch.poll() == {"service": "a"}


def test_a_scope_too_long_is_refused(region: Any) -> None:
    with pytest.raises(ValueError, match="too long"):
        region.publish_purge({"service": "s" * 3000})


def entry(size: int = 10) -> Entry:
    return Entry(200, [], b"x" * size, None, 0.0, 1e18, 0)


def test_store_purge_by_owner_and_all() -> None:
    store = Store(1 << 20)
    for owner in (1, 2, 3):
        for k in range(3):
            store.put((owner, k), entry())
    assert store.purge(frozenset({1, 3})) == 6
    assert len(store) == 3 and all(store.get((2, k), 0.0) for k in range(3))
    assert store.used == sum(entry().size for _ in range(3))
    assert store.purge(None) == 3
    assert len(store) == 0 and store.used == 0


@pytest.fixture
def worker(region: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Store, dict[str, Any]]:
    """A worker's proxy-cache state of its own (store, owners' scopes, purge watch): the
    memory store and PluginScope.services for the plugins a test builds."""
    store = Store(1 << 20)
    monkeypatch.setattr(proxy_cache, "_MEMORY", store)
    monkeypatch.setattr(proxy_cache, "_SCOPES", {})
    monkeypatch.setattr(proxy_cache, "_WATCH", None)
    return store, {"cache_purge": SharedRegion.attach(region.name).purge_watch()}


def test_plugins_drop_what_the_purge_names(region: Any, worker: tuple[Store, dict[str, Any]]) -> None:
    store, services = worker
    plugins = {}
    for service, stage in (("shop", "prod"), ("shop", "alpha"), ("blog", "prod")):
        pipe = make_pipeline([{"name": "proxy-cache"}], service=service, stage=stage, services=services)
        plugins[service, stage] = p = pipe.plugins[0]
        p.store = store
        store.put((p.owner, "k"), entry())

    def left() -> set[tuple[str, str]]:
        proxy_cache._purge_seen()
        return {sst for sst, p in plugins.items() if store.get((p.owner, "k"), 0.0)}

    assert left() == set(plugins)
    region.publish_purge({"service": "shop", "stage": "alpha"})
    assert left() == {("shop", "prod"), ("blog", "prod")}
    region.publish_purge({"service": "shop"})
    assert left() == {("blog", "prod")}
    region.publish_purge({})
    assert left() == set()


def test_an_answer_asked_for_before_a_purge_is_not_stored(region: Any, worker: tuple[Store, dict[str, Any]]) -> None:
    store, services = worker
    plugin = make_pipeline([{"name": "proxy-cache"}], services=services).plugins[0]
    plugin.store = store
    before = _Fill(plugin, ("k1",), proxy_cache._purge_seen())
    assert before.start(200, [], 5)
    region.publish_purge({"service": "blog"})          # any purge: the answer may predate it
    before.finish(b"hello")
    assert len(store) == 0
    after = _Fill(plugin, ("k2",), proxy_cache._purge_seen())
    assert after.start(200, [], 5)
    after.finish(b"hello")
    assert len(store) == 1
