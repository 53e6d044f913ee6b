"""Access log: JSON lines with every field, batching, reopen on SIGUSR1."""

from __future__ import annotations

import asyncio
import os
import signal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.accesslog import FIELDS, AccessLog


def _rec(i: int) -> tuple:
    return (1700000000.25 + i, f"req-{i}", "127.0.0.1", "alice" if i % 2 else None, "shop", "prod",
            "/orders/{id}", "GET", f"/orders/{i}", 200 + i % 3, 10, 200 + i, 1.23456, 0.5)


def test_lines_parse_with_all_fields(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path), max_records=1000)
    for i in range(5):
        log.append(_rec(i))
    assert path.read_bytes() == b""  # buffered, nothing written on the hot path
    log.flush()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 5
    row = orjson.loads(lines[1])
    assert tuple(row) == FIELDS
    assert row["time"] == "2023-11-14T22:13:21.250Z"
    assert row["request_id"] == "req-1" and row["consumer"] == "alice" and row["status"] == 201
    assert row["total_ms"] == 1.235 and row["upstream_ms"] == 0.5 and row["bytes_out"] == 201
    log.close()


def test_flush_on_count(tmp_path):
    path = tmp_path / "a.log"
    log = AccessLog(str(path), max_records=3)
    for i in range(7):
        log.append(_rec(i))
    assert len(path.read_bytes().splitlines()) == 6
    log.close()
    assert len(path.read_bytes().splitlines()) == 7


def test_timer_flush_and_sigusr1_reopen(tmp_path):
    path = tmp_path / "a.log"
    rotated = tmp_path / "a.log.1"

    async def main() -> None:
        log = AccessLog(str(path), interval=0.02)
        log.start()
        log.append(_rec(0))
        await asyncio.sleep(0.1)
        assert len(path.read_bytes().splitlines()) == 1
        os.rename(path, rotated)
        log.append(_rec(1))
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.sleep(0.1)
        log.append(_rec(2))
        await asyncio.sleep(0.1)
        log.close()

    asyncio.run(main())
    assert [orjson.loads(x)["request_id"] for x in rotated.read_bytes().splitlines()] == ["req-0", "req-1"]
    assert [orjson.loads(x)["request_id"] for x in path.read_bytes().splitlines()] == ["req-2"]


def test_stdout(capfd):
    log = AccessLog("-")
    log.append(_rec(3))
    log.close()
    out = capfd.readouterr().out
    assert orjson.loads(out)["path"] == "/orders/3"


# ---------------------------------------------------------------- compiled twin

_TEXT = st.one_of(st.none(), st.text(max_size=30))
_RECORD = st.tuples(
    st.floats(min_value=0, max_value=4e9, allow_nan=False),              # time (epoch s)
    st.text(max_size=20), st.text(max_size=40), _TEXT, _TEXT, _TEXT, _TEXT,
    st.sampled_from(["GET", "POST", "DELETE", "BREW"]), st.text(max_size=60),
    st.integers(min_value=100, max_value=599),
    st.integers(min_value=0, max_value=2**40), st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=0, max_value=10**9).map(lambda us: us / 1000.0),  # total_ms, as the server makes it
    st.integers(min_value=0, max_value=10**9).map(lambda us: us / 1000.0),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_RECORD, max_size=5))
def test_compiled_formatter_writes_the_same_bytes(records) -> None:
    from fastgw._core import format_access_records

    from fastgw.accesslog import format_records_py

    assert format_access_records(records) == format_records_py(records)
    for line in format_access_records(records).splitlines():
        orjson.loads(line)


# Mostly plain ASCII, now and then a character JSON must escape or a non-ASCII one: the
# compiled formatter scans 8 bytes a step over the plain run a string starts with, so the
# first escape must be found at every offset of a word, after runs of every length.
_PLAIN = "abcxyz/-._~019?=&"
_SPECIAL = '"\\\n\r\t\x00\x1f\x7f\u00e9\u0080\u00ff\u20ac'
_MOSTLY_PLAIN = st.text(alphabet=st.sampled_from(list(_PLAIN * 3 + _SPECIAL)), max_size=40)


@settings(max_examples=400, deadline=None)
@given(_MOSTLY_PLAIN, _MOSTLY_PLAIN.filter(lambda t: all(ord(c) < 256 for c in t)))
def test_escapes_are_found_at_every_offset_of_a_plain_run(text: str, latin: str) -> None:
    from fastgw._core import AccessLines, format_access_records

    from fastgw.accesslog import format_records_py

    record = (1.0, text, text, text, text, text, text, "GET", latin, 200, 1, 2, 0.5, 0.25)
    expected = format_records_py([record])
    assert format_access_records([record]) == expected              # str fields: UTF-8 text
    lines = AccessLines()                                            # target bytes: latin-1
    lines.add_line(1.0, text, text, text, text, text, text, b"GET", latin.encode("latin-1"), 200, 1, 2,
                   500, 250)
    assert lines.take() == expected


def test_unformattable_record_costs_its_batch_not_the_log(tmp_path) -> None:
    from fastgw.accesslog import AccessLog

    path = tmp_path / "a.log"
    log = AccessLog(str(path))
    log.append(("not a time",) + (None,) * 13)           # broken record
    log.flush()
    assert log.errors == 1
    log.append((1.0, "r", "ip", "\ud800", "s", "p", "/a", "GET", "/a", 200, 1, 2, 0.5, 0.25))
    log.flush()
    log.close()
    line = orjson.loads(path.read_bytes().splitlines()[0])
    assert line["request_id"] == "r" and line["consumer"] == "?"


_LINE = st.tuples(
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.text(max_size=20), st.text(max_size=40), _TEXT, _TEXT, _TEXT, _TEXT,
    st.binary(min_size=1, max_size=10),                                   # method, raw bytes
    st.binary(max_size=60),                                               # target, raw bytes
    st.integers(min_value=100, max_value=599),
    st.integers(min_value=0, max_value=2**40), st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**9),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=5))
def test_lines_written_by_the_server_match_the_batch_formatter(lines) -> None:
    """AccessLines (what the server writes per exchange, from C values) gives the bytes the
    batch formatter gives for the same record, the method and target read as latin-1."""
    from fastgw._core import AccessLines, format_access_records

    out = AccessLines()
    records = []
    for (ts, rid, ip, consumer, service, stage, resource, method, target, status, bin_, bout,
         total_us, up_us) in lines:
        out.add_line(ts, rid, ip, consumer, service, stage, resource, method, target, status, bin_,
                     bout, total_us, up_us)
        records.append((ts, rid, ip, consumer, service, stage, resource, method.decode("latin-1"),
                        target.decode("latin-1"), status, bin_, bout, total_us / 1000.0, up_us / 1000.0))
    assert len(out) == len(lines)
    assert out.take() == format_access_records(records)
    assert len(out) == 0 and out.take() == b""


def test_flush_writes_server_lines_and_queued_records(tmp_path) -> None:
    path = tmp_path / "a.log"
    log = AccessLog(str(path))
    log.lines.add_line(1.5, "from-c", "10.0.0.1", None, "shop", "prod", "/a", b"GET", b"/a?x=\xff", 200,
                       10, 20, 1500, 1000)
    log.append(_rec(7))
    log.flush()
    rows = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert [r["request_id"] for r in rows] == ["from-c", "req-7"]
    assert rows[0]["path"] == "/a?x=\u00ff" and rows[0]["total_ms"] == 1.5 and rows[0]["upstream_ms"] == 1.0
    log.flush()
    assert len(path.read_bytes().splitlines()) == 2
    log.close()


@pytest.mark.parametrize("pos", [0, 3, 7, 8, 12, 15, 16, 23, 29])
def test_every_char_escaped_at_every_word_lane(pos: int) -> None:
    # Every byte value (a code point below 256 in text, a raw byte in the latin-1 target)
    # at every position of an eight-byte word, and in the tail after the last whole word,
    # must come out as orjson writes it (kept from an eight-bytes-per-step escaper that was
    # tried and dropped: it guards any such scan coming back).
    from fastgw._core import AccessLines, format_access_records

    from fastgw.accesslog import format_records_py

    base = "abcdefghijklmnopqrstuvwxyz0123"
    for c in range(256):
        text = base[:pos] + chr(c) + base[pos + 1:]
        rec = (1.5, text, "ip", text, "s", "p", "/r", "GET", text, 200, 1, 2, 0.5, 0.25)
        assert format_access_records([rec]) == format_records_py([rec]), c
        assert orjson.loads(format_access_records([rec]))["path"] == text
        out = AccessLines()
        out.add_line(1.5, text, "ip", text, "s", "p", "/r", b"GET", text.encode("latin-1"), 200, 1, 2, 500, 250)
        assert out.take() == format_access_records([rec]), c
