from __future__ import annotations

from api.auth import KeyRing, generate_key


def test_operator_keys_hold_both_scopes_client_keys_one() -> None:
    ring = KeyRing.build(["client-key-000000000"], ["operator-key-0000000"])
    assert ring.scopes("client-key-000000000") == {"client"}
    assert ring.scopes("operator-key-0000000") == {"client", "operator"}
    assert ring.scopes("client-key-00000000") is None


def test_keys_are_stored_as_digests_not_plain_text() -> None:
    ring = KeyRing.build(["client-key-000000000"], [])
    assert all(len(digest) == 32 for digest in ring.principals_by_digest)
    assert b"client-key" not in b"".join(ring.principals_by_digest)


def test_generated_keys_are_unique_and_long() -> None:
    keys = {generate_key("mec_client") for _ in range(50)}
    assert len(keys) == 50
    assert all(k.startswith("mec_client_") and len(k) >= 40 for k in keys)


def test_a_key_id_is_a_digest_and_not_the_key() -> None:
    ring = KeyRing.build(["client-key-000000000"], ["operator-key-0000000"])
    client = ring.principal("client-key-000000000")
    operator = ring.principal("operator-key-0000000")
    assert client is not None and operator is not None
    assert client.key_id != operator.key_id
    assert "client-key" not in client.key_id and len(client.key_id) == 16
    assert client.tenant_tag() != client.key_id
