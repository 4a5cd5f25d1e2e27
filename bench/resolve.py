"""Benchmark: resolving one env of 100 references against the sandbox with added latency.

Run with `.venv/bin/python bench/resolve.py` (or `make bench`).  This is a benchmark, not a test:
it prints a table and always exits 0 when it could measure (targets are reported PASS/FAIL).

The env: 90 Key Vault secrets over 2 vaults (kv-source, kv-shared), 5 storage keys over 2
accounts (sandboxstore, sandboxdata) and 5 account SAS, all through one store (the system
identity).  Every request to every sandbox service (Key Vault, ARM, the managed identity
endpoint) gets `--latency-ms` added.  Contenders, all in one run:

  vaultrelay     StoreConnections(loaded).resolve(env) with the default store settings.
  naive loop     the SDK by hand: one shared ManagedIdentityCredential, one SecretClient per vault,
                 one StorageManagementClient, references in order, one at a time (listKeys is
                 memoized per account: the benefit of the doubt, so the ratio is not inflated).
  pydantic       pydantic-settings' AzureKeyVaultSettingsSource, one settings class per vault
                 (it lists the vault's secrets, then GETs each field).  Key Vault only: it covers
                 the 90 secrets, not the 10 storage references.

Round-trip floor: after the contenders, a bare HTTP client (stdlib http.client, no SDK, a token
in hand, one kept-alive connection) GETs 45 secrets one after another with the same latency on.
Its time per request minus its own CPU is the least one round trip costs on this host; the
critical path's round trips times that bounds what any client could reach, and the table says
how that compares with the targets.

Fairness: each contender runs in its own fresh Python process (`--child`), which imports
everything and runs the contender once untimed (warm imports, warm sandbox), then drops all
client state (new credentials, clients and HTTP sessions; the Key Vault SDK's process-wide
challenge cache cleared) and runs it timed: that is the "cold" figure (no tokens, no challenge,
no connections; warm imports, and vaultrelay's CA bundle, which it parses once per process like
an import, already parsed: a Functions instance pays that on its first invocation only).  The
same objects then run again: the "warm" figure (tokens, challenges and connections cached;
vaultrelay's secret cache is off).  Request counts are the sandbox's own counters, reset before
each timed run.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import string
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

ENV_NAME = "bench"
STORE = "azure"
VAULTS = ("kv-source", "kv-shared")
ACCOUNTS = ("sandboxstore", "sandboxdata")
SECRETS_PER_VAULT = 45
# (variable, account, key) and (variable, account, permissions, expiry seconds)
STORAGE_KEYS = [
    ("STORE_KEY1", "sandboxstore", "key1"),
    ("STORE_KEY2", "sandboxstore", "key2"),
    ("STORE_KEY_ACTIVE", "sandboxstore", "active"),
    ("DATA_KEY1", "sandboxdata", "key1"),
    ("DATA_KEY2", "sandboxdata", "key2"),
]
SAS_REFS = [
    ("STORE_SAS_RL", "sandboxstore", "rl", 3600),
    ("STORE_SAS_R", "sandboxstore", "r", 86400),
    ("STORE_SAS_RWL", "sandboxstore", "rwl", 7200),
    ("DATA_SAS_RL", "sandboxdata", "rl", 3600),
    ("DATA_SAS_R", "sandboxdata", "r", 86400),
]
CONTENDERS = ("vaultrelay", "naive", "pydantic")
LABELS = {
    "vaultrelay": "(a) vaultrelay",
    "naive": "(b) naive SDK loop",
    "pydantic": "(c) pydantic-settings",
}


# ================================================================================================
# The env, the config and the seed data
# ================================================================================================
def secret_name(vault: str, index: int) -> str:
    return f"bench-{vault.split('-')[1]}-{index:02d}"


def variable_name(vault: str, index: int) -> str:
    return f"{vault.split('-')[1].upper()}_SECRET_{index:02d}"


def build_spec(resource_group: str, max_concurrent: int, seed: int = 7) -> dict[str, Any]:
    """The env's references, expected Key Vault values and the vaultrelay config text."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    refs: list[dict[str, Any]] = []
    for vault in VAULTS:
        for index in range(SECRETS_PER_VAULT):
            value = "".join(rng.choice(alphabet) for _ in range(40))
            refs.append({"name": variable_name(vault, index), "kind": "secret", "vault": vault,
                         "secret": secret_name(vault, index), "value": value})
    for name, account, key in STORAGE_KEYS:
        refs.append({"name": name, "kind": "storage_key", "account": account, "key": key})
    for name, account, permissions, expiry in SAS_REFS:
        refs.append({"name": name, "kind": "sas", "account": account, "permissions": permissions, "expiry_s": expiry})

    lines = [
        "# Generated by bench/resolve.py: the benchmark env (100 references, one store).",
        "version: 1",
        "secretStores:",
        f"  {STORE}:",
        "    type: azure.managed_identity",
        "    performance:",
        f"      max_concurrent: {max_concurrent}",
        "    resources:",
        *[f"      - {{type: storage, name: {account}, resource_group: {resource_group}}}" for account in ACCOUNTS],
        "envs:",
        f"  {ENV_NAME}:",
    ]
    for ref in refs:
        if ref["kind"] == "secret":
            body = f"vault: {ref['vault']}, secret: {ref['secret']}"
        elif ref["kind"] == "storage_key":
            body = f"resource_type: storage, account: {ref['account']}, key: {ref['key']}"
        else:
            body = (f"resource_type: storage, account: {ref['account']}, operation: generate_sas, "
                    f"permissions: {ref['permissions']}, expiry: {ref['expiry_s']}")
        lines.append(f"    {ref['name']}: {{from: {{store: {STORE}, {body}}}}}")
    return {
        "refs": refs, "config_text": "\n".join(lines) + "\n", "config_file": "bench/resolve.yaml",
        "max_concurrent": max_concurrent, "resource_group": resource_group,
    }


def seed(sandbox: Any, spec: dict[str, Any]) -> None:
    """Put the secrets in the vaults (admin identity) and grant the system identity its roles."""
    from azure.keyvault.secrets import SecretClient

    admin = sandbox.admin_credential()
    clients = {vault: SecretClient(sandbox.vault_url(vault), admin) for vault in VAULTS}
    secrets = [r for r in spec["refs"] if r["kind"] == "secret"]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda r: clients[r["vault"]].set_secret(r["secret"], r["value"]), secrets))
    for vault in VAULTS:
        sandbox.grant("system", "Key Vault Secrets User", sandbox.resource_id("vault", vault))
    for account in ACCOUNTS:
        sandbox.grant("system", "Storage Account Key Operator Service Role", sandbox.resource_id("storage", account))


# ================================================================================================
# Contenders (run inside the child process)
# ================================================================================================
class Contender:
    """build() makes fresh credentials/clients (no network); run() resolves the env."""

    covers: tuple[str, ...] = ("secret", "storage_key", "sas")

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.env = os.environ

    def build(self) -> None:
        raise NotImplementedError

    def run(self) -> dict[str, str]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def extra(self) -> dict[str, Any]:
        return {}


class VaultRelayContender(Contender):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        from core.config import parse_config

        began = time.perf_counter()
        self.loaded = parse_config(spec["config_text"], spec["config_file"])
        self.parse_s = time.perf_counter() - began
        self.broker: Any = None

    def build(self) -> None:
        from core.connections import StoreConnections

        self.broker = StoreConnections(self.loaded)

    def run(self) -> dict[str, str]:
        bundle = self.broker.resolve(ENV_NAME)
        if bundle.failures:
            first = next(iter(bundle.failures.values()))
            raise RuntimeError(f"vaultrelay: {len(bundle.failures)} failures, e.g. {first}")
        return dict(bundle.as_plain_dict())

    def extra(self) -> dict[str, Any]:
        stats = self.broker.last_stats
        cred = self.broker.store(STORE).credential.stats
        return {"unique": stats.unique, "fetched": stats.fetched, "resolver_s": stats.seconds,
                "token_fetches": cred.fetches, "token_requests": cred.requests, "config_parse_s": self.parse_s}

    def close(self) -> None:
        if self.broker is not None:
            self.broker.close()
            self.broker = None


class NaiveContender(Contender):
    def build(self) -> None:
        from azure.identity import ManagedIdentityCredential
        from azure.keyvault.secrets import SecretClient
        from azure.mgmt.storage import StorageManagementClient

        self.credential = ManagedIdentityCredential()
        self.secret_clients = {
            vault: SecretClient(f"https://{vault}.{self.env['VAULTRELAY_VAULT_DNS_SUFFIX']}", self.credential) for vault in VAULTS
        }
        self.storage = StorageManagementClient(
            self.credential, self.env["SANDBOX_SUBSCRIPTION_ID"], base_url=self.env["SANDBOX_ARM_ENDPOINT"],
            credential_scopes=[self.env["SANDBOX_ARM_AUDIENCE"].rstrip("/") + "/.default"],
        )

    def run(self) -> dict[str, str]:
        from azure.storage.blob import AccountSasPermissions, ResourceTypes, Services, generate_account_sas

        keys: dict[str, dict[str, str]] = {}

        def account_keys(account: str) -> dict[str, str]:
            if account not in keys:
                listed = self.storage.storage_accounts.list_keys(self.spec["resource_group"], account)
                keys[account] = {k.key_name.lower(): k.value for k in listed.keys_property}
            return keys[account]

        values: dict[str, str] = {}
        for ref in self.spec["refs"]:
            if ref["kind"] == "secret":
                values[ref["name"]] = self.secret_clients[ref["vault"]].get_secret(ref["secret"]).value
            elif ref["kind"] == "storage_key":
                key = "key1" if ref["key"] == "active" else ref["key"]
                values[ref["name"]] = account_keys(ref["account"])[key]
            else:
                now = datetime.now(UTC)
                values[ref["name"]] = generate_account_sas(
                    ref["account"], account_keys(ref["account"])["key1"],
                    resource_types=ResourceTypes.from_string("sco"),
                    permission=AccountSasPermissions.from_string(ref["permissions"]),
                    expiry=now + timedelta(seconds=ref["expiry_s"]), start=now - timedelta(minutes=15),
                    services=Services.from_string("b"), protocol="https",
                )
        return values

    def close(self) -> None:
        for client in self.secret_clients.values():
            client.close()
        self.storage.close()
        self.credential.close()


_PYDANTIC_CONTEXT: dict[str, Any] = {}


class PydanticContender(Contender):
    covers = ("secret",)

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        from pydantic_settings import AzureKeyVaultSettingsSource, BaseSettings

        self.classes: dict[str, tuple[type[Any], dict[str, str]]] = {}
        for vault in VAULTS:
            url = f"https://{vault}.{self.env['VAULTRELAY_VAULT_DNS_SUFFIX']}"
            fields = {r["secret"].replace("-", "_"): r["name"] for r in spec["refs"] if r.get("vault") == vault}

            def sources(cls: Any, settings_cls: Any, *rest: Any, _url: str = url, **others: Any) -> tuple[Any, ...]:
                return (AzureKeyVaultSettingsSource(settings_cls, _url, _PYDANTIC_CONTEXT["credential"], dash_to_underscore=True),)

            namespace = {"__annotations__": dict.fromkeys(fields, str), "settings_customise_sources": classmethod(sources)}
            self.classes[vault] = (type(f"Settings_{vault.replace('-', '_')}", (BaseSettings,), namespace), fields)

    def build(self) -> None:
        from azure.identity import ManagedIdentityCredential

        self.credential = ManagedIdentityCredential()
        _PYDANTIC_CONTEXT["credential"] = self.credential

    def run(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for settings_cls, fields in self.classes.values():
            settings = settings_cls()
            for field, variable in fields.items():
                values[variable] = getattr(settings, field)
        return values

    def close(self) -> None:
        self.credential.close()


CONTENDER_CLASSES: dict[str, Callable[[dict[str, Any]], Contender]] = {
    "vaultrelay": VaultRelayContender, "naive": NaiveContender, "pydantic": PydanticContender,
}


def reset_process_state() -> None:
    """Forget what the SDKs cache process-wide (Key Vault challenges) and vaultrelay's process-wide
    caches (values, kept storage key listings), so a cold run lists keys through ARM again."""
    from azure.keyvault.secrets._shared import http_challenge_cache

    http_challenge_cache.clear()
    try:
        from core.resolve import PROCESS_VALUE_CACHE
        from core.sources.listed_keys import PROCESS_LISTED_KEYS

        PROCESS_VALUE_CACHE.clear()
        PROCESS_LISTED_KEYS.clear()
    except ImportError:
        pass
    gc.collect()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
        return True
    except OSError:
        return False


def check_values(spec: dict[str, Any], covers: tuple[str, ...], values: dict[str, str]) -> tuple[int, int, list[str]]:
    """(correct, expected, problems): Key Vault values must match; others must be non-empty."""
    expected = [r for r in spec["refs"] if r["kind"] in covers]
    problems: list[str] = []
    correct = 0
    for ref in expected:
        got = values.get(ref["name"])
        ok = bool(got) and (ref["kind"] != "secret" or got == ref["value"])
        correct += ok
        if not ok and len(problems) < 3:
            problems.append(f"{ref['name']}: {'missing' if not got else 'wrong value'}")
    return correct, len(expected), problems


def child_main(contender_name: str, spec_path: Path, memory: bool) -> None:
    """One contender in a fresh process: warm-up, cold timed run, warm timed run, memory run."""
    import logging

    logging.getLogger("azure").setLevel(logging.ERROR)
    # Warm imports: everything any contender uses.
    import importlib

    for module in ("azure.identity", "azure.keyvault.secrets", "azure.mgmt.storage", "azure.storage.blob",
                   "pydantic_settings", "core.plan"):
        importlib.import_module(module)
    from sandbox.client import SandboxClient

    spec = json.loads(spec_path.read_text())
    sandbox = SandboxClient(dict(os.environ))
    contender = CONTENDER_CLASSES[contender_name](spec)
    result: dict[str, Any] = {"contender": contender_name}

    contender.build()  # untimed warm-up: imports, lazy SDK modules, the sandbox's own caches
    contender.run()
    contender.close()
    reset_process_state()

    sandbox.reset_counters()
    peak_ok = _reset_peak_rss()
    rss_before = _status_kb("VmRSS")
    began = time.perf_counter()
    contender.build()
    values = contender.run()
    result["cold_s"] = time.perf_counter() - began
    result["cold_rss_delta_kb"] = _status_kb("VmHWM") - rss_before if peak_ok else None
    result["cold_counters"] = sandbox.counters()
    result["cold_extra"] = contender.extra()
    result["check"] = check_values(spec, contender.covers, values)

    sandbox.reset_counters()
    began = time.perf_counter()
    values = contender.run()
    result["warm_s"] = time.perf_counter() - began
    result["warm_counters"] = sandbox.counters()
    result["warm_extra"] = contender.extra()
    result["warm_check"] = check_values(spec, contender.covers, values)
    contender.close()

    if memory:
        reset_process_state()
        tracemalloc.start()
        contender.build()
        contender.run()
        result["tracemalloc_peak_kb"] = tracemalloc.get_traced_memory()[1] / 1024
        tracemalloc.stop()
        contender.close()
    print(json.dumps(result))


# ================================================================================================
# The critical-path limit
# ================================================================================================
def critical_path(spec: dict[str, Any], latency_ms: float) -> dict[str, Any]:
    """The least time any client can take with `max_concurrent` requests in flight per store.

    Round trips that cannot be avoided, with the unmodified SDKs and a cold process:
      Key Vault chain: 1 unauthenticated request per vault host to get the 401 challenge (hosts
        in parallel) and 1 token request for the Key Vault audience, in parallel with it (the
        audience is the cloud's vault domain, known before the challenge names it), then the
        unique GETs in ceil(GETs / max_concurrent) waves.
      ARM chain: 1 token request for the ARM audience, then listKeys per account (accounts in
        parallel; no account discovery: the config names the resource groups).
      Capacity: every unavoidable request (challenges, tokens, GETs, listKeys) shares the
        store's max_concurrent slots: ceil(requests / max_concurrent) round trips at least.
        And no GET or listKeys can go out in the first round trip (each needs a challenge or a
        token first), so when the challenges and tokens fit in one round trip the GETs and
        listKeys need ceil((GETs + listKeys) / max_concurrent) more: 1 + that, at least.
    The limit is the largest of these (they run concurrently), times the added latency.
    """
    mc = spec["max_concurrent"]
    secrets = {(r["vault"], r["secret"]) for r in spec["refs"] if r["kind"] == "secret"}
    vaults = {vault for vault, _ in secrets}
    accounts = {r["account"] for r in spec["refs"] if r["kind"] in ("storage_key", "sas")}
    audiences = (1 if secrets else 0) + (1 if accounts else 0)
    kv_chain = (1 + math.ceil(len(secrets) / mc)) if secrets else 0
    arm_chain = (1 + 1) if accounts else 0
    requests = len(vaults) + audiences + len(secrets) + len(accounts)
    first = len(vaults) + audiences  # the challenges and token requests
    dependent = len(secrets) + len(accounts)  # the GETs and listKeys, which need one of them
    after_first = (1 + math.ceil(dependent / mc)) if 0 < first <= mc else 0
    capacity = max(math.ceil(requests / mc), after_first)
    rts = max(kv_chain, arm_chain, capacity)
    warm_requests = len(secrets) + len(accounts)
    warm_rts = max(math.ceil(len(secrets) / mc), 1 if accounts else 0, math.ceil(warm_requests / mc))
    return {
        "unique_secrets": len(secrets), "vaults": len(vaults), "accounts": len(accounts), "audiences": audiences,
        "max_concurrent": mc, "kv_chain": kv_chain, "arm_chain": arm_chain, "requests": requests,
        "capacity": capacity, "round_trips": rts, "seconds": rts * latency_ms / 1000.0,
        "warm_round_trips": warm_rts, "warm_seconds": warm_rts * latency_ms / 1000.0,
    }


def round_trip_floor(sandbox: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """What one round trip costs here at the least: a bare HTTP client, no SDK, token in hand.

    One kept-alive TLS connection (stdlib http.client) GETs the env's secrets of one vault one
    after another, with the benchmark's latency on.  Its wall time per request minus its own CPU
    per request is what the sandbox, the loopback and the added latency take: no client can make
    a round trip cheaper than that on this host, so `round_trips x floor` bounds any client's time.
    """
    import http.client
    import ssl
    from urllib.parse import urlsplit

    vault = VAULTS[0]
    url = urlsplit(sandbox.vault_url(vault))
    token = sandbox.admin_credential().get_token(sandbox.keyvault_audience.rstrip("/") + "/.default").token
    context = ssl.create_default_context(cafile=sandbox.ca_bundle)
    connection = http.client.HTTPSConnection(url.hostname or "", url.port or 443, context=context, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    names = [r["secret"] for r in spec["refs"] if r.get("vault") == vault]

    def get(name: str) -> None:
        connection.request("GET", f"/secrets/{name}?api-version=7.5", headers=headers)
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"round-trip floor: GET {name} answered {answer.status}")

    try:
        get(names[0])  # connection and sandbox warm
        walls: list[float] = []
        cpus: list[float] = []
        for _ in range(3):
            began, cpu = time.perf_counter(), time.process_time()
            for name in names:
                get(name)
            walls.append((time.perf_counter() - began) / len(names))
            cpus.append((time.process_time() - cpu) / len(names))
    finally:
        connection.close()
    wall, own_cpu = statistics.median(walls), statistics.median(cpus)
    return {"requests": len(names), "wall_s": wall, "client_cpu_s": own_cpu, "floor_s": wall - own_cpu}


# ================================================================================================
# The parent: sandbox, seeding, children, table
# ================================================================================================
def counts(counters: dict[str, Any]) -> dict[str, int]:
    by = counters.get("by_endpoint_status", {})
    endpoint = counters.get("by_endpoint", {})

    def status_sum(prefix: str, status: str | None = None) -> int:
        return sum(n for k, n in by.items() if k.startswith(prefix) and (status is None or k.endswith(":" + status)))

    return {
        "total": counters.get("total", 0),
        "kv_get_200": status_sum("keyvault:GetSecret:", "200"),
        "kv_get_all": status_sum("keyvault:GetSecret:"),
        "kv_401": sum(n for k, n in by.items() if k.startswith("keyvault:") and k.endswith(":401")),
        "kv_list": status_sum("keyvault:GetSecrets:"),
        "tokens": sum(n for k, n in endpoint.items() if k.startswith("identity:")),
        "tokens_issued": counters.get("tokens_issued", 0),
        "arm": sum(n for k, n in endpoint.items() if k.startswith("arm:")),
        "errors": sum(n for s, n in counters.get("by_status", {}).items() if not s.startswith(("2", "401"))),
        "throttled": counters.get("throttled", 0),
    }


def run_child(sbx: Any, contender: str, spec_path: Path, memory: bool) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", contender, "--spec", str(spec_path),
         *(["--memory"] if memory else [])],
        cwd=PROJECT_ROOT, env=sbx.subprocess_env(), capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{contender} child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="fresh processes per contender (median reported)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="latency added to every sandbox request")
    parser.add_argument("--max-concurrent", type=int, default=10, help="the store's performance.max_concurrent")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.spec, args.memory)
        return 0

    from rich.console import Console

    from sandbox.client import SandboxProcess

    console = Console(width=max(170, Console().width))
    console.print(f"[bold]vaultrelay resolve benchmark[/]: {args.latency_ms:g} ms added per request, "
                  f"max_concurrent {args.max_concurrent}, {args.reps} fresh processes per contender")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    console.print(f"host: {os.cpu_count()} CPUs, load average {' '.join(load)} at start (the client and the sandbox share them)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vaultrelay-bench-") as tmp, SandboxProcess(extra_args=["--no-azurite"]) as sbx:
        sbx.apply_to_current_process()
        client = sbx.client
        spec = build_spec(client.resource_group, args.max_concurrent)
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        spec_path.chmod(0o600)
        seed(client, spec)
        # Latency on every service (no selector matches all: Key Vault, ARM, identity, login);
        # Key Vault's token bucket raised far above what the runs use so it never throttles.
        client.set_faults(rules=[{"latency_ms": args.latency_ms}],
                          throttles={"keyvault": {"capacity": 1_000_000, "window_s": 1}})
        console.print(f"sandbox ready and seeded in {time.monotonic() - started:.1f}s; measuring...")
        results: dict[str, list[dict[str, Any]]] = {c: [] for c in CONTENDERS}
        for rep in range(args.reps):
            for contender in CONTENDERS:  # interleaved, so drift affects every contender alike
                results[contender].append(run_child(sbx, contender, spec_path, memory=rep == 0))
        floor = round_trip_floor(client, spec)
        client.clear_faults()

    limit = critical_path(spec, args.latency_ms)
    report(console, spec, results, limit, floor, args)
    console.print(f"total benchmark time {time.monotonic() - started:.1f}s")
    return 0


def report(console: Any, spec: dict[str, Any], results: dict[str, list[dict[str, Any]]], limit: dict[str, Any],
           floor: dict[str, Any], args: Any) -> None:
    from rich.table import Table

    def med(contender: str, key: str) -> float:
        return statistics.median(r[key] for r in results[contender])

    base = {state: med("vaultrelay", f"{state}_s") for state in ("cold", "warm")}
    table = Table(title=f"Resolve one env of {len(spec['refs'])} references "
                        f"(median of {args.reps} fresh processes; counts from the sandbox)")
    for column in ("contender", "state", "seconds (median / min)", "ratio vs vaultrelay", "requests total", "Key Vault GETs",
                   "KV 401 challenges", "KV lists", "ARM", "token requests", "values"):
        table.add_column(column, justify="left" if column in ("contender", "state") else "right", no_wrap=column == "contender")
    for state in ("cold", "warm"):
        for contender in CONTENDERS:
            runs = results[contender]
            c = [counts(r[f"{state}_counters"]) for r in runs]
            secs = med(contender, f"{state}_s")
            best = min(r[f"{state}_s"] for r in runs)
            check = runs[0]["check" if state == "cold" else "warm_check"]
            table.add_row(
                LABELS[contender], state, f"{secs:.3f} / {best:.3f}", f"{secs / base[state]:.2f}x",
                span([x["total"] for x in c]), span([x["kv_get_200"] for x in c]), span([x["kv_401"] for x in c]),
                span([x["kv_list"] for x in c]), span([x["arm"] for x in c]), span([x["tokens"] for x in c]),
                f"{check[0]}/{check[1]}" + ("" if check[0] == check[1] else " [red]BAD[/]"),
            )
        limit_s = limit["seconds"] if state == "cold" else limit["warm_seconds"]
        rts = limit["round_trips"] if state == "cold" else limit["warm_round_trips"]
        table.add_row(f"critical-path limit ({rts} round trips)", state, f"{limit_s:.3f}", f"{limit_s / base[state]:.2f}x",
                      "", "", "", "", "", "", "", end_section=True)
    console.print(table)
    console.print(
        "[bold]cold[/] = fresh process state: new credentials/clients/HTTP sessions, Key Vault challenge cache cleared, "
        "no tokens (imports and the sandbox warmed by an untimed run).  [bold]warm[/] = the same objects resolving "
        "again: tokens, challenges and connections cached; no value cache.  Ratio = contender time / vaultrelay "
        "time in the same state.  'Key Vault GETs' counts GetSecret answered 200; 401s are the unauthenticated "
        "challenge requests the SDK sends first (for pydantic-settings the first request per vault is its list, so 2 of "
        "its 'KV lists' are those 401s).  pydantic-settings covers Key Vault only (90 of 100 references).")
    for contender in CONTENDERS:
        for r in results[contender]:
            for state in ("cold", "warm"):
                c = counts(r[f"{state}_counters"])
                if c["errors"] or c["throttled"]:
                    console.print(f"[yellow]note[/]: {contender} {state}: {c['errors']} error answers, {c['throttled']} throttled")
            problems = r["check"][2]
            if problems:
                console.print(f"[red]value check failed[/] for {contender}: {problems}")

    # ---- how the limit was computed ----
    lim = limit
    console.print(
        f"\n[bold]Critical-path limit[/] ({args.latency_ms:g} ms x unavoidable sequential round trips, "
        f"max_concurrent {lim['max_concurrent']}, cold):\n"
        f"  Key Vault chain: 1 challenge (401, {lim['vaults']} vault hosts in parallel) alongside 1 token (Key Vault "
        f"audience) + ceil({lim['unique_secrets']} unique GETs / {lim['max_concurrent']}) = {lim['kv_chain']} round trips\n"
        f"  ARM chain: 1 token (ARM audience) + 1 listKeys ({lim['accounts']} accounts in parallel; resource groups given, "
        f"no discovery) = {lim['arm_chain']} round trips\n"
        f"  capacity: ceil({lim['requests']} unavoidable requests / {lim['max_concurrent']} slots), or 1 round trip of challenges "
        f"and tokens + ceil({lim['unique_secrets'] + lim['accounts']} GETs and listKeys / {lim['max_concurrent']}) when those fit "
        f"in one, whichever is more = {lim['capacity']} round trips\n"
        f"  limit = max({lim['kv_chain']}, {lim['arm_chain']}, {lim['capacity']}) = {lim['round_trips']} round trips = "
        f"{lim['seconds'] * 1000:.0f} ms   (warm: no challenge, no tokens: {lim['warm_round_trips']} round trips = "
        f"{lim['warm_seconds'] * 1000:.0f} ms)")

    # ---- what any client could reach on this host ----
    naive_cold = med("naive", "cold_s")
    best_s = lim["round_trips"] * floor["floor_s"]
    console.print(
        f"\n[bold]Round-trip floor on this host[/] (a bare HTTP client: no SDK, token in hand, one kept-alive connection, "
        f"{floor['requests']} sequential GETs): {floor['wall_s'] * 1000:.2f} ms per request, of which "
        f"{floor['client_cpu_s'] * 1000:.2f} ms is its own CPU, so at least {floor['floor_s'] * 1000:.2f} ms per round trip "
        f"for any client ({args.latency_ms:g} ms added, plus the sandbox's own time and timer slack).\n"
        f"  {lim['round_trips']} round trips x {floor['floor_s'] * 1000:.2f} ms = {best_s * 1000:.0f} ms at least: "
        f"{naive_cold / best_s:.1f}x the naive loop is the most any client could reach here at max_concurrent "
        f"{lim['max_concurrent']} (and that with no CPU of its own and no TLS handshakes).")

    # ---- vaultrelay internals and memory ----
    vr = results["vaultrelay"][0]
    extra = vr["cold_extra"]
    console.print(
        f"\nvaultrelay (cold, first process): {extra['unique']} unique references, {extra['fetched']} fetched, "
        f"resolver {extra['resolver_s'] * 1000:.0f} ms, credential: {extra['token_fetches']} token fetches for "
        f"{extra['token_requests']} get_token calls; config parse (not timed) {extra['config_parse_s'] * 1000:.0f} ms")
    mem = Table(title="Memory of one cold resolve (first process of each contender)")
    mem.add_column("contender")
    mem.add_column("peak RSS delta (timed run)", justify="right")
    mem.add_column("tracemalloc peak (separate untimed run)", justify="right")
    for contender in CONTENDERS:
        r = results[contender][0]
        rss = r.get("cold_rss_delta_kb")
        mem.add_row(LABELS[contender], "n/a" if rss is None else f"{rss / 1024:.1f} MiB",
                    f"{r.get('tracemalloc_peak_kb', 0) / 1024:.1f} MiB")
    console.print(mem)

    # ---- targets ----
    vr_cold = base["cold"]
    reachable = naive_cold / best_s
    vr_counts = [counts(r["cold_counters"]) for r in results["vaultrelay"]]
    token_expected = lim["audiences"]  # one identity (system) x audiences (Key Vault, ARM)
    targets = [
        (f"vaultrelay within 1.5x of the critical-path limit ({vr_cold * 1000:.0f} ms vs {lim['seconds'] * 1000:.0f} ms "
         f"= {vr_cold / lim['seconds']:.2f}x)", vr_cold <= 1.5 * lim["seconds"]),
        (f"vaultrelay at least 10x faster than the naive SDK loop (b) ({naive_cold / vr_cold:.1f}x"
         + ("" if reachable >= 10 else f"; at most {reachable:.1f}x is reachable here, see the round-trip floor") + ")",
         naive_cold >= 10 * vr_cold),
        (f"token requests = 1 per identity and audience (expected {token_expected}, measured "
         f"{span([c['tokens'] for c in vr_counts])})", all(c["tokens"] == token_expected for c in vr_counts)),
        (f"Key Vault GETs = unique secrets (expected {lim['unique_secrets']}, measured "
         f"{span([c['kv_get_200'] for c in vr_counts])})", all(c["kv_get_200"] == lim["unique_secrets"] for c in vr_counts)),
        (f"(extra) Key Vault challenge requests = 1 per vault host (expected {lim['vaults']}, measured "
         f"{span([c['kv_401'] for c in vr_counts])})", all(c["kv_401"] == lim["vaults"] for c in vr_counts)),
    ]
    console.print("\n[bold]Targets[/] (vaultrelay, cold; the spec's 'faster than (a)' read as the naive loop (b)):")
    for text, ok in targets:
        console.print(f"  {'[green]PASS[/]' if ok else '[red]FAIL[/]'}  {text}")
    console.print(
        f"  note: 10x the naive loop means <= {naive_cold * 100:.0f} ms, {naive_cold / 10 / lim['seconds']:.2f}x the "
        f"critical-path limit and {naive_cold / 10 / best_s:.2f}x the {best_s * 1000:.0f} ms a client with no overhead "
        f"would take here; the naive loop is ~{lim['requests']} sequential round trips, vaultrelay at least "
        f"{lim['round_trips']} with max_concurrent {lim['max_concurrent']}, plus client CPU (TLS handshakes, SDK "
        f"pipeline) that a single Python process serializes.")


if __name__ == "__main__":
    sys.exit(main())
