"""Seed the sandbox the way a platform team would prepare Azure for vaultrelay.

Secrets and a certificate go into the source vaults through the admin identity's SDK clients;
roles are granted through ARM role assignments, exactly as `az role assignment create` would.
Used by the demo and by tests that need the example config to resolve.
"""

from __future__ import annotations

from typing import Any

from sandbox.client import SandboxClient
from sandbox.prepare import self_signed_pem

EXAMPLE_SECRETS = {
    ("kv-source", "database-password"): "s3cr3t-db-password",
    ("kv-source", "api-key"): "api-key-0123456789",
    ("kv-shared", "data-api-key"): "data-team-key-42",
}

# (identity, role, resource kind, resource name); kind None = subscription scope
EXAMPLE_ROLES = [
    ("system", "Key Vault Secrets User", "vault", "kv-source"),
    ("system", "Storage Account Key Operator Service Role", "storage", "sandboxstore"),
    ("system", "Storage Blob Data Contributor", "storage", "sandboxstore"),
    ("system", "Storage Blob Delegator", "storage", "sandboxstore"),
    ("system", "Reader", None, None),
    # least roles (what `vaultrelay plan --permissions` names): a connection string is read, never regenerated
    ("system", "vaultrelay Cosmos DB Key Reader", "cosmos", "sandbox-cosmos"),
    ("data", "Key Vault Secrets User", "vault", "kv-shared"),
    # the write side: target vault, bundle blobs, state tables, app settings
    ("system", "Key Vault Secrets Officer", "vault", "kv-target"),
    # the state vault: vaultrelay's identity only (nobody who reads a target has a role there)
    ("system", "Key Vault Secrets Officer", "vault", "kv-state"),
    ("system", "Storage Blob Data Contributor", "storage", "sandboxdata"),
    ("system", "Storage Table Data Contributor", "storage", "sandboxstore"),
    ("system", "vaultrelay App Settings Writer", "site", "sandbox-web"),
]


def seed_example(sandbox: SandboxClient) -> dict[str, Any]:
    """Put the example config's secrets in place and grant its identities their roles.

    Idempotent: running it twice adds new secret versions and skips existing assignments.
    """
    from azure.keyvault.certificates import CertificateClient, CertificateContentType, CertificatePolicy
    from azure.keyvault.secrets import SecretClient

    admin = sandbox.admin_credential()
    for (vault, name), value in EXAMPLE_SECRETS.items():
        SecretClient(sandbox.vault_url(vault), admin).set_secret(name, value)
    CertificateClient(sandbox.vault_url("kv-source"), admin).import_certificate(
        "app-certificate", self_signed_pem("app.example"),
        policy=CertificatePolicy(issuer_name="Unknown", content_type=CertificateContentType.pem))  # a PEM import names PEM
    for identity, role, kind, resource in EXAMPLE_ROLES:
        sandbox.grant(identity, role, sandbox.resource_id(kind, resource) if kind and resource else None)
    return {"secrets": len(EXAMPLE_SECRETS) + 1, "roles": len(EXAMPLE_ROLES)}


def example_environment(sandbox: SandboxClient) -> dict[str, str]:
    """Variables the example config interpolates, pointed at the sandbox."""
    return {"DATA_IDENTITY_CLIENT_ID": sandbox.identities["data"].client_id}
