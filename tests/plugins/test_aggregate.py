"""aggregate: checked settings (the calls themselves: tests/e2e/test_aggregate_e2e.py)."""

from __future__ import annotations

from typing import Any

import pytest

from fastgw.pipeline import PipelineError

from .util import make_pipeline


def test_settings_are_checked() -> None:
    for config, message in (({}, "calls"), ({"calls": {}}, "calls"),
                            ({"calls": {"a": "no-slash"}}, "calls"),
                            ({"calls": {"a": "/x#frag"}}, "calls"),
                            ({"calls": {"a": "ftp://h:1/x"}}, "calls"),
                            ({"calls": {"a": "http://${header.h}/x"}}, "calls"),     # never the host
                            ({"calls": {"a": "http://h:1"}}, "calls"),
                            ({"calls": {"bad name": "/x"}}, "calls"),
                            ({"calls": {"a": "/x/{nope}"}}, "unknown path variable"),
                            ({"calls": {"a": "/x"}, "forward_headers": ["Host"]}, "set by the gateway"),
                            ({"calls": {"a": "/x"}, "on_error": "ignore"}, "on_error"),
                            ({"calls": {"a": "/x"}, "timeout": 0}, "timeout"),
                            ({"calls": {"a": {"timeout": 1}}}, "calls"),                  # no url
                            ({"calls": {"a": {"url": "/x", "timeout": 0}}}, "calls"),
                            ({"calls": {"a": {"url": "/x", "on_error": "maybe"}}}, "calls"),
                            ({"calls": {"a": {"url": "/x", "retries": 2}}}, "calls"),
                            ({"calls": {"a": {"url": "ftp://h:1/x"}}}, "calls")):
        with pytest.raises(PipelineError) as err:
            make_pipeline([{"name": "aggregate", "config": config}])
        assert message in str(err.value.errors), config


def test_a_valid_setting_builds() -> None:
    pipe: Any = make_pipeline([{"name": "aggregate", "config": {"calls": {"o": "/orders/{id}?v=${stage.v}"}}}],
                              variables={"v": "2"})
    assert pipe.names == ("aggregate",) and pipe.is_async is False     # a plain def returning a coroutine
    pipe = make_pipeline([{"name": "aggregate", "config": {"timeout": 2, "on_error": "null", "calls": {
        "a": "/a", "b": {"url": "/b", "timeout": 5, "on_error": "fail"}, "c": {"url": "/c", "timeout": 0.5}}}}])
    calls = {c.name: (c.timeout, c.fail) for c in pipe.plugins[0].calls}
    assert calls == {"a": (2.0, False), "b": (2.0, True), "c": (0.5, False)}   # never past the plugin's
