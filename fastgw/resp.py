"""A lean Redis client for the state requests wait on: rate-limit counts (policy redis),
hmac-auth's replay guard, proxy-cache's Redis store. One per worker (``redis`` in the
plugins' services).

PERF: redis-py's asyncio client spends ~80 µs of the worker's CPU on a pipelined command
pair (command objects, a connection pool and its lock, a coroutine per call); a request
waiting on it cost 6× a whole proxied request. This client keeps one connection and
speaks RESP2 itself:

- ``call(*args)`` encodes the command into the turn's buffer and returns a future; every
  command of a loop turn goes out in one ``write`` (one ``send``), and replies are matched
  to the futures in order as they come.
- Connecting is lazy (the first call) and happens again after a failure; ``AUTH`` and
  ``SELECT`` from the URL go first. A connection that fails, or whose oldest command is
  not answered within ``timeout``, is closed and every command on it fails
  (``ConnectionError`` / ``TimeoutError``): replies come in order, so one lost reply makes
  the rest unmatchable. The calls made while a connect is on its way wait for that one.
  After a connect that timed out (a host that drops packets), a failed TLS setup or a
  refused handshake, calls fail at once for ``retry_after`` seconds instead of each
  waiting for a connect timeout (a Redis outage must not hold every request for
  ``timeout``); a connect refused at once is tried again by the next call.
- URLs as the config's ``redis.url``: ``redis://[user:password@]host:port/db``,
  ``rediss://`` (TLS; ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``,
  ``ssl_keyfile``, ``ssl_check_hostname`` in the query) and ``unix:///path?db=N``.
- Redis Sentinel (high availability): ``redis+sentinel://[user:password@]host:port,
  host:port.../master-name[/db]`` (``rediss+sentinel://``: TLS to the sentinels and the
  master; ``sentinel_username``, ``sentinel_password`` in the query when the sentinels
  want AUTH). Each connect asks the sentinels in turn for the master's address
  (``SENTINEL get-master-addr-by-name``; the first that answers is asked first next
  time), and checks with ``ROLE`` that the server there is the master: a failover under
  way is refused (a connect failure) rather than written to a replica. After a failover,
  the old master's connections are dropped (Sentinel kills them as it demotes it; a
  ``READONLY`` reply drops it too), and the next call connects to the new master.
  A ``READONLY`` reply drops the connection whatever the URL: a name whose address moves
  on failover (a cloud's primary endpoint) is looked up again on the reconnect.

redis-py parses those URLs here, and serves the admin API's cache purge (``SCAN``), which
no request waits on.

``observe`` (set by the worker: fastgw.stats.redis_observer) hears of every command once,
with ``OK`` (a reply), ``ERROR`` (an error reply, but ``NOSCRIPT``: an ``EVALSHA``'s
cue to load its script) or ``FAILED`` (no reply: the connection
failed, was too slow, or Redis is unavailable) and the seconds it waited: the stats region
counts them, and the admin API's /metrics shows them (``fastgw_redis_commands_total``,
``fastgw_redis_command_duration_seconds``).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


def settle(done: asyncio.Future[Any], value: Any, then: Callable[[Any], Any] | None) -> None:
    """Give ``done`` ``value``, or what ``then`` makes of it (PERF: a step's verdict, with no
    second future); an exception ``then`` raises fails ``done`` (the waiting step: 500)."""
    if then is None:
        done.set_result(value)
        return
    try:
        done.set_result(then(value))
    except Exception as failed:  # noqa: BLE001 - handed to whoever waits on done
        done.set_exception(failed)


def reply_error(reply: asyncio.Future[Any]) -> BaseException | None:
    """What a done command's future failed with (a cancel included), or None."""
    return asyncio.CancelledError() if reply.cancelled() else reply.exception()


OK, ERROR, FAILED = 0, 1, 2          # what became of a command (RespClient.observe)


class RespError(Exception):
    """An error reply (``-ERR ...``) of one command; the connection stays usable."""


class _Incomplete(Exception):
    """The buffer ends inside a reply."""


_CRLF = b"\r\n"


def encode(args: tuple[bytes | str | int, ...]) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """The reply starting at ``pos`` and the position after it; raises _Incomplete when the
    buffer ends first. Errors are returned as RespError values (not raised)."""
    end = buf.find(_CRLF, pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    line = bytes(buf[pos + 1:end])
    if kind == 58:                                # ':' integer
        return int(line), end + 2
    if kind == 43:                                # '+' simple string
        return line, end + 2
    if kind == 45:                                # '-' error
        return RespError(line.decode("utf-8", "replace")), end + 2
    if kind == 36:                                # '$' bulk string
        n = int(line)
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if len(buf) < stop + 2:
            raise _Incomplete
        return bytes(buf[end + 2:stop]), stop + 2
    if kind == 42:                                # '*' array
        n = int(line)
        if n < 0:
            return None, end + 2
        items = []
        p = end + 2
        for _ in range(n):
            item, p = parse(buf, p)
            items.append(item)
        return items, p
    raise ValueError(f"not a RESP2 reply: {bytes(buf[pos:pos + 20])!r}")


def _tls_context(query: dict[str, Any]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=query.get("ssl_ca_certs") or None)
    reqs = str(query.get("ssl_cert_reqs") or "required").lower()
    if reqs == "none":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif reqs == "optional":
        ctx.verify_mode = ssl.CERT_OPTIONAL
    if str(query.get("ssl_check_hostname", "")).lower() in ("false", "0", "no"):
        ctx.check_hostname = False
    if query.get("ssl_certfile"):
        ctx.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile") or None)
    return ctx


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelSettings:
    """What a ``redis+sentinel://`` URL says (see the module docstring)."""

    nodes: tuple[tuple[str, int], ...]     # the sentinels, in the URL's order
    master: str                            # the master group's name the sentinels monitor
    db: int
    username: str | None                   # the master's AUTH
    password: str | None
    sentinel_username: str | None
    sentinel_password: str | None
    tls: bool
    query: dict[str, str]                  # TLS settings, as rediss:// takes them


def parse_sentinel_url(url: str) -> SentinelSettings:
    """A ``redis+sentinel://`` URL's settings; ValueError says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a {' or '.join(s + '://' for s in SENTINEL_SCHEMES)} URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = []
    for item in hosts.split(","):
        host, port = item, str(SENTINEL_PORT)
        if item.startswith("["):                      # [v6]:port
            end = item.find("]")
            rest = item[end + 1:] if end > 0 else "?"
            if rest and not rest.startswith(":"):
                raise ValueError(f"bad sentinel address {item!r}")
            host, port = item[1:end], rest[1:] or port
        elif ":" in item:
            host, port = item.rsplit(":", 1)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad sentinel address {item!r} (host:port, the port 26379 when left out)")
        nodes.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("the path must be /master-name or /master-name/db")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"bad database number {path[1]!r}")
    user, colon, password = userinfo.partition(":")
    if userinfo and not colon:
        raise ValueError("credentials must be user:password or :password")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return SentinelSettings(
        nodes=tuple(nodes), master=unquote(path[0]), db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(user) or None, password=unquote(password) or None,
        sentinel_username=query.pop("sentinel_username", None), sentinel_password=query.pop("sentinel_password", None),
        tls=parts.scheme == "rediss+sentinel", query=query)


def url_error(url: str) -> str | None:
    """Why a config's ``redis.url`` can't be used, or None (for fastgw.config.validate)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix", *SENTINEL_SCHEMES):
        return "must start with redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel://"
    try:
        if scheme in SENTINEL_SCHEMES:
            parse_sentinel_url(url)
        else:
            from redis.connection import parse_url

            parse_url(url)
    except ValueError as exc:
        return str(exc)
    return None


def _auth(username: str | None, password: str | None) -> list[tuple[Any, ...]]:
    if not password:
        return []
    return [("AUTH", username, password) if username else ("AUTH", password)]


class _Conn(asyncio.Protocol):
    """One connection's reading side: replies go to the client's pending futures in order."""

    def __init__(self, client: RespClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        client = self.client
        pending = client._pending
        observe = client.observe
        now = time.monotonic() if observe is not None else 0.0
        try:
            while pos < len(buf):
                reply, pos = parse(buf, pos)
                if not pending:
                    raise ValueError("a reply to no command")
                fut, sent = pending.popleft()
                if fut is None:                    # AUTH / SELECT / ROLE of the handshake
                    if type(reply) is RespError:
                        self.client._refused(self, reply)
                        return
                    if type(reply) is list and reply and reply[0] != b"master":
                        self.client._refused(self, RespError(f"ROLE: {reply[0]!r}, not the master "
                                                             "(a failover under way?)"))
                        return
                    continue
                if observe is not None:
                    # (NOSCRIPT is the first EVALSHA's answer: the caller loads the script.)
                    observe(ERROR if type(reply) is RespError and not str(reply).startswith("NOSCRIPT") else OK,
                            now - sent)
                if not fut.done():
                    if type(reply) is RespError:
                        fut.set_exception(reply)
                        if str(reply).startswith("READONLY"):
                            # The server became a replica (a failover): a new connection
                            # finds the master (the sentinels, or the name's new address).
                            self.client._broken(self, ConnectionError(
                                f"redis: {self.client._where()} is a replica now ({reply})"))
                            return
                    else:
                        fut.set_result(reply)
        except _Incomplete:
            pass
        except ValueError as exc:                  # not RESP: the stream can't be trusted
            self.client._broken(self, ConnectionError(f"redis: {exc}"))
            return
        del buf[:pos]
        self.client._replied(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._broken(self, ConnectionError(f"redis: connection lost ({exc or 'closed by the server'})"))


async def _read_replies(reader: asyncio.StreamReader, n: int) -> list[Any]:
    """The next ``n`` replies on a stream (a sentinel's)."""
    buf = bytearray()
    out: list[Any] = []
    pos = 0
    while len(out) < n:
        try:
            reply, pos = parse(buf, pos)
            out.append(reply)
        except _Incomplete:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("closed before answering") from None
            buf += data
    return out


class RespClient:
    def __init__(self, url: str, timeout: float = 0.25, retry_after: float = 1.0) -> None:
        self.url = url
        self.timeout = timeout
        self.retry_after = retry_after
        from redis.connection import parse_url  # (only where a redis section is set)

        self._sentinel: SentinelSettings | None = None
        self._sentinels: list[tuple[str, int]] = []    # asked in this order; the last to answer first
        if url.split("://", 1)[0] in SENTINEL_SCHEMES:
            sentinel = self._sentinel = parse_sentinel_url(url)
            self._sentinels = list(sentinel.nodes)
            opts: dict[str, Any] = {**sentinel.query, "username": sentinel.username,
                                    "password": sentinel.password, "db": sentinel.db}
            self._host, self._port = "", 0                # the master's, asked for at each connect
            tls = sentinel.tls
        else:
            opts = parse_url(url)
            self._host = opts.get("host", "localhost")
            self._port = int(opts.get("port", 6379))
            tls = url.startswith("rediss://")
        self._path: str | None = opts.get("path")
        self._tls = _tls_context(opts) if tls else None
        self._hello: list[tuple[Any, ...]] = _auth(opts.get("username"), opts.get("password"))
        if int(opts.get("db") or 0):
            self._hello.append(("SELECT", int(opts["db"])))
        if self._sentinel is not None:
            self._hello.append(("ROLE",))               # the master, not a replica (see _Conn)
        self._conn: _Conn | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self._down_reason: Exception | None = None
        self._out: list[bytes] = []                 # this turn's commands, not written yet
        self._flush_soon = False
        # (future, monotonic time it was written or queued) per command sent, in order
        self._pending: collections.deque[tuple[asyncio.Future[Any] | None, float]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.observe: Callable[[int, float], None] | None = None     # see the module docstring

    # -- calls -----------------------------------------------------------------------

    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop this client runs on (its connection's). PERF: kept, because
        ``asyncio.get_running_loop()`` makes a getpid system call on Python 3.11."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def call(self, *args: bytes | str | int) -> asyncio.Future[Any]:
        """Send one command; the future gets its reply (RespError on an error reply,
        ConnectionError / TimeoutError when the connection fails or is too slow)."""
        loop = self._loop or self.loop()
        fut = loop.create_future()
        if self._closed:
            fut.set_exception(ConnectionError("redis: client closed"))
            return fut
        if self._conn is None and self._connecting is None:
            if time.monotonic() < self._down_until:
                fut.set_exception(ConnectionError(f"redis: unavailable ({self._down_reason})"))
                if self.observe is not None:
                    self.observe(FAILED, 0.0)
                return fut
            self._connecting = loop.create_task(self._connect())
        self._out.append(encode(args))
        self._pending.append((fut, time.monotonic()))
        if self._conn is not None and not self._flush_soon:
            self._flush_soon = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_soon = False
        conn = self._conn
        if conn is None or not self._out or conn.transport is None:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        conn.transport.write(data)
        if self._timer is None:
            # (Commands queued while connecting wait on the connect's own timeout first.)
            self._arm()

    # -- connection ------------------------------------------------------------------

    async def _ask_sentinels(self) -> None:
        """Set the master's address from the first sentinel that knows it; OSError says
        what each said when none does."""
        sentinel = self._sentinel
        assert sentinel is not None
        hello = [encode(cmd) for cmd in _auth(sentinel.sentinel_username, sentinel.sentinel_password)]
        said = []
        self._host, self._port = "", 0
        for node in list(self._sentinels):
            host, port = node
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    host, port, ssl=self._tls, server_hostname=host if self._tls else None), self.timeout)
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                said.append(f"{host}:{port}: {exc or type(exc).__name__}")
                continue
            try:
                writer.write(b"".join(hello) + encode(("SENTINEL", "get-master-addr-by-name", sentinel.master)))
                replies = await asyncio.wait_for(_read_replies(reader, len(hello) + 1), self.timeout)
            except (OSError, asyncio.TimeoutError, ValueError) as exc:
                said.append(f"{host}:{port}: {exc or type(exc).__name__}")
                continue
            finally:
                writer.close()
            answer = replies[-1]
            refused = next((r for r in replies if type(r) is RespError), None)
            if refused is not None or not (type(answer) is list and len(answer) == 2):
                said.append(f"{host}:{port}: {refused or 'does not know the master'}")
                continue
            self._host, self._port = answer[0].decode(), int(answer[1])
            if node != self._sentinels[0]:
                self._sentinels.remove(node)
                self._sentinels.insert(0, node)
            return
        raise OSError(f"no sentinel gave master {sentinel.master!r}'s address ({'; '.join(said)})")

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        conn = _Conn(self)
        try:
            if self._sentinel is not None:
                try:
                    await self._ask_sentinels()
                except OSError:
                    # No sentinel answers (or none knows the master): like a connect that
                    # hangs, calls fail at once for a while rather than each waiting.
                    self._down_until = time.monotonic() + self.retry_after
                    raise
            if self._path is not None:
                opening = loop.create_unix_connection(lambda: conn, self._path)
            else:
                opening = loop.create_connection(lambda: conn, self._host, self._port, ssl=self._tls,
                                                 server_hostname=self._host if self._tls else None)
            await asyncio.wait_for(opening, self.timeout)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            self._connecting = None
            reason = exc if str(exc) else type(exc).__name__
            self._down_reason = ConnectionError(f"redis: cannot connect to {self._where()}: {reason}")
            if isinstance(exc, (asyncio.TimeoutError, TimeoutError, ssl.SSLError)):
                # A connect that hangs (or a TLS setup that fails) would hold every request
                # that tries it: fail at once for a while. One refused at once is tried
                # again by the next call, so a Redis back up is used at once.
                self._down_until = time.monotonic() + self.retry_after
            self._fail_all(self._down_reason)
            return
        if self._closed:
            conn.transport.close() if conn.transport is not None else None
            return
        self._connecting = None
        self._conn = conn
        if self._hello:
            # Handshake commands go first: their replies come before the queued ones' (a
            # None future: _Conn checks them, and an error reply fails the connection).
            now = time.monotonic()
            self._out[:0] = [encode(cmd) for cmd in self._hello]
            for i in range(len(self._hello)):
                self._pending.insert(i, (None, now))
        self._flush()

    def _refused(self, conn: _Conn, reply: RespError) -> None:
        """The handshake (AUTH, SELECT) got an error: every command on it fails, and calls
        fail at once for ``retry_after`` (wrong settings don't heal by retrying sooner)."""
        self._broken(conn, ConnectionError(f"redis: handshake refused by {self._where()}: {reply}"))
        self._down_until = time.monotonic() + self.retry_after

    def _where(self) -> str:
        if self._sentinel is not None:
            master = f"master {self._sentinel.master!r}"
            return f"{master} at {self._host}:{self._port}" if self._port else master
        return self._path if self._path is not None else f"{self._host}:{self._port}"

    def _broken(self, conn: _Conn, exc: Exception) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._down_reason = exc
        if conn.transport is not None:
            conn.transport.abort()
        self._fail_all(exc)

    def _fail_all(self, exc: Exception) -> None:
        self._out.clear()
        pending, self._pending = self._pending, collections.deque()
        observe = self.observe
        now = time.monotonic()
        for fut, sent in pending:
            if fut is not None:
                if observe is not None:
                    observe(FAILED, now - sent)
                if not fut.done():
                    fut.set_exception(exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- time limit ------------------------------------------------------------------

    def _arm(self) -> None:
        if self._pending and self._loop is not None:
            self._timer = self._loop.call_at(self._loop.time() + max(0.0, self._pending[0][1] + self.timeout
                                                                      - time.monotonic()), self._check)
        else:
            self._timer = None

    def _replied(self, conn: _Conn) -> None:
        if not self._pending and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if not self._pending:
            return
        if time.monotonic() - self._pending[0][1] >= self.timeout:
            exc = TimeoutError(f"redis: no answer from {self._where()} within {self.timeout:g} s")
            if self._conn is not None:
                self._broken(self._conn, exc)
            else:
                self._fail_all(exc)
            return
        self._arm()

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            if conn.transport is not None:
                conn.transport.close()
        self._fail_all(ConnectionError("redis: client closed"))
