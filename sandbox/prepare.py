"""Prepare a running sandbox for a config, the way a platform team prepares Azure for it.

`python -m sandbox seed` and `python -m sandbox grant` (see `sandbox/__main__.py`) call these:

* `seed_config`: every vault, storage account, Cosmos DB account, App Service site and SQL server
  the config names is created, then every Key Vault secret, certificate and key it references
  that does not exist yet is put in place (secrets get a random value unless one is given with
  `--secret VAULT/NAME=VALUE`; certificates are self-signed; keys are RSA).  Through the admin
  identity's SDK clients, as in Azure.
* `grant_config`: the roles `vaultrelay plan --permissions` computes for the config are granted
  through ARM role assignments (`Microsoft.Authorization/roleAssignments`), as
  `az role assignment create` would, to the sandbox identity each store names.

Both are idempotent.  Nothing here knows secret values beyond the ones it is given or makes.
"""

from __future__ import annotations

import datetime as dt
import secrets as random_values
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sandbox.client import SandboxClient

# config resource kind -> the sandbox's resource kind
_KINDS = {"vault": "vault", "storage": "storage", "container": "storage", "cosmos": "cosmos", "site": "site", "sql": "sql"}


@dataclass
class Prepared:
    """What a seed or grant did, for its summary (names only, never values)."""

    resources: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def config_resources(loaded: Any) -> set[tuple[str, str]]:
    """(sandbox kind, name) of every Azure resource the config names."""
    config = loaded.config
    found: set[tuple[str, str]] = set()
    for variables in config.envs.values():
        for variable in variables.values():
            ref = variable.from_
            if ref is None:
                continue
            store = config.secretStores.get(ref.store)
            if ref.kind == "keyvault":
                vault = ref.vault or getattr(store, "vault_name", None)
                if vault:
                    found.add(("vault", vault))
            elif ref.kind in ("storage_key", "sas") and ref.account:
                found.add(("storage", ref.account))
            elif ref.kind == "cosmos" and ref.account:
                found.add(("cosmos", ref.account))
            elif ref.kind == "sql" and ref.server:
                found.add(("sql", ref.server.split(".")[0]))
    for target in config.targets.values():
        if target.type == "keyvault":
            found.add(("vault", target.vault))
        elif target.type == "blob":
            found.add(("storage", target.account))
        elif target.type == "app_settings":
            found.add(("site", target.site))
    if config.state is not None:
        if config.state.vault:
            found.add(("vault", config.state.vault))
        if config.state.account:
            found.add(("storage", config.state.account))
    for tagged in config.rotation.tagged_secrets:
        found.add(("vault", tagged.vault))
    return found


def config_objects(loaded: Any) -> set[tuple[str, str, str]]:
    """(vault, object name, type) of every Key Vault object the config reads."""
    config = loaded.config
    found: set[tuple[str, str, str]] = set()
    for variables in config.envs.values():
        for variable in variables.values():
            ref = variable.from_
            if ref is None or ref.kind != "keyvault" or not ref.secret:
                continue
            vault = ref.vault or getattr(config.secretStores.get(ref.store), "vault_name", None)
            if vault:
                found.add((vault, ref.secret, ref.type or "secret"))
    return found


def seed_config(client: SandboxClient, loaded: Any, values: Mapping[tuple[str, str], str] | None = None,
                say: Callable[[str], None] = lambda _: None) -> Prepared:
    """Create the config's resources and Key Vault objects in the sandbox (`values`: chosen
    secret values by (vault, name); also written when the secret exists)."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.keyvault.certificates import CertificateClient, CertificateContentType, CertificatePolicy
    from azure.keyvault.keys import KeyClient
    from azure.keyvault.secrets import SecretClient

    values = dict(values or {})
    done = Prepared()
    for kind, name in sorted(config_resources(loaded) | {("vault", v) for v, _ in values}):
        client.create_resource(kind, name)
        done.resources.append(f"{kind} {name}")
    admin = client.admin_credential()
    wanted = config_objects(loaded) | {(vault, name, "secret") for vault, name in values}
    for vault, name, kind in sorted(wanted):
        url = client.vault_url(vault)
        chosen = values.get((vault, name))
        if kind == "secret":
            secrets = SecretClient(url, admin)
            if chosen is None:
                try:
                    secrets.get_secret(name)
                    continue
                except ResourceNotFoundError:
                    chosen = random_values.token_urlsafe(24)
            secrets.set_secret(name, chosen)
        elif kind == "certificate":
            certificates = CertificateClient(url, admin)
            try:
                certificates.get_certificate(name)
                continue
            except ResourceNotFoundError:
                # A PEM import needs a policy naming the PEM content type, as in Azure.
                certificates.import_certificate(name, self_signed_pem(f"{name}.example"), policy=CertificatePolicy(
                    issuer_name="Unknown", content_type=CertificateContentType.pem))
        else:
            keys = KeyClient(url, admin)
            try:
                keys.get_key(name)
                continue
            except ResourceNotFoundError:
                keys.create_rsa_key(name, size=2048)
        done.objects.append(f"{kind} {vault}/{name}")
        say(f"  {kind} {vault}/{name}")
    return done


def self_signed_pem(common_name: str) -> bytes:
    """A PEM certificate with its private key (what Key Vault imports)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=90)).sign(key, hashes.SHA256())
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)


def sandbox_identity(client: SandboxClient, identity: Any) -> str | None:
    """The sandbox identity name (`system` or a user-assigned name) a config identity selects."""
    if identity.kind == "system_assigned":
        return "system"
    if identity.kind != "user_assigned":
        return None
    for name, candidate in client.identities.items():
        if (identity.client_id and identity.client_id.lower() == candidate.client_id.lower()) or \
                (identity.object_id and identity.object_id.lower() == candidate.object_id.lower()) or \
                (identity.resource_id and identity.resource_id.lower() == candidate.resource_id.lower()):
            return name
    return None


def scope_id(client: SandboxClient, scope: Any) -> str:
    """The ARM id of a permissions scope in the sandbox."""
    subscription = f"/subscriptions/{client.subscription_id}"
    if scope.kind == "subscription":
        return subscription
    if scope.kind == "table":
        return client.resource_id("storage", scope.name or client.env["SANDBOX_STORAGE_ACCOUNT"], scope.resource_group)
    if scope.kind == "queue":  # the work queue, in the app's own storage account
        return client.resource_id("storage", client.env["SANDBOX_STORAGE_ACCOUNT"], scope.resource_group) + f"/queueServices/default/queues/{scope.name}"
    if scope.kind == "container":
        account, _, container = scope.name.partition("/")
        return client.resource_id("storage", account, scope.resource_group) + f"/blobServices/default/containers/{container}"
    return client.resource_id(_KINDS[scope.kind], scope.name, scope.resource_group)


def grant_config(client: SandboxClient, loaded: Any, say: Callable[[str], None] = lambda _: None) -> Prepared:
    """Grant the roles the config needs (as `vaultrelay plan --permissions` computes them) through
    ARM role assignments; resources it names are created first, so the scopes exist."""
    from core.permissions.matrix import compute_permissions

    done = Prepared()
    for kind, name in sorted(config_resources(loaded)):
        client.create_resource(kind, name)
    report = compute_permissions(loaded)
    for grant in report.grants:
        who = sandbox_identity(client, grant.identity)
        if who is None:
            done.skipped.append(f"{grant.identity.description}: no such identity in the sandbox (its identities: system, "
                                f"{', '.join(sorted(client.identities))}; see SANDBOX_USER_IDENTITIES in the env file)")
            continue
        scope = scope_id(client, grant.scope)
        for role in grant.roles:
            client.grant(who, role, scope)
            line = f"{who}: {role} on {grant.scope.describe()}"
            done.grants.append(line)
            say(f"  {line}")
    return done
