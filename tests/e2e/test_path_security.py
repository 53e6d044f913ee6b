"""No spelling of a protected path reaches the backend without the protected route's auth.

``/admin`` (and everything under it) is guarded by key-auth; ``/orders/{id}`` and
``/public/{rest*}`` are open. Each spelling below must either be refused by the gateway
(400/401/404/405) or arrive at the backend as a path that is *not* ``/admin`` once fully
decoded and normalized — a backend that decodes and resolves dot segments must never be
handed an unauthenticated ``/admin``.
"""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

import pytest

from tests.e2e.conftest import requires_engine
from tests.helpers import Backend, Gateway, free_port, gateway_config, request

pytestmark = requires_engine

RESOURCES = {
    "/admin": {"plugins": [{"name": "key-auth"}], "GET": {}, "/{rest*}": {"GET": {}}},
    "/orders": {"/{id}": {"GET": {}}},
    "/public": {"/{rest*}": {"GET": {}}},
}


SPELLINGS = [
    "/admin", "/admin/", "/admin/users", "/orders/../admin", "/orders/%2e%2e/admin", "/orders/%2E%2E/admin",
    "/orders/.%2e/admin", "//admin", "///admin", "/%2Fadmin", "/%2fadmin", "/./admin", "/%2e/admin",
    "/%61dmin", "/adm%69n", "/orders/1/../../admin", "/public/../admin", "/public/%2e%2e/admin",
    # an encoded separator hiding a dot segment: refused by the normalizer (400)
    "/public/..%2Fadmin", "/public/..%2fadmin", "/public/%2e%2e%2Fadmin", "/public/..%5Cadmin",
    "/public/..\\admin",
    "/admin%2F", "/orders/..;/admin", "/admin%00", "/orders/%252e%252e/admin",
]


def _resolved(path: str) -> str:
    """What a lax backend might make of a path: decode (twice), backslashes, dot segments."""
    p = path.split("?", 1)[0]
    for _ in range(2):
        p = unquote(p)
    p = p.replace("\\", "/").replace(";", "/")
    return posixpath.normpath("/" + p.lstrip("/")).lower()


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    backend = Backend().start()
    consumers = [{"name": "ops", "credentials": {"key-auth": ["ops-key-123"]}}]
    gateway = Gateway(gateway_config(free_port(), backend.url, resources=RESOURCES, consumers=consumers),
                      directory=tmp_path_factory.mktemp("gw"))
    try:
        gateway.start()
        yield gateway, backend
    finally:
        gateway.kill()
        backend.stop()


@pytest.mark.parametrize("path", SPELLINGS)
def test_protected_path_never_reaches_backend_unauthenticated(gw, path):
    gateway, backend = gw
    before = len(backend.requests)
    resp = request(gateway.port, "GET", path)
    seen = backend.requests[before:]
    assert resp.status in (200, 400, 401, 404, 405), resp.status
    for echo in seen:
        target = echo.get("target") or echo["path"]
        assert not _resolved(target).startswith("/admin"), f"{path!r} reached the backend as {target!r}"
    if resp.status == 200:
        assert seen, "a 200 must come from the backend"


def test_admin_with_key_still_works(gw):
    gateway, backend = gw
    resp = request(gateway.port, "GET", "/orders/../admin", {"apikey": "ops-key-123"})
    assert resp.status == 200 and resp.json()["path"] == "/admin"
    assert "apikey" not in resp.json()["headers"]
