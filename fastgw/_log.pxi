# part of fastgw/_core.pyx (see its docstring)
#
# Access-log lines: the JSON-lines formatter for batches of access-log records. The
# pure-Python twin is fastgw.accesslog.format_records_py; tests/test_accesslog.py asserts
# that both write the same bytes (hypothesis).

from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.math cimport llround


cdef extern from "<time.h>" nogil:
    ctypedef long log_time_t "time_t"
    cdef struct log_tm "tm":
        int tm_sec
        int tm_min
        int tm_hour
        int tm_mday
        int tm_mon
        int tm_year
    log_tm* log_gmtime_r "gmtime_r"(const log_time_t* t, log_tm* result)

cdef _Buf _logbuf = _Buf()
cdef const char* _HEXD = b"0123456789abcdef"


cdef int _json_str(_Buf b, object value) except -1:
    """Append ``value`` as a JSON string (escaped as orjson does), or null for None."""
    cdef const char* s
    cdef Py_ssize_t n, i, start
    cdef unsigned char c
    cdef char esc[6]
    if value is None:
        return b.add(b"null", 4)
    if type(value) is not str:
        value = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    try:
        s = PyUnicode_AsUTF8AndSize(value, &n)
    except UnicodeEncodeError:       # a lone surrogate (never from the wire): replaced
        value = (<str>value).encode("utf-8", "replace").decode("utf-8")
        s = PyUnicode_AsUTF8AndSize(value, &n)
    b.add(b'"', 1)
    start = 0
    for i in range(n):
        c = <unsigned char>s[i]
        if c >= 32 and c != 34 and c != 92:
            continue
        if i > start:
            b.add(s + start, i - start)
        start = i + 1
        if c == 34:
            b.add(b'\\"', 2)
        elif c == 92:
            b.add(b"\\\\", 2)
        elif c == 10:
            b.add(b"\\n", 2)
        elif c == 13:
            b.add(b"\\r", 2)
        elif c == 9:
            b.add(b"\\t", 2)
        elif c == 8:
            b.add(b"\\b", 2)
        elif c == 12:
            b.add(b"\\f", 2)
        else:
            esc[0] = 92
            esc[1] = 117
            esc[2] = 48
            esc[3] = 48
            esc[4] = _HEXD[c >> 4]
            esc[5] = _HEXD[c & 15]
            b.add(esc, 6)
    if n > start:
        b.add(s + start, n - start)
    return b.add(b'"', 1)


cdef int _json_ms(_Buf b, double ms) except -1:
    """Milliseconds rounded to the microsecond, written as Python's repr(round(ms, 3))."""
    cdef long long us = llround(ms * 1000.0)
    cdef long long whole, frac
    cdef char digits[3]
    cdef int k
    if us < 0:
        b.add(b"-", 1)
        us = -us
    whole = us // 1000
    frac = us % 1000
    b.add_int(whole)
    b.add(b".", 1)
    if frac == 0:
        return b.add(b"0", 1)
    digits[0] = <char>(48 + frac // 100)
    digits[1] = <char>(48 + (frac // 10) % 10)
    digits[2] = <char>(48 + frac % 10)
    k = 3
    while k > 1 and digits[k - 1] == 48:
        k -= 1
    return b.add(digits, k)


cdef int _two(_Buf b, int v) except -1:
    cdef char d[2]
    d[0] = <char>(48 + v // 10)
    d[1] = <char>(48 + v % 10)
    return b.add(d, 2)


cpdef bytes format_access_records(list records):
    """JSON lines for access-log ``records`` (field order: fastgw.accesslog.FIELDS).

    PERF: the whole batch is written into one C buffer; the date is formatted once per
    second; about 0.3 µs a record against 1.6 µs through dict + orjson."""
    cdef _Buf b = _logbuf
    cdef tuple r
    cdef double ts
    cdef long long sec, last = -1, ms
    cdef log_time_t t
    cdef log_tm tmv
    cdef char datebuf[32]
    cdef Py_ssize_t datelen = 0
    cdef _Buf d = _Buf()
    b.reset()
    for item in records:
        r = <tuple>item
        ts = r[0]
        sec = <long long>ts
        if sec != last:
            last = sec
            t = <log_time_t>sec
            log_gmtime_r(&t, &tmv)
            d.reset()
            d.add_int(tmv.tm_year + 1900)
            d.add(b"-", 1)
            _two(d, tmv.tm_mon + 1)
            d.add(b"-", 1)
            _two(d, tmv.tm_mday)
            d.add(b"T", 1)
            _two(d, tmv.tm_hour)
            d.add(b":", 1)
            _two(d, tmv.tm_min)
            d.add(b":", 1)
            _two(d, tmv.tm_sec)
            datelen = d.n
            memcpy(datebuf, d.p, datelen)
        ms = <long long>((ts - sec) * 1000)
        b.add(b'{"time":"', 9)
        b.add(datebuf, datelen)
        b.add(b".", 1)
        if ms < 100:
            b.add(b"0", 1)
        if ms < 10:
            b.add(b"0", 1)
        b.add_int(ms)
        b.add(b'Z","request_id":', 16)
        _json_str(b, r[1])
        b.add(b',"client_ip":', 13)
        _json_str(b, r[2])
        b.add(b',"consumer":', 12)
        _json_str(b, r[3])
        b.add(b',"service":', 11)
        _json_str(b, r[4])
        b.add(b',"stage":', 9)
        _json_str(b, r[5])
        b.add(b',"resource":', 12)
        _json_str(b, r[6])
        b.add(b',"method":', 10)
        _json_str(b, r[7])
        b.add(b',"path":', 8)
        _json_str(b, r[8])
        b.add(b',"status":', 10)
        b.add_int(<long long>r[9])
        b.add(b',"bytes_in":', 12)
        b.add_int(<long long>r[10])
        b.add(b',"bytes_out":', 13)
        b.add_int(<long long>r[11])
        b.add(b',"total_ms":', 12)
        _json_ms(b, r[12])
        b.add(b',"upstream_ms":', 15)
        _json_ms(b, r[13])
        b.add(b"}\n", 2)
    return b.take()
