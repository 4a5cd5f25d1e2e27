"""What every scenario shares: its context, its result, and the leak scanner run after it."""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sandbox.client import SandboxClient, SandboxProcess

Scale = Literal["short", "long"]

# Shapes that carry a credential even when the scenario did not register the exact value.
_SAS_SIG = re.compile(r"[?&]sig=([A-Za-z0-9%+/=]{20,})")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")


@dataclass
class ScenarioResult:
    """Figures to print and invariants that did not hold (empty = the scenario passed)."""

    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def check(self, ok: bool, message: str) -> None:
        """Record `message` as a violation unless `ok`."""
        if not ok:
            self.violations.append(message)


@dataclass
class ScenarioContext:
    """One scenario's view of the sandbox.

    `secrets` collects every value the scenario seeded or that vaultrelay minted for it (SAS
    strings, tokens, keys); `observed` collects text that left vaultrelay (HTTP bodies, exception
    strings, CLI output); `state_tables` names the Table Storage tables (on `state_account`)
    whose rows are scanned afterwards; every file under `workdir` (child-process logs) is scanned
    too.
    """

    sandbox: SandboxClient
    process: SandboxProcess
    scale: Scale
    workdir: Path
    seed: int = 0
    secrets: set[str] = field(default_factory=set)
    observed: list[str] = field(default_factory=list)
    state_account: str = "sandboxstore"
    state_tables: set[str] = field(default_factory=set)

    @property
    def long(self) -> bool:
        return self.scale == "long"

    def secret(self, value: str) -> str:
        """Register `value` as secret (it must never appear anywhere); returns it."""
        if len(value) >= 8:
            self.secrets.add(value)
        return value

    def observe(self, text: object) -> None:
        self.observed.append(str(text))


@dataclass
class Leak:
    where: str
    what: str  # a description, never the value itself


def scan_text(where: str, text: str, secrets: Iterable[str]) -> list[Leak]:
    """Every registered secret, SAS signature or JWT found in `text` (described, not quoted)."""
    leaks = [Leak(where, f"registered secret #{i}") for i, value in enumerate(sorted(secrets)) if value in text]
    if _SAS_SIG.search(text):
        leaks.append(Leak(where, "a SAS signature (sig=...)"))
    if _JWT.search(text):
        leaks.append(Leak(where, "a JWT"))
    return leaks


def state_rows(ctx: ScenarioContext) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every row of the scenario's state tables (read with the sandbox's admin identity)."""
    from azure.data.tables import TableServiceClient

    service = TableServiceClient(ctx.sandbox.storage_endpoint(ctx.state_account, "table"), credential=ctx.sandbox.admin_credential())
    for table in sorted(ctx.state_tables):
        try:
            for row in service.get_table_client(table).list_entities():
                yield table, dict(row)
        except Exception as exc:  # a missing table has no rows to leak
            if "TableNotFound" not in str(exc) and "ResourceNotFound" not in str(exc):
                raise


def scan_everything(ctx: ScenarioContext, logs: str) -> list[Leak]:
    """The no-leak check run after every scenario: logs, observed text, child files, state rows."""
    leaks = scan_text("logs", logs, ctx.secrets)
    for i, text in enumerate(ctx.observed):
        leaks += scan_text(f"observed[{i}]", text, ctx.secrets)
    for path in sorted(ctx.workdir.rglob("*")):
        if path.is_file() and path.suffix in {".log", ".txt", ".out", ".err", ".json"}:
            leaks += scan_text(str(path.relative_to(ctx.workdir)), path.read_text(errors="replace"), ctx.secrets)
    for table, row in state_rows(ctx):
        leaks += scan_text(f"table {table} row {row.get('PartitionKey')}/{row.get('RowKey')}", repr(row), ctx.secrets)
    return leaks


@contextmanager
def debug_logs() -> Iterator[io.StringIO]:
    """Capture every log record at DEBUG (Azure SDK HTTP logging included) into a buffer."""
    from core.logs import set_sdk_log_level

    buffer = io.StringIO()
    sdk_levels = set_sdk_log_level(logging.DEBUG)  # the app keeps them at WARNING; the scan wants all
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
        for name, level in sdk_levels.items():
            logging.getLogger(name).setLevel(level)


def run_scenario(module: Any, ctx: ScenarioContext) -> ScenarioResult:
    """Run one scenario module with DEBUG logs captured, then scan for leaks (scenario 8)."""
    start = time.monotonic()
    with debug_logs() as buffer:
        result: ScenarioResult = module.run(ctx)
    result.seconds = round(time.monotonic() - start, 2)
    leaks = scan_everything(ctx, buffer.getvalue())
    result.figures["leaks found"] = len(leaks)
    result.figures["log bytes scanned"] = len(buffer.getvalue())
    result.violations += [f"leak: {leak.what} in {leak.where}" for leak in leaks]
    return result
