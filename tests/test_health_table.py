"""The node's health-check verdicts in the shared region (fastgw.shared.HealthTable): one
writer, many readers, across processes attached to the same file."""

from __future__ import annotations

import mmap

from fastgw.shared import HealthTable, SharedRegion


def test_verdicts_written_by_one_are_read_by_another_attachment(tmp_path) -> None:
    region = SharedRegion.create(directory=str(tmp_path))
    other = SharedRegion.attach(region.name)
    try:
        writer, reader = region.health_table(), other.health_table()
        assert reader.get("http://10.0.0.1:80/health") is None         # never probed
        assert writer.set("http://10.0.0.1:80/health", True)
        assert reader.get("http://10.0.0.1:80/health") is True
        assert reader.get("http://10.0.0.1:80/") is None                # another check path
        writer.set("http://10.0.0.1:80/health", False)
        assert reader.get("http://10.0.0.1:80/health") is False
    finally:
        other.close()
        region.close()


def test_keys_with_one_home_slot_probe_on_and_a_full_table_says_so() -> None:
    table = HealthTable(mmap.mmap(-1, 4 * 16), 0, 4)
    homes = {"t0": 4, "t1": 8, "t2": 12, "t3": 16, "t4": 20}            # all home slot 0 of 4
    table._key = homes.__getitem__                                      # type: ignore[method-assign]
    for i, k in enumerate(["t0", "t1", "t2", "t3"]):
        assert table.set(k, i % 2 == 0)
    assert [table.get(k) for k in ("t0", "t1", "t2", "t3")] == [True, False, True, False]
    assert not table.set("t4", True) and table.get("t4") is None        # full: refused, nothing lost
    table.set("t2", False)                                              # found where it was put
    assert [table.get(k) for k in ("t0", "t1", "t2", "t3")] == [True, False, False, False]


def test_a_prober_says_when_the_table_cannot_take_its_verdicts(caplog) -> None:
    import asyncio

    from fastgw.health import CheckSettings, HealthChecker
    from tests.helpers import free_port

    table = HealthTable(mmap.mmap(-1, 16), 0, 1)
    assert table.set("someone-else", False)                             # the only slot is taken
    class Pool:                                                         # what probe() reads of one
        host, port, ssl, host_header, checked_down = "127.0.0.1", free_port(), None, b"x", False

    pool = Pool()
    checker = HealthChecker()
    checker.add(pool, CheckSettings(interval=0.01, timeout=0.2, unhealthy=1))
    checker.share(table, prober=True)

    async def run() -> None:
        checker.start(asyncio.get_running_loop())
        await asyncio.sleep(0.3)
        checker.stop()

    with caplog.at_level("WARNING", logger="fastgw.health"):
        asyncio.run(run())
    assert pool.checked_down                                            # its own verdict stands
    full = [r for r in caplog.records if "health table is full" in r.getMessage()]
    assert len(full) == 1                                               # said once
