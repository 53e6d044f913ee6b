"""hmac-auth: signed requests, clock skew, replay guard, enforced headers, body digest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from email.utils import formatdate

from .util import error_of, hdrs, make_ctx, make_pipeline, run

SECRET = "alice-hmac-secret-0123456789"
CONSUMERS = [{"name": "alice", "credentials": {"hmac-auth": [{"username": "alice", "secret": SECRET}]}}]


def signed(method="GET", path="/orders/1", query=b"", names=("date", "request-line"), when=None,
           extra=(), secret=SECRET, alg="hmac-sha256"):
    date = formatdate(when if when is not None else time.time(), usegmt=True)
    headers = [(b"Date", date.encode()), *extra]
    lines = []
    for n in names:
        if n == "request-line":
            lines.append(f"{method} {path}{'?' + query.decode() if query else ''} HTTP/1.1")
        else:
            value = next(v.decode() for k, v in headers if k.decode().lower() == n)
            lines.append(f"{n}: {value}")
    digest = {"hmac-sha256": hashlib.sha256, "hmac-sha512": hashlib.sha512}[alg]
    sig = base64.b64encode(hmac.new(secret.encode(), "\n".join(lines).encode(), digest).digest()).decode()
    auth = f'hmac username="alice", algorithm="{alg}", headers="{" ".join(names)}", signature="{sig}"'
    return make_ctx(method=method, path=path, query=query, headers=[*headers, (b"Authorization", auth.encode())])


def test_valid_signature():
    pipe = make_pipeline([{"name": "hmac-auth"}], CONSUMERS)
    ctx = signed(query=b"a=1")
    assert run(pipe, ctx) is False and ctx.consumer.name == "alice"
    assert "authorization" not in hdrs(ctx.headers)
    assert run(pipe, signed(alg="hmac-sha512", when=time.time() - 1)) is False


def test_bad_signature_and_unknown_user():
    pipe = make_pipeline([{"name": "hmac-auth"}], CONSUMERS)
    ctx = signed(secret="wrong-secret-0123456789")
    assert run(pipe, ctx) is True and ctx.answer_status == 401 and error_of(ctx) == "Invalid signature"
    ctx = make_ctx(headers=[(b"Authorization", b'hmac username="mallory", signature="x"')])
    assert run(pipe, ctx) is True and ctx.answer_status == 401
    ctx = make_ctx()
    assert run(pipe, ctx) is True and "www-authenticate" in hdrs(ctx.answer_headers)


def test_clock_skew():
    pipe = make_pipeline([{"name": "hmac-auth", "config": {"clock_skew": 30}}], CONSUMERS)
    ctx = signed(when=time.time() - 120)
    assert run(pipe, ctx) is True and "clock skew" in error_of(ctx)


def test_replay_is_refused():
    pipe = make_pipeline([{"name": "hmac-auth"}], CONSUMERS)
    first = signed()
    again = make_ctx(headers=list(first.headers))
    assert run(pipe, first) is False
    assert run(pipe, again) is True and error_of(again) == "Signature already used"


def test_enforced_headers_must_be_signed():
    pipe = make_pipeline([{"name": "hmac-auth"}], CONSUMERS)
    ctx = signed(names=("date",))
    assert run(pipe, ctx) is True and "request-line" in error_of(ctx)


def test_tampered_path_fails():
    pipe = make_pipeline([{"name": "hmac-auth"}], CONSUMERS)
    ctx = signed(path="/orders/1")
    ctx.path = "/orders/2"
    assert run(pipe, ctx) is True and ctx.answer_status == 401


def _digest(body: bytes) -> tuple[bytes, bytes]:
    return (b"Digest", b"SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()))


def test_body_digest():
    pipe = make_pipeline([{"name": "hmac-auth", "config": {"validate_request_body": True}}], CONSUMERS)
    assert pipe.needs_body
    names = ("date", "request-line", "digest")
    ctx = signed(method="POST", names=names, extra=[_digest(b'{"a":1}')])
    ctx.body, ctx.body_size = b'{"a":1}', 7
    assert run(pipe, ctx) is False
    ctx = signed(method="POST", names=names, extra=[_digest(b'{"a":1}')], when=time.time() - 2)
    ctx.body, ctx.body_size = b'{"a":2}', 7
    assert run(pipe, ctx) is True and error_of(ctx) == "Body digest does not match"
    content_digest = (b"Content-Digest", b"sha-256=:" + base64.b64encode(hashlib.sha256(b"xy").digest()) + b":")
    ctx = signed(method="POST", names=("date", "request-line", "content-digest"), extra=[content_digest],
                 when=time.time() - 3)
    ctx.body, ctx.body_size = b"xy", 2
    assert run(pipe, ctx) is False
    # the server did not buffer a body that exists: refused, never skipped
    ctx = signed(method="POST", names=names, extra=[_digest(b"z")], when=time.time() - 4)
    ctx.body_size = 1
    assert run(pipe, ctx) is True and ctx.answer_status == 500
    # digest not covered by the signature
    ctx = signed(method="POST", extra=[_digest(b"")], when=time.time() - 5)
    assert run(pipe, ctx) is True and ctx.answer_status == 401
