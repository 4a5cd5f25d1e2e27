"""Least privilege, proven against the sandbox's RBAC (the same role definitions as Azure's).

The roles come from `core.permissions.matrix.compute_permissions` on examples/vaultrelay.yaml (what
`vaultrelay plan --permissions` prints for it).  Fresh user-assigned identities stand in for the
example's two stores and get exactly those roles, at those scopes, through ARM role assignments:
a full sync of the example then succeeds.  For each of the roles, a sync by fresh identities
holding all the others fails with a 403 whose message names the missing role and where it is
needed.  The data role behind a user delegation SAS is one Azure checks when the SAS is used,
not when it is minted: vaultrelay's check of every new SAS is what turns it into a failed sync
(nothing published), and the test also shows the SAS published with the role in place works.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.keyvault.secrets import SecretClient
from azure.storage.blob import BlobClient, BlobServiceClient

from core.config import parse_config
from core.connections import StoreConnections
from core.permissions.matrix import Scope, compute_permissions
from core.push import SyncEngine, SyncReport
from demo.seed import example_environment, seed_example
from sandbox.client import SandboxClient

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "vaultrelay.yaml"
STORES = ("azure", "azure-data")
# Stand-in client ids while computing the grants: they only tell the two stores apart.
PLACEHOLDERS = {store: str(uuid.uuid5(uuid.NAMESPACE_URL, f"vaultrelay-example-{store}")) for store in STORES}


@dataclass(frozen=True)
class Role:
    """One role the example needs: which store's identity, where, which role."""

    store: str
    scope: Scope
    role: str

    @property
    def id(self) -> str:
        return f"{self.store}:{self.scope.kind}:{self.scope.name or 'deployment'}:{self.role}"


def example_text(client_ids: dict[str, str], table_prefix: str = "vaultrelay") -> str:
    """examples/vaultrelay.yaml with each store on the given user-assigned identity and its own
    state tables; everything else as the example has it."""
    data = yaml.safe_load(EXAMPLE.read_text())
    for store, client_id in client_ids.items():
        data["secretStores"][store]["identity"] = {"type": "user_assigned", "client_id": client_id}
    data["state"]["table_prefix"] = table_prefix
    return yaml.safe_dump(data, sort_keys=False)


def example_roles() -> list[Role]:
    """Every role the example needs, from the permissions matrix (no sandbox needed)."""
    loaded = parse_config(example_text(PLACEHOLDERS), "vaultrelay.yaml", environ={})
    report = compute_permissions(loaded, environ={})
    store_of = {client_id: store for store, client_id in PLACEHOLDERS.items()}
    return sorted(
        (Role(store_of[g.identity.client_id or ""], g.scope, role) for g in report.grants for role in g.roles),
        key=lambda r: r.id,
    )


ROLES = example_roles()


def scope_id(sandbox: SandboxClient, scope: Scope) -> str:
    """The ARM scope a grant is assigned at."""
    if scope.kind == "subscription":
        return f"/subscriptions/{scope.subscription or sandbox.subscription_id}"
    if scope.kind == "container":
        account, _, container = scope.name.partition("/")
        return f"{sandbox.resource_id('storage', account)}/blobServices/default/containers/{container}"
    if scope.kind == "queue":  # the work queue in the app's own storage (the state account)
        return f"{sandbox.resource_id('storage', sandbox.env['SANDBOX_STORAGE_ACCOUNT'])}/queueServices/default/queues/{scope.name}"
    kind = {"vault": "vault", "storage": "storage", "table": "storage", "cosmos": "cosmos", "site": "site", "sql": "sql", "containerapp": "containerapp"}[scope.kind]
    return sandbox.resource_id(kind, scope.name)


@pytest.fixture(scope="module")
def seeded(sandbox: SandboxClient) -> Iterator[SandboxClient]:
    seed_example(sandbox)
    with contextlib.suppress(ResourceExistsError):  # UPLOADS_SAS's container, for trying the SAS out
        BlobServiceClient(sandbox.storage_endpoint("sandboxstore"), credential=sandbox.admin_credential()).create_container("uploads")
    saved = {k: os.environ.get(k) for k in example_environment(sandbox)}
    os.environ.update(example_environment(sandbox))
    yield sandbox
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def state_prefix() -> str:
    """State tables of this module: the app settings target knows what it owns from state."""
    return f"lp{uuid.uuid4().hex[:10]}"


def sync_as(sandbox: SandboxClient, roles: list[Role], prefix: str) -> SyncReport:
    """A full sync of the example (every SAS minted anew) by fresh identities holding exactly `roles`."""
    tag = uuid.uuid4().hex[:8]
    identities = {store: sandbox.create_identity(f"lp-{store}-{tag}") for store in STORES}
    for role in roles:
        sandbox.grant(identities[role.store].name, role.role, scope_id(sandbox, role.scope))
    client_ids = {store: identity.client_id for store, identity in identities.items()}
    loaded = parse_config(example_text(client_ids, prefix), "vaultrelay.yaml", environ=os.environ)
    return SyncEngine(StoreConnections(loaded)).sync(force_mint=True)


def problems(report: SyncReport) -> list[str]:
    found = [f"{env}: {failure}" for env, failures in report.failures.items() for failure in failures]
    return found + [f"{t.target}: {t.error}" for t in report.targets if t.outcome == "error"]


def uploads_sas_works(sandbox: SandboxClient) -> bool:
    """Whether the UPLOADS_SAS the last sync pushed to kv-target may write to its container."""
    sas = SecretClient(sandbox.vault_url("kv-target"), sandbox.admin_credential()).get_secret("uploads-sas").value
    blob = BlobClient(sandbox.storage_endpoint("sandboxstore"), "uploads", f"lp-{uuid.uuid4().hex[:8]}", credential=sas, retry_total=0)
    try:
        blob.upload_blob(b"written with the minted SAS")
    except HttpResponseError as exc:
        assert exc.status_code == 403, exc
        return False
    return True


def test_the_matrix_names_narrow_roles_for_the_example() -> None:
    names = {r.role for r in ROLES}
    assert not names & {"Owner", "Contributor", "User Access Administrator", "Key Vault Administrator", "Storage Account Contributor",
                        "DocumentDB Account Contributor", "Storage Blob Data Owner"}
    assert {"Key Vault Secrets User", "Key Vault Secrets Officer", "Storage Account Key Operator Service Role", "Storage Blob Delegator",
            "Storage Table Data Contributor", "vaultrelay Cosmos DB Key Reader", "vaultrelay App Settings Writer"} <= names
    # The example reads a Cosmos DB connection string and writes app settings: nothing that regenerates
    # a key or deploys to, restarts or deletes a site (issue 14).
    assert not names & {"vaultrelay Cosmos DB Key Operator", "Website Contributor"}
    # Reader at subscription scope only because the example names no resource groups.
    assert all(r.scope.kind != "subscription" or r.role == "Reader" for r in ROLES)


def test_exactly_the_computed_roles_sync_the_example(seeded: SandboxClient, state_prefix: str) -> None:
    report = sync_as(seeded, ROLES, state_prefix)
    assert report.ok, problems(report)
    assert {t.target for t in report.targets} == {"production-vault", "production-blob", "production-app"}
    assert sorted(report.minted) == ["production/GRAPH_TOKEN", "production/STORAGE_SAS", "production/UPLOADS_SAS"]
    assert uploads_sas_works(seeded)


# The work queue's roles are used by queue mode only (this test syncs inline), and the sandbox's
# storage proxy does not check queue requests (sandbox/azurite.py): host-rbac.bicep's grants on the
# queue are checked against the matrix in tests/infra/test_roles.py.
@pytest.mark.parametrize("missing", [r for r in ROLES if r.scope.kind != "queue"], ids=lambda r: r.id)
def test_without_any_one_role_the_failure_is_a_403_naming_it(seeded: SandboxClient, state_prefix: str, missing: Role) -> None:
    report = sync_as(seeded, [r for r in ROLES if r != missing], state_prefix)
    found = problems(report)
    assert not report.ok and found
    where = missing.scope.name.split("/")[0] if missing.scope.kind != "subscription" else seeded.subscription_id
    named = [p for p in found if f"needs '{missing.role}' on " in p and where in p]
    assert named, f"no failure names '{missing.role}' on {where}: {found}"
