# part of fastgw/_core.pyx (see its docstring)
#
# jwt's request phase for a token this worker has verified before, in C. The plugin
# (fastgw/plugins/jwt_auth.py) verifies a token once per worker with PyJWT and files what
# it gives a request (claims, consumer, claim headers, expiry) in its VerifiedTokens table;
# this step answers the requests that carry such a token again, and hands every other one
# to the plugin's Python on_request (STEP_PYTHON: it may have to wait for a JWKS fetch).

from cpython.dict cimport PyDict_Copy
from cpython.unicode cimport PyUnicode_DecodeLatin1


cdef class JwtHitStep(NativeStep):
    """The plugin's request edits for a remembered, unexpired token: the claim headers a
    client may not send removed, the token hidden, the consumer set, ``jwt_claims`` (a copy)
    and the claim headers added. Everything else goes to ``fallback`` (the plugin's
    ``on_request``): no token in ``header``, a token it has not verified (or no longer
    holds, or that expired: it then answers the 401 and drops the entry).

    The token is read as the plugin reads it (first value of the header; ``Bearer `` in
    any case, then trimmed) except that only ASCII white space is trimmed here: a value the
    two read differently misses here and is read again there. With ``jwks_url`` (``jwks``,
    the route's JwksCache) a hit also needs the keys' generation the token was verified
    under, and past the keys' ``ttl`` starts their background refresh, as the plugin does."""

    cdef object jwks              # the plugin's JwksCache, or None
    cdef dict items               # VerifiedTokens.items: token (str) -> Verified
    cdef bytes header             # lower-case name of the header the token comes in
    cdef bint bearer_only         # the Authorization header: a value without "Bearer " is no token
    cdef tuple hide               # (header,) when the token is kept from the backend, else ()
    cdef tuple strip              # lower-case claim headers a client may not send

    def __init__(self, fallback, dict items, bytes header, bint hide, tuple strip, jwks=None):
        self.fallback = fallback
        self.jwks = jwks
        self.items = items
        self.header = header
        self.bearer_only = header == b"authorization"
        self.hide = (header,) if hide else ()
        self.strip = strip

    cdef int request(self, RequestContext ctx) except -1:
        cdef bytes value = ctx.find_req_header(self.header)
        cdef const char* p
        cdef Py_ssize_t i = 0, n
        cdef double now
        if value is None:
            return STEP_PYTHON
        p = PyBytes_AS_STRING(value)
        n = PyBytes_GET_SIZE(value)
        if n >= 7 and _ieq(p, 7, b"bearer ", 7):
            i = 7
        elif self.bearer_only:
            return STEP_PYTHON
        _trim_ascii_ws(p, &i, &n)
        if i == n:
            return STEP_PYTHON
        found = self.items.get(PyUnicode_DecodeLatin1(p + i, n - i, NULL))
        if found is None or found.expires <= _wall():
            return STEP_PYTHON
        if self.jwks is not None:
            if found.generation != self.jwks.generation:
                return STEP_PYTHON
            now = _mono()
            if now - self.jwks.fetched_at > self.jwks.ttl:
                self.jwks.keep_fresh(now)
        if self.strip:
            ctx.remove_req_headers(self.strip)
        if self.hide:
            ctx.remove_req_headers(self.hide)
        consumer = found.consumer
        if consumer is not None:
            ctx.consumer = consumer
        ctx.vars["jwt_claims"] = PyDict_Copy(found.claims)
        for pair in found.headers:
            ctx.add_req_header(<tuple>pair)
        return 0
