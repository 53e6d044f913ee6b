"""response-headers: set/add/append/remove with templates."""

from __future__ import annotations

import pytest

from fastgw.pipeline import PipelineError

from .util import make_ctx, make_pipeline, run


def test_set_add_append_remove_with_templates():
    pipe = make_pipeline([
        {"name": "key-auth"},
        {"name": "response-headers", "config": {
            "remove": ["Server"], "set": {"X-Order": "{id}", "Cache-Control": "no-store"},
            "add": {"X-Powered-By": "fastgw", "X-Version": "${stage.version}"},
            "append": {"X-Who": "${consumer.name}/${query.q}"}}}],
        [{"name": "alice", "credentials": {"key-auth": ["alice-key-1"]}}], variables={"version": "v2"})
    ctx = make_ctx(headers=[(b"apikey", b"alice-key-1")], query=b"q=%0D%0Ainjected", values=(b"42",))
    assert run(pipe, ctx) is False
    ctx.response_headers = [(b"Server", b"backend"), (b"cache-control", b"max-age=60"), (b"X-Powered-By", b"app")]
    pipe.run_response(ctx)
    assert ctx.response_headers == [
        (b"X-Powered-By", b"app"), (b"X-Order", b"42"), (b"Cache-Control", b"no-store"),
        (b"X-Who", b"alice/injected"), (b"X-Version", b"v2")]


def test_applies_to_gateway_answers():
    pipe = make_pipeline([{"name": "key-auth"}, {"name": "response-headers", "config": {"set": {"X-A": "1"}}}])
    ctx = make_ctx()
    assert run(pipe, ctx) is True
    pipe.run_response(ctx)
    assert (b"X-A", b"1") in ctx.answer_headers


def test_unknown_template_variable_is_a_config_error():
    with pytest.raises(PipelineError) as err:
        make_pipeline([{"name": "response-headers", "config": {"set": {"X-A": "{nope}"}}}])
    assert "unknown path variable {nope}" in err.value.errors[0]
    with pytest.raises(PipelineError):
        make_pipeline([{"name": "response-headers", "config": {"set": {"Bad Name": "x"}}}])
