# part of fastgw/_core.pyx (see its docstring)
#
# Routing on the hot path: path normalization, the per-host trie router and the
# backend-path templates. fastgw/router_ref.py is the pure-Python twin that states the
# same semantics; tests/test_router.py and tests/test_normalize.py assert both agree.
#
# Rules (see router_ref's docstring for the full list):
#   - normalize_path: decode unreserved, keep the rest encoded (upper-case hex), encode raw
#     bytes that may not appear in a path, resolve ./.. (also %2e), collapse //, keep %2F.
#   - match: one trailing "/" is ignored; static > {var} > {var*} with backtracking; the
#     first node that matches the path AND accepts the method wins; per node exact >
#     HEAD->GET > ANY; {rest*} matches one or more segments, never the empty rest.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.string cimport memcmp

cimport cython

import re as _rt_re

# Byte classes for normalize_path.
DEF RT_ENCODE = 0     # raw byte that must be percent-encoded
DEF RT_RAW = 1        # sub-delims, ':' and '@': literal when raw, encoded when encoded
DEF RT_UNRES = 2      # unreserved: always literal
DEF RT_CTRL = 3       # control byte: the path is invalid
DEF RT_PCT = 4
DEF RT_SLASH = 5
DEF RT_STACK_SEGS = 64

cdef unsigned char _rt_cls[256]
cdef signed char _rt_hexv[256]
cdef const char* _rt_HEX = b"0123456789ABCDEF"


cdef void _rt_init_tables():
    cdef int c
    for c in range(256):
        _rt_cls[c] = RT_ENCODE
        _rt_hexv[c] = -1
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~":
        _rt_cls[c] = RT_UNRES
    for c in b"!$&'()*+,;=:@":
        _rt_cls[c] = RT_RAW
    for c in range(32):
        _rt_cls[c] = RT_CTRL
    _rt_cls[127] = RT_CTRL
    _rt_cls[37] = RT_PCT
    _rt_cls[47] = RT_SLASH
    for c in range(10):
        _rt_hexv[48 + c] = c
    for c in range(6):
        _rt_hexv[65 + c] = 10 + c
        _rt_hexv[97 + c] = 10 + c


_rt_init_tables()

cdef tuple _rt_EMPTY = ()
_RT_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY")
_rt_NAME = _rt_re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class RouteConflict(ValueError):
    """A route that duplicates another one (same host, shape and method)."""


def normalize_path(raw):
    """Canonical spelling of a request path (bytes), or None when it is invalid (400)."""
    if type(raw) is not bytes:
        raw = bytes(raw)
    return _rt_normalize(<bytes>raw)


cdef object _rt_normalize(bytes raw):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t i
    cdef unsigned char c, k, prev = 47
    cdef bint dirty = False
    if n == 0 or p[0] != 47:
        return None
    # PERF: one scan decides; a path that is already canonical (the common case) is
    # returned as the same object, with no allocation. A '.' right after '/' sends the
    # path to the slow path even when it is not a dot segment (e.g. /.well-known).
    for i in range(1, n):
        c = p[i]
        k = _rt_cls[c]
        if k == RT_UNRES or k == RT_RAW:
            if c == 46 and prev == 47:
                dirty = True
                break
        elif k == RT_SLASH:
            if prev == 47:
                dirty = True
                break
        elif k == RT_CTRL:
            return None
        else:
            dirty = True
            break
        prev = c
    if not dirty:
        return raw
    out = _rt_normalize_slow(p, n)
    if out is not None and _rt_hidden_dot_segment(<bytes>out):
        return None
    return out


cdef bint _rt_hidden_dot_segment(bytes path):
    """True when an encoded separator hides a dot segment (``..%2F``, ``.%5C``).

    SECURITY: ``%2F`` stays encoded and never splits a segment here, but a backend that
    decodes it (or treats ``\\`` as ``/``) and then resolves dot segments would reach a
    path this router never saw. Such a path is refused (400) rather than forwarded."""
    if b"%2F" not in path and b"%5C" not in path:
        return False
    for seg in path.split(b"/"):
        if b"%2F" in seg or b"%5C" in seg:
            for part in seg.replace(b"%5C", b"%2F").split(b"%2F"):
                if part == b"." or part == b"..":
                    return True
    return False


cdef object _rt_normalize_slow(const unsigned char* p, Py_ssize_t n):
    # out holds "/" seg "/" seg ...; before a segment is written, out ends with "/".
    cdef unsigned char* out = <unsigned char*>PyMem_Malloc(3 * n + 1)
    cdef Py_ssize_t* starts = <Py_ssize_t*>PyMem_Malloc(sizeof(Py_ssize_t) * (n + 1))
    cdef Py_ssize_t i = 1, o = 1, seg_start = 1, d = 0, seglen
    cdef unsigned char c, k, v
    cdef int hi, lo
    cdef bint last
    if out == NULL or starts == NULL:
        PyMem_Free(out)
        PyMem_Free(starts)
        raise MemoryError()
    try:
        out[0] = 47
        while True:
            if i == n or p[i] == 47:
                last = i == n
                seglen = o - seg_start
                if seglen == 0:
                    pass
                elif seglen == 1 and out[seg_start] == 46:
                    o = seg_start
                elif seglen == 2 and out[seg_start] == 46 and out[seg_start + 1] == 46:
                    if d == 0:
                        return None  # SECURITY: ".." above the root
                    d -= 1
                    o = starts[d]
                else:
                    starts[d] = seg_start
                    d += 1
                    if not last:
                        out[o] = 47
                        o += 1
                if last:
                    break
                i += 1
                seg_start = o
                continue
            c = p[i]
            k = _rt_cls[c]
            if k == RT_UNRES or k == RT_RAW:
                out[o] = c
                o += 1
                i += 1
            elif k == RT_PCT:
                if i + 2 >= n:
                    return None
                hi = _rt_hexv[p[i + 1]]
                lo = _rt_hexv[p[i + 2]]
                if hi < 0 or lo < 0:
                    return None
                v = <unsigned char>(hi * 16 + lo)
                if _rt_cls[v] == RT_UNRES:
                    out[o] = v
                    o += 1
                else:
                    # SECURITY: %2F, %25 ... stay encoded, so nothing is decoded twice.
                    out[o] = 37
                    out[o + 1] = _rt_HEX[hi]
                    out[o + 2] = _rt_HEX[lo]
                    o += 3
                i += 3
            elif k == RT_CTRL:
                return None
            else:
                out[o] = 37
                out[o + 1] = _rt_HEX[c >> 4]
                out[o + 2] = _rt_HEX[c & 15]
                o += 3
                i += 1
        return PyBytes_FromStringAndSize(<char*>out, o)
    finally:
        PyMem_Free(out)
        PyMem_Free(starts)


@cython.wraparound(True)
def _rt_parse_template(str prefix, str template):
    """(segments, names): segments are (kind, key) with kind 0 static, 1 {var}, 2 {var*}."""
    cdef list segs = []
    cdef list names = []
    for part, is_prefix in ((prefix, True), (template, False)):
        if part == "" and is_prefix:
            continue
        if not part.startswith("/"):
            raise ValueError(f"{part!r} must start with '/'")
        if part == "/" and not is_prefix:
            continue
        for seg in part[1:].split("/"):
            if segs and segs[-1][0] == 2:
                raise ValueError(f"{{{names[-1]}*}} must be the last segment of {part!r}")
            if seg == "":
                raise ValueError(f"empty segment in {part!r}")
            if seg.startswith("{") and seg.endswith("}") and not is_prefix:
                name = seg[1:-1]
                kind = 1
                if name.endswith("*"):
                    name, kind = name[:-1], 2
                if not _rt_NAME.match(name):
                    raise ValueError(f"bad variable name {seg!r} in {part!r}")
                if name in names:
                    raise ValueError(f"variable {{{name}}} used twice in {part!r}")
                names.append(name)
                segs.append((kind, name.encode()))
                continue
            if "{" in seg or "}" in seg:
                raise ValueError(f"'{{' or '}}' inside static segment {seg!r} of {part!r}")
            if seg in (".", ".."):
                raise ValueError(f"dot segment {seg!r} in {part!r}")
            if "%2f" in seg.lower():
                raise ValueError(f"encoded '/' (%2F) in segment {seg!r} of {part!r}")
            key = _rt_normalize(b"/" + seg.encode())
            if key is None or (<bytes>key).count(b"/") != 1 or key == b"/":
                raise ValueError(f"bad static segment {seg!r} in {part!r}")
            segs.append((0, key[1:]))
    return segs, tuple(names)


cdef class PathMethods:
    """What a path offers when the method is not there (405): ``allow`` and ``routes``."""

    cdef readonly bytes allow
    cdef readonly dict routes

    def __init__(self, dict routes):
        self.routes = routes
        names = set(routes)
        if "GET" in names:
            names.add("HEAD")
        self.allow = ", ".join(sorted(names)).encode()

    def __repr__(self):
        return f"PathMethods(allow={self.allow!r})"


cdef class _RNode:
    cdef dict static        # segment bytes -> _RNode (None while empty)
    cdef _RNode var
    cdef _RNode rest
    cdef dict methods       # method bytes -> route, ANY excluded (None while empty)
    cdef object get_route
    cdef object any_route
    cdef bint terminal
    cdef dict by_name       # method str -> route (ANY included): for PathMethods
    cdef PathMethods pm

    cdef inline object pick(self, bytes method):
        cdef PyObject* o
        if self.methods is not None:
            o = PyDict_GetItem(self.methods, method)
            if o != NULL:
                return <object>o
        if self.get_route is not None and PyBytes_GET_SIZE(method) == 4 \
                and memcmp(PyBytes_AS_STRING(method), b"HEAD", 4) == 0:
            return self.get_route
        return self.any_route

    cdef void set_route(self, str method, object route):
        if self.by_name is None:
            self.by_name = {}
        self.by_name[method] = route
        if method == "ANY":
            self.any_route = route
        else:
            if self.methods is None:
                self.methods = {}
            self.methods[method.encode()] = route
            if method == "GET":
                self.get_route = route
        self.terminal = True
        self.pm = PathMethods(dict(self.by_name))


cdef tuple _rt_values(bytes path, Py_ssize_t* vs, Py_ssize_t* ve, int k):
    cdef const char* p = PyBytes_AS_STRING(path)
    cdef tuple t
    cdef int j
    if k == 0:
        return _rt_EMPTY
    t = PyTuple_New(k)
    for j in range(k):
        v = PyBytes_FromStringAndSize(p + vs[j], ve[j] - vs[j])
        Py_INCREF(v)
        PyTuple_SET_ITEM(t, j, v)
    return t


cdef _RNode _rt_search(_RNode node, bytes path, const char* p, Py_ssize_t* ss, Py_ssize_t* se,
                       int nseg, int i, int k, Py_ssize_t* vs, Py_ssize_t* ve, Py_ssize_t pend,
                       bytes method, int* kout):
    """First resource node (static > var > rest, backtracking) matching the path.

    SECURITY: the path alone picks the resource; the method only decides 200 or 405. A
    method a resource lacks never falls through to a broader route (a catch-all with other
    plugins), so a path's plugins can't be skipped by choosing another method."""
    cdef PyObject* o
    cdef _RNode found, r
    if i == nseg:
        if node.terminal:
            kout[0] = k
            return node
        return None
    if node.static is not None:
        # PERF: one small bytes object per static lookup; dict hashing beats any C scan
        # once a level has more than a handful of children, and stays O(1) at 100k routes.
        o = PyDict_GetItem(node.static, PyBytes_FromStringAndSize(p + ss[i], se[i] - ss[i]))
        if o != NULL:
            found = _rt_search(<_RNode>o, path, p, ss, se, nseg, i + 1, k, vs, ve, pend, method, kout)
            if found is not None:
                return found
    if node.var is not None and se[i] > ss[i]:
        vs[k] = ss[i]
        ve[k] = se[i]
        found = _rt_search(node.var, path, p, ss, se, nseg, i + 1, k + 1, vs, ve, pend, method, kout)
        if found is not None:
            return found
    r = node.rest
    if r is not None and r.terminal:
        vs[k] = ss[i]
        ve[k] = pend
        kout[0] = k + 1
        return r
    return None


cdef class Router:
    """Host -> trie of path segments -> method -> route. Built once per config load."""

    cdef dict _exact      # host bytes -> root
    cdef dict _wild       # b".example.com" -> root (from "*.example.com")
    cdef _RNode _default  # "*" or no hosts
    cdef readonly int count

    def __init__(self):
        self._exact = {}
        self._wild = {}
        self._default = None
        self.count = 0

    cdef _RNode _root(self, str host, bint create):
        cdef bytes h = host.lower().encode() if host.isascii() else host.lower().encode("idna")
        cdef _RNode node
        if h == b"*":
            if self._default is None and create:
                self._default = _RNode()
            return self._default
        if h.startswith(b"*."):
            table, key = self._wild, h[1:]
        else:
            table, key = self._exact, h
        node = table.get(key)
        if node is None and create:
            node = _RNode()
            table[key] = node
        return node

    def add(self, hosts, str prefix, str template, str method, route):
        """Add ``route`` for (each host, prefix + template, method); returns the variable names.

        Raises ValueError for a bad template and RouteConflict for a duplicate; nothing is
        added when it raises.
        """
        cdef _RNode node, nxt
        cdef bint create
        segs, names = _rt_parse_template(prefix, template)
        method = method.upper()
        if method not in _RT_METHODS:
            raise ValueError(f"unknown method {method!r}")
        hosts = list(hosts) or ["*"]
        for create in (False, True):
            for host in hosts:
                node = self._root(host, create)
                for kind, key in segs:
                    if node is None:
                        break
                    if kind == 0:
                        if node.static is None:
                            if not create:
                                node = None
                                break
                            node.static = {}
                        nxt = node.static.get(key)
                        if nxt is None and create:
                            nxt = _RNode()
                            node.static[key] = nxt
                    elif kind == 1:
                        if node.var is None and create:
                            node.var = _RNode()
                        nxt = node.var
                    else:
                        if node.rest is None and create:
                            node.rest = _RNode()
                        nxt = node.rest
                    node = nxt
                if node is None:
                    continue
                if create:
                    node.set_route(method, route)
                elif node.by_name is not None and method in node.by_name:
                    raise RouteConflict(
                        f"{method} {prefix}{template} on host {host!r} duplicates a route "
                        f"with the same shape and method")
        self.count += 1
        return names

    cdef _RNode _root_for(self, bytes host):
        cdef PyObject* o = PyDict_GetItem(self._exact, host)
        cdef Py_ssize_t i
        if o != NULL:
            return <_RNode>o
        if self._wild:
            # Longest suffix first: try ".b.example.com", then ".example.com", ...
            i = host.find(b".")
            while i >= 0:
                o = PyDict_GetItem(self._wild, host[i:])
                if o != NULL:
                    return <_RNode>o
                i = host.find(b".", i + 1)
        return self._default

    cpdef tuple match(self, bytes host, bytes method, bytes path):
        """(200, route, values) | (404, None, None) | (405, PathMethods, values)."""
        if host is None or method is None or path is None:
            raise TypeError("match() takes bytes host, method and path")
        cdef _RNode root = self._root_for(host)
        cdef _RNode found, node
        cdef const char* p = PyBytes_AS_STRING(path)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(path)
        cdef Py_ssize_t i, j, cap
        cdef int nseg = 0, kout = 0
        cdef Py_ssize_t stack_buf[4 * RT_STACK_SEGS]
        cdef Py_ssize_t* buf = stack_buf
        cdef tuple values
        if root is None:
            return (404, None, None)
        # PERF: segment offsets live in a C stack array; the heap only for >64 segments.
        cap = 1
        for i in range(n):
            if p[i] == 47:
                cap += 1
        if cap > RT_STACK_SEGS:
            buf = <Py_ssize_t*>PyMem_Malloc(4 * cap * sizeof(Py_ssize_t))
            if buf == NULL:
                raise MemoryError()
        try:
            i = 1
            while i < n:
                j = i
                while j < n and p[j] != 47:
                    j += 1
                buf[nseg] = i
                buf[cap + nseg] = j
                nseg += 1
                i = j + 1
            if nseg > 0 and buf[nseg - 1] == buf[cap + nseg - 1]:
                nseg -= 1  # one trailing "/" is ignored for matching
            found = _rt_search(root, path, p, buf, buf + cap, nseg, 0, 0, buf + 2 * cap,
                               buf + 3 * cap, n, method, &kout)
            if found is None:
                return (404, None, None)
            values = _rt_values(path, buf + 2 * cap, buf + 3 * cap, kout)
        finally:
            if buf != stack_buf:
                PyMem_Free(buf)
        route = found.pick(method)
        if route is not None:
            return (200, route, values)
        return (405, found.pm, values)


# ---------------------------------------------------------------------------------------
# Backend-path templates: parsed once per route at config load, rendered per request.

DEF TP_LIT = 0
DEF TP_VAR = 1
DEF TP_QUERY = 2
DEF TP_HEADER = 3

_rt_PLACEHOLDER = _rt_re.compile(r"\$\{([^{}]*)\}|\{([^{}]*)\}")


cdef bytes _rt_pct_decode(bytes s, bint plus):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s), i = 0
    cdef int hi, lo
    out = bytearray()
    while i < n:
        if p[i] == 37 and i + 2 < n:
            hi = _rt_hexv[p[i + 1]]
            lo = _rt_hexv[p[i + 2]]
            if hi >= 0 and lo >= 0:
                out.append(hi * 16 + lo)
                i += 3
                continue
        if plus and p[i] == 43:
            out.append(32)
        else:
            out.append(p[i])
        i += 1
    return bytes(out)


cdef bytes _rt_pct_encode_segment(bytes s):
    """Every byte but unreserved encoded; "." and ".." become empty (SECURITY: no dot segments)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s), i
    if s == b"." or s == b"..":
        return b""
    out = bytearray()
    for i in range(n):
        if _rt_cls[p[i]] == RT_UNRES:
            out.append(p[i])
        else:
            out += b"%" + _rt_HEX[p[i] >> 4: (p[i] >> 4) + 1] + _rt_HEX[p[i] & 15: (p[i] & 15) + 1]
    return bytes(out)


cdef class Template:
    """A backend path with {var}, {var*}, ${stage.x} (resolved at compile), ${query.x}, ${header.x}."""

    cdef readonly bint is_static
    cdef readonly str source
    cdef bytes _static
    cdef tuple _kinds
    cdef tuple _args

    def render(self, tuple values, bytes query=b"", list headers=None):
        """Backend path bytes. ``headers`` is a list of (name, value) bytes pairs."""
        cdef Py_ssize_t j, n
        cdef int kind
        if self.is_static:
            return self._static
        n = len(self._kinds)
        parts = []
        for j in range(n):
            kind = self._kinds[j]
            arg = self._args[j]
            if kind == TP_LIT:
                parts.append(arg)
            elif kind == TP_VAR:
                parts.append(values[<Py_ssize_t>arg])
            elif kind == TP_QUERY:
                parts.append(_rt_pct_encode_segment(_rt_query_value(query, arg)))
            else:
                parts.append(_rt_pct_encode_segment(_rt_header_value(headers, arg)))
        return b"".join(parts)

    def __repr__(self):
        return f"Template({self.source!r})"


cdef bytes _rt_query_value(bytes query, bytes name):
    if not query:
        return b""
    for pair in query.split(b"&"):
        k, sep, v = pair.partition(b"=")
        if _rt_pct_decode(k, True) == name:
            return _rt_pct_decode(v, True)
    return b""


cdef bytes _rt_header_value(list headers, bytes name):
    if not headers:
        return b""
    for item in headers:
        if (<bytes>item[0]).lower() == name:
            return item[1]
    return b""


@cython.wraparound(True)
def compile_template(str template, tuple param_names, dict stage_vars):
    """Parse a backend path once; ValueError names an unknown variable or a bad placeholder."""
    cdef Template t = Template.__new__(Template)
    kinds = []
    args = []
    pos = 0
    known = ", ".join(param_names) or "none"
    for m in _rt_PLACEHOLDER.finditer(template):
        lit = template[pos:m.start()]
        if "{" in lit or "}" in lit:
            raise ValueError(f"stray brace in {template!r}")
        if lit:
            kinds.append(TP_LIT)
            args.append(lit.encode())
        pos = m.end()
        if m.group(1) is not None:
            scope, dot, name = m.group(1).partition(".")
            if not dot or not name:
                raise ValueError(f"bad placeholder ${{{m.group(1)}}} (use stage.x, query.x or header.x)")
            if scope == "stage":
                if name not in stage_vars:
                    raise ValueError(f"unknown stage variable ${{stage.{name}}}")
                kinds.append(TP_LIT)
                args.append(str(stage_vars[name]).encode())
            elif scope == "query":
                kinds.append(TP_QUERY)
                args.append(name.encode())
            elif scope == "header":
                kinds.append(TP_HEADER)
                args.append(name.lower().encode())
            else:
                raise ValueError(f"bad placeholder ${{{m.group(1)}}} (use stage.x, query.x or header.x)")
        else:
            name = m.group(2)
            if name.endswith("*"):
                name = name[:-1]
            if name not in param_names:
                raise ValueError(f"unknown variable {{{m.group(2)}}} (known: {known})")
            kinds.append(TP_VAR)
            args.append(param_names.index(name))
    lit = template[pos:]
    if "{" in lit or "}" in lit:
        raise ValueError(f"stray brace in {template!r}")
    if lit:
        kinds.append(TP_LIT)
        args.append(lit.encode())
    # PERF: adjacent literals are merged so render joins as few pieces as possible.
    mk = []
    ma = []
    for kind, arg in zip(kinds, args):
        if kind == TP_LIT and mk and mk[-1] == TP_LIT:
            ma[-1] = ma[-1] + arg
        else:
            mk.append(kind)
            ma.append(arg)
    t._kinds = tuple(mk)
    t._args = tuple(ma)
    t.source = template
    t.is_static = all(k == TP_LIT for k in mk)
    t._static = b"".join(ma) if t.is_static else None
    return t
