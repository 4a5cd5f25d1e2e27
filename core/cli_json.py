"""The documents `--output json` writes: one stable shape per command, shipped as JSON Schema.

Every document has `command`, `ok` (the exit code was 0), `error` (a failure that is not a config
problem, e.g. the state table refused us; null otherwise), `problems` (config errors, each with
file, line, YAML path and message) and `warnings`; then the command's own fields.  Times are
ISO 8601 in UTC with a `Z` (`2025-01-31T14:05:09Z`).  New fields may be added; existing ones keep
their names, types and meaning.

Regenerate the schemas with `python -m core.cli_json` (a test fails when the shipped files are
stale); they are in `schema/cli/<command>.schema.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.app.worker import WorkerStats

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schema" / "cli"
SCHEMA_BASE = "https://vaultrelay.dev/schema/cli/"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(_Model):
    """One config problem: where it is and what was expected."""

    file: str
    line: int | None = Field(description="1-based line in the file; null when the problem is about the whole file")
    path: str = Field(description="YAML path, e.g. envs.production.DB.from.vault; empty for the whole file")
    message: str
    severity: Literal["error", "warning"]


class Document(_Model):
    command: str
    ok: bool = Field(description="true when the command succeeded (exit code 0)")
    error: str | None = Field(None, description="a failure that is not a config problem (state unavailable, unknown env, ...)")
    problems: list[Problem] = Field([], description="config errors (exit code 2)")
    warnings: list[Problem] = Field([], description="config warnings (the command still ran)")


class ValidateDocument(Document):
    """`vaultrelay validate --output json`."""

    command: Literal["validate"] = "validate"
    file: str | None = Field(None, description="the config's file name or URL")
    stores: int | None = None
    envs: int | None = None
    variables: int | None = None
    targets: int | None = None


class PlannedVariable(_Model):
    name: str
    kind: str = Field(description="literal, keyvault_secret, keyvault_certificate, keyvault_key, storage_key, sas, cosmos, sql, token, template")
    description: str = Field(description="what is fetched, never a value")
    store: str | None = None
    identity: str | None = Field(None, description="the store's credential, e.g. system-assigned managed identity")
    depends_on: list[str] | None = Field(None, description="template: the variables it is composed from")


class PlanDocument(Document):
    """`vaultrelay plan --env E --output json`."""

    command: Literal["plan"] = "plan"
    env: str | None = None
    variables: list[PlannedVariable] = []
    references: int = 0
    unique: int = Field(0, description="distinct fetches after deduplication")
    literals: int = 0
    composed: int = Field(0, description="variables composed from templates")


class PermissionGrant(_Model):
    identity: str = Field(description="the identity, described")
    scope: str = Field(description="the scope, described")
    scope_kind: Literal["vault", "storage", "container", "cosmos", "site", "containerapp", "table", "queue", "subscription"]
    name: str
    subscription: str | None = None
    resource_group: str | None = None
    roles: list[str] = Field(description="the least built-in roles granting every need on this scope")
    optional: bool = Field(description="needed only because the config names no resource group")
    capabilities: list[str]
    because: list[str] = Field(description="config path: why, for each need")


class PermissionsDocument(Document):
    """`vaultrelay plan --permissions --output json`."""

    command: Literal["plan --permissions"] = "plan --permissions"
    file: str | None = None
    env: str | None = Field(None, description="the env the report is limited to, if any")
    grants: list[PermissionGrant] = []
    notes: list[str] = Field([], description="needs outside Azure RBAC (SQL users, API permissions)")
    permission_warnings: list[str] = []
    bicep_params: str | None = Field(None, description="the file written with --bicep-params, if any")


class SyncTarget(_Model):
    env: str
    target: str
    kind: str
    outcome: Literal["unchanged", "pushed", "recorded", "would_push", "error", "skipped", "busy"]
    adds: list[str]
    updates: list[str]
    removals: list[str]
    drift: list[str]
    repaired: list[str] = Field([], description="drifted names written back (drift_policy: repair)")
    writes: int
    error: str | None = None


class EnqueuedItem(_Model):
    id: str = Field(description="the work item's id (32 hex digits)")
    envs: list[str]


class SyncDocument(Document):
    """`vaultrelay sync --output json`."""

    command: Literal["sync"] = "sync"
    dry_run: bool = False
    targets: list[SyncTarget] = []
    failures: dict[str, list[str]] = Field({}, description="env -> variables that failed to resolve, with the reasons")
    minted: list[str] = []
    target_writes: int = 0
    seconds: float = 0.0
    enqueued: list[EnqueuedItem] = Field([], description="with --queue: the work items enqueued (targets is then empty)")


class RotationResult(_Model):
    name: str = Field(description="storage:<account>, cosmos:<account> or tagged:<vault>/<secret>")
    outcome: str = Field(description="adopted, rotated, resumed, in_progress (a Cosmos DB regeneration still running), not_due, busy, error; tagged secrets also already_rotated, "
                                     "not_tagged, unsupported")
    old_active: str | None = None
    new_active: str | None = None
    repushed: list[str] = []
    next_due: str | None = Field(None, description="ISO 8601 UTC")
    error: str | None = None


class RotateDocument(Document):
    """`vaultrelay rotate --output json`."""

    command: Literal["rotate"] = "rotate"
    rotations: list[RotationResult] = []


class TargetStatus(_Model):
    env: str
    target: str
    kind: str
    last_push: str | None = Field(description="ISO 8601 UTC; null when never pushed")
    outcome: str = Field(description="the last push's outcome, or never")
    variables: int
    drift: list[str]
    drift_found: dict[str, str] = Field({}, description="drifted name -> when it was first found (ISO 8601 UTC)")
    drift_since: str | None = Field(None, description="ISO 8601 UTC: the oldest drift still reported")
    drift_policy: Literal["report", "repair"] = "report"
    last_error: str | None = None


class RotationStatus(_Model):
    kind: str = Field(description="storage, cosmos, sas, tagged or warning")
    name: str
    active: str | None = Field(None, description="the active key (storage, cosmos) or the variable (sas)")
    since: str | None = Field(None, description="ISO 8601 UTC: rotated, issued or reported at")
    next: str | None = Field(None, description="ISO 8601 UTC: next due or expires")
    phase: str | None = Field(None, description="an unfinished rotation's phase")
    detail: str | None = None
    fields: dict[str, str | int | float | bool | None] = Field({}, description="the state record as stored")


class ExpiringItem(_Model):
    name: str = Field(description="what expires, e.g. kv-source/db-password")
    kind: str = Field(description="keyvault_secret, keyvault_certificate, keyvault_key, sas, token, storage_key, cosmos_key")
    where: str = Field(description="the vault, account or resource it comes from")
    expires_on: str | None = Field(description="ISO 8601 UTC; null when Key Vault refused it as expired")
    envs: list[str] = Field(description="env.VARIABLE that use it")
    renewable: bool = Field(description="vaultrelay renews it itself (mints again, rotates)")
    renewal: str = Field(description="how it is renewed, or what to do")
    expired: bool


class StatusDocument(Document):
    """`vaultrelay status --output json`."""

    command: Literal["status"] = "status"
    targets: list[TargetStatus] = []
    rotations: list[RotationStatus] = []
    expiry_window_seconds: int = Field(30 * 86400, description="the expiry view's window (default 30 days; --expiring WINDOW)")
    expiring: list[ExpiringItem] = Field([], description="what expires within the window (or has expired), soonest first; "
                                                         "with --expiring, ok is false when one is not renewable")
    poisoned: list[PoisonedItem] = Field([], description="envs whose work item went to the poison queue (cleared by a later successful sync)")


class PoisonedItem(_Model):
    env: str
    cause: str = Field(description="the failing variables or targets with their reasons (never values)")
    item: str = Field(description="the work item's id")
    trigger: str
    reason: str
    at: str | None = None
    deliveries: int = 0


class WorkerDocument(WorkerStats, Document):
    """`vaultrelay worker --output json` (one per process; the parent of --processes N sums them)."""

    command: Literal["worker"] = "worker"
    processes: int = 1


DOCUMENTS: dict[str, Any] = {  # name -> Document subclass
    "validate": ValidateDocument, "plan": PlanDocument, "plan-permissions": PermissionsDocument,
    "sync": SyncDocument, "rotate": RotateDocument, "status": StatusDocument, "worker": WorkerDocument,
}


def problem(p: Any) -> Problem:
    """A core.errors.ConfigProblem as a Problem."""
    return Problem(file=p.file, line=p.line, path=p.path, message=p.message, severity=p.severity)


def generate_schema(name: str) -> dict[str, Any]:
    schema = DOCUMENTS[name].model_json_schema(mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{SCHEMA_BASE}{name}.schema.json", **schema}


def render_schema(name: str) -> str:
    return json.dumps(generate_schema(name), indent=2, sort_keys=True) + "\n"


def main() -> int:
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    for name in DOCUMENTS:
        (SCHEMA_DIR / f"{name}.schema.json").write_text(render_schema(name))
        sys.stdout.write(f"wrote {SCHEMA_DIR / name}.schema.json\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
