"""Plugins end to end: a real gateway process in front of a real backend, over sockets.

One gateway for the module (plugins attached at service, path and method level), so the
whole file runs in a few seconds.
"""

from __future__ import annotations

import json
import socket
import textwrap
import time
from typing import Any

import bcrypt
import jwt
import pytest

from tests.e2e.conftest import requires_engine
from tests.helpers import Backend, Gateway, RawClient, free_port, gateway_config, recv_head, request

pytestmark = requires_engine

SECRET = "alice-jwt-secret-" + "x" * 40
PW_HASH = bcrypt.hashpw(b"carol-pw", bcrypt.gensalt(4)).decode()

CONSUMERS = [
    {"name": "alice", "groups": ["gold"],
     "credentials": {"key-auth": ["alice-key-1"], "jwt": [{"iss": "alice", "secret": SECRET}]}},
    {"name": "bob", "groups": ["silver"], "credentials": {"key-auth": ["bob-key-0001"]}},
    {"name": "carol", "groups": [], "credentials": {"basic-auth": [{"username": "carol", "password": PW_HASH}]}},
]

EDITS = {
    "remove": ["X-Absent"],
    "set": {"Content-Type": "text/plain", "Content-Length": "999", "Connection": "close"},
    "append": {"X-App": "a1"},
    "add": {"Content-Type": "not-added", "X-Added": "yes", "X-Rid": "${request_id}"},
}

JWT_CLAIMS = {"name": "jwt", "config": {"claims_to_headers": {"sub": "X-User"}}}
LAZY_AUTH = {"name": "key-auth", "config": {"key_names": ["apikey", "X-Api-Key"]}}
LAZY_ECHO = {"name": "response-headers", "config": {"add": {"X-Tenant-Echo": "${header.x-tenant}"}}}
BYTES_ECHO = {"name": "response-headers", "config": {"set": {"X-Echo": "${header.x-name}|{name}|é"}}}
NO_KEY = {"name": "key-auth", "enabled": False}

RESOURCES: dict[str, Any] = {
    "/orders": {
        "plugins": [{"name": "key-auth"}, {"name": "cors", "config": {"origins": ["https://app.example"]}}],
        "GET": {},
        "/{orderId}": {
            "GET": {"plugins": [{"name": "response-headers",
                                 "config": {"set": {"X-Order": "{orderId}"}, "remove": ["X-Backend"]}}]},
            "DELETE": {"plugins": [{"name": "acl", "config": {"allow_groups": ["gold"]}}]},
        },
    },
    "/public": {"GET": {"plugins": [{"name": "key-auth", "enabled": False}]}},
    "/plain": {"GET": {}},
    "/jwt": {"GET": {"plugins": [{"name": "key-auth", "enabled": False}, {"name": "jwt"}]}},
    # A token sent again is answered by jwt's C step, on the scanned head (only built-in
    # steps: lazy mode) and on the header list (a Python log plugin beside it).
    "/jwt-claims": {"GET": {"plugins": [{"name": "key-auth", "enabled": False}, JWT_CLAIMS]}},
    "/jwt-claims-list": {"GET": {"plugins": [{"name": "key-auth", "enabled": False}, JWT_CLAIMS,
                                             {"name": "e2eplug.logged"}]}},
    "/basic": {"GET": {"plugins": [{"name": "key-auth", "enabled": False}, {"name": "basic-auth"}]}},
    "/upload": {"POST": {"plugins": [{"name": "key-auth", "enabled": False},
                                     {"name": "request-size-limit",
                                      "config": {"allowed_payload_size": 64, "size_unit": "bytes"}}]}},
    "/blocked": {"GET": {"plugins": [{"name": "key-auth", "enabled": False},
                                     {"name": "ip-restriction", "config": {"deny": ["127.0.0.0/8", "::1"]}}]}},
    "/audited": {"GET": {"plugins": [{"name": "key-auth", "enabled": False}, {"name": "e2eplug.audit"}]}},
    # The same response edits twice: with only built-in steps they go straight onto the
    # scanned backend head; a plugin with on_log makes the server build the header list.
    "/edits-on-head": {"GET": {"plugins": [{"name": "key-auth", "enabled": False},
                                           {"name": "response-headers", "config": EDITS}]}},
    "/edits-on-list": {"GET": {"plugins": [{"name": "key-auth", "enabled": False},
                                           {"name": "response-headers", "config": EDITS},
                                           {"name": "e2eplug.logged"}]}},
    # Only built-in steps: the context keeps the request headers on the scan (lazy mode).
    # The same chain with a log-only Python plugin works on the header list: both must
    # send the backend the same headers.
    "/lazy": {"GET": {"plugins": [LAZY_AUTH, LAZY_ECHO]}},
    "/echo": {"/{name}": {"GET": {"plugins": [NO_KEY, BYTES_ECHO]}},
              "/list/{name}": {"GET": {"plugins": [NO_KEY, BYTES_ECHO, {"name": "e2eplug.logged"}]}}},
    "/lazy-list": {"GET": {"plugins": [LAZY_AUTH, LAZY_ECHO, {"name": "e2eplug.logged"}]}},
}

AUDIT = '''
"""A user plugin loaded by dotted name."""
from fastgw.plugins.base import CONTINUE, Plugin as Base

NAME = "e2eplug.audit"
PRIORITY = 10
SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "tag": {"type": "string", "default": "seen", "description": "X-Audit value"}}}


class Plugin(Base):
    def on_request(self, ctx):
        ctx.headers.append((b"X-Audit", self.config["tag"].encode()))
        # Names no client could send (the scanner refuses them): never forwarded, and never
        # mistaken for the gateway's own X-Forwarded-For or Content-Length.
        ctx.headers.append((b"X\\rForwarded\\rFor", b"6.6.6.6"))
        ctx.headers.append((b"Content\\rLength", b"0"))
        ctx.add_response_header(b"Content\\rLength", b"0")
        return CONTINUE
'''

LOGGED = '''
"""A user plugin with only a log phase."""
from fastgw.plugins.base import Plugin as Base

NAME = "e2eplug.logged"
PRIORITY = 5
SCHEMA = {"type": "object", "additionalProperties": False, "properties": {}}


class Plugin(Base):
    def on_log(self, ctx):
        self.last_status = ctx.status
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    plugdir = tmp_path_factory.mktemp("plugins")
    (plugdir / "e2eplug").mkdir()
    (plugdir / "e2eplug" / "__init__.py").write_text("")
    (plugdir / "e2eplug" / "audit.py").write_text(textwrap.dedent(AUDIT))
    (plugdir / "e2eplug" / "logged.py").write_text(textwrap.dedent(LOGGED))
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(plugdir))
    backend = Backend().start()
    config = gateway_config(free_port(), backend.url, resources=RESOURCES, consumers=CONSUMERS)
    config["services"][0]["plugins"] = [{"name": "request-id"}]
    gwdir = tmp_path_factory.mktemp("gw")
    config["access_log"] = {"enabled": True, "path": str(gwdir / "access.log")}
    gw = Gateway(config, workers=1, directory=gwdir)
    try:
        gw.start()
        yield gw, backend
    finally:
        gw.kill()
        backend.stop()
        mp.undo()


def call(env, method, path, headers=None, body=b"", timeout=10.0):
    gw, backend = env
    before = len(backend.requests)
    resp = request(gw.port, method, path, headers, body, timeout=timeout)
    seen = backend.requests[before:]
    return resp, seen


def test_key_auth_denies_and_allows(env):
    resp, seen = call(env, "GET", "/orders")
    assert resp.status == 401 and not seen
    assert resp.headers["www-authenticate"] == 'Key realm="fastgw"'
    body = resp.json()
    assert body["status"] == 401 and body["request_id"] == resp.headers["x-request-id"]
    resp, seen = call(env, "GET", "/orders", {"apikey": "nope-nope"})
    assert resp.status == 401 and not seen
    resp, seen = call(env, "GET", "/orders?apikey=alice-key-1&x=1", {"X-Consumer-Name": "root"})
    assert resp.status == 200
    echo = resp.json()
    assert echo["headers"].get("x-consumer-name") != "root"
    assert "apikey" not in echo["query"] and "apikey" not in echo["headers"]  # credentials not forwarded
    resp = call(env, "GET", "/orders", {"ApiKey": "bob-key-0001"})[0]
    assert resp.status == 200 and "apikey" not in resp.json()["headers"]


def test_consumer_identity_forwarded(env):
    echo = call(env, "GET", "/orders", {"apikey": "alice-key-1", "X-Consumer-Name": "root"})[0].json()
    assert echo["headers"]["x-consumer-name"] == "alice"
    assert echo["headers"]["x-consumer-groups"] == "gold"


def test_identity_headers_stripped_on_routes_without_auth(env):
    for path in ("/public", "/plain"):
        resp = call(env, "GET", path, {"X-Consumer-Name": "admin", "X-Consumer-Groups": "root"})[0]
        assert resp.status == 200
        assert "x-consumer-name" not in resp.json()["headers"]
        assert "x-consumer-groups" not in resp.json()["headers"]


def test_method_level_response_headers(env):
    resp = call(env, "GET", "/orders/77", {"apikey": "bob-key-0001"}, timeout=2.0)[0]
    assert resp.status == 200 and resp.headers["x-order"] == "77"


@pytest.mark.parametrize("path", ["/edits-on-head", "/edits-on-list"])
def test_response_edits_keep_framing_and_hop_by_hop(env, path):
    gw, _backend = env
    with RawClient(gw.port) as raw:
        resp = raw.request("GET", path, {"Host": "t"})
    assert resp.status == 200
    names = [k.lower() for k, _ in resp.raw_headers]
    got = resp.headers
    assert names.count("content-type") == 1 and got["content-type"] == "text/plain"
    assert names.count("content-length") == 1 and int(got["content-length"]) == len(resp.body)
    assert "connection" not in names                      # a plugin can't set hop-by-hop headers
    assert got["x-app"] == "a1" and got["x-added"] == "yes"
    assert got["x-rid"] == got["x-request-id"]
    assert sorted(names) == sorted(["content-type", "content-length", "x-app", "x-added", "x-rid",
                                    "x-request-id"])


def test_method_level_acl(env):
    resp, seen = call(env, "DELETE", "/orders/77", {"apikey": "bob-key-0001"})
    assert resp.status == 403 and not seen
    resp = call(env, "DELETE", "/orders/77", {"apikey": "alice-key-1"})[0]
    assert resp.status == 200


def test_request_id_kept_and_traceparent(env):
    resp = call(env, "GET", "/public", {"X-Request-Id": "client-abc"})[0]
    assert resp.headers["x-request-id"] == "client-abc"
    echo = resp.json()["headers"]
    assert echo["x-request-id"] == "client-abc" and echo["traceparent"].startswith("00-")
    resp = call(env, "GET", "/public", {"X-Request-Id": "bad id with spaces"})[0]
    assert resp.headers["x-request-id"] != "bad id with spaces"


def test_the_request_id_in_use_is_the_one_logged_and_answered(env):
    """The id the backend saw is the one in the access log and in a gateway error body."""
    gw, _backend = env
    resp = call(env, "GET", "/orders", {"X-Request-Id": "client-trace-41"})[0]  # no key: 401
    assert resp.status == 401 and resp.json()["request_id"] == "client-trace-41"
    assert resp.headers["x-request-id"] == "client-trace-41"
    resp = call(env, "GET", "/public", {"X-Request-Id": "client-trace-42"})[0]
    assert resp.status == 200
    log_path = gw.dir / "access.log"
    deadline = time.monotonic() + 5
    ids: list[str] = []
    while time.monotonic() < deadline:
        text = log_path.read_text() if log_path.exists() else ""
        ids = [json.loads(line)["request_id"] for line in text.splitlines() if line]
        if "client-trace-42" in ids:
            break
        time.sleep(0.1)
    assert "client-trace-41" in ids and "client-trace-42" in ids


def test_cors_preflight_answered_at_the_gateway(env):
    headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "DELETE"}
    resp, seen = call(env, "OPTIONS", "/orders/5", headers)
    assert resp.status == 204 and not seen
    assert resp.headers["access-control-allow-origin"] == "https://app.example"
    assert "vary" in resp.headers
    resp, seen = call(env, "OPTIONS", "/orders/5", dict(headers, Origin="https://evil.example"))
    assert "access-control-allow-origin" not in resp.headers and not seen
    resp = call(env, "GET", "/orders", {"Origin": "https://app.example"})[0]
    assert resp.status == 401 and resp.headers["access-control-allow-origin"] == "https://app.example"
    # The origins are known now: the next requests are answered by cors' C step, on the
    # scanned head (key-auth and cors are both C steps), with the same headers.
    for origin, allowed in (("https://app.example", True), ("https://evil.example", False)) * 2:
        resp, seen = call(env, "GET", "/orders", {"Origin": origin, "apikey": "alice-key-1"})
        assert resp.status == 200 and len(seen) == 1
        assert resp.headers.get("access-control-allow-origin") == (origin if allowed else None)
        assert resp.headers["vary"] == "Origin"
        assert "apikey" not in resp.json()["headers"]


def test_jwt(env):
    good = jwt.encode({"iss": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    resp = call(env, "GET", "/jwt", {"Authorization": f"Bearer {good}"})[0]
    assert resp.status == 200
    assert "authorization" not in resp.json()["headers"]
    expired = jwt.encode({"iss": "alice", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")
    none = jwt.encode({"iss": "alice", "exp": int(time.time()) + 60}, None, algorithm="none")
    for token in (expired, none, "garbage"):
        resp, seen = call(env, "GET", "/jwt", {"Authorization": f"Bearer {token}"})
        assert resp.status == 401 and not seen


def test_jwt_token_sent_again(env):
    """The first request verifies the token, the next ones are answered from the worker's
    table (in C): the backend sees the same request every time, spoofed claim headers and
    the token removed, in lazy mode and on the header list alike."""
    token = jwt.encode({"iss": "alice", "sub": "u-7", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    views = []
    for path in ("/jwt-claims", "/jwt-claims-list"):
        for spoof in (None, "root", None):
            headers = {"Authorization": f"Bearer {token}"}
            if spoof:
                headers["X-User"] = spoof
            resp, seen = call(env, "GET", path, headers)
            assert resp.status == 200 and len(seen) == 1
            echo = resp.json()["headers"]
            assert "authorization" not in echo
            views.append((echo.get("x-user"), echo.get("x-consumer-name"), echo.get("x-consumer-groups")))
    assert views == [("u-7", "alice", "gold")] * 6
    resp, seen = call(env, "GET", "/jwt-claims", {"Authorization": f"Bearer {token[:-2]}xx"})
    assert resp.status == 401 and not seen


def test_basic_auth(env):
    import base64
    ok = base64.b64encode(b"carol:carol-pw").decode()
    bad = base64.b64encode(b"carol:wrong").decode()
    resp = call(env, "GET", "/basic", {"Authorization": f"Basic {ok}"})[0]
    assert resp.status == 200 and "authorization" not in resp.json()["headers"]
    first = resp.json()["headers"]
    # Verified once: the same credentials are answered by the C step, with the same result.
    resp = call(env, "GET", "/basic", {"Authorization": f"BASIC  {ok} "})[0]
    assert resp.status == 200 and "authorization" not in resp.json()["headers"]
    assert {k: v for k, v in resp.json()["headers"].items() if k.startswith("x-consumer")} == \
        {k: v for k, v in first.items() if k.startswith("x-consumer")} != {}
    resp, seen = call(env, "GET", "/basic", {"Authorization": f"Basic {bad}"})
    assert resp.status == 401 and not seen


def test_request_size_limit(env):
    assert call(env, "POST", "/upload", body=b"x" * 64)[0].status == 200
    resp, seen = call(env, "POST", "/upload", body=b"x" * 65)
    assert resp.status == 413 and not seen


def test_ip_restriction(env):
    resp, seen = call(env, "GET", "/blocked")
    assert resp.status == 403 and not seen


def test_user_plugin_by_dotted_name(env):
    resp = call(env, "GET", "/audited")[0]
    assert resp.status == 200 and resp.json()["headers"]["x-audit"] == "seen"
    seen = resp.json()["headers"]
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert not [k for k in seen if "\r" in k or "forwarded\rfor" in k or "content\rlength" in k]
    assert "content\rlength" not in resp.headers and int(resp.headers["content-length"]) == len(resp.body)


def test_request_size_limit_on_a_streamed_body(env):
    # No Content-Length: the limit is enforced on the bytes as they stream, 413 at once,
    # without buffering the body (the connection is then closed).
    gw, backend = env
    before = len(backend.requests)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"20\r\n" + b"a" * 32 + b"\r\n")          # 32 bytes: under the limit
        sock.sendall(b"40\r\n" + b"b" * 64 + b"\r\n")          # 96 in all: over 64
        data, _ = recv_head(sock)
    assert data.startswith(b"HTTP/1.1 413"), data[:100]
    time.sleep(0.2)
    # the cut-off body never completes at the backend (its upstream connection is dropped)
    assert not any(r["path"] == "/upload" for r in backend.requests[before:])


@pytest.mark.parametrize("path", ["/lazy", "/lazy-list"])
def test_built_in_chain_edits_the_request_headers_on_the_scan_as_on_the_list(env, path):
    """key-auth hides both key headers, the consumer's identity replaces the client's,
    request-id goes up and down, a template reads a request header in the response phase,
    and the client's two X-Forwarded-For lines reach the backend as one list."""
    headers = [("X-Api-Key", "alice-key-1"), ("apikey", "bob-key-0001"), ("X-Tenant", "t1"),
               ("X-Consumer-Name", "root"), ("X-Forwarded-For", "1.1.1.1"), ("Accept", "*/*"),
               ("X-Forwarded-For", "2.2.2.2"), ("X-Request-Id", "client-lazy-1")]
    resp, seen = call(env, "GET", path, headers)
    assert resp.status == 200, resp.body
    got = resp.json()["headers"]
    assert "apikey" not in got and "x-api-key" not in got
    assert got["x-consumer-name"] == "bob"       # the first key name configured wins
    assert got["x-request-id"] == resp.headers["x-request-id"] == "client-lazy-1"
    assert got["x-tenant"] == "t1" and got["accept"] == "*/*"
    assert got["x-forwarded-for"] == "1.1.1.1, 2.2.2.2, 127.0.0.1"
    assert resp.headers["x-tenant-echo"] == "t1"
    # A key that is not known is refused the same way.
    assert call(env, "GET", path, {"apikey": "nope-nope"})[0].status == 401


@pytest.mark.parametrize("path", ["/echo/caf%C3%A9", "/echo/list/caf%C3%A9"])
def test_response_header_templates_echo_the_clients_bytes(env, path):
    """A template echoing a request header and a path variable gives the client back the
    bytes it sent (its Latin-1 0xE9 once came back as UTF-8's C3 A9); the template's own
    text goes out as UTF-8. On the scanned head and on the header list alike."""
    with RawClient(env[0].port) as client:
        client.send(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Name: caf\xe9\r\n\r\n")
        head, _ = recv_head(client.sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"\r\nX-Echo: caf\xe9|caf%C3%A9|\xc3\xa9\r\n" in head + b"\r\n", head


def test_plain_path_forwards_every_x_forwarded_for_line_as_one_list(env):
    """RFC 9110 5.3: field lines of one name are one list; the plain path once kept only
    the last X-Forwarded-For (and Via) line."""
    headers = [("X-Forwarded-For", "1.1.1.1"), ("Via", "1.0 a"), ("X-Forwarded-For", "2.2.2.2"),
               ("Via", "1.1 b")]
    got = call(env, "GET", "/plain", headers)[0].json()["headers"]
    assert got["x-forwarded-for"] == "1.1.1.1, 2.2.2.2, 127.0.0.1"
    assert got["via"] == "1.0 a, 1.1 b, 1.1 fastgw"


def test_password_checks_do_not_hold_up_other_requests(backend: Backend, port: int, gateway: Any) -> None:
    """basic-auth's hash check (bcrypt cost 13 here, hundreds of ms of CPU) runs off the event
    loop: a request to another route, sent while a wrong password is being checked, is
    answered first. On the loop, the worker would serve nothing until the check ended."""
    import base64
    import threading

    slow = bcrypt.hashpw(b"dave-pw", bcrypt.gensalt(13)).decode()
    consumers = [{"name": "dave", "credentials": {"basic-auth": [{"username": "dave", "password": slow}]}}]
    resources = {"/basic": {"GET": {"plugins": [{"name": "basic-auth"}]}}, "/plain": {"GET": {}}}
    g = gateway(gateway_config(port, backend.url, resources=resources, consumers=consumers))
    assert request(g.port, "GET", "/plain").status == 200          # connections warm
    done: dict[str, float] = {}
    statuses: dict[str, int] = {}

    def guess() -> None:
        bad = base64.b64encode(b"dave:wrong").decode()
        statuses["basic"] = request(g.port, "GET", "/basic", {"Authorization": f"Basic {bad}"},
                                    timeout=30).status
        done["basic"] = time.monotonic()

    t = threading.Thread(target=guess)
    t.start()
    time.sleep(0.1)                                                   # the check is running
    statuses["plain"] = request(g.port, "GET", "/plain", timeout=30).status
    done["plain"] = time.monotonic()
    t.join(30)
    assert statuses == {"basic": 401, "plain": 200}
    assert done["plain"] < done["basic"]


def test_clients_that_leave_during_a_password_check(backend: Backend, port: int, gateway: Any) -> None:
    """Clients that close while their password is being checked: the check's waiters are
    dropped cleanly (no coroutine left never awaited, no traceback), the worker serves on,
    and the check's result still serves the next request with those credentials."""
    import base64

    pw_hash = bcrypt.hashpw(b"erin-pw", bcrypt.gensalt(10)).decode()
    consumers = [{"name": "erin", "credentials": {"basic-auth": [{"username": "erin", "password": pw_hash}]}}]
    g = gateway(gateway_config(port, backend.url, resources={"/basic": {"GET": {"plugins": [{"name": "basic-auth"}]}}},
                               consumers=consumers))
    good = base64.b64encode(b"erin:erin-pw").decode()
    for i in range(20):
        with socket.create_connection(("127.0.0.1", g.port)) as s:
            creds = good if i % 2 else base64.b64encode(f"erin:guess-{i}".encode()).decode()
            s.sendall(f"GET /basic HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {creds}\r\n\r\n".encode())
    resp = request(g.port, "GET", "/basic", {"Authorization": f"Basic {good}"}, timeout=30)
    assert resp.status == 200
    time.sleep(0.5)
    log = g.log()
    assert "never awaited" not in log and "Traceback" not in log, log[-2000:]
