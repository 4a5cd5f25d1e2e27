"""Key Vault's SecretBundle JSON (what GetSecret answers) read into the fields vaultrelay uses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.sources.fetched import SourceProblem
from core.sources.keyvault_read import SecretBundle


def test_a_full_bundle() -> None:
    bundle = SecretBundle.from_json({
        "value": "s3cret", "id": "https://kv.vault.azure.net/secrets/db/0123abcd", "contentType": "application/x-pem-file",
        "kid": "https://kv.vault.azure.net/keys/db/0123abcd", "managed": True,
        "attributes": {"enabled": False, "nbf": 1700000000, "exp": 1800000000, "created": 1690000000, "recoveryLevel": "Recoverable"},
        "tags": {"owner": "team"},
    })
    assert (bundle.value, bundle.version, bundle.content_type) == ("s3cret", "0123abcd", "application/x-pem-file")
    assert bundle.key_id == "https://kv.vault.azure.net/keys/db/0123abcd"
    assert bundle.enabled is False
    assert bundle.not_before == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert bundle.expires_on == datetime.fromtimestamp(1800000000, UTC)


def test_missing_and_mistyped_fields_read_as_absent() -> None:
    bundle = SecretBundle.from_json({"value": 5, "id": "https://kv.vault.azure.net/secrets/db", "attributes": {"enabled": "yes", "exp": True}})
    assert bundle == SecretBundle(None, None, None, None, None, None, None)
    assert SecretBundle.from_json({"attributes": None}).enabled is None
    with pytest.raises(SourceProblem, match="not a secret"):
        SecretBundle.from_json(["value"])
