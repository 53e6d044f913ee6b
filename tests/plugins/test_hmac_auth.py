"""hmac-auth: signed requests, clock skew, replay guard, enforced headers, body digest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from email.utils import formatdate

import pytest
from fastgw._core import HmacAuthStep
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.pipeline import PipelineError
from fastgw.plugins import hmac_auth
from fastgw.replay import LocalReplayGuard
from fastgw.shared import SharedRegion

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


def test_replay_guard_is_shared_by_the_routes_of_a_worker():
    # A signature that does not cover the request line is valid on any route: used on one,
    # it is used on all of them (the worker's guard is shared, not one per route).
    guard = LocalReplayGuard()
    config = {"enforce_headers": ["date"]}
    orders = make_pipeline([{"name": "hmac-auth", "config": config}], CONSUMERS, services={"replay": guard})
    users = make_pipeline([{"name": "hmac-auth", "config": config}], CONSUMERS, services={"replay": guard},
                          resource="/users/{id}")
    first = signed(names=("date",))
    again = make_ctx(path="/users/1", headers=list(first.headers))
    assert run(orders, first) is False
    assert run(users, again) is True and error_of(again) == "Signature already used"


def test_a_signature_is_remembered_until_its_date_leaves_the_window():
    guard = LocalReplayGuard()
    pipe = make_pipeline([{"name": "hmac-auth", "config": {"clock_skew": 60}}], CONSUMERS, services={"replay": guard})
    sent = time.time() - 50
    assert run(pipe, signed(when=sent)) is False
    (expires,) = guard._seen.values()
    # usable until sent + 60 (the Date has whole seconds): kept ~10-12 s, not 2 x skew
    assert 9 <= expires - time.monotonic() <= 12.5


def test_a_full_replay_guard_refuses_the_request(tmp_path):
    region = SharedRegion.create(replay_slots=64, counter_slots=64, directory=str(tmp_path))
    try:
        guard = region.replay_guard()
        for i in range(64):                      # every slot of every window taken
            assert guard.first_use(b"token-%d" % i, 60) is True
        pipe = make_pipeline([{"name": "hmac-auth"}], CONSUMERS, services={"replay": guard})
        ctx = signed()
        assert run(pipe, ctx) is True and ctx.answer_status == 503 and error_of(ctx) == "replay guard unavailable"
    finally:
        region.close()


def test_clock_skew_is_bounded():
    with pytest.raises(PipelineError) as err:
        make_pipeline([{"name": "hmac-auth", "config": {"clock_skew": 86401}}], CONSUMERS)
    assert "clock_skew" in str(err.value.errors)


def test_dates_are_read_once_and_remembered_within_bounds():
    """The Date of a signed request is parsed once per distinct value (clients send the same
    second's Date many times) and reads as email.utils reads it; a flood of distinct values
    keeps the memo bounded."""
    from email.utils import parsedate_to_datetime

    from fastgw.plugins import hmac_auth

    now = formatdate(time.time(), usegmt=True)
    for value in (now, now, "Tue, 07 Jun 2024 20:51:35 GMT", "Tue, 07 Jun 2024 20:51:35 +0200", "nonsense", ""):
        want = None
        try:
            want = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            pass
        assert hmac_auth.date_seconds(value) == want
        assert value in hmac_auth._dates
    for i in range(3 * hmac_auth._DATES_MAX):
        hmac_auth.date_seconds(formatdate(1_700_000_000 + i, usegmt=True))
    assert len(hmac_auth._dates) <= hmac_auth._DATES_MAX
    pipe = make_pipeline([{"name": "hmac-auth"}], CONSUMERS)
    ctx = make_ctx(headers=[(b"Date", b"nonsense"), (b"Authorization",
                                                     b'hmac username="alice", headers="date request-line", signature="x"')])
    assert run(pipe, ctx) is True and error_of(ctx) == "Invalid Date header"


# -- the C step (HmacAuthStep) against the plugin's Python, on random signed requests ------

_HM_NAMES = ["date", "x-date", "request-line", "accept", "x-note"]


@st.composite
def hm_requests(draw):  # type: ignore[no-untyped-def]
    """A request signed (or not quite) every way the step reads or hands on."""
    names = draw(st.lists(st.sampled_from(_HM_NAMES[1:]), max_size=3, unique=True))
    if draw(st.integers(0, 4)):
        names = ["date", *names]
    offset = draw(st.sampled_from([0, 0, 0, -5, -200, -400, 400]))
    date = formatdate(time.time() + offset, usegmt=True)
    date_value = draw(st.sampled_from([date] * 6 + ["nonsense", ""]))
    headers: list[tuple[bytes, bytes]] = [(b"Date", date_value.encode())]
    if "x-date" in names or not draw(st.integers(0, 3)):
        headers.append((b"X-Date", draw(st.sampled_from([date, date, ""])).encode()))
    headers.append((b"Accept", draw(st.sampled_from([b"*/*", b"*/*", b"caf\xe9", b"text/plain "]))))
    if "x-note" in names or draw(st.booleans()):
        headers.append((b"X-Note", draw(st.sampled_from([b"a", b"b, c", b"\xff"]))))
    query = draw(st.sampled_from([b"", b"a=1", b"q=caf\xc3\xa9"]))
    user = draw(st.sampled_from(["alice"] * 5 + ["mallory"]))
    alg = draw(st.sampled_from(["hmac-sha256"] * 3 + ["hmac-sha512"] * 2 + ["hmac-md5"]))
    secret = draw(st.sampled_from([SECRET] * 5 + ["wrong-secret-0123456789"]))
    lines = []
    for n in names:
        if n == "request-line":
            lines.append(f"GET /orders/1{'?' + query.decode('latin-1') if query else ''} HTTP/1.1")
        else:
            found = [v.decode("latin-1") for k, v in headers if k.decode().lower() == n]
            if found:
                lines.append(f"{n}: {found[0]}")
    digest = {"hmac-sha256": hashlib.sha256, "hmac-sha512": hashlib.sha512}.get(alg, hashlib.sha256)
    sig = base64.b64encode(hmac.new(secret.encode(), "\n".join(lines).encode(), digest).digest()).decode()
    sig = draw(st.sampled_from([sig] * 5 + [sig[:-2] + "xx", ""]))
    params = [f'username="{user}"', f'algorithm="{alg}"', f'headers="{" ".join(names)}"', f'signature="{sig}"']
    params = draw(st.permutations(params))
    if draw(st.booleans()):
        params = [p for p in params if not p.startswith("algorithm")]
    sep = draw(st.sampled_from([", ", ",", " , ", ",\t"]))
    scheme = draw(st.sampled_from(["hmac ", "HMAC ", "Hmac  "]))
    tail = draw(st.sampled_from([""] * 4 + [",", " ", " junk", ", x=y", ', x="y"']))
    auth = scheme + sep.join(params) + tail
    headers.append((b"Authorization", auth.encode("latin-1")))
    return query, headers


def counted_step(plugin):  # type: ignore[no-untyped-def]
    """A HmacAuthStep like ``plugin``'s whose hand-ons to the plugin's Python are counted."""
    handed_on: list[object] = []

    def fallback(ctx):  # type: ignore[no-untyped-def]
        handed_on.append(ctx)
        return hmac_auth.Plugin.on_request(plugin, ctx)

    step = HmacAuthStep(fallback, plugin.table.hmac, plugin.algs, plugin.enforce, float(plugin.skew), plugin.hide,
                        plugin.challenge, plugin.replay, hmac_auth.date_seconds, hmac_auth.hmac_pads,
                        plugin.replay_waits, hmac_auth.body_digest_ok if plugin.check_body else None)
    return step, handed_on


def test_plainly_signed_requests_are_checked_in_c():
    """A request signed in the plain form passes in C, and its replay is refused there; a
    bad signature, an unknown user or a lenient spelling go to the plugin's Python."""
    pipe = make_pipeline([{"name": "hmac-auth"}], CONSUMERS)
    step, handed_on = counted_step(pipe.plugins[0])
    for alg in ("hmac-sha256", "hmac-sha512"):
        headers = signed(query=b"a=1", alg=alg).headers
        ctx = make_ctx(query=b"a=1", headers=list(headers))
        assert step(ctx) == 0 and ctx.consumer.name == "alice" and not _authorization(ctx)
        again = make_ctx(query=b"a=1", headers=list(headers))
        assert step(again) == 1 and again.answer_status == 401 and error_of(again) == "Signature already used"
    assert handed_on == []
    for ctx in (signed(secret="wrong-secret-0123456789"),
                make_ctx(headers=[(b"Authorization", b'hmac username="mallory", signature="x"')])):
        assert step(ctx) == 1 and ctx.answer_status == 401 and error_of(ctx) == "Invalid signature"
    assert len(handed_on) == 2


def _authorization(ctx):  # type: ignore[no-untyped-def]
    return [v for k, v in ctx.headers if k.lower() == b"authorization"]


@pytest.mark.parametrize("enforce", [[], ["date", "request-line"]])
@settings(max_examples=250, deadline=None)
@given(req=hm_requests())
def test_the_c_step_answers_as_the_plugin_does(enforce, req):
    """Every request gets from the pipeline (HmacAuthStep in C, the plugin's Python for what
    it hands on) what the plugin's Python alone gives it: pass or the same status and
    error, the same consumer, the header hidden alike. Each side has its own replay guard,
    fed the same requests in the same order."""
    query, headers = req
    entry = {"name": "hmac-auth", "config": {"enforce_headers": enforce}}
    with_c = make_pipeline([entry], CONSUMERS)
    python = make_pipeline([entry], CONSUMERS).plugins[0]
    assert isinstance(with_c.plugins[0].native, HmacAuthStep)
    step, handed_on = counted_step(with_c.plugins[0])
    for _ in range(2):          # the second time, a good signature is a replay
        a = make_ctx(query=query, headers=list(headers))
        b = make_ctx(query=query, headers=list(headers))
        answered = bool(step(a))
        assert answered == bool(hmac_auth.Plugin.on_request(python, b))
        assert (a.answer_status, a.answer_body) == (b.answer_status, b.answer_body)
        assert getattr(a.consumer, "name", None) == getattr(b.consumer, "name", None)
        assert _authorization(a) == _authorization(b)


@settings(max_examples=200, deadline=None)
@given(secret=st.binary(max_size=200), msg=st.binary(max_size=300),
       alg=st.sampled_from([hashlib.sha256, hashlib.sha384, hashlib.sha512]))
def test_hmac_from_pad_states_is_hmac(secret, msg, alg):
    """The step's HMAC (the key's pads taken in once, then copies) is RFC 2104's, keys
    longer than the hash's block included."""
    from fastgw.plugins.hmac_auth import hmac_pads

    inner, outer = hmac_pads(secret, alg)
    i = inner.copy()
    i.update(msg)
    o = outer.copy()
    o.update(i.digest())
    assert o.digest() == hmac.new(secret, msg, alg).digest()


def test_the_c_step_claims_in_the_node_table(tmp_path):
    """With the node's guard the step claims a signature in the shared table itself: the
    first use passes and is recorded there, a second (from any route or worker) is refused,
    and the plugin's Python sees the claim too."""
    region = SharedRegion.create(replay_slots=64, counter_slots=64, directory=str(tmp_path))
    try:
        guard = region.replay_guard()
        pipe = make_pipeline([{"name": "hmac-auth"}], CONSUMERS, services={"replay": guard})
        step, handed_on = counted_step(pipe.plugins[0])
        headers = signed(query=b"a=2").headers
        assert step(make_ctx(query=b"a=2", headers=list(headers))) == 0 and guard.live_count() == 1
        again = make_ctx(query=b"a=2", headers=list(headers))
        assert step(again) == 1 and error_of(again) == "Signature already used" and not handed_on
        token = dict(headers)[b"Authorization"].split(b'signature="')[1][:-1]
        assert guard.first_use(token, 60) is False
    finally:
        region.close()


@pytest.mark.parametrize("enforce", [[], ["date", "request-line"]])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=hm_requests())
def test_with_the_guard_in_redis_the_c_step_answers_as_the_plugin_does(redis, enforce, req):
    """With the replay guard in Redis the step checks the signature in C and the request
    waits on the guard's answer, the verdict its result: for every request, what the
    plugin's Python alone gives it (two guards on one Redis, each its own key prefix)."""
    import asyncio
    import uuid

    from fastgw.replay import RedisReplayGuard
    from fastgw.resp import RespClient

    query, headers = req
    entry = {"name": "hmac-auth", "config": {"enforce_headers": enforce}}
    prefix = uuid.uuid4().hex

    async def settled(result):  # type: ignore[no-untyped-def]
        return await result if hasattr(result, "__await__") else result

    async def main() -> None:
        clients = [RespClient(redis.url, 1.0), RespClient(redis.url, 1.0)]
        try:
            with_c = make_pipeline([entry], CONSUMERS, services={"replay": RedisReplayGuard(clients[0], prefix + "c:")})
            python = make_pipeline([entry], CONSUMERS,
                                   services={"replay": RedisReplayGuard(clients[1], prefix + "p:")}).plugins[0]
            assert with_c.plugins[0].replay_waits and isinstance(with_c.plugins[0].native, HmacAuthStep)
            step, _ = counted_step(with_c.plugins[0])
            for _ in range(2):          # the second time, a good signature is a replay
                a = make_ctx(query=query, headers=list(headers))
                b = make_ctx(query=query, headers=list(headers))
                answered = bool(await settled(step(a)))
                assert answered == bool(await settled(hmac_auth.Plugin.on_request(python, b)))
                assert (a.answer_status, a.answer_body) == (b.answer_status, b.answer_body)
                assert getattr(a.consumer, "name", None) == getattr(b.consumer, "name", None)
                assert _authorization(a) == _authorization(b)
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(main())


def test_with_the_guard_in_redis_a_plainly_signed_request_waits_from_c(redis):
    """The step hands nothing on: the request waits on the guard's future (the chain's
    waiting state), and its result is the verdict; the replay is refused the same way, and
    a Redis that is gone refuses (503), fail closed."""
    import asyncio

    from fastgw.replay import RedisReplayGuard
    from fastgw.resp import RespClient

    async def main() -> None:
        client = RespClient(redis.url, 0.3)
        try:
            pipe = make_pipeline([{"name": "hmac-auth"}], CONSUMERS, services={"replay": RedisReplayGuard(client)})
            step, handed_on = counted_step(pipe.plugins[0])
            headers = signed(query=b"a=3").headers
            ctx = make_ctx(query=b"a=3", headers=list(headers))
            waiting = step(ctx)
            assert asyncio.isfuture(waiting) and not handed_on                   # waits, from C
            assert await waiting == 0 and ctx.consumer.name == "alice" and not _authorization(ctx)
            # In the route's chain: the waiting state, then resumed with the verdict.
            headers = signed(query=b"a=5").headers
            ctx = make_ctx(query=b"a=5", headers=list(headers))
            assert pipe.chain.start_request(ctx) == 2 and asyncio.isfuture(ctx._waiting)
            assert pipe.chain.resume_request(ctx, await ctx._waiting) == 0 and ctx.consumer.name == "alice"
            again = make_ctx(query=b"a=5", headers=list(headers))
            waiting = step(again)
            assert await waiting == 1 and error_of(again) == "Signature already used" and not handed_on
            redis.stop()
            gone = make_ctx(query=b"a=4", headers=list(signed(query=b"a=4").headers))
            assert await step(gone) == 1 and gone.answer_status == 503
        finally:
            await client.aclose()

    asyncio.run(main())


_BODY_DIGESTS = {
    "Digest SHA-256": lambda b: (b"Digest", b"SHA-256=" + base64.b64encode(hashlib.sha256(b).digest())),
    "Digest SHA-512": lambda b: (b"Digest", b"SHA-512=" + base64.b64encode(hashlib.sha512(b).digest())),
    "Content-Digest": lambda b: (b"Content-Digest", b"sha-256=:" + base64.b64encode(hashlib.sha256(b).digest()) + b":"),
    "Digest of another body": lambda b: (b"Digest", b"SHA-256=" + base64.b64encode(hashlib.sha256(b + b"x").digest())),
    "Digest MD5": lambda b: (b"Digest", b"MD5=" + base64.b64encode(hashlib.md5(b).digest())),
}


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=64), kind=st.sampled_from(sorted(_BODY_DIGESTS)), signed_digest=st.booleans(),
       buffered=st.sampled_from(["yes", "yes", "no body", "not buffered"]))
def test_with_body_validation_the_c_step_answers_as_the_plugin_does(body, kind, signed_digest, buffered):
    """validate_request_body: the step checks the signed digest against the buffered body;
    for any body, digest and signing, the answer is the plugin's Python's (pass, or the same
    status and error), and a request that passes never reaches the Python."""
    entry = {"name": "hmac-auth", "config": {"validate_request_body": True}}
    with_c = make_pipeline([entry], CONSUMERS)
    python = make_pipeline([entry], CONSUMERS).plugins[0]
    step, handed_on = counted_step(with_c.plugins[0])
    digest = _BODY_DIGESTS[kind](body)
    names = ("date", "request-line", digest[0].decode().lower()) if signed_digest else ("date", "request-line")
    when = time.time()
    outcomes = []
    for side in ("c", "python"):
        ctx = signed(method="POST", names=names, extra=[digest], when=when)
        if buffered == "yes":
            ctx.body, ctx.body_size = body, len(body)
        elif buffered == "not buffered":
            ctx.body_size = len(body) + 1
        answered = bool(step(ctx) if side == "c" else hmac_auth.Plugin.on_request(python, ctx))
        outcomes.append((answered, ctx.answer_status, ctx.answer_body, getattr(ctx.consumer, "name", None)))
    assert outcomes[0] == outcomes[1]
    if not outcomes[0][0]:
        assert handed_on == []                              # passed in C
