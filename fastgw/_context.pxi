# part of fastgw/_core.pyx (see its docstring)
#
# The per-request context that plugins see (``fastgw.context.RequestContext``). It is a
# cdef class so that the server builds it with C field stores (no keyword __init__, no
# dict) and the compiled step chain (_plugins.pxi) reads and writes it without attribute
# lookups; Python plugins use it exactly as a class with these attributes and methods.
#
# Headers are kept as the server parsed them: a list of ``(name, value)`` byte pairs in
# arrival order (names in their original case). The request list is forwarded to the
# backend after the request phase, so a plugin changes what the backend sees by editing it
# through the helpers below. The plain path (no plugins) never builds a context.
#
# Lazy mode (PERF): when every step of a route's chain is a built-in C step (compile.py
# sets Route.ctx_lazy), the list is never made. Those steps find, remove and add request
# headers through the C methods below, which work on the scanned RequestHead (removals are
# marked on it) plus a short list of added pairs, and build_upstream_head copies the head
# from the scan offsets as on the plain path. Reading ``ctx.headers`` makes the list from
# that state, after which everything works on the list, so the two modes cannot disagree.

DEF CTX_ANSWERED = 1


cdef inline bytes _ctx_b(value):
    """A plugin's header name, value or query as bytes: a str as Latin-1 (a header value
    read from the request, decoded Latin-1, goes back as the same bytes), or as UTF-8 when
    it holds a character Latin-1 has not (such a request got a 500 before). Settings
    templates give bytes already (Template.render_header)."""
    if type(value) is bytes:
        return value
    try:
        return (<str>value).encode("latin-1")
    except UnicodeEncodeError:
        return (<str>value).encode("utf-8")


_CTX_CONTROL = dict.fromkeys([*range(0, 32), 127])


cdef bytes _ctx_clean(str value):
    return value.translate(_CTX_CONTROL).encode("utf-8")


cdef class Consumer:
    """An authenticated caller: ``name`` and ``groups`` (from the config's ``consumers``).

    PERF: a cdef class, so the chain and the access log read ``name`` and ``headers`` with
    C loads (a __slots__ attribute cost ~140 instructions per read from C)."""

    cdef public str name
    cdef public tuple groups
    cdef public dict data
    cdef public tuple headers     # the identity headers sent to the backend

    def __init__(self, str name, groups=(), data=None):
        self.name = name
        self.groups = tuple(groups)
        self.data = data or {}
        # PERF: the identity headers for the backend are built once per consumer.
        # SECURITY: control characters are dropped (a name may come from a token claim).
        self.headers = (
            (b"X-Consumer-Name", _ctx_clean(name)),
            (b"X-Consumer-Groups", _ctx_clean(",".join(self.groups))),
        )

    def __repr__(self):
        return f"Consumer({self.name!r}, groups={self.groups!r})"


cdef inline object consumer_name(object consumer):
    """The name of ``ctx.consumer`` (a Consumer, or whatever a custom plugin put there)."""
    if consumer is None:
        return None
    if type(consumer) is Consumer:
        return (<Consumer>consumer).name
    return getattr(consumer, "name", None)


cdef class RequestContext:
    """One request's view for plugins: request data, the answer, and the response."""

    cdef public object method            # str
    cdef object _path                    # see the path property
    cdef bytes _path_b                   # the path as bytes until its str is asked for
    cdef public object query             # raw query string bytes, without '?'
    cdef object _headers                 # see the headers property (None in lazy mode)
    cdef RequestHead _head               # lazy mode: the scanned head the headers are on
    cdef bytes _head_buf                 # lazy mode: _head.buf when this request was scanned
    cdef list _added                     # lazy mode: pairs added by steps, after the head's
    cdef public object client_ip         # the caller (peer, or from trusted X-Forwarded-For)
    cdef public object peer_ip           # the TCP peer
    cdef public object scheme
    cdef public object route
    cdef public object values            # path-variable values (bytes) in route.param_names order
    cdef object _request_id              # see the request_id property
    cdef public object http_version
    cdef public object consumer          # Consumer once authenticated, else None
    cdef public object upstream_path     # set to override the backend path (+query)
    cdef public int answer_status        # > 0 once a plugin answered
    cdef object _answer_headers          # see the answer_headers property
    cdef public object answer_body
    cdef public int status               # response status (backend's or the answer's)
    cdef object _response_headers        # see the response_headers property
    cdef public object response_headers_add  # added to whatever answer goes out
    cdef public long long bytes_in
    cdef public long long bytes_out
    cdef public double start_time
    cdef public double upstream_time
    cdef public long long body_size      # Content-Length of the request, -1 if unknown/chunked
    cdef public object body              # buffered request body, only when pipeline.needs_body
    cdef public bint body_replaced       # replace_body was called: the backend gets ``body``
    # Set in the request phase by a plugin that wants the backend's answer whole (proxy-cache):
    # an object with ``start(status, headers, content_length) -> bool`` (headers: the backend's
    # end-to-end fields as (name, value) bytes pairs, before any response plugin edits them)
    # and ``finish(body)``, called once the whole body has been passed on to the client (not
    # when the exchange breaks off). Answers with a body to a request other than HEAD are
    # offered: framed by Content-Length, or chunked with content_length -1, whose decoded
    # payload is collected up to the object's ``max_answer`` bytes (more, or trailer fields,
    # and ``finish`` is not called). ``start`` returning False declines the answer. When the
    # backend gives no answer (refused, closed, timed out) or a 500/502/503/504 and the
    # object has ``upstream_failed(ctx) -> bool``, it may answer instead (ctx.answer, then True).
    cdef public object response_tap
    # Set in the request phase by a plugin that rewrites answer bodies (response-transformer):
    # an object with ``start(status, headers, content_length) -> bool`` (headers: the answer's
    # end-to-end fields after the response plugins) and ``rewrite(body) -> bytes``. An answer
    # it takes is held (head and body) until the body is whole, then sent with what
    # ``rewrite`` returned and its own Content-Length. Offered: backend answers framed by a
    # non-zero Content-Length or chunked (content_length -1: held while the decoded payload
    # fits the object's ``max_answer``; beyond, sent unchanged, framed in chunks by the
    # gateway) and the gateway's own answers with a body, never to HEAD.
    cdef public object response_filter
    cdef object _vars
    cdef object _params
    cdef object _query_args
    # A request step that has to wait returned an awaitable: the server awaits it, then runs
    # the steps from _resume_at on (StepChain.start_request, Pipeline.finish_request).
    cdef public object _waiting
    cdef public int _resume_at

    def __init__(self, method, path, query, headers, client_ip, scheme, route, values,
                 request_id, http_version="1.1", peer_ip=None):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.client_ip = client_ip
        self.peer_ip = peer_ip or client_ip
        self.scheme = scheme
        self.route = route
        self.values = values
        self._request_id = request_id
        self.http_version = http_version
        self._init_empty()

    cdef inline object rid(self):
        """``request_id`` from C (no attribute lookup); whatever a plugin set, not only str."""
        if self._request_id is None:
            self._request_id = next_request_id()
        return self._request_id

    @property
    def request_id(self):
        """This request's id (str): the one set (the request-id plugin, the client's
        trusted header), else a new gateway id made on first use. PERF: most routes never
        read it (no access log, no request-id plugin, no error): making one costs ~500
        instructions."""
        return self.rid()

    @request_id.setter
    def request_id(self, value):
        self._request_id = value

    cdef inline void _init_empty(self):
        # PERF: answer_headers and response_headers are made on first use (most requests
        # are neither answered by a plugin nor need the backend's headers as a list).
        self.answer_body = b""
        self.response_headers_add = []
        self.body_size = -1

    @property
    def path(self):
        """The normalized path as routed (no query), str."""
        if self._path is None and self._path_b is not None:
            self._path = self._path_b.decode("latin-1")
        return self._path

    @path.setter
    def path(self, value):
        self._path = value
        self._path_b = None

    @property
    def headers(self):
        """The request headers forwarded to the backend: a list of (name, value) bytes
        pairs a plugin may edit in place."""
        if self._head is not None:
            self._materialize()
        return self._headers

    @headers.setter
    def headers(self, value):
        self._head = None
        self._added = None
        self._headers = value

    cdef int _materialize(self) except -1:
        # A connection reuses its head for its next request, after this one's exchange: by
        # then only the chain's C steps have seen this context (Route.ctx_lazy).
        if self._head.buf is not self._head_buf:
            raise RuntimeError("the request's scanned headers are gone (lazy context read after its exchange)")
        cdef list out = self._head.forward_headers()
        if self._added is not None:
            out.extend(self._added)
        self._headers = out
        self._head = None
        self._added = None
        return 0

    # The built-in steps' header edits, in either mode (see the top of this file).
    cdef bytes find_req_header(self, bytes lname):
        """First value of request header ``lname`` (lower-case), or None."""
        cdef bytes v
        if self._head is None:
            return find_header(<list>self._headers, lname)
        v = self._head.view_find(lname)
        if v is None and self._added is not None:
            v = find_header(self._added, lname)
        return v

    cdef tuple find_req_headers(self, bytes lname):
        """Every value of request header ``lname`` (lower-case), in order."""
        cdef list out
        if self._head is None:
            out = [v for k, v in <list>self._headers if (<bytes>k).lower() == lname]
        else:
            out = list(self._head.view_find_all(lname))
            if self._added is not None:
                out.extend([v for k, v in self._added if (<bytes>k).lower() == lname])
        return PyList_AsTuple(out)

    cdef bytes pop_req_header(self, bytes lname):
        """Remove every ``lname`` request header; the first value, or None."""
        cdef bytes v, w
        if self._head is None:
            return pop_header(<list>self._headers, lname)
        v = self._head.view_pop(lname)
        if self._added is not None:
            w = pop_header(self._added, lname)
            if v is None:
                v = w
        return v

    cdef int remove_req_headers(self, tuple lnames) except -1:
        """Remove every request header named in ``lnames`` (lower-case); how many."""
        cdef int n
        if self._head is None:
            return remove_headers(<list>self._headers, lnames)
        n = self._head.view_remove(lnames)
        if self._added is not None:
            n += remove_headers(self._added, lnames)
        return n

    cdef int add_req_header(self, tuple pair) except -1:
        """Append a (name, value) pair to the request headers."""
        if self._head is None:
            (<list>self._headers).append(pair)
        elif self._added is None:
            self._added = [pair]
        else:
            self._added.append(pair)
        return 0

    cdef void _drop_waiting(self):
        """Forget the awaitable a step returned to wait on, closing it (a coroutine nobody
        will await: no "never awaited" warning)."""
        waiting, self._waiting = self._waiting, None
        if waiting is not None and hasattr(waiting, "close"):
            waiting.close()

    @property
    def answer_headers(self):
        """Headers of the gateway's own answer (a list of (name, value) bytes pairs)."""
        if self._answer_headers is None:
            self._answer_headers = []
        return self._answer_headers

    @answer_headers.setter
    def answer_headers(self, value):
        self._answer_headers = value

    @property
    def response_headers(self):
        """Backend response headers in the response phase (a list of (name, value) bytes pairs)."""
        if self._response_headers is None:
            self._response_headers = []
        return self._response_headers

    @response_headers.setter
    def response_headers(self, value):
        self._response_headers = value

    @property
    def vars(self):
        """Scratch space shared by this request's plugins (a dict, made on first use)."""
        if self._vars is None:
            self._vars = {}
        return self._vars

    # -- request data -------------------------------------------------------------------
    @property
    def params(self):
        """Path variables by name (decoded lazily, once)."""
        if self._params is None:
            from urllib.parse import unquote
            names = self.route.param_names
            self._params = {n: unquote(v.decode("latin-1")) for n, v in zip(names, self.values)}
        return self._params

    @property
    def query_args(self):
        """Query arguments (first value wins), parsed lazily, once."""
        if self._query_args is None:
            from urllib.parse import parse_qsl
            self._query_args = dict(reversed(parse_qsl(self.query.decode("latin-1"), keep_blank_values=True)))
        return self._query_args

    def get_header(self, str name):
        value = find_header(self.headers, name.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    def get_headers(self, str name):
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == key]

    def set_header(self, str name, value):
        """Replace every copy of request header ``name`` with one value."""
        self.remove_header(name)
        self.headers.append((_ctx_b(name), _ctx_b(value)))

    def add_header(self, name, value):
        self.headers.append((_ctx_b(name), _ctx_b(value)))

    def remove_header(self, str name):
        remove_headers(self.headers, (name.lower().encode("latin-1"),))

    def replace_body(self, body):
        """Send ``body`` (bytes) to the backend instead of the request's, framed by its own
        Content-Length (a plugin with ``needs_body``, which reads the whole body first)."""
        if type(body) is not bytes:
            raise TypeError(f"replace_body takes bytes, not {type(body).__name__}")
        self.body = body
        self.body_replaced = True

    def set_query(self, query):
        """Forward ``query`` (raw bytes, without '?') to the backend instead of the client's."""
        self.query = _ctx_b(query)
        self._query_args = None

    def remove_query_arg(self, str name):
        """Drop ``name`` from the query string forwarded to the backend (other bytes kept)."""
        from urllib.parse import unquote_plus
        parts = [p for p in self.query.split(b"&")
                 if p and unquote_plus(p.split(b"=", 1)[0].decode("latin-1")) != name]
        self.query = b"&".join(parts)
        self._query_args = None

    # -- answers ------------------------------------------------------------------------
    cpdef int answer(self, int status, body=b"", headers=None, content_type=None):
        """Answer the request at the gateway; returns ANSWERED for ``on_request``."""
        self.answer_status = status
        self.answer_body = (<str>body).encode("latin-1") if type(body) is str else body
        cdef list hdrs = list(headers) if headers else []
        if content_type is not None:
            hdrs.append((b"Content-Type", _ctx_b(content_type)))
        self.answer_headers = hdrs
        return CTX_ANSWERED

    cpdef int error(self, int status, str message, headers=None):
        """Answer with fastgw's JSON error body ``{"error", "status", "request_id"}``."""
        rid = self.request_id
        return self.answer(status, error_body(status, message, rid if type(rid) is str else str(rid)),
                           headers, "application/json")

    # -- response -----------------------------------------------------------------------
    def add_response_header(self, name, value):
        """Add a header to whatever answer goes out (backend response or gateway answer)."""
        self.response_headers_add.append((_ctx_b(name), _ctx_b(value)))

    def get_response_header(self, str name):
        value = find_header(self.response_headers, name.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    def set_response_header(self, str name, value):
        self.remove_response_header(name)
        self.response_headers.append((_ctx_b(name), _ctx_b(value)))

    def remove_response_header(self, str name):
        remove_headers(self.response_headers, (name.lower().encode("latin-1"),))

    def __repr__(self):
        return f"<RequestContext {self.method} {self.path} id={self.request_id}>"


cdef RequestContext new_context(str method, bytes path, bytes query, list headers,
                                RequestHead head, str client_ip, str scheme, object route,
                                tuple values, str request_id, str http_version):
    """The server's constructor: C stores only (PERF: no argument parsing, no __init__).
    ``path`` is decoded when asked for; ``headers`` None: lazy mode on ``head``;
    ``request_id`` None: one is made when first asked for."""
    cdef RequestContext ctx = RequestContext.__new__(RequestContext)
    ctx.method = method
    ctx._path_b = path
    ctx.query = query
    ctx._headers = headers
    if headers is None:
        ctx._head = head
        ctx._head_buf = head.buf
    ctx.client_ip = client_ip
    ctx.peer_ip = client_ip
    ctx.scheme = scheme
    ctx.route = route
    ctx.values = values
    ctx._request_id = request_id      # None: made when first asked for
    ctx.http_version = http_version
    ctx._init_empty()
    return ctx


def _context_view_check(bytes raw_head, list ops, bint lazy):
    """Tests: scan ``raw_head``, run header ``ops`` through a context in lazy or list mode as
    the built-in steps do, and build the backend's head as the server does. Returns (the
    ops' results, the backend head). An op: ("find", lname), ("findall", lname), ("pop",
    lname), ("remove", (lname, ...)), ("add", (name, value)) or ("list",) (reads
    ``ctx.headers``)."""
    cdef RequestHead h = parse_request_head(raw_head)
    cdef RequestContext ctx = new_context(
        "GET", h.path, h.query, None if lazy else h.forward_headers(), h, "10.0.0.1", "http",
        None, (), "rid", "1.1")
    cdef list results = []
    for op in ops:
        kind = op[0]
        if kind == "find":
            results.append(ctx.find_req_header(op[1]))
        elif kind == "findall":
            results.append(ctx.find_req_headers(op[1]))
        elif kind == "pop":
            results.append(ctx.pop_req_header(op[1]))
        elif kind == "remove":
            results.append(ctx.remove_req_headers(op[1]))
        elif kind == "add":
            results.append(ctx.add_req_header(op[1]))
        else:
            results.append(list(ctx.headers))
    head = build_upstream_head(h, b"GET", h.path, h.host_raw, b"10.0.0.1", ForwardInfo(),
                               None if ctx._head is not None else ctx.headers, ctx._added,
                               h.chunked, h.content_length)
    return results, head
