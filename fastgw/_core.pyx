# cython: language_level=3
"""fastgw's hot path, compiled as one C module from included parts (as uvloop does).

- ``_structs.pxi``: small containers for per-connection objects (no hashing, no resizing).
- ``_shm.pxi``:    the atomics of the tables in the node's shared region.
- ``_router.pxi``: path normalization, the trie router, backend-path templates.
- ``_http.pxi``:   one-pass HTTP/1.1 head scanners, chunked framing, head builders.
- ``_stats.pxi``:  the per-worker writer into the shared-memory stats ring.
- ``_context.pxi``: the per-request context that plugins see.
- ``_plugins.pxi``: the compiled plugin chain and the built-in plugins' C parts.
- ``_marks.pxi``:  the node's passive marks: targets passed over, shared by its workers.
- ``_proxy.pxi``:  the client/upstream connection state machines, pools, timer wheel.
- ``_poller.pxi``: plain-TCP client sockets on an epoll set of our own (no uvloop transport).
- ``_log.pxi``:    the access-log JSON-lines formatter.
- ``_replay.pxi``: the node-wide set of used tokens in shared memory (hmac-auth's replay guard).
- ``_counters.pxi``: the node-wide rate-limit counters in shared memory.
- ``_ratelimit.pxi``: rate-limiting's request phase over those counters.
- ``_cache.pxi``:  lock-free lookups in proxy-cache's node store (shared memory).
- ``_jwt.pxi``:    jwt's request phase for a token the worker has verified before.
"""

include "_structs.pxi"
include "_shm.pxi"
include "_router.pxi"
include "_http.pxi"
include "_stats.pxi"
include "_log.pxi"
include "_context.pxi"
include "_plugins.pxi"
include "_marks.pxi"
include "_proxy.pxi"
include "_poller.pxi"
include "_replay.pxi"
include "_counters.pxi"
include "_ratelimit.pxi"
include "_cache.pxi"
include "_jwt.pxi"
