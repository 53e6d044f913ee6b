"""basic-auth: bcrypt and scrypt hashes, plain text refused, deny paths, hidden header."""

from __future__ import annotations

import base64

import bcrypt
import pytest
from jsonschema import Draft202012Validator

from fastgw.consumers import CREDENTIAL_SCHEMAS
from fastgw.plugins.basic_auth import scrypt_hash

from .util import error_of, hdrs, make_ctx, make_pipeline, run

BCRYPT = bcrypt.hashpw(b"alice-pw", bcrypt.gensalt(4)).decode()
SCRYPT = scrypt_hash("bob-pw", n=2 ** 10)
CONSUMERS = [
    {"name": "alice", "credentials": {"basic-auth": [{"username": "alice", "password": BCRYPT}]}},
    {"name": "bob", "credentials": {"basic-auth": [{"username": "bob", "password": SCRYPT}]}},
]


def basic(user: str, pw: str) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", b"Basic " + base64.b64encode(f"{user}:{pw}".encode()))]


@pytest.mark.parametrize("user,pw", [("alice", "alice-pw"), ("bob", "bob-pw")])
def test_good_password(user, pw):
    pipe = make_pipeline([{"name": "basic-auth"}], CONSUMERS)
    for _ in range(2):  # second time from the verified cache
        ctx = make_ctx(headers=basic(user, pw))
        assert run(pipe, ctx) is False and ctx.consumer.name == user
        assert "authorization" not in hdrs(ctx.headers)


@pytest.mark.parametrize("headers", [
    [], basic("alice", "wrong"), basic("nobody", "alice-pw"), [(b"Authorization", b"Basic !!notb64")],
    [(b"Authorization", b"Bearer x")], [(b"Authorization", b"Basic " + base64.b64encode(b"nocolon"))]])
def test_denied(headers):
    pipe = make_pipeline([{"name": "basic-auth"}], CONSUMERS)
    ctx = make_ctx(headers=headers)
    assert run(pipe, ctx) is True and ctx.answer_status == 401
    assert hdrs(ctx.answer_headers)["www-authenticate"] == 'Basic realm="fastgw"'
    assert error_of(ctx) in ("Unauthorized", "Invalid authentication credentials")


def test_cache_does_not_accept_another_password():
    pipe = make_pipeline([{"name": "basic-auth"}], CONSUMERS)
    assert run(pipe, make_ctx(headers=basic("alice", "alice-pw"))) is False
    ctx = make_ctx(headers=basic("alice", "alice-pw2"))
    assert run(pipe, ctx) is True


def test_plain_text_password_refused_by_credential_schema():
    v = Draft202012Validator(CREDENTIAL_SCHEMAS["basic-auth"])
    assert not list(v.iter_errors([{"username": "a", "password": BCRYPT}]))
    assert not list(v.iter_errors([{"username": "a", "password": SCRYPT}]))
    assert list(v.iter_errors([{"username": "a", "password": "hunter2"}]))


@pytest.mark.parametrize("stored,expect", [
    ([BCRYPT], "$2b$04$"),
    ([bcrypt.hashpw(b"x", bcrypt.gensalt(5)).decode()] * 2 + [BCRYPT], "$2b$05$"),   # the most common
    ([SCRYPT], "scrypt$1024$8$1$"),
])
def test_unknown_users_are_checked_against_a_hash_of_the_same_cost(monkeypatch, stored, expect):
    """SECURITY: a name that does not exist gets a check that costs what a real one costs
    (a cheaper dummy would let the answer time tell which names exist)."""
    from fastgw.plugins import basic_auth

    consumers = [{"name": f"c{i}", "credentials": {"basic-auth": [{"username": f"u{i}", "password": h}]}}
                 for i, h in enumerate(stored)]
    checked: list[str] = []
    real = basic_auth.verify_password

    def recording(password: bytes, hashed: str) -> bool:
        checked.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(basic_auth, "verify_password", recording)
    pipe = make_pipeline([{"name": "basic-auth"}], consumers)
    ctx = make_ctx(headers=basic("nobody", "pw"))
    assert run(pipe, ctx) is True and ctx.answer_status == 401
    assert len(checked) == 1 and checked[0].startswith(expect)
    assert checked[0] not in stored
    if expect.startswith("scrypt"):    # the same derived-key length too
        assert len(base64.b64decode(checked[0].split("$")[5])) == len(base64.b64decode(SCRYPT.split("$")[5]))
    assert not real(b"pw", checked[0]) and not real(b"", checked[0])


def test_too_many_checks_waiting_answer_429_without_a_check(monkeypatch):
    from fastgw.plugins import basic_auth

    pipe = make_pipeline([{"name": "basic-auth"}], CONSUMERS)
    plugin = pipe.plugins[0]
    checked: list[str] = []
    monkeypatch.setattr(basic_auth, "verify_password", lambda pw, h: checked.append(h) or False)
    plugin.pending = basic_auth.MAX_PENDING_CHECKS
    ctx = make_ctx(headers=basic("alice", "guess"))
    assert run(pipe, ctx) is True and ctx.answer_status == 429
    assert hdrs(ctx.answer_headers)["retry-after"] == "1" and not checked
    plugin.pending = basic_auth.MAX_PENDING_CHECKS - 1       # room for one more: checked
    ctx = make_ctx(headers=basic("alice", "guess"))
    assert run(pipe, ctx) is True and ctx.answer_status == 401 and len(checked) == 1
    assert plugin.pending == basic_auth.MAX_PENDING_CHECKS - 1   # back where it was after the check


def test_concurrent_requests_with_the_same_credentials_share_one_check(monkeypatch):
    """64 connections of one client arriving at once with an uncached password: one hash
    check, not 64 (which would queue ~64 x 250 ms of CPU at bcrypt cost 12); a different
    password is checked on its own; afterwards the cache answers."""
    import asyncio
    import threading
    import time

    from fastgw.plugins import basic_auth

    pipe = make_pipeline([{"name": "basic-auth"}], CONSUMERS)
    checked: list[bytes] = []
    lock = threading.Lock()
    real = basic_auth.verify_password

    def slow(password: bytes, hashed: str) -> bool:
        with lock:
            checked.append(password)
        time.sleep(0.2)                      # still running when the others arrive
        return real(password, hashed)

    monkeypatch.setattr(basic_auth, "verify_password", slow)

    async def burst() -> list[tuple[bool, int]]:
        ctxs = [make_ctx(headers=basic("alice", "alice-pw")) for _ in range(20)]
        ctxs += [make_ctx(headers=basic("alice", "wrong")) for _ in range(5)]
        answered = await asyncio.gather(*(pipe.run_request_async(c) for c in ctxs))
        return [(a, c.answer_status) for a, c in zip(answered, ctxs, strict=True)]

    results = asyncio.run(burst())
    assert results[:20] == [(False, 0)] * 20              # not answered: passed on
    assert all(a and status == 401 for a, status in results[20:])
    assert sorted(checked) == [b"alice-pw", b"wrong"]
    assert pipe.plugins[0].pending == 0 and not pipe.plugins[0]._inflight
    ctx = make_ctx(headers=basic("alice", "alice-pw"))
    assert run(pipe, ctx) is False and len(checked) == 2        # from the cache


def test_cached_credentials_are_answered_without_waiting():
    """Once verified, the credentials are a cache hit: the step answers at once and the
    request stays on the sync chain (no task); a miss returns something to wait on."""
    import asyncio

    pipe = make_pipeline([{"name": "basic-auth"}], CONSUMERS)

    async def states() -> list[int]:
        out = []
        for _ in range(2):
            ctx = make_ctx(headers=basic("alice", "alice-pw"))
            state = pipe.chain.start_request(ctx)
            if state == 2:
                assert await pipe.finish_request(ctx) is False
            out.append(state)
            assert ctx.consumer.name == "alice"
        return out

    assert asyncio.run(states()) == [2, 0]


def _counting_checks(monkeypatch) -> list[bytes]:
    from fastgw.plugins import basic_auth

    checked: list[bytes] = []
    real = basic_auth.verify_password
    monkeypatch.setattr(basic_auth, "verify_password", lambda pw, h: checked.append(pw) or real(pw, h))
    return checked


def test_remembered_credentials_are_answered_in_c_however_the_scheme_is_spelled(monkeypatch):
    """A verified token is remembered by the C step: the same token again, with the scheme
    in another case or white space around it, passes with no check and no Python step (the
    request stays on the lazy header path); another password for the same user does not."""
    from fastgw._core import BasicAuthStep

    checked = _counting_checks(monkeypatch)
    pipe = make_pipeline([{"name": "basic-auth"}], CONSUMERS)
    step = pipe.plugins[0].native
    assert isinstance(step, BasicAuthStep)
    assert run(pipe, make_ctx(headers=basic("alice", "alice-pw"))) is False and checked == [b"alice-pw"]
    token = base64.b64encode(b"alice:alice-pw")
    for value in (b"Basic " + token, b"BASIC " + token, b"basic  " + token + b" \t"):
        ctx = make_ctx(headers=[(b"Host", b"a"), (b"Authorization", value), (b"Accept", b"*/*")])
        assert pipe.chain.start_request(ctx) == 0 and ctx.consumer.name == "alice"
        assert "authorization" not in hdrs(ctx.headers) and "accept" in hdrs(ctx.headers)
    assert checked == [b"alice-pw"]
    ctx = make_ctx(headers=basic("alice", "alice-pw "))
    assert run(pipe, ctx) is True and ctx.answer_status == 401 and checked == [b"alice-pw", b"alice-pw "]


def test_credentials_are_remembered_by_a_keyed_digest_for_cache_ttl(monkeypatch):
    """SECURITY: what the step keeps is a 16-byte digest under a key of its own (two routes
    remember the same password apart), never the password or its base64; a remembered
    check lasts ``cache_ttl`` seconds, and ``cache_ttl: 0`` checks every request."""
    import time

    checked = _counting_checks(monkeypatch)
    short = make_pipeline([{"name": "basic-auth", "config": {"cache_ttl": 0.2}}], CONSUMERS)
    other = make_pipeline([{"name": "basic-auth"}], CONSUMERS)
    token = base64.b64encode(b"bob:bob-pw")
    for pipe in (short, other):
        assert run(pipe, make_ctx(headers=basic("bob", "bob-pw"))) is False
    a, b = short.plugins[0].native, other.plugins[0].native
    assert len(a.mark(token)) == 16 and a.mark(token) != b.mark(token) and a.mark(token) == a.mark(token)
    assert a.recall(a.mark(token)).name == "bob" and b.recall(a.mark(token)) is None
    kept = repr(a.remembered)
    assert b"bob-pw" not in kept.encode() and token.decode() not in kept
    assert run(short, make_ctx(headers=basic("bob", "bob-pw"))) is False and len(checked) == 2
    time.sleep(0.25)
    assert a.recall(a.mark(token)) is None
    assert run(short, make_ctx(headers=basic("bob", "bob-pw"))) is False and len(checked) == 3
    never = make_pipeline([{"name": "basic-auth", "config": {"cache_ttl": 0}}], CONSUMERS)
    for _ in range(2):
        assert run(never, make_ctx(headers=basic("bob", "bob-pw"))) is False
    assert len(checked) == 5 and not never.plugins[0].native.remembered
