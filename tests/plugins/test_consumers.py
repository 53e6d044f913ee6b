"""ConsumerTable indexes and identity header stripping."""

from __future__ import annotations

import pytest

from fastgw.consumers import ConsumerTable, CredentialError, strip_identity_headers


def test_indexes_and_duplicates():
    table = ConsumerTable([{"name": "a", "groups": ["g"], "credentials": {"key-auth": ["k-aaaaaaaa"]}}])
    assert table.key_lookup(b"k-aaaaaaaa").name == "a"
    assert table.key_lookup(b"k-aaaaaaab") is None
    assert table.get("a").headers == ((b"X-Consumer-Name", b"a"), (b"X-Consumer-Groups", b"g"))
    with pytest.raises(CredentialError):
        ConsumerTable([{"name": "a", "credentials": {"key-auth": ["same-key-1"]}},
                       {"name": "b", "credentials": {"key-auth": ["same-key-1"]}}])
    with pytest.raises(CredentialError):
        ConsumerTable([{"name": "a"}, {"name": "a"}])


def test_strip_identity_headers():
    headers = [(b"Host", b"h"), (b"x-consumer-name", b"root"), (b"X-Credential-Identifier", b"x"), (b"X-Other", b"1")]
    assert strip_identity_headers(headers) == [(b"Host", b"h"), (b"X-Other", b"1")]


def test_check_consumers_for_the_config_validator():
    from fastgw.consumers import check_consumers
    errors = check_consumers([{"name": "a", "credentials": {"basic-auth": [{"username": "a", "password": "hunter2"}]}}])
    assert errors == ["consumers[0].credentials.basic-auth[0].password: must be a bcrypt ($2b$...) or "
                      "scrypt$N$r$p$salt$hash hash, not a plain password"]
    assert "hunter2" not in errors[0]
    assert check_consumers([{"name": "a"}, {"name": "a"}]) == ["consumers[1].name: duplicate consumer 'a'"]
    assert check_consumers([{"name": "a", "credentials": {"key-auth": ["long-enough-key"]}}]) == []
