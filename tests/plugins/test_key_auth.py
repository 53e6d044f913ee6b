"""key-auth: schema, allow and deny paths, hidden credentials, timing-safe comparison."""

from __future__ import annotations

import hmac

import pytest

import fastgw.consumers
from fastgw.pipeline import PipelineError

from .util import error_of, hdrs, make_ctx, make_pipeline, run

CONSUMERS = [
    {"name": "alice", "groups": ["gold"], "credentials": {"key-auth": ["alice-key-1", {"key": "alice-key-2"}]}},
    {"name": "bob", "credentials": {"key-auth": ["bob-secret-key"]}},
]


def pipe(config=None):
    return make_pipeline([{"name": "key-auth", "config": config or {}}], CONSUMERS)


def test_key_in_header_authenticates_and_is_hidden():
    ctx = make_ctx(headers=[(b"Host", b"a"), (b"ApiKey", b"alice-key-1")])
    assert run(pipe(), ctx) is False
    assert ctx.consumer.name == "alice"
    h = hdrs(ctx.headers)
    assert "apikey" not in h
    assert h["x-consumer-name"] == "alice" and h["x-consumer-groups"] == "gold"


def test_key_in_query_authenticates_and_is_removed():
    ctx = make_ctx(query=b"a=1&apikey=alice-key-2&b=2")
    assert run(pipe(), ctx) is False
    assert ctx.consumer.name == "alice"
    assert ctx.query == b"a=1&b=2"


def test_hide_credentials_false_forwards_the_key():
    ctx = make_ctx(headers=[(b"apikey", b"bob-secret-key")])
    assert run(pipe({"hide_credentials": False}), ctx) is False
    assert hdrs(ctx.headers)["apikey"] == "bob-secret-key"


def test_missing_key_is_401_with_challenge():
    ctx = make_ctx()
    assert run(pipe(), ctx) is True
    assert ctx.answer_status == 401 and ctx.status == 401
    assert hdrs(ctx.answer_headers)["www-authenticate"] == 'Key realm="fastgw"'
    assert error_of(ctx) == "No API key found in request"


def test_wrong_key_is_401():
    ctx = make_ctx(headers=[(b"apikey", b"alice-key-X")])
    assert run(pipe(), ctx) is True
    assert ctx.answer_status == 401 and error_of(ctx) == "Invalid authentication credentials"
    assert ctx.consumer is None


def test_custom_key_names_and_query_disabled():
    p = pipe({"key_names": ["x-api-key"], "key_in_query": False})
    ctx = make_ctx(headers=[(b"X-API-Key", b"bob-secret-key")])
    assert run(p, ctx) is False and ctx.consumer.name == "bob"
    ctx = make_ctx(query=b"x-api-key=bob-secret-key")
    assert run(p, ctx) is True and ctx.answer_status == 401


def test_compare_digest_is_on_the_path(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(fastgw.consumers.hmac, "compare_digest", spy)
    ctx = make_ctx(headers=[(b"apikey", b"alice-key-1")])
    assert run(pipe(), ctx) is False
    assert calls == [(b"alice-key-1", b"alice-key-1")]


def test_lookup_is_by_keyed_digest_not_raw_key():
    table = fastgw.consumers.ConsumerTable(CONSUMERS)
    assert b"alice-key-1" not in table.keys
    assert all(len(d) == 32 for d in table.keys)


def test_client_identity_headers_are_stripped():
    ctx = make_ctx(headers=[(b"apikey", b"bob-secret-key"), (b"X-Consumer-Name", b"admin"),
                            (b"x-consumer-groups", b"root")])
    assert run(pipe(), ctx) is False
    assert [v for k, v in ctx.headers if k.lower() == b"x-consumer-name"] == [b"bob"]
    assert [v for k, v in ctx.headers if k.lower() == b"x-consumer-groups"] == [b""]


def test_schema_refuses_bad_settings():
    with pytest.raises(PipelineError) as err:
        pipe({"key_names": [], "bogus": 1})
    text = "\n".join(err.value.errors)
    assert "services[0].resources./orders/{id}.GET.plugins[0].config.key_names" in text
    assert "bogus" in text
