"""The dashboard rendered by headless Chromium against a live admin listener.

Writes a known mix of calls, loads ``/dashboard/#token=...`` and checks that the cards,
the SVG charts and the resource table show those counts; saves a screenshot under
``tests/artifacts/``.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import tempfile
import time
from html import unescape

import pytest

from fastgw.admin import AdminServer
from fastgw.stats import StatsRegion

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "artifacts")
TOKEN = "dash-token-1"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


class Hooks:
    def reload(self) -> list[str]:
        return []

    def routes(self) -> list[dict]:
        return []

    def config(self) -> dict:
        return {}

    def health(self) -> dict:
        return {}

    def targets(self) -> list[dict]:
        return [{"service": "shop", "stage": "prod", "target": "http://10.0.0.1:8000", "weight": 3,
                 "passed_over_for": 0.0, "failed_connects": 0, "active": "healthy"},
                {"service": "shop", "stage": "prod", "target": "http://10.0.0.2:8000", "weight": 1,
                 "passed_over_for": 7.2, "failed_connects": 1, "active": "healthy"},
                {"service": "shop", "stage": "prod", "target": "http://10.0.0.3:8000", "weight": 1,
                 "passed_over_for": 0.0, "failed_connects": 2, "active": None}]


ROUTES = [
    ("shop/prod/GET /orders", 0.02, 12_000),
    ("shop/prod/POST /orders", 0.05, 35_000),
    ("shop/prod/GET /orders/{orderId}", 0.01, 8_000),
    ("shop/prod/DELETE /orders/{orderId}", 0.10, 20_000),
    ("shop/prod/GET /static/{path*}", 0.0, 1_500),
]


def _traffic(region: StatsRegion, now: int) -> dict[str, dict[str, int]]:
    rng = random.Random(5)
    w0, w1 = region.writer(0, 0), region.writer(1, 0)
    expect: dict[str, dict[str, int]] = {}
    for key, err, lat in ROUTES:
        slot = region.slots.slot_for(key)
        e = expect.setdefault(key, {"calls": 0, "2xx": 0, "4xx": 0, "5xx": 0})
        for sec in range(now - 290, now):
            wave = 1 + 0.6 * ((sec // 20) % 3)
            for _ in range(int(rng.random() * 3 * wave * (3 if "GET /orders" == key[10:21] else 1))):
                r = rng.random()
                status = 500 if r < err / 2 else 404 if r < err else 200
                w = w0 if rng.random() < 0.5 else w1
                total = int(rng.lognormvariate(0, 0.5) * lat)
                w.record_at(sec, slot, status, total, int(total * 0.8), 120, 900, 0)
                e["calls"] += 1
                e[f"{status // 100}xx"] += 1
    region.slots.slot_for("shop/alpha/GET /orders")
    um = region.slots.slot_for("~unmatched/api.shop.example")
    for sec in range(now - 100, now, 7):
        w0.record_at(sec, um, 404, 90, 0, 0, 60, 1)
    # Redis commands (fastgw.stats.redis_observer): 400 answered in 0.8 ms, 3 failed at 250 ms.
    ok, failed = region.slots.slot_for("~redis/ok"), region.slots.slot_for("~redis/failed")
    region.slots.slot_for("~redis/error")
    for i in range(400):
        w1.record_at(now - 200 + i // 4, ok, 200, 800, 0, 0, 0, 0)
    for i in range(3):
        w1.record_at(now - 50 + i, failed, 503, 250_000, 0, 0, 0, 0)
    return expect


async def _run_chromium(url: str, user_dir: str, shot: str) -> str:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={user_dir}", "--window-size=1400,1560", "--virtual-time-budget=4000",
            "--run-all-compositor-stages-before-draw"]
    shot_proc = await asyncio.create_subprocess_exec(*args, f"--screenshot={shot}", url,
                                                     stdout=asyncio.subprocess.DEVNULL,
                                                     stderr=asyncio.subprocess.DEVNULL)
    await asyncio.wait_for(shot_proc.wait(), 45)
    dom_proc = await asyncio.create_subprocess_exec(*args, "--dump-dom", url, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
    out, _ = await asyncio.wait_for(dom_proc.communicate(), 45)
    return out.decode()


def test_dashboard_renders_counts():
    region = StatsRegion.create(workers=2, max_keys=32, ring_seconds=600)
    now = int(time.time())
    expect = _traffic(region, now)
    total = sum(e["calls"] for e in expect.values())
    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "dashboard.png")

    async def main() -> str:
        server = AdminServer(region, Hooks(), TOKEN)
        await server.start("127.0.0.1", 0)
        try:
            with tempfile.TemporaryDirectory() as user_dir:
                return await _run_chromium(f"http://127.0.0.1:{server.port}/dashboard/#token={TOKEN}", user_dir, shot)
        finally:
            await server.stop()

    try:
        dom = asyncio.run(main())
    finally:
        region.close()
    assert 'data-loaded="1"' in dom, dom[:2000]
    assert os.path.getsize(shot) > 10_000

    def text_of(elem_id: str) -> str:
        m = re.search(rf'id="{elem_id}"[^>]*>([^<]*)<', dom)
        assert m, elem_id
        return unescape(m.group(1))

    assert text_of("c-calls") == f"{total:,}"
    charts = dict(re.findall(r'id="(ch-\w+)"><svg[^>]*data-total="([\d.]+)"', dom))
    assert int(float(charts["ch-calls"])) == total
    assert int(float(charts["ch-status"])) == total  # 2xx+3xx+4xx+5xx stacked
    assert dom.count("<rect") > 50 and 'data-series="5xx"' in dom
    for key, e in expect.items():
        row = re.search(rf'<tr data-key="{re.escape(unescape(key)).replace("/", "/")}">(.*?)</tr>', dom.replace("&amp;", "&"))
        assert row, key
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
        nums = [re.sub(r"<[^>]+>", "", c) for c in cells]
        assert nums[2] == f"{e['calls']:,}" and nums[3] == f"{e['2xx']:,}"
        assert nums[4] == f"{e['4xx']:,}" and nums[5] == f"{e['5xx']:,}"
    assert "api.shop.example" in dom
    # The backend targets panel: each target's state from GET /targets.
    states = dict(re.findall(r'<tr data-target="([^"]+)">.*?<span class="rate-\w+">([^<]*)</span>', dom))
    assert states == {"http://10.0.0.1:8000": "In use · healthy",
                      "http://10.0.0.2:8000": "Passed over · failed connections (8 s left)",
                      "http://10.0.0.3:8000": "In use · 2 failed connections counted"}
    assert text_of("targets-count") == "3 targets · 1 passed over"
    # The Redis commands panel: answered and failed, the error replies' row left out (none).
    redis_table = re.search(r'<table class="mini" id="redis"><tbody>(.*?)</tbody>', dom).group(1)
    rows = [[unescape(c) for c in re.findall(r"<td[^>]*>([^<]*)</td>", r)]
            for r in re.findall(r"<tr>(.*?)</tr>", redis_table)]
    assert [r[:2] for r in rows] == [["Answered", "400"], ["No reply (failed or too slow)", "3"]]
    assert rows[1][3].startswith("p99 2") and rows[1][3].endswith(" ms") and rows[0][2] == "avg 0.80 ms"
    assert 'id="redis-panel" class="panel"' in dom or 'class="panel" id="redis-panel"' in dom
    assert "shop · prod" in dom.replace("&nbsp;", " ")
