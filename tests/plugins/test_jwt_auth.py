"""jwt: HS/RS/ES/EdDSA keys, JWKS file and URL, claims, and the classic attacks."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.pipeline import PipelineError

from .util import counting_fallbacks, error_of, hdrs, make_ctx, make_pipeline, run

SECRET = "alice-shared-secret-" + "0123456789" * 5
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUB = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_PUB = EC_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode()
ED_KEY = ed25519.Ed25519PrivateKey.generate()
ED_PUB = ED_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode()

CONSUMERS = [{"name": "alice", "groups": ["gold"], "credentials": {"jwt": [{"iss": "alice", "secret": SECRET}]}}]


def claims(**kw):
    base = {"iss": "alice", "sub": "u-1", "exp": int(time.time()) + 60}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"Host", b"a"), (b"Authorization", f"Bearer {token}".encode())]


def check(pipe, token, **ctx_kw):
    ctx = make_ctx(headers=bearer(token), **ctx_kw)
    return run(pipe, ctx), ctx


def test_hs256_consumer_credential():
    pipe = make_pipeline([{"name": "jwt"}], CONSUMERS)
    answered, ctx = check(pipe, jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert answered is False
    assert ctx.consumer.name == "alice"
    assert "authorization" not in hdrs(ctx.headers)  # hidden by default
    assert hdrs(ctx.headers)["x-consumer-name"] == "alice"


def test_missing_token_and_wrong_secret():
    pipe = make_pipeline([{"name": "jwt"}], CONSUMERS)
    ctx = make_ctx()
    assert run(pipe, ctx) is True and ctx.answer_status == 401
    assert hdrs(ctx.answer_headers)["www-authenticate"].startswith("Bearer realm=")
    answered, ctx = check(pipe, jwt.encode(claims(), "another-secret-" + "0123456789" * 5, algorithm="HS256"))
    assert answered and ctx.answer_status == 401 and error_of(ctx) == "Invalid signature"


@pytest.mark.parametrize("alg,priv,pub", [
    ("RS256", RSA_KEY, RSA_PUB), ("RS512", RSA_KEY, RSA_PUB), ("ES256", EC_KEY, EC_PUB), ("EdDSA", ED_KEY, ED_PUB)])
def test_asymmetric_plugin_keys(alg, priv, pub):
    pipe = make_pipeline([{"name": "jwt", "config": {"keys": [{"kid": "k1", "algorithm": alg, "public_key": pub}],
                                                    "consumer_claim": "sub"}}])
    answered, ctx = check(pipe, jwt.encode(claims(), priv, algorithm=alg, headers={"kid": "k1"}))
    assert answered is False and ctx.consumer.name == "u-1"


def test_hs_algorithms():
    for alg in ("HS384", "HS512"):
        pipe = make_pipeline([{"name": "jwt", "config": {"keys": [{"algorithm": alg, "secret": SECRET}]}}])
        assert check(pipe, jwt.encode(claims(), SECRET, algorithm=alg))[0] is False


def test_public_key_file(tmp_path):
    path = tmp_path / "pub.pem"
    path.write_text(RSA_PUB)
    pipe = make_pipeline([{"name": "jwt", "config": {"keys": [{"algorithm": "RS256", "public_key_file": str(path)}]}}])
    assert check(pipe, jwt.encode(claims(), RSA_KEY, algorithm="RS256"))[0] is False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_alg_none_is_rejected():
    pipe = make_pipeline([{"name": "jwt"}], CONSUMERS)
    for alg in ("none", "None", "NONE"):
        token = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + "." + _b64(json.dumps(claims()).encode()) + "."
        answered, ctx = check(pipe, token)
        assert answered and ctx.answer_status == 401 and ctx.consumer is None


def test_hs_rs_confusion_is_rejected():
    """An HS256 token MACed with the RSA *public* key as secret must not verify."""
    import hashlib
    import hmac as hmac_mod
    pipe = make_pipeline([{"name": "jwt", "config": {"keys": [{"algorithm": "RS256", "public_key": RSA_PUB}]}}])
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims()).encode())
    sig = hmac_mod.new(RSA_PUB.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    answered, ctx = check(pipe, f"{header}.{payload}.{_b64(sig)}")
    assert answered and ctx.answer_status == 401
    # and a key declared HS with a PEM public key as secret is refused at load
    with pytest.raises(PipelineError):
        make_pipeline([{"name": "jwt", "config": {"keys": [{"algorithm": "HS256", "secret": RSA_PUB}]}}])


def test_short_hs_secret_is_refused():
    with pytest.raises(PipelineError) as err:
        make_pipeline([{"name": "jwt", "config": {"keys": [{"algorithm": "HS512", "secret": "x" * 40}]}}])
    assert "at least 64 bytes" in err.value.errors[0]


def test_rs_token_against_hs_key_is_rejected():
    pipe = make_pipeline([{"name": "jwt", "config": {"keys": [{"algorithm": "HS256", "secret": SECRET}]}}])
    answered, ctx = check(pipe, jwt.encode(claims(), RSA_KEY, algorithm="RS256"))
    assert answered and ctx.answer_status == 401


def test_algorithms_allowlist():
    pipe = make_pipeline([{"name": "jwt", "config": {"algorithms": ["RS256"],
                                                    "keys": [{"algorithm": "RS256", "public_key": RSA_PUB}]}}],
                         CONSUMERS)
    answered, ctx = check(pipe, jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert answered and error_of(ctx) == "Token algorithm not allowed"


def test_expired_nbf_leeway_and_required_exp():
    pipe = make_pipeline([{"name": "jwt"}], CONSUMERS)
    now = int(time.time())
    answered, ctx = check(pipe, jwt.encode(claims(exp=now - 30), SECRET, algorithm="HS256"))
    assert answered and error_of(ctx) == "Token has expired"
    answered, ctx = check(pipe, jwt.encode(claims(exp=None), SECRET, algorithm="HS256"))
    assert answered and error_of(ctx) == "Token lacks the exp claim"
    answered, ctx = check(pipe, jwt.encode(claims(nbf=now + 100), SECRET, algorithm="HS256"))
    assert answered and error_of(ctx) == "Token is not valid yet"
    lenient = make_pipeline([{"name": "jwt", "config": {"leeway": 60}}], CONSUMERS)
    assert check(lenient, jwt.encode(claims(exp=now - 30), SECRET, algorithm="HS256"))[0] is False
    short = make_pipeline([{"name": "jwt", "config": {"maximum_expiration": 60}}], CONSUMERS)
    answered, ctx = check(short, jwt.encode(claims(exp=now + 3600), SECRET, algorithm="HS256"))
    assert answered and ctx.answer_status == 401


def test_issuer_and_audience():
    pipe = make_pipeline([{"name": "jwt", "config": {"issuers": ["alice"], "audiences": ["shop"]}}], CONSUMERS)
    assert check(pipe, jwt.encode(claims(aud="shop"), SECRET, algorithm="HS256"))[0] is False
    answered, ctx = check(pipe, jwt.encode(claims(aud="other"), SECRET, algorithm="HS256"))
    assert answered and ctx.answer_status == 401
    answered, ctx = check(pipe, jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert answered and ctx.answer_status == 401


def test_claims_to_headers_replace_client_copies():
    pipe = make_pipeline([{"name": "jwt", "config": {"claims_to_headers": {"sub": "X-User-Id", "roles": "X-Roles"}}}],
                         CONSUMERS)
    token = jwt.encode(claims(roles=["a", "b"]), SECRET, algorithm="HS256")
    ctx = make_ctx(headers=[*bearer(token), (b"X-User-Id", b"admin")])
    assert run(pipe, ctx) is False
    assert [v for k, v in ctx.headers if k.lower() == b"x-user-id"] == [b"u-1"]
    assert hdrs(ctx.headers)["x-roles"] == '["a","b"]'
    ctx = make_ctx(headers=[(b"X-User-Id", b"admin")])  # no token: still stripped
    assert run(pipe, ctx) is True
    assert "x-user-id" not in hdrs(ctx.headers)


def test_token_in_query_is_removed():
    pipe = make_pipeline([{"name": "jwt"}], CONSUMERS)
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    ctx = make_ctx(query=f"x=1&jwt={token}".encode())
    assert run(pipe, ctx) is False and ctx.query == b"x=1"


def _jwks() -> dict:
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))
    return {"keys": [dict(rsa_jwk, kid="r1", alg="RS256", use="sig"), dict(ec_jwk, kid="e1", alg="ES256")]}


def test_jwks_file_kid_selection(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks()))
    pipe = make_pipeline([{"name": "jwt", "config": {"jwks_file": str(path)}}])
    assert check(pipe, jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "r1"}))[0] is False
    assert check(pipe, jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "e1"}))[0] is False
    # a kid naming the RSA key with an ES token: the key's algorithm wins
    answered, ctx = check(pipe, jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "r1"}))
    assert answered and ctx.answer_status == 401


async def _jwks_server(docs: list[bytes], hits: list[int]) -> tuple[asyncio.AbstractServer, str]:
    """A JWKS endpoint on a real socket answering ``docs[-1]``, one entry in ``hits`` a fetch."""
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        hits.append(1)
        doc = docs[-1]
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(doc), doc))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/jwks"


def test_jwks_url_fetched_once_then_checked_without_waiting():
    hits: list[int] = []

    async def scenario():
        server, url = await _jwks_server([json.dumps(_jwks()).encode()], hits)
        pipe = make_pipeline([{"name": "jwt", "config": {"jwks_url": url, "jwks_min_refresh": 3600}}])
        assert not pipe.is_async        # only a request that waits for a fetch leaves the sync chain
        results = []
        for kid, key, alg in (("r1", RSA_KEY, "RS256"), ("e1", EC_KEY, "ES256"), ("zz", EC_KEY, "ES256")):
            ctx = make_ctx(headers=bearer(jwt.encode(claims(), key, algorithm=alg, headers={"kid": kid})))
            state = pipe.chain.start_request(ctx)       # as the server does
            answered = (await pipe.finish_request(ctx)) if state == 2 else state == 1
            results.append((state, answered, ctx.answer_status))
        ctx = make_ctx(headers=bearer(jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "r1"})))
        results.append((0, await pipe.run_request_async(ctx), ctx.answer_status))   # the Python path
        server.close()
        return results

    results = asyncio.run(scenario())
    # The first token waits for the fetch; then known kids are checked at once; an unknown
    # kid within jwks_min_refresh is not refetched (no wait) and fails.
    assert results == [(2, False, 0), (0, False, 0), (1, True, 401), (0, False, 0)]
    assert len(hits) == 1


def test_no_key_at_all_is_a_config_error():
    with pytest.raises(PipelineError) as err:
        make_pipeline([{"name": "jwt"}])
    assert "no verification key" in err.value.errors[0]


def test_stale_jwks_keys_serve_while_one_refresh_runs():
    """Past jwks_cache_ttl the old keys still answer at once (no wait), and the many
    requests that see them stale start one background refresh, not one each."""
    from fastgw.plugins.jwt_auth import JwksCache

    cache = JwksCache("http://127.0.0.1:9/jwks", ttl=1, min_refresh=3600, allowed=frozenset({"RS256"}))
    refreshes = []

    async def fake_refresh() -> None:
        refreshes.append(1)
        await asyncio.sleep(0.01)

    cache.refresh = fake_refresh  # type: ignore[method-assign]

    async def scenario() -> list:
        cache.keys = {"r1": ["key-r1"]}
        cache.fetched_at = cache.attempt_at = time.monotonic() - 10     # stale
        got = [cache.lookup("r1") for _ in range(5)]
        await asyncio.sleep(0.05)
        return got

    assert asyncio.run(scenario()) == [["key-r1"]] * 5
    assert refreshes == [1]


# -- verified tokens: each worker checks a token's signature once ----------------------------

def _counting_decode(monkeypatch) -> list[int]:
    """Count PyJWT's verifying decodes (the signature checks) from here on."""
    calls: list[int] = []
    real = jwt.decode

    def decode(token, key=None, *args, **kw):
        if key is not None:
            calls.append(1)
        return real(token, key, *args, **kw)

    monkeypatch.setattr(jwt, "decode", decode)
    return calls


def _plugin(pipe):
    (plugin,) = [p for p in pipe.plugins if p.NAME == "jwt"]
    return plugin


def test_a_token_sent_again_is_not_checked_again_and_gets_the_same_request(monkeypatch):
    pipe = make_pipeline([{"name": "jwt", "config": {"claims_to_headers": {"sub": "X-User"}}}], CONSUMERS)
    calls = _counting_decode(monkeypatch)
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    seen = []
    for _ in range(3):
        answered, ctx = check(pipe, token)
        assert answered is False
        seen.append((ctx.consumer.name, hdrs(ctx.headers), ctx.vars["jwt_claims"]))
    assert len(calls) == 1
    assert seen[0] == seen[1] == seen[2]
    assert seen[0][1]["x-user"] == "u-1" and "authorization" not in seen[0][1]
    # each request gets its own copy of the claims: a plugin after jwt may edit it
    answered, ctx = check(pipe, token)
    ctx.vars["jwt_claims"]["sub"] = "someone-else"
    assert check(pipe, token)[1].vars["jwt_claims"]["sub"] == "u-1"


def test_only_the_exact_token_hits(monkeypatch):
    pipe = make_pipeline([{"name": "jwt"}], CONSUMERS)
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert check(pipe, token)[0] is False
    calls = _counting_decode(monkeypatch)
    head, body, sig = token.split(".")
    forged_sig = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BA")
    answered, ctx = check(pipe, f"{head}.{body}.{forged_sig}")
    assert answered and ctx.answer_status == 401 and error_of(ctx) == "Invalid signature"
    # the same header and signature with other claims: checked, and refused
    other = base64.urlsafe_b64encode(json.dumps(claims(sub="admin")).encode()).rstrip(b"=").decode()
    answered, ctx = check(pipe, f"{head}.{other}.{sig}")
    assert answered and ctx.answer_status == 401
    assert len(calls) == 2


def test_a_remembered_token_still_expires():
    pipe = make_pipeline([{"name": "jwt"}], CONSUMERS)
    exp = int(time.time()) + 1
    token = jwt.encode(claims(exp=exp), SECRET, algorithm="HS256")
    assert check(pipe, token)[0] is False
    assert check(pipe, token)[0] is False             # from the table
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    answered, ctx = check(pipe, token)
    assert answered and ctx.answer_status == 401 and error_of(ctx) == "Token has expired"


def test_the_routes_of_one_setup_share_a_table_and_size_bounds_it(monkeypatch):
    from fastgw.consumers import ConsumerTable
    from fastgw.pipeline import build_pipeline
    from fastgw.plugins.base import PluginScope

    from .util import make_spec

    table = ConsumerTable(CONSUMERS)
    plugins = [{"name": "jwt", "config": {"cache_size": 2}}]

    def route(resource: str, plugin_list=plugins):
        spec = make_spec(plugin_list, resource=resource)
        return build_pipeline(spec, PluginScope(spec=spec, consumers=table))

    a, b = route("/orders/{id}"), route("/users/{id}")
    other = route("/files/{id}", [{"name": "jwt", "config": {"cache_size": 2, "leeway": 5}}])
    assert _plugin(a).verified is _plugin(b).verified
    assert _plugin(other).verified is not _plugin(a).verified
    calls = _counting_decode(monkeypatch)
    t1, t2, t3 = (jwt.encode(claims(sub=f"u-{i}"), SECRET, algorithm="HS256") for i in (1, 2, 3))
    assert check(a, t1)[0] is False and check(b, t1)[0] is False
    assert len(calls) == 1                            # checked on one route, known on the other
    for t in (t2, t3):                                # t1 is the oldest of three: it goes
        assert check(a, t)[0] is False
    assert len(_plugin(a).verified.items) == 2
    assert check(b, t1)[0] is False and len(calls) == 4


def test_cache_size_zero_checks_every_request(monkeypatch):
    pipe = make_pipeline([{"name": "jwt", "config": {"cache_size": 0}}], CONSUMERS)
    assert _plugin(pipe).verified is None
    calls = _counting_decode(monkeypatch)
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    for _ in range(3):
        assert check(pipe, token)[0] is False
    assert len(calls) == 3


def test_a_jwks_refresh_checks_remembered_tokens_again():
    """A key the issuer withdrew from its JWKS stops verifying the tokens it signed, also
    the ones a worker remembers as verified."""
    docs = [json.dumps(_jwks()).encode()]

    async def scenario() -> list[int]:
        server, url = await _jwks_server(docs, [])
        pipe = make_pipeline([{"name": "jwt", "config": {"jwks_url": url, "consumer_claim": "sub"}}])
        token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "r1"})
        statuses = []

        async def send() -> None:
            ctx = make_ctx(headers=bearer(token))
            state = pipe.chain.start_request(ctx)
            answered = (await pipe.finish_request(ctx)) if state == 2 else state == 1
            statuses.append(ctx.answer_status if answered else 200)

        await send()
        await send()                                   # remembered
        assert _plugin(pipe).verified.items
        docs.append(json.dumps({"keys": [k for k in _jwks()["keys"] if k["kid"] != "r1"]}).encode())
        await _plugin(pipe).jwks.refresh()             # as the background refresh past jwks_cache_ttl
        await send()
        server.close()
        return statuses

    assert asyncio.run(scenario()) == [200, 200, 401]


def _b64(doc) -> str:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("token", [
    "not-a-token",
    "a.b",
    "a.b.c.d",
    f"{_b64([1, 2])}.{_b64(claims())}.sig",                              # header not an object
    f"{_b64({'alg': 'HS256', 'kid': ['k']})}.{_b64(claims())}.sig",      # kid not a string
    f"{_b64({'alg': 'HS256', 'kid': {'a': 1}})}.{_b64(claims())}.sig",
    f"{_b64(b'{not json')}.{_b64(claims())}.sig",
    f"{_b64({'alg': 'HS256'})}.{_b64([1])}.sig",                         # claims not an object
    f"{_b64({'alg': 'HS256'})}.%%%.sig",
    f"{_b64({'alg': 'none'})}.{_b64(claims())}.",
])
def test_malformed_tokens_get_401_and_are_never_remembered(token):
    pipe = make_pipeline([{"name": "jwt", "config": {"keys": [{"kid": "k", "algorithm": "HS256", "secret": SECRET}]}}],
                         CONSUMERS)
    for _ in range(2):
        answered, ctx = check(pipe, token)
        assert answered and ctx.answer_status == 401
    assert not _plugin(pipe).verified.items


def test_the_consumer_credential_is_chosen_by_the_unverified_claims():
    """The iss read before the check only picks the key; a token naming alice but signed
    with another secret is refused, whatever key it names."""
    pipe = make_pipeline([{"name": "jwt"}], CONSUMERS + [
        {"name": "bob", "credentials": {"jwt": [{"iss": "bob", "secret": "bob-secret-" + "0123456789" * 4}]}}])
    assert check(pipe, jwt.encode(claims(iss="bob"), "bob-secret-" + "0123456789" * 4, algorithm="HS256"))[
        1].consumer.name == "bob"
    answered, ctx = check(pipe, jwt.encode(claims(iss="alice"), "bob-secret-" + "0123456789" * 4, algorithm="HS256"))
    assert answered and ctx.answer_status == 401


def test_the_c_step_and_the_python_path_give_the_same_requests(monkeypatch):
    """jwt's C step (JwtHitStep) answers a remembered token; the Python on_request does the
    same work. Each kind of request through both must leave the same request for the
    backend (headers, consumer, claims) or the same answer; the hits must be the step's."""
    from fastgw.plugins import jwt_auth

    settings = [{"name": "jwt", "config": {"claims_to_headers": {"sub": "X-User", "groups": "X-Groups"},
                                           "header_names": ["authorization", "x-token"]}}]
    fallbacks: list[int] = []
    monkeypatch.setattr(jwt_auth, "JwtHitStep", counting_fallbacks(jwt_auth.JwtHitStep, fallbacks))
    c_pipe = make_pipeline(settings, CONSUMERS)
    monkeypatch.setattr(jwt_auth, "JwtHitStep", lambda fallback, *args: fallback)
    py_pipe = make_pipeline(settings, CONSUMERS)
    assert type(_plugin(c_pipe).on_request).__name__ == "JwtHitStep"
    token = jwt.encode(claims(groups=["a", "b"]), SECRET, algorithm="HS256")
    soon = jwt.encode(claims(sub="u-2", exp=int(time.time()) + 1), SECRET, algorithm="HS256")
    for pipe in (c_pipe, py_pipe):                     # verified once: remembered from here on
        assert check(pipe, token)[0] is False and check(pipe, soon)[0] is False
    host = (b"Host", b"a")
    kinds = {
        "hit": ([host, (b"Authorization", f"Bearer {token}".encode())], True),
        "any case, spaces": ([host, (b"authorization", f"bEaReR \t{token}  ".encode())], True),
        "spoofed claim headers": ([host, (b"X-User", b"root"), (b"Authorization", f"Bearer {token}".encode()),
                                   (b"x-groups", b"admin")], True),
        "first of two": ([host, (b"Authorization", f"Bearer {token}".encode()), (b"Authorization", b"Bearer x")],
                         True),
        "not bearer": ([host, (b"Authorization", f"Basic {token}".encode())], False),
        "empty bearer": ([host, (b"Authorization", b"Bearer   ")], False),
        "other header": ([host, (b"X-Token", token.encode())], False),
        "unknown token": ([host, (b"Authorization", f"Bearer {token[:-3]}abc".encode())], False),
        "no token": ([host], False),
    }
    for name, (headers, hit) in kinds.items():
        fallbacks.clear()
        got = []
        for pipe in (c_pipe, py_pipe):
            answered, ctx = (lambda c: (run(pipe, c), c))(make_ctx(headers=list(headers)))
            got.append((answered, ctx.answer_status, list(ctx.headers), getattr(ctx.consumer, "name", None),
                        dict(ctx.vars)))
        assert got[0] == got[1], name
        assert (not fallbacks) == hit, name
    # a remembered token past its exp: the Python path answers (and forgets it)
    time.sleep(max(0.0, int(time.time()) + 1 - time.time()) + 0.05)
    fallbacks.clear()
    ctx = make_ctx(headers=[host, (b"Authorization", f"Bearer {soon}".encode())])
    assert run(c_pipe, ctx) is True and ctx.answer_status == 401 and fallbacks == [1]
    assert soon not in _plugin(c_pipe).verified.items


def test_no_c_step_without_the_table():
    for config in ({"cache_size": 0}, {"claims_to_headers": {"sub": "Authorization"}}):
        pipe = make_pipeline([{"name": "jwt", "config": config}], CONSUMERS)
        assert type(_plugin(pipe).on_request).__name__ == "method", config


def test_jwks_url_route_in_c_hands_on_what_needs_a_fetch(monkeypatch):
    """With jwks_url the C step answers a remembered token under the keys in hand; the
    first token (the keys must be fetched: the chain waits) and, after a refresh, a token
    verified under the old keys go to the plugin."""
    from fastgw.plugins import jwt_auth

    fallbacks: list[int] = []
    monkeypatch.setattr(jwt_auth, "JwtHitStep", counting_fallbacks(jwt_auth.JwtHitStep, fallbacks))
    hits: list[int] = []

    async def scenario() -> list[tuple[int, int, int]]:
        server, url = await _jwks_server([json.dumps(_jwks()).encode()], hits)
        pipe = make_pipeline([{"name": "jwt", "config": {"jwks_url": url, "consumer_claim": "sub"}}])
        assert type(_plugin(pipe).on_request).__name__ == "JwtHitStep"
        token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "r1"})
        seen = []

        async def send() -> None:
            fallbacks.clear()
            ctx = make_ctx(headers=bearer(token))
            state = pipe.chain.start_request(ctx)
            answered = (await pipe.finish_request(ctx)) if state == 2 else state == 1
            seen.append((state, ctx.answer_status if answered else 200, len(fallbacks)))

        await send()                                   # fetch first: the chain waits (state 2)
        await send()                                   # remembered: in C
        await _plugin(pipe).jwks.refresh()             # new generation
        await send()                                   # checked again by the plugin, at once
        await send()
        server.close()
        return seen

    assert asyncio.run(scenario()) == [(2, 200, 1), (0, 200, 0), (0, 200, 1), (0, 200, 0)]
    assert len(hits) == 2


def test_c_steps_run_in_an_async_pipeline():
    """A pipeline with an async plugin runs every step from Python (run_request_async):
    the C steps set as a plugin's on_request (jwt, cors, ip-restriction) are callables
    there, with the same verdicts."""
    from fastgw.pipeline import Pipeline
    from fastgw.plugins.base import Plugin as BasePlugin

    class Waits(BasePlugin):
        NAME, PRIORITY = "waits", 1

        def __init__(self) -> None:
            pass

        async def on_request(self, ctx):
            await asyncio.sleep(0)
            return 0

    pipe = make_pipeline([{"name": "jwt"}, {"name": "cors", "config": {"origins": ["https://a.example"]}},
                          {"name": "ip-restriction", "config": {"allow": ["127.0.0.1"]}}], CONSUMERS)
    apipe = Pipeline([*pipe.plugins, Waits()])
    assert apipe.is_async
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    for _ in range(2):                                 # the second time from the C steps
        ctx = make_ctx(headers=[(b"Host", b"a"), (b"Origin", b"https://a.example"),
                                (b"Authorization", f"Bearer {token}".encode())])
        assert asyncio.run(apipe.run_request_async(ctx)) is False
        assert ctx.consumer.name == "alice"
        assert (b"Access-Control-Allow-Origin", b"https://a.example") in ctx.response_headers_add
    ctx = make_ctx(peer="10.9.9.9", headers=[(b"Host", b"a"), (b"Authorization", f"Bearer {token}".encode())])
    assert asyncio.run(apipe.run_request_async(ctx)) is True and ctx.answer_status == 403


_TOKEN = jwt.encode(claims(exp=int(time.time()) + 3600), SECRET, algorithm="HS256")
_SPACE = st.sampled_from([b"", b" ", b"  ", b"\t", b" \t ", b"\x0b", b"\x85", b"\xa0", b"\x1c"])


@functools.cache
def _c_and_python_pipes() -> tuple:
    """The same jwt settings built twice: with its C step, and with the Python path only;
    both remember _TOKEN."""
    from fastgw.plugins import jwt_auth

    settings_ = [{"name": "jwt", "config": {"header_names": ["authorization", "x-token"]}}]
    pipes = []
    for step in (jwt_auth.JwtHitStep, lambda fallback, *args: fallback):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(jwt_auth, "JwtHitStep", step)
            pipe = make_pipeline(settings_, CONSUMERS)
        assert check(pipe, _TOKEN)[0] is False
        pipes.append(pipe)
    assert type(_plugin(pipes[0]).on_request).__name__ == "JwtHitStep"
    return tuple(pipes)


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from([b"Bearer ", b"bearer ", b"BEARER ", b"BeArEr ", b"Bearer", b"Bearer\t", b"Basic ",
                               b"", b"Bearer  "]),
       before=_SPACE, after=_SPACE, token=st.sampled_from([_TOKEN, _TOKEN[:-1], _TOKEN + "x", ""]),
       name=st.sampled_from([b"Authorization", b"authorization", b"X-Token"]))
def test_any_authorization_value_gets_the_same_verdict_in_c_and_in_python(prefix, before, after, token, name):
    """Whatever surrounds the token (case of ``Bearer``, white space the two read
    differently, latin-1 bytes), the C step and the plugin's Python path give the same
    answer and the same request (the step hands what it reads otherwise to Python)."""
    value = prefix + before + token.encode() + after
    got = []
    for pipe in _c_and_python_pipes():
        ctx = make_ctx(headers=[(b"Host", b"a"), (name, value)])
        answered = run(pipe, ctx)
        got.append((answered, ctx.answer_status, list(ctx.headers), getattr(ctx.consumer, "name", None)))
    assert got[0] == got[1]
