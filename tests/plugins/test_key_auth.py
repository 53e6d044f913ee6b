"""key-auth: schema, allow and deny paths, hidden credentials, timing-safe comparison."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgw.consumers
from fastgw import _core
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


@pytest.mark.parametrize("value", [b" alice-key-1", b"alice-key-1\t", b"\x0balice-key-1\x0c ",
                                   b"alice-key-1\r\n", b"alice-key-1"])
def test_key_with_ascii_whitespace_around_it_still_authenticates(value: bytes):
    # (as bytes.strip: a header set by an earlier plugin, or a key in the query)
    ctx = make_ctx(headers=[(b"apikey", value)])
    assert run(pipe(), ctx) is False and ctx.consumer.name == "alice"


@pytest.mark.parametrize("value", [b"alice-key-1\x00", b"\x1falice-key-1", b"alice-\tkey-1", b"\xa0alice-key-1"])
def test_other_bytes_around_or_inside_the_key_are_not_stripped(value: bytes):
    ctx = make_ctx(headers=[(b"apikey", value)])
    assert run(pipe(), ctx) is True and ctx.answer_status == 401


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


def _siphash24_reference(key: bytes, data: bytes) -> int:
    """SipHash-2-4 straight from the paper, in Python: the oracle for the C version."""
    mask = (1 << 64) - 1

    def rotl(x: int, b: int) -> int:
        return ((x << b) | (x >> (64 - b))) & mask

    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def rounds(n: int) -> None:
        for _ in range(n):
            v[0] = (v[0] + v[1]) & mask; v[1] = rotl(v[1], 13) ^ v[0]; v[0] = rotl(v[0], 32)  # noqa: E702
            v[2] = (v[2] + v[3]) & mask; v[3] = rotl(v[3], 16) ^ v[2]  # noqa: E702
            v[0] = (v[0] + v[3]) & mask; v[3] = rotl(v[3], 21) ^ v[0]  # noqa: E702
            v[2] = (v[2] + v[1]) & mask; v[1] = rotl(v[1], 17) ^ v[2]; v[2] = rotl(v[2], 32)  # noqa: E702

    tail = len(data) % 8
    words = [int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data) - tail, 8)]
    words.append(int.from_bytes(data[len(data) - tail:], "little") | ((len(data) & 0xFF) << 56))
    for m in words:
        v[3] ^= m
        rounds(2)
        v[0] ^= m
    v[2] ^= 0xFF
    rounds(4)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def test_siphash_matches_the_published_vectors():
    key = bytes(range(16))
    # The SipHash paper (Aumasson & Bernstein, 2012): empty input, and its 15-byte example.
    assert _core.siphash(key, b"") == 0x726FDB47DD0E0E31
    assert _core.siphash(key, bytes(range(15))) == 0xA129CA6149BE45E5
    assert _siphash24_reference(key, bytes(range(15))) == 0xA129CA6149BE45E5


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=16, max_size=16), data=st.binary(max_size=80))
def test_siphash_agrees_with_the_reference(key: bytes, data: bytes):
    assert _core.siphash(key, data) == _siphash24_reference(key, data)


def test_lookup_is_by_keyed_digest_not_raw_key():
    table = fastgw.consumers.ConsumerTable(CONSUMERS)
    other = fastgw.consumers.ConsumerTable(CONSUMERS)
    assert all(isinstance(d, int) and 0 <= d < 2**64 for d in table.keys.table)
    assert b"alice-key-1" not in table.keys.table
    # a per-process (here: per-table) random secret: the same key indexes differently
    assert table.keys.digest(b"alice-key-1") != other.keys.digest(b"alice-key-1")
    assert table.key_lookup(b"alice-key-1").name == "alice"


def test_a_digest_hit_is_confirmed_on_the_key_itself():
    index = _core.KeyIndex()
    assert index.add(b"alice-key-1", "alice") and not index.add(b"alice-key-1", "mallory")
    # Plant another key under alice's digest: a digest match alone must not authenticate.
    index._plant(index.digest(b"alice-key-1"), b"alice-key-2", "alice")
    assert index.lookup(b"alice-key-1") is None
    assert index.lookup(b"alice-key-2") is None  # its own digest is not in the index


def test_many_keys_each_found_and_no_other():
    # The lookup probes a C table (open addressing): with 2 000 keys many share a home
    # slot and probe runs cross the table's end; every key must still find its consumer.
    index = _core.KeyIndex()
    keys = [f"key-{i:05d}".encode() for i in range(2000)]
    for i, k in enumerate(keys):
        assert index.add(k, f"c{i}")
    assert len(index) == 2000
    assert all(index.lookup(k) == f"c{i}" for i, k in enumerate(keys))
    assert all(index.lookup(f"other-{i}".encode()) is None for i in range(2000))
    assert index.lookup(b"") is None


def test_constant_time_equal():
    eq = _core.constant_time_equal
    assert eq(b"", b"") and eq(b"abc", b"abc")
    assert not eq(b"abc", b"abd") and not eq(b"abc", b"ab") and not eq(b"", b"a")


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
