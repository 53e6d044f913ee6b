"""cors: origins (exact, wildcard, regex), preflight at the gateway, actual requests, Vary."""

from __future__ import annotations

from .util import counting_fallbacks, hdrs, make_ctx, make_pipeline, run

CFG = {"origins": ["https://app.example.com", "https://*.shop.example", "~^https://[a-z]+\\.dev\\.example$"],
       "credentials": True, "exposed_headers": ["X-Total"], "max_age": 600}


def preflight(origin, cfg=CFG, req_headers=b"content-type,x-a"):
    pipe = make_pipeline([{"name": "cors", "config": cfg}, {"name": "key-auth"}])
    ctx = make_ctx(method="OPTIONS", headers=[(b"Origin", origin), (b"Access-Control-Request-Method", b"POST"),
                                              (b"Access-Control-Request-Headers", req_headers)])
    answered = run(pipe, ctx)
    return answered, ctx, hdrs(ctx.answer_headers)


def test_preflight_answered_without_backend_or_auth():
    answered, ctx, h = preflight(b"https://app.example.com")
    assert answered and ctx.answer_status == 204
    assert h["access-control-allow-origin"] == "https://app.example.com"
    assert h["access-control-allow-credentials"] == "true"
    assert "POST" in h["access-control-allow-methods"]
    assert h["access-control-allow-headers"] == "content-type,x-a"
    assert h["access-control-max-age"] == "600"
    assert h["vary"] == "Origin"


def test_wildcard_and_regex_origins():
    assert "access-control-allow-origin" in preflight(b"https://a.b.shop.example")[2]
    assert "access-control-allow-origin" in preflight(b"https://x.dev.example")[2]
    assert "access-control-allow-origin" not in preflight(b"https://evil.example")[2]
    assert "access-control-allow-origin" not in preflight(b"https://shop.example.evil.com")[2]
    assert "access-control-allow-origin" not in preflight(b"http://app.example.com")[2]


def test_unsafe_requested_headers_not_echoed():
    h = preflight(b"https://app.example.com", req_headers=b"x\r\nInjected: 1")[2]
    assert "access-control-allow-headers" not in h


def test_actual_request_gets_headers_on_any_answer():
    pipe = make_pipeline([{"name": "cors", "config": CFG}, {"name": "key-auth"}])
    ctx = make_ctx(headers=[(b"Origin", b"https://app.example.com")])
    assert run(pipe, ctx) is True and ctx.answer_status == 401  # key-auth refused; CORS still applies
    h = hdrs(ctx.response_headers_add)
    assert h["access-control-allow-origin"] == "https://app.example.com"
    assert h["access-control-expose-headers"] == "X-Total" and h["vary"] == "Origin"


def test_star_without_credentials():
    pipe = make_pipeline([{"name": "cors"}])
    ctx = make_ctx(headers=[(b"Origin", b"https://any.example")])
    assert run(pipe, ctx) is False
    assert hdrs(ctx.response_headers_add)["access-control-allow-origin"] == "*"


def test_pipeline_preflight_for_405_paths():
    pipe = make_pipeline([{"name": "cors", "config": CFG}])
    ctx = make_ctx(method="OPTIONS", headers=[(b"Origin", b"https://app.example.com"),
                                              (b"Access-Control-Request-Method", b"GET")])
    assert pipe.preflight(ctx) and ctx.answer_status == 204
    plain = make_ctx(method="OPTIONS")
    assert not pipe.preflight(plain)


def test_the_c_step_adds_what_the_plugin_adds(monkeypatch):
    """CorsStep answers requests from no origin and from origins the plugin has judged;
    each kind of request through it and through the plugin alone leaves the same answer
    headers (in order), and the known origins are the step's."""
    from fastgw.plugins import cors

    fallbacks: list[int] = []
    counted = counting_fallbacks(cors.CorsStep, fallbacks)
    for cfg in (CFG, {"origins": ["*"]}, {"origins": ["*"], "exposed_headers": ["X-A", "X-B"]}):
        monkeypatch.setattr(cors, "CorsStep", counted)
        c_pipe = make_pipeline([{"name": "cors", "config": cfg}])
        monkeypatch.setattr(cors, "CorsStep", lambda fallback, *args: fallback)
        py_pipe = make_pipeline([{"name": "cors", "config": cfg}])
        requests = [("GET", [(b"Origin", b"https://app.example.com")]),
                    ("GET", [(b"origin", b"https://evil.example")]),
                    ("POST", [(b"Origin", b"https://a.shop.example"), (b"Origin", b"https://evil.example")]),
                    ("GET", []),
                    ("OPTIONS", [(b"Origin", b"https://app.example.com"), (b"Access-Control-Request-Method", b"GET")])]
        for round_ in range(2):                       # the second time the origins are known
            for method, headers in requests:
                fallbacks.clear()
                got = []
                for pipe in (c_pipe, py_pipe):
                    ctx = make_ctx(method=method, headers=list(headers))
                    answered = run(pipe, ctx)
                    got.append((answered, ctx.answer_status, list(ctx.answer_headers),
                                list(ctx.response_headers_add)))
                assert got[0] == got[1], (cfg, method, headers)
                known = round_ == 1 or not headers
                assert (not fallbacks) == (method != "OPTIONS" and known), (cfg, method, headers)
