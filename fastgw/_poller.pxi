# part of fastgw/_core.pyx (see its docstring)
#
# Client connections on plain-TCP listeners without uvloop transports.
#
# uvloop pays, per accepted connection, a TCPTransport with getsockname + getpeername +
# setsockopt(TCP_NODELAY) syscalls, a Python WeakValueDictionary entry (interpreted code),
# a pseudo-socket and a call_soon for connection_made; and per read, its stream machinery
# and a context switch into the protocol. Here one epoll set of our own is registered once
# with the loop (``loop.add_reader(epfd)``): when it is readable, ``Poller._ready`` drains
# it and dispatches in C — accept4 (the peer address comes with it; TCP_NODELAY is
# inherited from the listener), recv into one shared buffer, send straight from the
# caller's bytes. FdTransport offers the asyncio.Transport subset the protocols use
# (write, pause/resume_reading, close, abort, is_closing, get_extra_info("peername"), flow control
# through the protocol's pause_writing/resume_writing), with asyncio's order of callbacks:
# connection_lost comes from the loop, after close() has returned.
#
# Upstream connections to an IP-literal target without TLS run here too (non-blocking
# connect, completion on EPOLLOUT, SO_ERROR); TLS and host-name targets, and TLS
# listeners, stay on uvloop transports.

from cpython.ref cimport Py_DECREF
from posix.unistd cimport close as _c_close

cdef extern from "<sys/types.h>" nogil:
    ctypedef long ssize_t

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        unsigned long long u64
    cdef struct epoll_event:
        unsigned int events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    int EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL
    unsigned int EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLET, EPOLLRDHUP

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    cdef struct sockaddr:
        unsigned short sa_family
    cdef struct sockaddr_storage:
        unsigned short ss_family
    int accept4(int fd, sockaddr* addr, socklen_t* addrlen, int flags)
    int getsockopt(int fd, int level, int name, void* val, socklen_t* vlen)
    int SOL_SOCKET, SO_ERROR
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    cdef struct iovec "iovec":
        void* iov_base
        size_t iov_len
    cdef struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    int shutdown(int fd, int how)
    int SOCK_NONBLOCK, SOCK_CLOEXEC, MSG_NOSIGNAL, MSG_MORE, AF_INET, AF_INET6, SHUT_WR

cdef extern from "<netinet/in.h>" nogil:
    cdef struct in_addr:
        pass
    cdef struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    cdef struct in6_addr:
        pass
    cdef struct sockaddr_in6:
        unsigned short sin6_family
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        in6_addr sin6_addr
        unsigned int sin6_scope_id
    unsigned short ntohs(unsigned short)

cdef extern from "<arpa/inet.h>" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)

cdef extern from "<errno.h>" nogil:
    int errno
    int EAGAIN, EWOULDBLOCK, EINTR, EMFILE, ENFILE, ENOBUFS, ENOMEM, ECONNABORTED, EINPROGRESS

DEF POLL_BATCH = 256
DEF READ_BURST = 16          # reads in a row from one socket before the others get their turn
DEF READ_SIZE = 262144
DEF ACCEPT_BATCH = 64
DEF WRITE_HIGH = 65536
DEF WRITE_LOW = 16384

cdef object _os_error(int err):
    return OSError(err, _os.strerror(err))


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class Poller:
    """One epoll set per worker for the client side of plain-TCP listeners."""

    cdef int epfd
    cdef object loop
    cdef char* rbuf                  # PERF: one receive buffer for every connection
    cdef Py_ssize_t read_size        # its size: at most this much per recv
    cdef set listeners               # registered listeners (strong refs)
    cdef list lost                   # transports closed since the last _run_lost
    cdef epoll_event events[POLL_BATCH]

    def __cinit__(self):
        self.epfd = -1
        self.rbuf = NULL

    def __init__(self, loop, Py_ssize_t read_size=READ_SIZE):
        """``read_size``: bytes per recv (tests make it small to see the reads split)."""
        if read_size <= 0:
            raise ValueError("read_size must be positive")
        self.loop = loop
        self.listeners = set()
        self.lost = []
        self.read_size = read_size
        self.rbuf = <char*>malloc(read_size)
        if self.rbuf == NULL:
            raise MemoryError()
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise _os_error(errno)
        loop.add_reader(self.epfd, self._ready)

    def __dealloc__(self):
        if self.rbuf != NULL:
            free(self.rbuf)
        if self.epfd >= 0:
            _c_close(self.epfd)

    def close(self):
        """Stop polling (the worker is done); registered fds are the owners' to close."""
        if self.epfd >= 0:
            self.loop.remove_reader(self.epfd)
            _c_close(self.epfd)
            self.epfd = -1

    cdef int _set(self, int fd, unsigned int mask, int op, object owner) except -1:
        cdef epoll_event ev
        ev.events = mask
        ev.data.ptr = <void*>owner
        if epoll_ctl(self.epfd, op, fd, &ev) < 0:
            raise _os_error(errno)
        return 0

    cdef int _lost_later(self, FdTransport tr, object exc) except -1:
        if not self.lost:
            self.loop.call_soon(self._run_lost)
        tr.lost_exc = exc
        self.lost.append(tr)
        return 0

    def _run_lost(self):
        """connection_lost for the transports closed since the last turn, in close order."""
        cdef FdTransport tr
        batch, self.lost = self.lost, []      # closed from here on: the next turn's batch
        for tr in batch:
            try:
                tr._lost()
            except Exception as exc:
                self.loop.call_exception_handler({"message": "connection_lost failed", "exception": exc})

    def _ready(self):
        """The epoll set is readable: dispatch what is ready.

        PERF: connections are edge-triggered (listeners level-triggered). A level-triggered
        socket goes back on the ready list each time it is reported, so the next poll of
        this set, and uvloop's poll of the set itself, look at it once more to drop it: a
        sampled profile of the plain scenario spent 3.2% of the worker's core in the epoll
        functions with level-triggered sockets, 2.2% edge-triggered (nginx: 1.2%). What it
        asks of the reads: FdTransport._read."""
        cdef int n, i
        cdef unsigned int ev
        cdef object obj
        if self.epfd < 0:
            return
        n = epoll_wait(self.epfd, self.events, POLL_BATCH, 0)
        if n <= 0:
            return          # EINTR: the loop calls again while the set stays readable
        _turn_begin()       # one clock reading for the requests of this turn (_mono)
        try:
            for i in range(n):
                # The object stays alive for the whole batch: its registration's reference is
                # dropped only from a callback the loop runs later (FdTransport._lost).
                obj = <object>self.events[i].data.ptr
                ev = self.events[i].events
                if type(obj) is FdTransport:
                    (<FdTransport>obj)._on_events(ev)
                else:
                    (<Listener>obj)._accept()
        finally:
            _turn_end()


@cython.final  # PERF: its methods are called directly (no vtable)
cdef class Listener:
    """A plain-TCP listening socket served through the Poller."""

    cdef Poller poller
    cdef object sock                 # the socket.socket (owns the fd)
    cdef int fd
    cdef ClientFactory factory
    cdef bint active
    cdef object _retry

    def __init__(self, Poller poller, sock, ClientFactory factory, int backlog=4096):
        self.poller = poller
        self.sock = sock
        self.factory = factory
        sock.setblocking(False)
        # Accepted sockets inherit TCP_NODELAY from the listener (no setsockopt each).
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        sock.listen(backlog)
        self.fd = sock.fileno()
        self._start()

    cdef void _start(self):
        self._retry = None
        if not self.active and self.poller.epfd >= 0:
            self.poller._set(self.fd, EPOLLIN, EPOLL_CTL_ADD, self)
            self.poller.listeners.add(self)
            self.active = True

    cdef void _stop(self):
        cdef epoll_event ev
        if self.active:
            self.active = False
            if self.poller.epfd >= 0:
                epoll_ctl(self.poller.epfd, EPOLL_CTL_DEL, self.fd, &ev)
            self.poller.listeners.discard(self)

    def close(self):
        """Stop accepting (the socket itself is closed by its owner)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._stop()

    def _resume(self):
        self._start()

    cdef void _accept(self):
        cdef sockaddr_storage addr
        cdef socklen_t alen
        cdef int cfd, k, err
        cdef FdTransport tr
        cdef ClientConnection conn
        for k in range(ACCEPT_BATCH):
            alen = sizeof(addr)
            cfd = accept4(self.fd, <sockaddr*>&addr, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if cfd < 0:
                err = errno
                if err == EAGAIN or err == EWOULDBLOCK or err == EINTR or err == ECONNABORTED:
                    return
                if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                    # Out of descriptors: stop accepting for a moment instead of spinning
                    # on a level-triggered listener (pending clients wait in the backlog).
                    _log.warning("accept failed (%s); pausing accepts for 0.5 s", _os.strerror(err))
                    self._stop()
                    self._retry = self.poller.loop.call_later(0.5, self._resume)
                    return
                _log.error("accept failed: %s", _os.strerror(err))
                return
            conn = self.factory.make()
            tr = FdTransport.__new__(FdTransport)
            ip = _peer_ip(&addr)
            tr._init(self.poller, cfd, conn, None, False)
            tr.addr = addr
            conn._made(tr, ip)
            # PERF: the request is usually here already (the listening sockets defer
            # accepts until data comes: workers.open_listener): read it now rather than
            # after another epoll round (EAGAIN costs one recv and nothing else).
            if tr.reading and not tr.closed:
                tr._read(False)     # a FIN that came with the request: reported on registering
            if tr.closed:
                continue
            # PERF: the socket joins the epoll set only now, and not at all when what was
            # read is a whole last request (Connection: close, nothing after it): nothing
            # more is read from such a client, so a connection answered at once with one
            # send never costs an epoll_ctl (nor its removal at close). A write that does
            # not finish registers for EPOLLOUT as usual; resume_reading() registers for
            # reads. Not seen meanwhile: a client's half-close (answered anyway, as now)
            # and its reset (seen by the answer's send).
            if tr.reading and conn._last_request_in():
                tr.reading = False
            tr._update()


cdef bytes _peer_ip(sockaddr_storage* addr):
    """The peer's address as text; an IPv4-mapped IPv6 one as IPv4 (as the server logs it).
    PERF: IPv4 is formatted here (inet_ntop goes through sprintf, ~1 700 instructions)."""
    cdef char text[64]
    cdef const unsigned char* b
    cdef sockaddr_in6* a6
    cdef int i, k = 0, v
    if addr.ss_family == AF_INET:
        b = <const unsigned char*>&(<sockaddr_in*>addr).sin_addr
    elif addr.ss_family == AF_INET6:
        a6 = <sockaddr_in6*>addr
        inet_ntop(AF_INET6, &a6.sin6_addr, text, sizeof(text))
        return PyUnicode_AsASCIIString(_unmapped(text.decode("ascii")))
    else:
        return b"127.0.0.1"
    for i in range(4):
        v = b[i]
        if v >= 100:
            text[k] = <char>(48 + v // 100)
            k += 1
        if v >= 10:
            text[k] = <char>(48 + (v // 10) % 10)
            k += 1
        text[k] = <char>(48 + v % 10)
        k += 1
        text[k] = 46
        k += 1
    return PyBytes_FromStringAndSize(text, k - 1)


cdef object _peer_tuple(const sockaddr_storage* addr):
    """What asyncio's get_extra_info("peername") gives for ``addr``."""
    cdef char text[64]
    cdef const sockaddr_in* a4
    cdef const sockaddr_in6* a6
    if addr.ss_family == AF_INET:
        a4 = <const sockaddr_in*>addr
        inet_ntop(AF_INET, &a4.sin_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs(a4.sin_port))
    if addr.ss_family == AF_INET6:
        a6 = <const sockaddr_in6*>addr
        inet_ntop(AF_INET6, &a6.sin6_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs(a6.sin6_port), a6.sin6_flowinfo, a6.sin6_scope_id)
    return None


@cython.final  # PERF: its methods are called directly (no vtable)
@cython.freelist(64)  # PERF: one per connection with keep-alive off; no malloc and GC link each
cdef class FdTransport:
    """A client connection's socket driven by the Poller (see the module comment)."""

    cdef Poller poller
    cdef int fd
    cdef Timed proto                 # a ClientConnection or an UpstreamConnection
    cdef object peer                 # peername tuple; None: made from addr on first ask
    cdef sockaddr_storage addr       # an accepted connection's peer (ss_family 0: unset)
    cdef list wbuf                   # bytes not yet sent, in order
    cdef Py_ssize_t wsize
    cdef unsigned int mask           # the events registered (0: not in the epoll set)
    cdef bint reading
    # PERF: pausing reading leaves the socket in the epoll set (as nginx never takes an
    # edge-triggered socket out): two epoll_ctl calls saved per pause, e.g. a request whose
    # plugin waits on Redis. An edge that comes meanwhile is noted in ``missed`` and read
    # on resume, as are bytes the last read left (``drained`` false).
    cdef unsigned int missed         # input events reported while reading was paused
    cdef bint drained                # the last read emptied the socket (a new byte is a new edge)
    cdef bint closing                # close() called: no more reads; close once flushed
    cdef bint eof_pending            # write_eof() called: half-close once flushed
    cdef bint closed                 # the fd is closed; connection_lost is scheduled
    cdef bint write_paused           # the protocol was told pause_writing()
    cdef bint connecting             # an outgoing connect in progress (waits for EPOLLOUT)
    cdef bint made                   # connection_made was called
    cdef object lost_exc             # for connection_lost, once closed
    cdef bint held                   # holds a reference to itself (registered, not yet lost)

    cdef void _init(self, Poller poller, int fd, Timed proto, object peer, bint register) noexcept:
        self.poller = poller
        self.fd = fd
        self.proto = proto
        self.peer = peer
        self.reading = True
        self.made = True
        self.wsize = 0
        self._hold()
        if register:
            self._update()

    @staticmethod
    def connect(Poller poller, int family, tuple addr, Timed proto):
        """Start a non-blocking connect to ``addr`` for ``proto`` (an UpstreamConnection):
        later, from the loop, ``proto.connection_made(transport)`` or
        ``proto._connect_failed(exc)``. Returns the transport (``abort()`` cancels)."""
        cdef FdTransport tr = FdTransport.__new__(FdTransport)
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
        except OSError as exc:
            sock.close()
            poller.loop.call_soon(proto._connect_failed, exc)
            return None
        tr.poller = poller
        tr.proto = proto
        tr.peer = addr
        tr.fd = sock.detach()
        tr.connecting = True
        tr._hold()
        if err != 0 and err != EINPROGRESS:
            tr._close_now(_os_error(err))
            return tr
        # Even a connect done at once is reported by EPOLLOUT on the next poll: the
        # caller has returned by then.
        tr._update()
        return tr

    cdef void _connected(self) noexcept:
        cdef int err = 0
        cdef socklen_t n = sizeof(err)
        if getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &err, &n) < 0:
            err = errno
        if err != 0:
            self._close_now(_os_error(err))
            return
        self.connecting = False
        self.reading = True
        self.made = True
        self._update()
        try:
            self.proto.connection_made(self)
        except Exception as exc:
            self._fatal(exc)

    cdef void _update(self) noexcept:
        """Register the events this transport waits for (none: out of the set)."""
        cdef unsigned int want = 0
        cdef epoll_event ev
        cdef int op
        if self.closed or self.poller.epfd < 0:
            return
        if self.reading:
            want |= EPOLLIN | EPOLLRDHUP     # RDHUP: the peer's FIN may come with the last bytes (_read)
        if self.wbuf or self.connecting:
            want |= EPOLLOUT
        if want == self.mask:
            return
        if want == 0:
            # PERF/correctness: out of the set, or a peer hang-up would be reported forever.
            epoll_ctl(self.poller.epfd, EPOLL_CTL_DEL, self.fd, &ev)
        else:
            op = EPOLL_CTL_ADD if self.mask == 0 else EPOLL_CTL_MOD
            # Edge-triggered: reported when something new happens, not again at every poll
            # while it lasts (see _read). ADD and MOD look at the socket as it is, so a
            # socket registered or re-armed with bytes already waiting is reported at once.
            ev.events = want | EPOLLET
            ev.data.ptr = <void*>self
            if epoll_ctl(self.poller.epfd, op, self.fd, &ev) < 0:
                self._fatal(_os_error(errno))
                return
        self.mask = want

    cdef void _on_events(self, unsigned int ev) noexcept:
        if self.closed:
            return
        if self.connecting:
            if ev & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                self._connected()
            return
        if ev & (EPOLLOUT | EPOLLERR) and self.wbuf:
            self._flush()
        if self.closed:
            return
        if ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            if self.reading:
                self._read(ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR) != 0)
            else:
                self.missed |= ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)

    cdef void _read(self, bint to_end) noexcept:
        """Read what the socket holds. The socket is edge-triggered, so it is not reported
        again for what is already there: a recv that fills the buffer is followed by another
        (a shorter one has emptied the socket of bytes; anything after it is a new edge);
        ``to_end`` (the peer's FIN, or an error, was reported: it may have come in the same
        edge as the last bytes) reads on until recv says so; EINTR is retried; and a
        protocol that pauses reading meanwhile is reported again when it resumes (the
        re-arming epoll_ctl looks at the socket). After READ_BURST full reads in a row the
        rest is read from a loop callback, so that a fast stream does not keep the other
        connections waiting (no edge would come for what is left)."""
        cdef ssize_t n
        cdef int err, reads = 0
        self.missed = 0
        while True:
            n = recv(self.fd, self.poller.rbuf, self.poller.read_size, 0)
            if n > 0:
                self.drained = n < self.poller.read_size and not to_end
                self.proto._on_data(PyBytes_FromStringAndSize(self.poller.rbuf, n))
                if self.drained or not self.reading or self.closed:
                    return
                reads += 1
                if reads == READ_BURST:
                    self.poller.loop.call_soon(self._read_on, to_end)
                    return
            elif n == 0:
                self.drained = True
                self.reading = False
                self._update()
                try:
                    keep_open = self.proto.eof_received()
                except Exception as exc:
                    self._fatal(exc)
                    return
                if not keep_open:
                    self.close()
                return
            else:
                err = errno
                if err == EINTR:
                    continue
                self.drained = True
                if err != EAGAIN and err != EWOULDBLOCK:
                    self._fatal(_os_error(err))
                return

    def _read_on(self, bint to_end):
        """The rest of a read cut short by READ_BURST (see _read)."""
        if self.reading and not self.closed:
            self._read(to_end)

    cdef void _flush(self) noexcept:
        cdef bytes data
        cdef ssize_t n
        cdef int err
        while self.wbuf:
            data = <bytes>self.wbuf[0]
            n = send(self.fd, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), MSG_NOSIGNAL)
            if n < 0:
                err = errno
                if err == EAGAIN or err == EWOULDBLOCK or err == EINTR:
                    break
                self._fatal(_os_error(err))
                return
            self.wsize -= n
            if n < PyBytes_GET_SIZE(data):
                self.wbuf[0] = data[n:]
                break
            del self.wbuf[0]
        self._update()
        if self.write_paused and self.wsize <= WRITE_LOW:
            self.write_paused = False
            self.proto.resume_writing()
        if self.closing and not self.wbuf:
            self._close_now(None)
        elif self.eof_pending and not self.wbuf and not self.closed:
            self._shutdown_write()

    # -- the asyncio.Transport subset ---------------------------------------------------
    cdef inline Py_ssize_t _send_first(self, const char* p, Py_ssize_t size, int more) except -2:
        """A write's first step. -1: nothing to queue (no bytes, closing or closed, all
        sent, or a failed send that closed the transport); else how many of the bytes
        went out (0 while earlier ones wait: these queue behind them). PERF: the common
        case is one send() straight from the caller's memory."""
        cdef ssize_t n
        if self.closing or self.closed or size == 0:
            return -1
        if self.connecting:
            raise RuntimeError("write before connection_made")
        if self.wbuf:
            return 0
        n = send(self.fd, p, size, MSG_NOSIGNAL | more)
        if n == size or (n < 0 and self._send_failed()):
            return -1
        return n if n > 0 else 0

    cdef inline int _queue(self, bytes rest) except -1:
        """Queue ``rest`` (what a write did not send) behind anything waiting."""
        if self.wbuf:
            self.wbuf.append(rest)
        else:
            self.wbuf = [rest]
        return self._queued(PyBytes_GET_SIZE(rest))

    cpdef write(self, bytes data):
        self.write_end(data, False)

    cdef inline int write_end(self, bytes data, bint last) except -1:
        """``write``; ``last``: the connection's last bytes, and the caller calls close() or
        write_eof() right after, in the same turn. PERF: sent with MSG_MORE, the bytes wait
        in the kernel for that FIN and leave with it in one segment (else the FIN is a
        segment of its own, and the client acknowledges the data apart: with keep-alive off
        that was a fifth of a connection's CPU). Whatever a partial send leaves is queued
        and sent without the flag, which pushes the rest."""
        cdef Py_ssize_t n = self._send_first(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                                             MSG_MORE if last else 0)
        if n >= 0:
            self._queue(data[n:] if n else data)
        return 0

    cdef int write_from(self, const char* p, Py_ssize_t size, bint last) except -1:
        """``write`` of bytes the caller owns only until this returns (a reused buffer): sent
        straight from there, copied only when they do not all go out at once (PERF: the
        response head of a request is never a bytes object of its own). ``last``: the
        connection's last bytes, as write_end."""
        cdef Py_ssize_t n = self._send_first(p, size, MSG_MORE if last else 0)
        if n >= 0:
            self._queue(PyBytes_FromStringAndSize(p + n, size - n))
        return 0

    def write_buffer(self, data):
        """``write`` of a buffer the caller may change once this returns (what the server
        does with its reused response buffer; for tests and tools)."""
        cdef const unsigned char[:] view = data
        if view.shape[0]:
            self.write_from(<const char*>&view[0], view.shape[0], False)

    cpdef write2(self, bytes a, bytes b):
        """``write(a + b)`` without making ``a + b``: one sendmsg with two pieces (PERF: a
        request head and the body bytes that came with it, no copy of the body)."""
        cdef ssize_t n = 0
        cdef Py_ssize_t na = PyBytes_GET_SIZE(a), nb = PyBytes_GET_SIZE(b)
        cdef iovec iov[2]
        cdef msghdr msg
        if nb == 0 or self.wbuf or self.connecting:
            self.write(a)
            self.write(b)
            return
        if self.closing or self.closed:
            return
        iov[0].iov_base = <void*>PyBytes_AS_STRING(a)
        iov[0].iov_len = na
        iov[1].iov_base = <void*>PyBytes_AS_STRING(b)
        iov[1].iov_len = nb
        memset(&msg, 0, sizeof(msg))
        msg.msg_iov = iov
        msg.msg_iovlen = 2
        n = sendmsg(self.fd, &msg, MSG_NOSIGNAL)
        if n == na + nb or (n < 0 and self._send_failed()):
            return
        if n < 0:
            n = 0
        # Partly sent: queue the rest as write() would.
        if n < na:
            self.wbuf = [a[n:] if n else a, b]
        else:
            self.wbuf = [b[n - na:] if n > na else b]
        self._queued(na + nb - n)

    cdef bint _send_failed(self) noexcept:
        """After a send that returned -1: True (the transport is then closed) unless it
        was only full or interrupted."""
        cdef int err = errno
        if err == EAGAIN or err == EWOULDBLOCK or err == EINTR:
            return False
        self._fatal(_os_error(err))
        return True

    cdef int _queued(self, Py_ssize_t unsent) except -1:
        """``unsent`` more bytes wait in wbuf: poll for EPOLLOUT, and pause the protocol
        above the high-water mark."""
        self.wsize += unsent
        self._update()
        if not self.write_paused and self.wsize > WRITE_HIGH:
            self.write_paused = True
            self.proto.pause_writing()
        return 0

    def can_write_eof(self):
        return True

    cpdef write_eof(self):
        """Half-close (shutdown SHUT_WR) once what is queued has gone out; reads go on."""
        if self.closing or self.closed or self.eof_pending:
            return
        self.eof_pending = True
        if not self.wbuf:
            self._shutdown_write()

    cdef void _shutdown_write(self) noexcept:
        # The fd stays open and readable; ENOTCONN (the peer reset) is seen by the next recv.
        shutdown(self.fd, SHUT_WR)

    cpdef pause_reading(self):
        # Still registered for input (see ``missed``); the next _update for another reason
        # takes it out.
        if self.reading and not self.closing:
            self.reading = False

    cpdef resume_reading(self):
        if not self.reading and not self.closing and not self.closed:
            self.reading = True
            if not (self.mask & EPOLLIN):
                self.missed = 0
                self._update()          # re-armed: bytes already waiting are reported at once
            elif self.missed or not self.drained:
                # As uvloop's resume_reading, no data is delivered from inside this call.
                # ``missed`` is cleared by the read itself: paused again before it runs,
                # the next resume still knows.
                self.poller.loop.call_soon(self._read_on, (self.missed & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0)

    def is_closing(self):
        return self.closing or self.closed

    def get_extra_info(self, name, default=None):
        if name != "peername":
            return default
        if self.peer is None and self.addr.ss_family != 0:
            self.peer = _peer_tuple(&self.addr)
        return self.peer

    cpdef close(self):
        if self.closing or self.closed:
            return
        self.closing = True
        self.reading = False
        if not self.wbuf:
            self._close_now(None)
        else:
            self._update()

    def abort(self):
        self._close_now(None)

    cdef void _fatal(self, exc) noexcept:
        self._close_now(exc)

    cdef void _close_now(self, exc) noexcept:
        if self.closed:
            return
        self.closed = True
        self.closing = True
        self.reading = False
        self.wbuf = None
        self.wsize = 0
        self.mask = 0
        _c_close(self.fd)       # PERF: close() takes the fd out of the epoll set (no DEL call)
        self.fd = -1
        # As asyncio: connection_lost comes from the loop, after the caller returned.
        # PERF: one loop callback for every transport closed in the same turn (a call_soon
        # each cost ~4 000 instructions of uvloop handle and idle machinery per connection).
        self.poller._lost_later(self, exc)

    cdef inline void _hold(self) noexcept:
        """Hold a reference to itself while registered (epoll's data.ptr); _lost drops it.
        PERF: instead of a set add and discard per connection."""
        Py_INCREF(self)
        self.held = True

    cdef int _lost(self) except -1:
        """connection_lost, from the loop (Poller._run_lost holds a reference meanwhile)."""
        cdef Timed proto = self.proto
        exc, self.lost_exc = self.lost_exc, None
        if self.held:
            self.held = False
            Py_DECREF(self)     # the reference _hold took
        if proto is None:
            return 0
        self.proto = None
        if self.made:
            proto._transport_lost(exc)
        else:
            proto._connect_failed(exc)   # never connected (exc None: cancelled)
        return 0

    def __repr__(self):
        return f"<FdTransport fd={self.fd} peer={self.peer!r}>"
