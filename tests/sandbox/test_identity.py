"""Contract: azure-identity credentials against the sandbox's Entra stand-in."""

from __future__ import annotations

import jwt
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientSecretCredential, DefaultAzureCredential, ManagedIdentityCredential

from sandbox.client import SandboxClient


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def test_system_assigned_token_has_realistic_claims(clean_faults: SandboxClient) -> None:
    sandbox = clean_faults
    token = ManagedIdentityCredential().get_token("https://vault.azure.net/.default")
    claims = _claims(token.token)
    assert claims["aud"] == "https://vault.azure.net"
    assert claims["iss"] == f"https://sts.windows.net/{sandbox.tenant_id}/"
    assert claims["oid"] == sandbox.env["SANDBOX_SYSTEM_PRINCIPAL_ID"]
    assert claims["tid"] == sandbox.tenant_id
    assert claims["nbf"] <= claims["iat"] < claims["exp"] == token.expires_on
    assert jwt.get_unverified_header(token.token)["alg"] == "RS256"


@pytest.mark.parametrize("selector", ["client_id", "resource_id", "object_id"])
def test_user_assigned_selected_by_each_id(clean_faults: SandboxClient, selector: str) -> None:
    ident = clean_faults.identities["data"]
    value = getattr(ident, selector)
    kwargs = {"client_id": value} if selector == "client_id" else {"identity_config": {selector: value}}
    token = ManagedIdentityCredential(**kwargs).get_token("https://storage.azure.com/.default")
    assert _claims(token.token)["oid"] == ident.object_id
    assert _claims(token.token)["xms_mirid"] == ident.resource_id


def test_unknown_user_assigned_identity_is_refused(clean_faults: SandboxClient) -> None:
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential(client_id="00000000-0000-0000-0000-000000000000").get_token("https://vault.azure.net/.default")


def test_default_azure_credential_uses_managed_identity(clean_faults: SandboxClient) -> None:
    token = DefaultAzureCredential().get_token("https://management.azure.com/.default")
    assert _claims(token.token)["oid"] == clean_faults.env["SANDBOX_SYSTEM_PRINCIPAL_ID"]


def test_tokens_validate_against_published_openid_metadata(clean_faults: SandboxClient) -> None:
    sandbox = clean_faults
    config = requests.get(f"{sandbox.authority}/{sandbox.tenant_id}/.well-known/openid-configuration", timeout=10).json()
    assert config["issuer"] == f"https://sts.windows.net/{sandbox.tenant_id}/"
    client = jwt.PyJWKClient(config["jwks_uri"], ssl_context=__import__("ssl").create_default_context(cafile=sandbox.ca_bundle))
    token = ManagedIdentityCredential(client_id=sandbox.identities["caller"].client_id).get_token("api://vaultrelay/.default").token
    key = client.get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience="api://vaultrelay", issuer=config["issuer"])
    assert claims["oid"] == sandbox.identities["caller"].object_id


def test_service_principal_client_credentials(clean_faults: SandboxClient) -> None:
    sandbox = clean_faults
    credential = ClientSecretCredential(
        sandbox.tenant_id, sandbox.env["SANDBOX_SP_CLIENT_ID"], sandbox.env["SANDBOX_SP_CLIENT_SECRET"],
        authority=sandbox.authority, disable_instance_discovery=True,
    )
    assert _claims(credential.get_token("https://vault.azure.net/.default").token)["appid"] == sandbox.env["SANDBOX_SP_CLIENT_ID"]
    wrong = ClientSecretCredential(
        sandbox.tenant_id, sandbox.env["SANDBOX_SP_CLIENT_ID"], "not-the-secret",
        authority=sandbox.authority, disable_instance_discovery=True,
    )
    with pytest.raises(ClientAuthenticationError):
        wrong.get_token("https://vault.azure.net/.default")


def test_identity_counters_are_exact(clean_faults: SandboxClient) -> None:
    sandbox = clean_faults
    for _ in range(3):
        ManagedIdentityCredential(client_id=sandbox.identities["other"].client_id).get_token(f"https://example.test/{_}/.default")
    counters = sandbox.counters()
    assert counters["by_endpoint"]["identity:GetManagedIdentityToken"] == 3
    assert counters["by_identity"]["other"] == 3
    assert counters["total"] == 3
