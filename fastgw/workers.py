"""The supervisor (``fastgw run``): N worker processes on SO_REUSEPORT sockets, signals, reload.

The supervisor owns every listening socket for its whole life: per listen address it
opens one SO_REUSEPORT socket per worker slot, and worker ``i`` inherits socket ``i`` of
each address. Because the sockets are never closed while the gateway runs, a reload or a
worker restart never drops a connection that waits in the accept backlog.

- **Start**: load and validate the config, open the sockets, start the workers, wait until
  each one has written its ready byte, log ``serving: ...``.
- **Reload** (SIGHUP, or :meth:`Supervisor.reload` from the admin listener): validate the
  file; a bad file is logged line by line and nothing changes. A good one starts a new
  worker per slot on the same sockets; once *all* new workers are ready the old ones get
  SIGTERM (they drain: stop accepting, finish in-flight requests, close idle connections)
  and SIGKILL after ``limits.drain_timeout``. If a new worker fails to start, the new
  generation is killed and the old one keeps serving.
- **Crash**: a worker that exits on its own is logged and restarted on its socket, with
  an exponential backoff while it keeps dying young. It restarts on the config its
  generation was started with: the supervisor gives workers a private copy of the bytes
  it validated (a snapshot per generation), never the file, which may have changed since.
- **Stop** (SIGTERM/SIGINT): SIGTERM to every worker, wait up to the drain timeout,
  SIGKILL what is left, exit 0. A second SIGINT (Ctrl-C twice) kills the workers at once.

Workers are ``python -m fastgw worker ...`` subprocesses (see ``fastgw.cli``), which call
``fastgw.server.run_worker``. Every event is one line on stderr prefixed ``fastgw[supervisor]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from fastgw import config as fconfig

PREFIX = "fastgw[supervisor]"
#: How long a (re)started worker may take to write its ready byte.
READY_TIMEOUT = 30.0
#: A worker that dies sooner than this after its start counts as crash-looping.
CRASH_WINDOW = 5.0
#: Backoff before restart number k (k >= 2) of a crash-looping worker: BASE * 2**(k-2), at most MAX.
BACKOFF_BASE = 0.25
BACKOFF_MAX = 15.0
DEFAULT_DRAIN_TIMEOUT = 30.0
LISTEN_BACKLOG = 4096


def log(message: str) -> None:
    """Write one supervisor event line to stderr."""
    sys.stderr.write(f"{PREFIX} {message}\n")
    sys.stderr.flush()


def open_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket with SO_REUSEPORT (so several can share ``host:port``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if hasattr(socket, "TCP_DEFER_ACCEPT"):
            # PERF: a connection is queued for accept once its first bytes are in (nginx's
            # `listen ... deferred`, HAProxy's defer-accept): one wakeup of the worker per
            # new connection instead of two, and the worker reads the request as it
            # accepts. A client that sends nothing is still accepted, after about a second.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def port_is_free(host: str, port: int) -> bool:
    """Whether no other process listens on ``host:port``.

    SAFETY: SO_REUSEPORT would otherwise let a second gateway (another config, an old
    version) bind the same port and silently take half the traffic. A plain bind (no
    SO_REUSEPORT) fails while anybody listens there, so the first socket of each address
    is preceded by this probe and a busy port is refused, as nginx refuses it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == EX_CONFIG:
        return f"exit code {returncode}: it refused the config"
    return f"exit code {returncode}"


# What a worker writes to its ready pipe: b"1" once serving, or CONFIG_ERRORS and the JSON
# list of error lines when its config can't be built (then it exits with EX_CONFIG).
CONFIG_ERRORS = b"E"
EX_CONFIG = 78


@dataclass(eq=False)
class Worker:
    """One worker process and what the supervisor knows about it."""

    slot: int
    generation: int
    proc: asyncio.subprocess.Process
    started: float
    ready: asyncio.Future[bool]
    retiring: bool = False
    kill_timer: asyncio.TimerHandle | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    config_errors: list[str] = field(default_factory=list)   # why it refused its config
    reported: asyncio.Event = field(default_factory=asyncio.Event)   # its ready pipe is read to the end

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def signal(self, signum: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)


class Supervisor:
    """Runs the workers of one gateway; see the module docstring for the life cycle.

    ``workers`` overrides the config's ``workers``; ``worker_cmd`` replaces the command
    prefix ``[python, -m, fastgw, worker]`` (the worker arguments are appended to it);
    ``on_serving`` is called once, when the first generation serves.
    """

    def __init__(
        self,
        config_path: str,
        workers: int | None = None,
        worker_cmd: list[str] | None = None,
        on_serving: Callable[[], None] | None = None,
    ) -> None:
        self.on_serving = on_serving
        self.config_path = os.path.abspath(config_path)
        self.workers_override = workers
        self.worker_cmd = list(worker_cmd or [sys.executable, "-m", "fastgw", "worker"])
        self.config: Any = None
        self.generation = 0
        # sockets[(host, port)] = one listening socket per worker slot
        self.sockets: dict[tuple[str, int], list[socket.socket]] = {}
        self.addresses: list[tuple[str, int]] = []
        self.current: list[Worker | None] = []
        self.all_workers: set[Worker] = set()
        self.fail_counts: list[int] = []
        self.start_errors: list[str] = []    # config errors the last generation's workers reported
        self.stopping = False
        self.stats_region: Any = None
        self.stats_name: str | None = None
        self.shared_region: Any = None   # fastgw.shared.SharedRegion: replay set, rate-limit counters
        self.cache_region: Any = None    # fastgw.cache_region.CacheRegion: proxy-cache's node store
        self.admin: Any = None
        self._stop_event: asyncio.Event | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # id(config) -> (the copy its workers load, its bytes: written again when a cleaner
        # of old temporary files has removed it under a gateway that runs for weeks)
        self._snapshots: dict[int, tuple[str, bytes]] = {}
        self._snapshot_dir: str | None = None
        self._snapshot_seq = 0

    # ----------------------------------------------------------------- config helpers

    @property
    def drain_timeout(self) -> float:
        limits = getattr(self.config, "limits", None) or {}
        return float(limits.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT))

    def _worker_count(self, cfg: Any) -> int:
        count = self.workers_override if self.workers_override else cfg.workers
        return max(1, int(count))

    @staticmethod
    def _addresses(cfg: Any) -> list[tuple[str, int]]:
        return [(str(item["host"]), int(item["port"])) for item in cfg.listen]

    def _load(self) -> tuple[Any, list[str]]:
        """Load and validate the config file: ``(config, [])`` or ``(None, errors)``; a good
        one's bytes are kept as a snapshot for the workers (``self._snapshots[id(config)]``)."""
        try:
            cfg, blob = fconfig.load_read(self.config_path)
        except fconfig.ConfigError as exc:
            return None, list(exc.errors) or [str(exc)]
        except OSError as exc:
            return None, [f"{self.config_path}: {exc.strerror or exc}"]
        self._snapshots[id(cfg)] = (self._write_snapshot(blob), blob)
        return cfg, []

    def _write_snapshot(self, blob: bytes) -> str:
        """A private file holding ``blob`` (the file itself when one can't be written)."""
        try:
            if self._snapshot_dir is None:
                # Named for this supervisor (as the shared-memory regions are), so a later one
                # removes what a killed one left.
                from fastgw.stats import stale_entries

                for stale in stale_entries(tempfile.gettempdir(), "config"):
                    shutil.rmtree(stale, ignore_errors=True)
                self._snapshot_dir = tempfile.mkdtemp(prefix=f"fastgw-config-{os.getpid()}-")
            self._snapshot_seq += 1
            ext = os.path.splitext(self.config_path)[1]
            path = os.path.join(self._snapshot_dir, f"config-{self._snapshot_seq}{ext}")
            with open(path, "wb") as fh:
                fh.write(blob)
            return path
        except OSError as exc:
            log(f"cannot keep a copy of the config ({exc}); workers read {self.config_path}")
            return self.config_path

    def _worker_config(self) -> str:
        """The file workers load: the snapshot of the config in force (written again when
        it has gone)."""
        path, blob = self._snapshots.get(id(self.config), (self.config_path, b""))
        if path != self.config_path and not os.path.exists(path):
            if self._snapshot_dir is not None and not os.path.isdir(self._snapshot_dir):
                self._snapshot_dir = None
            path = self._write_snapshot(blob)
            self._snapshots[id(self.config)] = (path, blob)
        return path

    def _forget(self, cfg: Any) -> None:
        """Delete ``cfg``'s snapshot: no worker will start on it any more."""
        self._forget_key(id(cfg))

    def _forget_key(self, key: int) -> None:
        path, _ = self._snapshots.pop(key, (self.config_path, b""))
        if path != self.config_path:          # the file itself (no copy could be written) stays
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _forget_all(self) -> None:
        for key in list(self._snapshots):
            self._forget_key(key)
        if self._snapshot_dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._snapshot_dir)
            self._snapshot_dir = None

    # ----------------------------------------------------------------- sockets

    def _ensure_sockets(self, addresses: list[tuple[str, int]], count: int) -> list[str]:
        """Open whatever sockets ``addresses`` x ``count`` slots still need; errors as lines."""
        errors: list[str] = []
        for host, port in addresses:
            socks = self.sockets.setdefault((host, port), [])
            if not socks and port and not port_is_free(host, port):
                errors.append(f"listen {host}:{port}: address already in use by another process")
                continue
            while len(socks) < count:
                # Port 0: the first socket picks a port, its siblings share it.
                bind_port = socks[0].getsockname()[1] if socks else port
                try:
                    socks.append(open_listener(host, bind_port))
                except OSError as exc:
                    errors.append(f"listen {host}:{port}: {exc.strerror or exc}")
                    break
        return errors

    def _close_unused_sockets(self, addresses: list[tuple[str, int]], count: int) -> None:
        for key in list(self.sockets):
            socks = self.sockets[key]
            keep = count if key in addresses else 0
            for sock in socks[keep:]:
                sock.close()
            del socks[keep:]
            if not socks:
                del self.sockets[key]

    def bound_addresses(self) -> list[tuple[str, int]]:
        """The ``(host, port)`` actually bound per listen address (resolves port 0)."""
        return [(host, self.sockets[(host, port)][0].getsockname()[1]) for host, port in self.addresses]

    # ----------------------------------------------------------------- workers

    async def _spawn(self, slot: int, generation: int) -> Worker:
        """Start the worker for ``slot`` on its sockets; does not wait for readiness."""
        loop = asyncio.get_running_loop()
        fds = [self.sockets[addr][slot].fileno() for addr in self.addresses]
        ready_r, ready_w = os.pipe()
        cmd = list(self.worker_cmd)
        cmd += ["--config", self._worker_config()]
        for fd in fds:
            cmd += ["--fd", str(fd)]
        cmd += ["--index", str(slot), "--generation", str(generation), "--ready-fd", str(ready_w)]
        if self.stats_name:
            cmd += ["--stats", self.stats_name]
        if self.shared_region is not None:
            cmd += ["--shared", self.shared_region.name]
        if self.cache_region is not None:
            cmd += ["--cache", self.cache_region.name]
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, pass_fds=[*fds, ready_w], stdin=asyncio.subprocess.DEVNULL
            )
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        worker = Worker(slot, generation, proc, time.monotonic(), loop.create_future())
        self.all_workers.add(worker)

        report = bytearray()

        def on_ready_fd() -> None:
            # b"1": serving. Else the worker's config errors (server.CONFIG_ERRORS and a JSON
            # list), read to the end of the pipe (the worker exits after writing them).
            try:
                data = os.read(ready_r, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            report.extend(data)
            if data and report[:1] == CONFIG_ERRORS and len(report) < (1 << 20):
                return
            loop.remove_reader(ready_r)
            os.close(ready_r)
            if report[:1] == CONFIG_ERRORS:
                try:
                    worker.config_errors = [str(line) for line in orjson.loads(bytes(report[1:]))]
                except (orjson.JSONDecodeError, TypeError):
                    worker.config_errors = ["the worker's config error report was cut short (see log)"]
            worker.reported.set()
            if not worker.ready.done():
                worker.ready.set_result(report[:1] == b"1")

        os.set_blocking(ready_r, False)
        loop.add_reader(ready_r, on_ready_fd)
        self._spawn_task(self._watch(worker))
        return worker

    async def _wait_ready(self, worker: Worker) -> bool:
        try:
            return await asyncio.wait_for(asyncio.shield(worker.ready), READY_TIMEOUT)
        except asyncio.TimeoutError:
            log(f"worker {worker.slot} pid {worker.pid} not ready after {READY_TIMEOUT:g}s")
            return False

    async def _watch(self, worker: Worker) -> None:
        """Wait for ``worker`` to exit; restart it if nobody asked it to go."""
        returncode = await worker.proc.wait()
        worker.exited.set()
        self.all_workers.discard(worker)
        if worker.kill_timer is not None:
            worker.kill_timer.cancel()
        if not worker.ready.done():
            worker.ready.set_result(False)
        how = _describe_exit(returncode)
        if worker.retiring or self.stopping:
            log(f"worker {worker.slot} pid {worker.pid} gen {worker.generation} exited ({how})")
            return
        log(f"worker {worker.slot} pid {worker.pid} gen {worker.generation} died unexpectedly ({how})")
        if worker.slot >= len(self.current) or self.current[worker.slot] is not worker:
            return
        lived = time.monotonic() - worker.started
        count = self.fail_counts[worker.slot] + 1 if lived < CRASH_WINDOW else 0
        self.fail_counts[worker.slot] = count
        delay = min(BACKOFF_BASE * 2 ** (count - 2), BACKOFF_MAX) if count > 1 else 0.0
        if delay:
            log(f"worker {worker.slot} is crash-looping; restart in {delay:g}s")
            await asyncio.sleep(delay)
        if self.stopping or self.current[worker.slot] is not worker:
            return
        new = await self._spawn(worker.slot, self.generation)
        self.current[worker.slot] = new
        if await self._wait_ready(new):
            log(f"worker {new.slot} pid {new.pid} gen {new.generation} ready (restarted)")
        elif new.alive:
            new.signal(signal.SIGKILL)  # its watcher restarts it again, with backoff

    def _retire(self, worker: Worker) -> None:
        """SIGTERM (drain), then SIGKILL after the drain timeout."""
        worker.retiring = True
        if not worker.alive:
            return
        worker.signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        worker.kill_timer = loop.call_later(self.drain_timeout, self._force_kill, worker)

    def _force_kill(self, worker: Worker) -> None:
        if worker.alive:
            log(f"worker {worker.slot} pid {worker.pid} still running after drain timeout; SIGKILL")
            worker.signal(signal.SIGKILL)

    async def _start_generation(self, count: int, generation: int) -> list[Worker] | None:
        """Start ``count`` workers and wait for all; on any failure kill them all: None
        (``self.start_errors``: the config errors the workers reported, if that was why)."""
        self.start_errors = []
        started = [await self._spawn(slot, generation) for slot in range(count)]
        oks = await asyncio.gather(*(self._wait_ready(w) for w in started))
        if all(oks):
            for worker in started:
                log(f"worker {worker.slot} pid {worker.pid} gen {generation} ready")
            return started
        # Every worker builds the same config: one's report names the errors. Its exit may be
        # seen before its pipe is read to the end: wait a moment for the reports.
        waits = [asyncio.ensure_future(w.reported.wait()) for w in started]
        await asyncio.wait(waits, timeout=1.0)
        for wait in waits:
            wait.cancel()
        self.start_errors = next((w.config_errors for w in started if w.config_errors), [])
        for line in self.start_errors:
            log(f"config error: {line}")
        for worker, ok in zip(started, oks, strict=True):
            worker.retiring = True
            if not ok:
                log(f"worker {worker.slot} pid {worker.pid} gen {generation} failed to start")
            worker.signal(signal.SIGKILL)
        await asyncio.gather(*(w.exited.wait() for w in started))
        return None

    # ----------------------------------------------------------------- reload

    def reload(self) -> list[str]:
        """Validate the config file and, if good, start the swap to a new generation.

        Returns the validation errors (empty = accepted; the swap then runs in the
        background, its outcome is logged). For callers that can await,
        :meth:`reload_and_wait` also reports workers that fail to start.
        """
        cfg, errors = self._load()
        if errors:
            self._log_refused(errors)
            return errors
        self._spawn_task(self._swap(cfg))
        return []

    async def reload_and_wait(self) -> list[str]:
        """Like :meth:`reload`, but returns once the new workers serve (or failed)."""
        cfg, errors = self._load()
        if errors:
            self._log_refused(errors)
            return errors
        return await self._swap(cfg)

    @staticmethod
    def _log_refused(errors: list[str]) -> None:
        log(f"reload refused: {len(errors)} error(s) in config; old config keeps serving")
        for line in errors:
            log(f"config error: {line}")

    async def _swap(self, cfg: Any) -> list[str]:
        assert self._reload_lock is not None
        async with self._reload_lock:
            if self.stopping:
                self._forget(cfg)
                return ["gateway is stopping"]
            addresses = self._addresses(cfg)
            count = self._worker_count(cfg)
            errors = self._ensure_sockets(addresses, count)
            if errors:
                for line in errors:
                    log(f"reload failed: {line}")
                self._forget(cfg)
                return errors
            old_addresses, old_config, old_cache = self.addresses, self.config, self.cache_region
            self.addresses, self.config = addresses, cfg
            self.cache_region = self._cache_region_for(cfg)
            generation = self.generation + 1
            log(f"reload: starting generation {generation} ({count} workers)")
            started = await self._start_generation(count, generation)
            if started is None:
                if self.cache_region is not old_cache and self.cache_region is not None:
                    self.cache_region.close()
                self.addresses, self.config, self.cache_region = old_addresses, old_config, old_cache
                self._forget(cfg)
                log(f"reload failed: generation {generation} did not start; old workers keep serving")
                return list(self.start_errors) or [f"generation {generation}: a worker failed to start (see log)"]
            self.generation = generation
            previous = self.current
            self.current = list(started)
            self.fail_counts = [0] * count
            for worker in previous:
                if worker is not None:
                    self._retire(worker)
            self._close_unused_sockets(addresses, count)
            if old_cache is not None and old_cache is not self.cache_region:
                old_cache.close()     # its name goes; the old workers keep their mapping to the end
            self._forget(old_config)
            self._on_config_changed(cfg)
            routes = len(getattr(cfg, "routes", ()))
            log(f"reload done: generation {generation} serving ({count} workers, {routes} routes)")
            return []

    def _cache_region_for(self, cfg: Any) -> Any:
        """proxy-cache's node store for ``cfg``: the current one when its size fits (the
        answers outlive the reload), a new one when the size changes, None when no route
        caches in memory (or the file can't be made: each worker then keeps its own)."""
        from fastgw.cache_region import CacheRegion
        from fastgw.plugins.proxy_cache import node_memory

        need = node_memory(getattr(cfg, "routes", ()) or ())
        current = self.cache_region
        if need == 0:
            return None
        if current is not None and current.capacity == need:
            return current
        try:
            return CacheRegion.create(need)
        except OSError as exc:
            log(f"proxy-cache: no node-wide store ({exc}); each worker keeps its own answers")
            return None

    def _on_sighup(self) -> None:
        log("SIGHUP: reloading " + self.config_path)
        self.reload()

    # ----------------------------------------------------------------- stats + admin

    def _start_stats_and_admin(self, cfg: Any) -> None:
        """Create the shared-memory regions (stats; the node's replay set and rate-limit
        counters) and start the admin listener, when those modules exist.

        ``fastgw.stats`` and ``fastgw.admin`` are optional here so that the process
        model runs on its own; every other part of the supervisor is independent of them.
        """
        from fastgw.shared import SharedRegion

        # One per node for the supervisor's life: every worker and every later generation
        # attaches the same tables, so a signature is used once and a limit holds for the
        # node, whatever worker sees the request.
        self.shared_region = SharedRegion.create()
        self.cache_region = self._cache_region_for(cfg)
        try:
            from fastgw import stats as fstats
        except ImportError:
            fstats = None  # type: ignore[assignment]
        enabled = (getattr(cfg, "stats", None) or {}).get("enabled", True)
        if enabled and fstats is not None and hasattr(fstats, "StatsRegion"):
            # Room for as many workers as CPUs, so a reload may raise the count (the file is sparse).
            capacity = max(self._worker_count(cfg), os.cpu_count() or 1)
            self.stats_region = fstats.StatsRegion.create(cfg, workers=capacity)
            self.stats_name = getattr(self.stats_region, "name", None)
        try:
            from fastgw import admin as fadmin
        except ImportError:
            fadmin = None  # type: ignore[assignment]
        if fadmin is not None and hasattr(fadmin, "AdminServer") and getattr(cfg, "admin", None):
            self.admin = fadmin.AdminServer(self, cfg)

    def _on_config_changed(self, cfg: Any) -> None:
        for part in (self.stats_region, self.admin):
            hook = getattr(part, "update_config", None)
            if hook is not None:
                hook(cfg)

    async def _close_stats_and_admin(self) -> None:
        for part in (self.admin, self.stats_region, self.shared_region, self.cache_region):
            close = getattr(part, "close", None)
            if close is not None:
                result = close()
                if asyncio.iscoroutine(result):
                    await result

    # ----------------------------------------------------------------- life cycle

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log(f"internal error: {type(exc).__name__}: {exc}")

    def _on_stop_signal(self, signum: int) -> None:
        assert self._stop_event is not None
        name = signal.Signals(signum).name
        if self._stop_event.is_set():
            if signum != signal.SIGINT:
                log(f"{name}: already stopping")
                return
            # A second Ctrl-C is a person who does not want to wait for the drain.
            log(f"{name} again: killing workers now")
            for worker in list(self.all_workers):
                worker.signal(signal.SIGKILL)
            return
        log(f"{name}: stopping (drain timeout {self.drain_timeout:g}s)")
        self._stop_event.set()

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        cfg, errors = self._load()
        if errors:
            for line in errors:
                log(f"config error: {line}")
            return 1
        self.config = cfg
        self.addresses = self._addresses(cfg)
        count = self._worker_count(cfg)
        errors = self._ensure_sockets(self.addresses, count)
        if errors:
            for line in errors:
                log(line)
            self._close_unused_sockets([], 0)
            self._forget_all()
            return 1
        try:
            self._start_stats_and_admin(cfg)
            if self.admin is not None and hasattr(self.admin, "start"):
                await self.admin.start()
        except Exception as exc:
            log(f"cannot start stats/admin: {type(exc).__name__}: {exc}")
            await self._close_stats_and_admin()
            self._close_unused_sockets([], 0)
            self._forget_all()
            return 1
        loop = self._loop
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        self.generation = 1
        self.current = [None] * count
        self.fail_counts = [0] * count
        started = await self._start_generation(count, self.generation)
        if started is None:
            log("workers failed to start; exiting")
            await self._shutdown()
            return 1
        self.current = list(started)
        where = ", ".join(f"{h}:{p}" for h, p in self.bound_addresses())
        pids = " ".join(str(w.pid) for w in started)
        log(f"serving: {count} workers on {where} (pids {pids}; {len(getattr(cfg, 'routes', ()))} routes)")
        if self.on_serving is not None:
            self.on_serving()
        await self._stop_event.wait()
        await self._shutdown()
        log("stopped")
        return 0

    async def _shutdown(self) -> None:
        self.stopping = True
        workers = list(self.all_workers)
        for worker in workers:
            worker.retiring = True
            worker.signal(signal.SIGTERM)
        if workers:
            waits = [asyncio.ensure_future(w.exited.wait()) for w in workers]
            _, pending = await asyncio.wait(waits, timeout=self.drain_timeout)
            if pending:
                for worker in workers:
                    if worker.alive:
                        log(f"worker {worker.slot} pid {worker.pid} still running after drain timeout; SIGKILL")
                        worker.signal(signal.SIGKILL)
                await asyncio.wait(pending, timeout=5.0)
        for task in list(self._tasks):
            task.cancel()
        await self._close_stats_and_admin()
        self._close_unused_sockets([], 0)
        self._forget_all()
        if self._loop is not None:
            for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                self._loop.remove_signal_handler(signum)


def run(config_path: str, workers: int | None = None, worker_cmd: list[str] | None = None) -> int:
    """Run a supervisor on a uvloop loop until it is stopped; returns the exit code."""
    import uvloop

    return uvloop.run(Supervisor(config_path, workers, worker_cmd).serve())
