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


def test_json_pointer_paths_edit_nested_objects_and_arrays() -> None:
    f = filter_for(transformer({
        "remove": ["/user/password", "/items/*/secret", "/tags/0", "/gone/deeper/x", "/a~1b", "/m~0n/k"],
        "rename": {"/user/mail": "email", "/items/*/qty": "quantity"},
        "replace": {"/user/role": "member", "/items/1/price": 0, "/flags/*": False, "/nope/x": 1},
        "add": {"/meta/gateway/by": "fastgw", "/items/*/currency": "EUR", "/user/role": "never"},
        "append": {"/meta/gateway/hops": "gw1", "/user/groups": "staff"},
    }))
    doc = {"user": {"password": "p", "mail": "a@x", "role": "admin", "groups": "dev"},
           "items": [{"secret": 1, "qty": 2, "price": 5}, {"qty": 1, "price": 7, "currency": "USD"}],
           "tags": ["x", "y"], "flags": {"beta": True, "new": True}, "a/b": 1, "m~n": {"k": 1, "j": 2}}
    assert orjson.loads(f.rewrite(orjson.dumps(doc))) == {
        "user": {"email": "a@x", "role": "member", "groups": ["dev", "staff"]},
        "items": [{"quantity": 2, "price": 5, "currency": "EUR"}, {"quantity": 1, "price": 0, "currency": "USD"}],
        "tags": ["y"], "flags": {"beta": False, "new": False}, "m~n": {"j": 2},
        "meta": {"gateway": {"by": "fastgw", "hops": ["gw1"]}},
    }
    # A path through something that is not an object or array changes nothing.
    assert orjson.loads(f.rewrite(b'{"user": "name", "items": 3, "tags": "t"}')) == {
        "user": "name", "items": 3, "tags": "t", "meta": {"gateway": {"by": "fastgw", "hops": ["gw1"]}}}
    # Top-level keys still work beside paths; "*" at the end of remove empties the holder.
    g = filter_for(transformer({"remove": ["/list/*", "top"], "add": {"top2": 1}}))
    assert orjson.loads(g.rewrite(b'{"list": [1, 2, 3], "top": 1}')) == {"list": [], "top2": 1}


def test_values_put_along_paths_are_not_shared_between_answers() -> None:
    # add puts {"hops": []} in, then append pushes into it: each answer gets its own copy.
    f = filter_for(transformer({"add": {"meta": {"hops": []}}, "append": {"/meta/hops": "gw"}}))
    for _ in range(3):
        assert orjson.loads(f.rewrite(b"{}")) == {"meta": {"hops": ["gw"]}}


def test_json_pointer_settings_are_checked() -> None:
    for edits, message in (({"remove": ["/a/~2"]}, "json.remove: '/a/~2': '~' must be followed by 0 or 1"),
                           ({"add": {"/items/*": 1}}, "json.add: '/items/*' may not end in '*'"),
                           ({"append": {"/x/*": 1}}, "json.append: '/x/*' may not end in '*'"),
                           ({"rename": {"/a/*": "b"}}, "json.rename: '/a/*' may not end in '*'"),
                           ({"rename": {"/a/b": "/c"}}, "the new name '/c' is a key beside the old one")):
        with pytest.raises(PipelineError) as err:
            transformer(edits)
        assert any(message in e for e in err.value.errors), (edits, err.value.errors)
