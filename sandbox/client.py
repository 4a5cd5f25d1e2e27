"""The Python side of the sandbox for tests, benchmarks and the demo.

`SandboxProcess` starts `python -m sandbox` as a child process, waits for its env file, and
stops it (and every process it started) on `close()`.  `SandboxClient` reads an env file and
offers the control API (faults, counters, resources, tokens, event subscriptions) plus ready
SDK credentials.  Both work from the env file alone, like any other tool would.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def read_env_file(path: Path) -> dict[str, str]:
    """The variables an env file exports (for a variable it extends, such as PYTHONPATH, the
    sandbox's own part: `subprocess_env` puts it in front of the caller's)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        key, _, raw = line[len("export "):].partition("=")
        parts = shlex.split(raw)
        value = parts[0] if parts else ""
        env[key] = value.removesuffix(f"${{{key}:+{os.pathsep}${key}}}")
    return env


def extend_path(value: str, current: str | None) -> str:
    """`value` in front of a path list `current` (PYTHONPATH), as the env file does."""
    return os.pathsep.join(p for p in (value, current or "") if p)


@dataclass(frozen=True)
class UserIdentity:
    name: str
    client_id: str
    object_id: str
    resource_id: str


class SandboxClient:
    """Control API and facts of a running sandbox, from its env file."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.control_url = env["SANDBOX_CONTROL_URL"]
        self.tenant_id = env["AZURE_TENANT_ID"]
        self.subscription_id = env["SANDBOX_SUBSCRIPTION_ID"]
        self.resource_group = env["SANDBOX_RESOURCE_GROUP"]
        self.arm_endpoint = env["SANDBOX_ARM_ENDPOINT"]
        self.authority = env["SANDBOX_AUTHORITY"]
        self.vault_dns_suffix = env["SANDBOX_VAULT_DNS_SUFFIX"]
        self.keyvault_audience = env["SANDBOX_KEYVAULT_AUDIENCE"]
        self.ca_bundle = env["REQUESTS_CA_BUNDLE"]
        self.identities: dict[str, UserIdentity] = {}
        for entry in filter(None, env["SANDBOX_USER_IDENTITIES"].split(",")):
            name, _, rest = entry.partition("=")
            client_id, object_id, resource_id = rest.split(":", 2)
            self.identities[name] = UserIdentity(name, client_id, object_id, resource_id)

    @classmethod
    def from_env_file(cls, path: Path) -> SandboxClient:
        return cls(read_env_file(path))

    # ---- facts ------------------------------------------------------------------------------
    def vault_url(self, name: str) -> str:
        return f"https://{name}.{self.vault_dns_suffix}"

    def storage_endpoint(self, account: str, service: str = "blob") -> str:
        return f"https://{account}.{service}.{self.env['SANDBOX_STORAGE_SUFFIX']}"

    def resource_id(self, kind: str, name: str, resource_group: str | None = None) -> str:
        provider = {
            "vault": "Microsoft.KeyVault/vaults",
            "storage": "Microsoft.Storage/storageAccounts",
            "cosmos": "Microsoft.DocumentDB/databaseAccounts",
            "site": "Microsoft.Web/sites",
            "sql": "Microsoft.Sql/servers",
            "containerapp": "Microsoft.App/containerApps",
        }[kind]
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{resource_group or self.resource_group}"
            f"/providers/{provider}/{name}"
        )

    def credential(self, identity: str | None = None) -> Any:
        """A `ManagedIdentityCredential` for `identity` (a user-assigned name; None = system)."""
        from azure.identity import ManagedIdentityCredential

        if identity is None or identity == "system":
            return ManagedIdentityCredential()
        return ManagedIdentityCredential(client_id=self.identities[identity].client_id)

    def admin_credential(self) -> Any:
        return self.credential("admin")

    # ---- control API ------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, *, timeout: float = 30.0) -> Any:
        """Call the control API; returns the decoded JSON answer (None for 204).

        Raises:
            RuntimeError: the control API answered with an error status.
        """
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 (the control URL is http on loopback)
            self.control_url + path, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (loopback)
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"control API {method} {path}: {exc.code} {exc.read().decode(errors='replace')}") from None
        return json.loads(raw) if raw else None

    def counters(self) -> dict[str, Any]:
        return self.call("GET", "/counters")

    def reset_counters(self) -> None:
        self.call("DELETE", "/counters")

    def set_faults(self, rules: list[dict[str, Any]] | None = None, throttles: dict[str, Any] | None = None, seed: int | None = None) -> None:
        body: dict[str, Any] = {"rules": rules or []}
        if throttles is not None:
            body["throttles"] = throttles
        if seed is not None:
            body["seed"] = seed
        self.call("PUT", "/faults", body)

    def clear_faults(self) -> None:
        self.call("DELETE", "/faults")

    def set_storage_clock_skew(self, seconds: float) -> None:
        """Skew the storage service's clock by `seconds` against the real one (negative: the service
        is behind the client); it decides the 7-day bound of Get User Delegation Key."""
        self.call("PUT", "/storage/clock", {"skew_s": seconds})

    def set_arm_limits(self, *, enabled: bool = True, **limits: dict[str, float] | list[dict[str, float]]) -> dict[str, Any]:
        """Change the storage resource provider's ARM limits per subscription and region
        (`read`, `list`, `write`: `{"limit": n, "window_s": s}` or a list of them); buckets start full."""
        return dict(self.call("PUT", "/arm/limits", {"enabled": enabled, **limits}))

    def reset_arm_limits(self) -> None:
        """Azure's storage resource provider limits again, with full buckets."""
        self.call("DELETE", "/arm/limits")

    def cosmos_key_valid(self, account: str, key: str) -> dict[str, Any]:
        """Whether `key` would authorize a Cosmos DB data-plane request on `account` now (the
        sandbox has no Cosmos DB data plane: this stands in for one), with Azure's refusal when
        the account has `disableLocalAuth: true`.  The key is sent to the control API only."""
        return dict(self.call("POST", "/cosmos/keys/check", {"account": account, "key": key}))
    def set_keyvault_transitions(self, delete_seconds: float | None = None, recover_seconds: float | None = None) -> dict[str, float]:
        """How long a deleted secret stays "being deleted" and a recovered one "being recovered"
        (Key Vault's asynchronous soft delete); None restores the sandbox's default."""
        return dict(self.call("PUT", "/keyvault/soft-delete", {"delete_seconds": delete_seconds, "recover_seconds": recover_seconds}))

    def set_keyvault_policy(
        self, vault: str, *, require_expiry: bool = False, max_validity_days: int | None = None,
        required_tags: list[str] | dict[str, str | None] | None = None, content_type: bool | str = False,
        assignment: str | None = None,
    ) -> dict[str, Any]:
        """Assign Deny-effect rules to `vault`'s secret writes (set secret, update properties, certificate
        import), as Azure Policy (Microsoft.KeyVault.Data mode) does: `require_expiry` (an `exp`),
        `max_validity_days` (`exp` within that many days of creation), `required_tags` (names, or
        name -> required value, None for any value), `content_type` (True: set; a string: exactly it).
        A refused write gets 403 Forbidden with innererror `ForbiddenByPolicy`.  Replaces the vault's rules."""
        body: dict[str, Any] = {"require_expiry": require_expiry, "max_validity_days": max_validity_days,
                                "required_tags": required_tags or {}, "content_type": content_type}
        if assignment:
            body["assignment"] = assignment
        return dict(self.call("PUT", f"/keyvault/policy/{vault}", body))

    def clear_keyvault_policy(self, vault: str) -> None:
        """No policy rules on `vault` any more."""
        self.call("DELETE", f"/keyvault/policy/{vault}")

    def keyvault_policy(self, vault: str) -> dict[str, Any]:
        """The rules on `vault` (`enforced: false` when there are none)."""
        return dict(self.call("GET", f"/keyvault/policy/{vault}"))

    def create_resource(self, kind: str, name: str, resource_group: str | None = None) -> dict[str, Any]:
        return self.call("POST", "/resources", {"kind": kind, "name": name, "resource_group": resource_group})

    def sql_login_valid(self, server: str, login: str, password: str) -> bool:
        """Whether `login`/`password` would sign in to the SQL server now (the sandbox has no SQL
        endpoint: this stands in for a connection).  The password is sent to the control API only."""
        return bool(self.call("POST", "/sql/logins/check", {"server": server, "login": login, "password": password})["valid"])

    def site_restarts(self, site: str) -> dict[str, int]:
        """Restarts of an App Service site so far, by slot (`production` for the site itself): one per
        app-settings PUT that changed the slot's settings and per slot-config change (production)."""
        return {str(k): int(v) for k, v in self.call("GET", f"/arm/sites/{site}/restarts")["restarts"].items()}

    def hold_cosmos_regenerations(self, seconds: float | None) -> None:
        """Cosmos DB regenerateKey operations started from now on stay in progress `seconds` (None:
        back to the default, done on the second poll), however often they are polled."""
        self.call("PUT", "/arm/cosmos/regenerate", {"in_progress_s": seconds})

    def set_arm_retry_after(self, seconds: int | None) -> int:
        """ARM's Retry-After on long-running operations still running, from now on (None: the
        default, the resource provider contract's 10 s)."""
        return int(self.call("PUT", "/arm/operations/retry-after", {"seconds": seconds})["seconds"])

    def arm_operations(self) -> list[dict[str, Any]]:
        """ARM's long-running operations: id, resource, kind, status (InProgress/Succeeded), status_url."""
        return list(self.call("GET", "/arm/operations")["value"])

    def finish_arm_operations(self, resource: str | None = None, *, failed: bool = False) -> list[dict[str, Any]]:
        """End the running operations (of the resource named `resource`, else all) now: Succeeded,
        or with `failed` Failed (what they would have done does not happen)."""
        body: dict[str, Any] = {"status": "Failed" if failed else "Succeeded"}
        if resource:
            body["resource"] = resource
        return list(self.call("POST", "/arm/operations/finish", body)["value"])

    def create_identity(self, name: str) -> UserIdentity:
        """A new user-assigned identity called `name`, with no role; usable by name from now on."""
        made = self.call("POST", "/identities", {"name": name})
        identity = UserIdentity(name, made["client_id"], made["object_id"], made["resource_id"])
        self.identities[name] = identity
        return identity

    def assign_role(self, identity: str, role: str, scope: str | None = None) -> dict[str, Any]:
        """Grant `role` to the named identity at `scope` (default: the subscription), directly."""
        return self.call("POST", "/role-assignments", {"identity": identity, "role": role, "scope": scope})

    def principal_id(self, identity: str) -> str:
        """Object id of `system` or a user-assigned identity's name."""
        if identity == "system":
            return self.env["SANDBOX_SYSTEM_PRINCIPAL_ID"]
        return self.identities[identity].object_id

    def grant(self, identity: str, role: str, scope: str | None = None) -> Any:
        """Grant `role` (a built-in role name) to `identity` at `scope` the real way: a
        `Microsoft.Authorization/roleAssignments` PUT by the admin identity through the SDK.
        Idempotent: the assignment name is derived from scope, role and principal."""
        return self.grant_principal(self.principal_id(identity), role, scope)

    def grant_principal(self, principal: str, role: str, scope: str | None = None) -> Any:
        """`grant` for a principal (object) id, e.g. the system-assigned identity of a site or
        container app (`identity.principalId` of its ARM resource)."""
        import uuid

        from azure.core.exceptions import ResourceExistsError
        from azure.mgmt.authorization import AuthorizationManagementClient
        from azure.mgmt.authorization.models import RoleAssignmentCreateParameters

        from core.permissions.roles import role_by_name

        scope = scope or f"/subscriptions/{self.subscription_id}"
        definition = role_by_name(role)
        name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{scope.lower()}|{definition.role_id}|{principal}"))
        client = AuthorizationManagementClient(self.admin_credential(), self.subscription_id, base_url=self.arm_endpoint)
        try:
            return client.role_assignments.create(scope, name, RoleAssignmentCreateParameters(  # type: ignore[call-arg]
                role_definition_id=f"/subscriptions/{self.subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{definition.role_id}",
                principal_id=principal, principal_type="ServicePrincipal",
            ))
        except ResourceExistsError:
            # The same grant may exist under another name (made with `assign_role`, or by hand).
            for existing in client.role_assignments.list_for_scope(scope, filter=f"assignedTo('{principal}')"):
                if (str(existing.role_definition_id).lower().endswith(definition.role_id)
                        and str(existing.scope).lower().rstrip("/") == scope.lower().rstrip("/")):
                    return existing
            raise

    # ---- App Service and Container Apps -------------------------------------------------------
    def site_environment(self, site: str, slot: str | None = None) -> dict[str, Any]:
        """What the site's app process sees now: `settings` (name -> value, a Key Vault reference
        replaced by the secret it resolves to for the site's identity, or left as its text when it
        does not resolve, as App Service does) and `references` (name -> status, active_version).
        Secret values come back here only, never from ARM."""
        query = f"?slot={slot}" if slot else ""
        return dict(self.call("GET", f"/arm/sites/{site}/environment{query}"))

    def refresh_site_references(self, site: str) -> None:
        """App Service's periodic refetch of referenced secrets (every 24 hours in Azure), now: cached
        resolved values are dropped, the next read resolves again (a versionless reference then
        follows the secret's latest version)."""
        self.call("POST", f"/arm/sites/{site}/references/refresh")

    def container_app_counters(self, app: str) -> dict[str, Any]:
        """`{"revisions": n, "latest_revision", "active_revision", "restarts": {revision: n}}` of a
        container app: a template change adds a revision, a configuration (secrets) change does not."""
        return dict(self.call("GET", f"/arm/containerapps/{app}"))

    def container_app_environment(self, app: str) -> dict[str, Any]:
        """What the active revision's containers see: `secrets` (name -> {status, value}, Key Vault
        references resolved with the app's identity when the revision started or last restarted) and
        `env` (variables, `secretRef` ones filled from those secrets).  Values come back here only."""
        return dict(self.call("GET", f"/arm/containerapps/{app}/environment"))

    def issue_token(self, identity: str, resource: str, *, lifetime_s: int | None = None, claims: dict[str, Any] | None = None) -> str:
        """A token signed by the sandbox issuer, with optional lifetime (negative = expired) and extra claims."""
        body: dict[str, Any] = {"identity": identity, "resource": resource}
        if lifetime_s is not None:
            body["lifetime_s"] = lifetime_s
        if claims:
            body["claims"] = claims
        return str(self.call("POST", "/tokens", body)["access_token"])

    def world(self) -> dict[str, Any]:
        return self.call("GET", "/world")


class SandboxProcess:
    """`python -m sandbox` as a child process, for a test session, a benchmark or the demo."""

    def __init__(self, env_file: Path | None = None, *, extra_args: list[str] | None = None, startup_timeout: float = 30.0) -> None:
        self._tmp = None
        if env_file is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vaultrelay-sbx-")
            env_file = Path(self._tmp.name) / "env"
        self.env_file = env_file
        env_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "--env-file", str(env_file), "--quiet", *(extra_args or [])],
            cwd=PROJECT_ROOT, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=None,
        )
        deadline = time.monotonic() + startup_timeout
        while not env_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"sandbox exited with {self.process.returncode} before it was ready")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("sandbox did not become ready in time")
            time.sleep(0.05)
        self.env = read_env_file(env_file)
        self.client = SandboxClient(self.env)

    def apply_to_current_process(self) -> None:
        """Export the env file into `os.environ` and install the name resolver here."""
        from sandbox.resolver import install

        for key, value in self.env.items():
            if key != "PYTHONPATH":
                os.environ[key] = value
        install(self.env["SANDBOX_DOMAIN"])

    def subprocess_env(self) -> dict[str, str]:
        """`os.environ` plus the env file, for child processes (PYTHONPATH extended, as sourcing
        the env file does)."""
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = extend_path(self.env["PYTHONPATH"], os.environ.get("PYTHONPATH"))
        return env

    def close(self, timeout: float = 15.0) -> None:
        """SIGTERM the sandbox and wait; SIGKILL its whole process group if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            pass
        else:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
