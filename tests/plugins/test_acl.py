"""acl: allow and deny by consumer group, after key-auth."""

from __future__ import annotations

import pytest

from fastgw.pipeline import PipelineError

from .util import make_ctx, make_pipeline, run

CONSUMERS = [
    {"name": "alice", "groups": ["gold"], "credentials": {"key-auth": ["alice-key-1"]}},
    {"name": "bob", "groups": ["silver", "banned"], "credentials": {"key-auth": ["bob-key-11"]}},
]


def status(config, key):
    pipe = make_pipeline([{"name": "acl", "config": config}, {"name": "key-auth"}], CONSUMERS)
    ctx = make_ctx(headers=[(b"apikey", key)] if key else [])
    return ctx.answer_status if run(pipe, ctx) else 200


def test_allow_groups():
    assert status({"allow_groups": ["gold"]}, b"alice-key-1") == 200
    assert status({"allow_groups": ["gold"]}, b"bob-key-11") == 403


def test_deny_groups_win():
    assert status({"deny_groups": ["banned"]}, b"bob-key-11") == 403
    assert status({"deny_groups": ["banned"]}, b"alice-key-1") == 200
    assert status({"allow_groups": ["silver"], "deny_groups": ["banned"]}, b"bob-key-11") == 403


def test_no_consumer_is_401():
    pipe = make_pipeline([{"name": "acl", "config": {"allow_groups": ["gold"]}}])
    ctx = make_ctx()
    assert run(pipe, ctx) and ctx.answer_status == 401


def test_needs_a_list():
    with pytest.raises(PipelineError):
        make_pipeline([{"name": "acl", "config": {}}])


def test_a_consumer_set_by_a_custom_plugin_is_judged_by_its_groups():
    """ctx.consumer may be any object with ``groups`` (a user plugin's); one without them
    makes the step fail closed (500), never pass."""
    from types import SimpleNamespace

    pipe = make_pipeline([{"name": "acl", "config": {"allow_groups": ["gold"], "deny_groups": ["banned"]}}])
    for groups, expected in ((["gold"], 200), (("silver",), 403), (["gold", "banned"], 403), (set(), 403)):
        ctx = make_ctx()
        ctx.consumer = SimpleNamespace(name="x", groups=groups, headers=())
        assert (ctx.answer_status if run(pipe, ctx) else 200) == expected, groups
    ctx = make_ctx()
    ctx.consumer = SimpleNamespace(name="x")
    assert run(pipe, ctx) and ctx.answer_status == 500


def test_acl_runs_as_a_c_step():
    """key-auth + acl, Kong's usual pair, is a chain of C steps only (the lazy path)."""
    pipe = make_pipeline([{"name": "acl", "config": {"allow_groups": ["gold"]}}, {"name": "key-auth"}], CONSUMERS)
    assert pipe.chain.native_only
