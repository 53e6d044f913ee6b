"""ip-restriction: CIDR allow/deny for IPv4 and IPv6, X-Forwarded-For behind trusted proxies."""

from __future__ import annotations

import pytest

from fastgw.pipeline import PipelineError

from .util import make_ctx, make_pipeline, run


def status(config, peer, xff=None):
    pipe = make_pipeline([{"name": "ip-restriction", "config": config}])
    ctx = make_ctx(peer=peer, headers=[(b"X-Forwarded-For", xff.encode())] if xff else [])
    return (ctx.answer_status if run(pipe, ctx) else 200), ctx


def test_allow_v4_and_v6():
    cfg = {"allow": ["10.1.0.0/16", "2001:db8::/32"]}
    assert status(cfg, "10.1.2.3")[0] == 200
    assert status(cfg, "10.2.2.3")[0] == 403
    assert status(cfg, "2001:db8::5")[0] == 200
    assert status(cfg, "2001:db9::5")[0] == 403
    assert status(cfg, "::ffff:10.1.0.9")[0] == 200


def test_deny_wins():
    cfg = {"allow": ["10.0.0.0/8"], "deny": ["10.6.6.0/24"]}
    assert status(cfg, "10.6.6.6")[0] == 403
    assert status(cfg, "10.6.7.6")[0] == 200


def test_xff_ignored_from_untrusted_peer():
    cfg = {"allow": ["1.2.3.4"], "trusted_proxies": ["127.0.0.1"]}
    assert status(cfg, "5.5.5.5", "1.2.3.4")[0] == 403


def test_xff_right_to_left_skipping_trusted():
    cfg = {"allow": ["1.2.3.4"], "trusted_proxies": ["127.0.0.1", "10.0.0.0/8"]}
    code, ctx = status(cfg, "127.0.0.1", "9.9.9.9, 1.2.3.4, 10.0.0.7")
    assert code == 200 and ctx.client_ip == "1.2.3.4"
    # a spoofed left-most entry does not help
    assert status(cfg, "127.0.0.1", "1.2.3.4, 6.6.6.6")[0] == 403
    assert status(cfg, "127.0.0.1", "garbage")[0] == 403


def test_custom_status_and_bad_cidr():
    assert status({"deny": ["127.0.0.1"], "status": 451}, "127.0.0.1")[0] == 451
    with pytest.raises(PipelineError) as err:
        make_pipeline([{"name": "ip-restriction", "config": {"allow": ["10.0.0.0/33"]}}])
    assert "allow[0]" in err.value.errors[0]


def test_known_peers_are_judged_in_c_as_the_plugin_judges_them(monkeypatch):
    """Without trusted proxies a peer judged once is answered by PeerVerdictStep from the
    plugin's memo: the same status for every peer as the plugin's own check, the first
    time (the plugin) and the next ones (the step)."""
    from fastgw.plugins import ip_restriction

    cfg = {"allow": ["10.1.0.0/16", "2001:db8::/32"], "deny": ["10.1.6.0/24"], "status": 451}
    pipe = make_pipeline([{"name": "ip-restriction", "config": cfg}])
    (plugin,) = pipe.plugins
    assert type(plugin.on_request).__name__ == "PeerVerdictStep"
    judged = []
    real = ip_restriction.Plugin.allowed
    monkeypatch.setattr(ip_restriction.Plugin, "allowed", lambda self, addr: judged.append(addr) or real(self, addr))
    peers = {"10.1.2.3": 200, "10.1.6.6": 451, "10.2.0.1": 451, "2001:db8::5": 200, "::ffff:10.1.0.9": 200,
             "not-an-address": 451}
    for _ in range(3):
        for peer, expected in peers.items():
            ctx = make_ctx(peer=peer)
            assert (ctx.answer_status if run(pipe, ctx) else 200) == expected, peer
    assert len(judged) == len(peers)                  # each peer judged once, then from the memo


def test_callers_behind_trusted_proxies_are_judged_in_c_as_the_plugin_judges_them(monkeypatch):
    """With trusted proxies a (peer, X-Forwarded-For lines) judged once is answered by
    ForwardedVerdictStep from the plugin's memo, ``client_ip`` set as the plugin sets it;
    other lines (another hop, another order, a second line) are judged anew."""
    from fastgw.plugins import ip_restriction

    cfg = {"allow": ["1.2.3.0/24"], "trusted_proxies": ["127.0.0.1", "10.0.0.0/8"]}
    pipe = make_pipeline([{"name": "ip-restriction", "config": cfg}])
    (plugin,) = pipe.plugins
    assert type(plugin.on_request).__name__ == "ForwardedVerdictStep"
    judged = []
    real = ip_restriction.client_address
    monkeypatch.setattr(ip_restriction, "client_address",
                        lambda peer, xff, trusted: judged.append((peer, tuple(xff))) or real(peer, xff, trusted))
    cases = [("127.0.0.1", [b"9.9.9.9, 1.2.3.4, 10.0.0.7"], 200, "1.2.3.4"),
             ("127.0.0.1", [b"1.2.3.4, 6.6.6.6"], 403, "6.6.6.6"),
             ("127.0.0.1", [b"6.6.6.6", b"1.2.3.9"], 200, "1.2.3.9"),      # two lines: the last hop counts
             ("127.0.0.1", [b"1.2.3.9", b"6.6.6.6"], 403, "6.6.6.6"),
             ("127.0.0.1", [], 403, "127.0.0.1"),                          # no line: the peer
             ("5.5.5.5", [b"1.2.3.4"], 403, "5.5.5.5"),                   # an untrusted peer's lines: ignored
             ("127.0.0.1", [b"garbage"], 403, "127.0.0.1")]
    for _ in range(3):
        for peer, lines, expected, client in cases:
            ctx = make_ctx(peer=peer, headers=[(b"Host", b"a"), *((b"X-Forwarded-For", v) for v in lines)])
            assert (ctx.answer_status if run(pipe, ctx) else 200) == expected, (peer, lines)
            assert ctx.client_ip == client, (peer, lines)
    assert len(judged) == len(cases)                 # each judged once, then from the memo


def test_the_peer_memo_is_bounded(monkeypatch):
    from fastgw.plugins import ip_restriction

    monkeypatch.setattr(ip_restriction, "_MEMO_MAX", 8)
    pipe = make_pipeline([{"name": "ip-restriction", "config": {"allow": ["10.0.0.0/8"]}}])
    memo = pipe.plugins[0]._verdicts
    for i in range(20):
        assert run(pipe, make_ctx(peer=f"10.0.0.{i}")) is False
        assert len(memo) <= 8
    assert run(pipe, make_ctx(peer="11.0.0.1")) is True
