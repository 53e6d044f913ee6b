"""fastgw.resp through Redis Sentinel (``redis+sentinel://``), against real processes: a
master, its replica and a sentinel watching them. The client finds the master through the
sentinels, follows a failover to the new master, skips a sentinel that is down, and never
writes to a replica (``ROLE`` at each connect; a ``READONLY`` reply drops the connection).
The URL's checks: tests/test_config.py; through a gateway: tests/e2e/test_rate_limiting_e2e.py."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastgw.resp import RespClient, RespError, parse_sentinel_url
from tests.helpers import RedisServer, SentinelSetup, free_port, redis_cli, wait_until


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@contextlib.contextmanager
def sentinel_setup(directory: Path) -> Iterator[SentinelSetup]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    setup = SentinelSetup(directory)
    try:
        yield setup
    finally:
        setup.stop()


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """One setup for the tests that leave the roles as they are (the failover test has its own)."""
    with sentinel_setup(tmp_path_factory.mktemp("sentinel")) as setup:
        yield setup


def test_the_client_finds_the_master_through_the_sentinels(sentinel: SentinelSetup) -> None:
    dead = free_port()                      # a sentinel that is down, asked first
    url = f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{sentinel.sentinel_port}/mymaster/2"

    async def scenario() -> None:
        c = RespClient(url, timeout=1.0)
        try:
            assert await c.call("SET", "k", "v") == b"OK"
            assert c._where() == f"master 'mymaster' at 127.0.0.1:{sentinel.master.port}"
            assert c._sentinels[0] == ("127.0.0.1", sentinel.sentinel_port)     # the one that answered, first now
        finally:
            await c.aclose()

    run(scenario())
    assert redis_cli(sentinel.master.port, "-n", "2", "GET", "k") == b"v\n"    # on the master, in db 2
    assert redis_cli(sentinel.master.port, "-n", "2", "DEL", "k") == b"1\n"


def test_the_client_follows_a_failover_to_the_new_master(tmp_path: Path) -> None:
    with sentinel_setup(tmp_path) as sentinel:
        _follow_a_failover(sentinel)


def _follow_a_failover(sentinel: SentinelSetup) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel.sentinel_port}/mymaster"
    old = sentinel.master.port

    async def scenario() -> None:
        c = RespClient(url, timeout=1.0, retry_after=0.1)
        try:
            assert await c.call("SET", "before", "1") == b"OK"
            # (NOGOODSLAVE while the sentinel's view of the replica is not fresh enough)
            wait_until(lambda: redis_cli(sentinel.sentinel_port, "sentinel", "failover", "mymaster") == b"OK\n",
                       timeout=15, interval=0.2, what="the sentinel to start a failover")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while loop.time() < deadline:
                # Until the old master is demoted, writes may still land there (Sentinel's
                # own window); once it is, the client must end up on the new one.
                with contextlib.suppress(ConnectionError, TimeoutError, RespError):
                    await c.call("SET", "after", "2")
                    if c._port != old and b"slave" in redis_cli(old, "role"):
                        break
                await asyncio.sleep(0.1)
            assert c._port == sentinel.replica.port, c._where()
            assert await c.call("SET", "after", "3") == b"OK"
        finally:
            await c.aclose()

    run(scenario())
    assert sentinel.master_port() == sentinel.replica.port
    assert redis_cli(sentinel.replica.port, "GET", "after") == b"3\n"


def test_a_replica_is_never_written_to(sentinel: SentinelSetup) -> None:
    """A plain URL that names a replica: the write gets READONLY and the connection is
    dropped (the next call connects again: an address that moved would be found)."""
    async def scenario() -> None:
        c = RespClient(f"redis://127.0.0.1:{sentinel.replica.port}/0", timeout=1.0)
        try:
            with pytest.raises(RespError, match="READONLY"):
                await c.call("SET", "replica-k", "v")
            assert c._conn is None
            assert await c.call("PING") == b"PONG"      # connected again
        finally:
            await c.aclose()

    run(scenario())


def test_no_sentinel_knows_the_master(sentinel: SentinelSetup) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel.sentinel_port}/othermaster"

    async def scenario() -> None:
        c = RespClient(url, timeout=1.0, retry_after=30.0)
        try:
            with pytest.raises(ConnectionError, match="no sentinel gave master 'othermaster'.*does not know"):
                await c.call("PING")
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(ConnectionError, match="unavailable"):           # at once, for retry_after
                await c.call("PING")
            assert loop.time() - t0 < 0.1
        finally:
            await c.aclose()

    run(scenario())


def test_a_server_that_is_no_master_is_refused_at_connect(tmp_path: Path) -> None:
    """The sentinel's answer may lag a failover: the server it names answers ROLE as a
    replica, and the connect is refused rather than used."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    common = ("--shutdown-on-sigterm", "now", "--dir", str(tmp_path))
    master = RedisServer(*common).start()
    replica = RedisServer(*common, "--replicaof", "127.0.0.1", str(master.port)).start()
    fake = socket.socket()
    fake.bind(("127.0.0.1", 0))
    fake.listen(4)

    async def lying_sentinel() -> None:
        loop = asyncio.get_running_loop()
        fake.setblocking(False)
        conn, _ = await loop.sock_accept(fake)
        await loop.sock_recv(conn, 4096)
        # The replica's address, given as the master's.
        port = str(replica.port).encode()
        await loop.sock_sendall(conn, b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%s\r\n" % (len(port), port))
        conn.close()

    async def scenario() -> None:
        task = asyncio.ensure_future(lying_sentinel())
        c = RespClient(f"redis+sentinel://127.0.0.1:{fake.getsockname()[1]}/mymaster", timeout=1.0)
        try:
            with pytest.raises(ConnectionError, match="ROLE: b'slave', not the master"):
                await c.call("SET", "k", "v")
        finally:
            await c.aclose()
            await task

    try:
        run(scenario())
        assert redis_cli(replica.port, "GET", "k") == b"\n"            # nothing written there
    finally:
        fake.close()
        replica.stop()
        master.stop()


def test_sentinel_urls_say_what_is_wrong() -> None:
    s = parse_sentinel_url("redis+sentinel://u:p%40w@10.0.0.1:26380,sentinel-b,[::1]:26381/mymaster/2"
                           "?sentinel_password=sp")
    assert s.nodes == (("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26381))
    assert (s.master, s.db, s.username, s.password, s.sentinel_password, s.tls) == ("mymaster", 2, "u", "p@w", "sp", False)
    assert parse_sentinel_url("rediss+sentinel://h/m?ssl_cert_reqs=none").query == {"ssl_cert_reqs": "none"}
    for url, why in [("redis+sentinel://h:x/m", "bad sentinel address 'h:x'"),
                     ("redis+sentinel://h/", "the path must be /master-name"),
                     ("redis+sentinel://h/m/x", "bad database number 'x'"),
                     ("redis+sentinel://secret@h/m", "credentials must be user:password or :password")]:
        with pytest.raises(ValueError, match=why):
            parse_sentinel_url(url)


def test_the_admin_apis_cache_purge_reaches_the_master_through_the_sentinels(sentinel: SentinelSetup) -> None:
    """The admin API's purge (redis-py, fastgw.admin.redis_client) reads the same URL."""
    from fastgw.admin import purge_redis

    for i in range(3):
        redis_cli(sentinel.master.port, "-n", "3", "SET", f"fastgw:pc:shop/prod/GET /x|{i}", "1")
    settings = {"url": f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{sentinel.sentinel_port}/mymaster/3",
                "timeout": 1.0}
    assert run(purge_redis(settings, "shop", None)) == 3
    assert redis_cli(sentinel.master.port, "-n", "3", "DBSIZE") == b"0\n"


def test_sentinels_that_want_auth_get_it_from_the_query(tmp_path: Path) -> None:
    """``sentinel_password`` (and the master's own password from the URL's userinfo)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    master = RedisServer("--requirepass", "m-secret", "--dir", str(tmp_path)).start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nrequirepass s-secret\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
                    "sentinel auth-pass mymaster m-secret\n")
    sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"redis+sentinel://:m-secret@127.0.0.1:{port}/mymaster"

    async def scenario() -> None:
        anon = RespClient(base, timeout=1.0)
        try:
            with pytest.raises(ConnectionError, match="NOAUTH"):
                await anon.call("PING")
        finally:
            await anon.aclose()
        c = RespClient(base + "?sentinel_password=s-secret", timeout=1.0)
        try:
            assert await c.call("SET", "k", "v") == b"OK"
        finally:
            await c.aclose()

    try:
        wait_until(lambda: b"127.0.0.1" in subprocess.run(
            ["redis-cli", "-p", str(port), "-a", "s-secret", "--no-auth-warning", "sentinel",
             "get-master-addr-by-name", "mymaster"], capture_output=True, timeout=5).stdout,
            timeout=10, what="the sentinel")
        run(scenario())
        assert subprocess.run(["redis-cli", "-p", str(master.port), "-a", "m-secret", "--no-auth-warning", "GET", "k"],
                              capture_output=True, timeout=5).stdout == b"v\n"
    finally:
        sentinel.terminate()
        sentinel.wait(5)
        master.stop()
