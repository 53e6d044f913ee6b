"""response-transformer: the JSON edits, what is taken, checked settings (the held answer
on the wire: tests/e2e/test_response_transformer_e2e.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from fastgw.pipeline import PipelineError

from .util import make_ctx, make_pipeline, run

JSON = [(b"Content-Type", b"application/json; charset=utf-8")]


def transformer(edits: dict[str, Any], **config: Any) -> Any:
    return make_pipeline([{"name": "response-transformer", "config": {"json": edits, **config}}])


def filter_for(pipe: Any, **ctx_args: Any) -> Any:
    ctx = make_ctx(**ctx_args)
    assert run(pipe, ctx) is False
    return ctx.response_filter


def test_edits_in_order() -> None:
    f = filter_for(transformer({"remove": ["secret", "nope"], "rename": {"a": "b", "missing": "x"},
                                "replace": {"b": 2, "absent": 1}, "add": {"b": 3, "new": {"k": [1]}},
                                "append": {"list": "z", "one": "y", "none": True}}))
    body = orjson.dumps({"secret": 1, "a": 1, "list": ["x"], "one": "x", "keep": None})
    assert orjson.loads(f.rewrite(body)) == {"b": 2, "list": ["x", "z"], "one": ["x", "y"], "keep": None,
                                             "new": {"k": [1]}, "none": [True]}


def test_templates_are_rendered_per_request_and_stay_strings() -> None:
    pipe = transformer({"add": {"who": "${header.x-who}", "id": "{id}"}})
    f = filter_for(pipe, headers=[(b"X-Who", b'","admin":true,"x":"')], values=(b"9",))
    assert orjson.loads(f.rewrite(b"{}")) == {"who": '","admin":true,"x":"', "id": "9"}
    static = transformer({"add": {"v": 1}})
    assert filter_for(static) is filter_for(static)      # no request value: one filter for all


def test_what_is_taken() -> None:
    f = filter_for(transformer({"add": {"v": 1}}, max_body=100))
    assert f.start(200, JSON, 100)
    assert f.start(404, [(b"content-type", b"application/problem+json")], 10)
    assert not f.start(200, JSON, 101)
    assert not f.start(200, [(b"Content-Type", b"text/html")], 10)
    assert not f.start(200, [], 10)
    for body in (b"[1, 2]", b"not json", b'"s"'):
        assert f.rewrite(body) == body                    # not an object: as it was


def test_settings_are_checked() -> None:
    for config, message in (({"json": {"remove": "a"}}, "remove"), ({"json": {"rename": {"a": 1}}}, "rename"),
                            ({"json": {"add": {"id": "{nope}"}}}, "unknown path variable"),
                            ({"json": {"other": {}}}, "other"), ({"max_body": -1}, "max_body")):
        with pytest.raises(PipelineError) as err:
            make_pipeline([{"name": "response-transformer", "config": config}])
        assert message in str(err.value.errors), config
