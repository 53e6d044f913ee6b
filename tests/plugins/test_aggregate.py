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
                            ({"calls": {"a": "/x"}, "timeout": 0}, "timeout")):
        with pytest.raises(PipelineError) as err:
            make_pipeline([{"name": "aggregate", "config": config}])
        assert message in str(err.value.errors), config


def test_a_valid_setting_builds() -> None:
    pipe: Any = make_pipeline([{"name": "aggregate", "config": {"calls": {"o": "/orders/{id}?v=${stage.v}"}}}],
                              variables={"v": "2"})
    assert pipe.names == ("aggregate",) and pipe.is_async is False     # a plain def returning a coroutine
