"""`make demo`: start the local Azure, prepare it like a platform team would, then run vaultrelay.

Steps, each printed: start the sandbox (Azurite + Azure stand-ins), seed secrets and grant roles
through ARM, validate and plan the example config (and see a config that shares the state vault
with a target refused), run the timer function once (bundles pushed to
a target vault, a blob and app settings), sync again (nothing written), fetch a bundle through the
HTTP function with a caller's Entra token and show a refused caller, change a source secret so
that the sandbox delivers a Key Vault event and the target follows, rotate a SAS and prove old and
new both work, rotate the storage key, show status, run a command under `vaultrelay exec`, fan
three envs out through the work queue to two worker processes, and reach the running app: app
settings as Key Vault references pinned to versions (a reference the site cannot resolve is reported
and notified once, signed; then a new value reaches the app at once).
Everything the demo started is stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from sandbox.receiver import serve_https

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "vaultrelay.yaml"
AUDIENCE = "api://vaultrelay-demo"


def demo_config(sandbox: Any, workdir: Path) -> Path:
    """The example config plus who may fetch it over HTTP (the `caller` identity) and an admin."""
    config = yaml.safe_load(CONFIG.read_text())
    config["api"] = {"audience": AUDIENCE, "admins": [sandbox.identities["admin"].object_id]}
    config["access"] = {"production": [sandbox.identities["caller"].object_id]}
    path = workdir / "vaultrelay.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def refused_state_vault(console: Console, vaultrelay: list[str], env: dict[str, str], config: Path) -> None:
    """The same config with its state vault shared with the target: validate refuses it (exit 2),
    since readers of the target would read delegation keys, the fingerprint key and minted SAS."""
    shared = yaml.safe_load(config.read_text())
    shared["state"]["vault"] = shared["targets"]["production-vault"]["vault"]
    path = config.with_name("shared-state-vault.yaml")
    path.write_text(yaml.safe_dump(shared, sort_keys=False))
    result = subprocess.run([*vaultrelay, "--config", str(path), "validate"], env=env, cwd=ROOT, check=False,  # our own CLI
                            capture_output=True, text=True)
    if result.returncode != 2:
        raise SystemExit(f"a state vault shared with a target was not refused (exit code {result.returncode})")
    first = (result.stderr.strip().splitlines() or [""])[0]
    console.print(f"  the same config with state.vault = the target's vault: refused (exit 2)\n  {first.split(': ', 1)[-1][:160]}...")


def main() -> int:
    console = Console()
    from demo.seed import example_environment, seed_example
    from sandbox.client import SandboxProcess

    started = time.monotonic()
    console.rule("1. local Azure")
    with SandboxProcess() as sandbox:
        console.print(f"sandbox up in {time.monotonic() - started:.1f}s: Azurite, managed identity endpoint, Key Vault, ARM, Event Grid")
        sandbox.apply_to_current_process()
        client = sandbox.client
        seeded = seed_example(client)
        os.environ.update(example_environment(client))
        config = demo_config(client, Path(sandbox.env_file).parent)
        os.environ["VAULTRELAY_CONFIG"] = str(config)
        console.print(f"seeded {seeded['secrets']} Key Vault objects and {seeded['roles']} role assignments (through ARM)")

        env = sandbox.subprocess_env()  # includes the name resolution for *.vaultrelay.test
        env.update(example_environment(client))
        env["VAULTRELAY_CONFIG"] = str(config)
        vaultrelay = [sys.executable, "-m", "core.cli"]

        def cli(title: str, *args: str) -> None:
            console.rule(title)
            result = subprocess.run([*vaultrelay, *args], env=env, cwd=ROOT, check=False)  # our own CLI
            if result.returncode != 0:
                raise SystemExit(f"step failed with exit code {result.returncode}")

        cli("2. validate the config (static, no network)", "validate")
        refused_state_vault(console, vaultrelay, env, config)
        cli("3. plan: what env production resolves, with which identity", "plan", "--env", "production")

        from azure.functions.timer import TimerRequest

        import function_app
        from core.runtime import LiveRuntime, set_live_runtime

        functions = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
        api = LiveRuntime(environ={**os.environ, "VAULTRELAY_API_AUDIENCE": AUDIENCE})
        set_live_runtime(api)
        console.rule("4. the timer function runs once: bundles pushed to a target vault, a blob and app settings")
        functions["sync_timer"](TimerRequest())
        show_status(console, api)
        cli("5. sync again: nothing changed, so nothing is written", "sync")

        console.rule("6. a CI job fetches env production over HTTP with its own managed identity's token")
        fetch(console, functions, client.issue_token("caller", AUDIENCE), "caller (in access list)")
        fetch(console, functions, client.issue_token("other", AUDIENCE), "other (not in access list)")
        fetch(console, functions, None, "no token")

        console.rule("7. a source secret changes: Key Vault's event reaches the Event Grid function, the target follows")
        event_roundtrip(console, client, functions)

        console.rule("8. the SAS is rotated: old and new tokens both work until the old one expires")
        sas_overlap(console, client, api)

        cli("9. rotate the storage account key (dual-key: regenerate the inactive key, switch, re-push)", "rotate", "--force")
        cli("10. status: last push, drift and rotations per env and target", "status")
        cli("11. exec: a child process gets the variables", "exec", "--env", "production", "--", sys.executable, "-c",
            "import os; print('child sees', sum(k in os.environ for k in ('DATABASE_PASSWORD', 'STORAGE_SAS', 'COSMOS_CONNECTION')), "
            "'secrets; DATABASE_PASSWORD has', len(os.environ['DATABASE_PASSWORD']), 'characters')")
        fan_out(console, vaultrelay, env, config)
        reach_the_app(console, client, vaultrelay, env, config)
        api.close()
        counters = client.counters()
        console.rule("what the local Azure saw")
        by_target: dict[str, int] = {}
        for key, count in counters.get("by_target", {}).items():
            # ARM calls on role assignments are keyed by the assignment's GUID: one line for all of them.
            key = "arm:role assignments" if re.fullmatch(r"arm:[0-9a-f-]{36}", key) else key
            by_target[key] = by_target.get(key, 0) + count
        targets = ", ".join(f"{k}: {v}" for k, v in sorted(by_target.items()))
        console.print(f"{counters.get('total')} requests, {counters.get('tokens_issued')} tokens issued; by target: {targets}")
    console.print(f"demo finished in {time.monotonic() - started:.1f}s; the sandbox and Azurite are stopped")
    return 0


def show_status(console: Console, api: Any) -> None:
    from core.app.status import status

    for row in status(api.current()).targets:
        console.print(f"  {row['env']} -> {row['target']} ({row['kind']}): {row['outcome']}, {row['variables']} variables")


def fetch(console: Console, functions: dict[str, Any], token: str | None, who: str) -> None:
    import azure.functions as func

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = func.HttpRequest("GET", "http://localhost/api/envs/production?format=json", headers=headers, params={"format": "json"},
                           route_params={"env": "production"}, body=b"")
    response = functions["get_env"](req)
    body = response.get_body().decode()
    if response.status_code == 200:
        names = sorted(json.loads(body))
        console.print(f"  {who}: HTTP 200, {len(names)} variables ({', '.join(names[:4])}, ...), values not shown here")
    else:
        console.print(f"  {who}: HTTP {response.status_code} {body.strip()}")


def event_roundtrip(console: Console, client: Any, functions: dict[str, Any]) -> None:
    import azure.functions as func
    from azure.keyvault.secrets import SecretClient

    from sandbox.receiver import EventReceiver, subscribe

    with EventReceiver() as receiver:
        subscription = subscribe(client, receiver, vault="kv-source", event_types=["Microsoft.KeyVault.SecretNewVersionCreated"])
        source = SecretClient(client.vault_url("kv-source"), client.admin_credential())
        source.set_secret("api-key", "api-key-rotated-by-the-team")
        delivered = receiver.wait_for(1, timeout=15)[0]
        console.print(f"  delivered: {delivered['eventType']} for {delivered['data']['VaultName']}/{delivered['data']['ObjectName']}")
        event = func.EventGridEvent(id=delivered["id"], data=delivered["data"], topic=delivered.get("topic", ""), subject=delivered.get("subject", ""),
                                    event_type=delivered["eventType"], event_time=None, data_version=delivered.get("dataVersion", "1"))
        functions["keyvault_events"](event)
        functions["keyvault_events"](event)  # Event Grid delivers at least once: the duplicate changes nothing
        client.call("DELETE", f"/eventgrid/subscriptions/{subscription['id']}")
    target = SecretClient(client.vault_url("kv-target"), client.admin_credential()).get_secret("api-key")
    follows = target.value == "api-key-rotated-by-the-team"
    console.print(f"  target kv-target/api-key follows the source: {follows} (version {target.properties.version[:8]}...)")


def sas_overlap(console: Console, client: Any, api: Any) -> None:
    from azure.core.exceptions import HttpResponseError
    from azure.keyvault.secrets import SecretClient
    from azure.storage.blob import BlobServiceClient

    target = SecretClient(client.vault_url("kv-target"), client.admin_credential())
    old = target.get_secret("storage-sas").value
    time.sleep(1.1)  # SAS times have one-second resolution
    from core.app.sync import sync

    report = sync(api.current(), "production", force_mint=True).report
    assert report is not None
    new = target.get_secret("storage-sas").value

    def works(token: str) -> bool:
        try:
            next(iter(BlobServiceClient(client.storage_endpoint("sandboxstore"), credential=token, retry_total=0).list_containers()), None)
        except HttpResponseError:
            return False
        return True

    console.print(f"  re-minted: {', '.join(report.minted)}; new token differs: {new != old}; old works: {works(old)}; new works: {works(new)}")


def fan_out(console: Console, vaultrelay: list[str], env: dict[str, str], config: Path) -> None:
    """Queue mode in one step: three small envs enqueued as work items, then two worker processes
    (the queue-triggered function's code path) drain the queue; a second round writes nothing."""
    console.rule("12. fan-out: three envs through the work queue and two worker processes")
    fleet = yaml.safe_load(config.read_text())
    fleet["envs"] = {f"team-{n}": {"DATABASE_PASSWORD": {"from": {"store": "azure", "vault": "kv-source", "secret": "database-password"}},
                                   "TEAM": n} for n in ("a", "b", "c")}
    fleet["targets"] = {f"team-{n}-vault": {"type": "keyvault", "env": f"team-{n}", "store": "azure", "vault": "kv-target", "prefix": f"team-{n}-"}
                        for n in ("a", "b", "c")}
    fleet.pop("access", None)
    path = config.with_name("fleet.yaml")
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    queued = {**env, "VAULTRELAY_CONFIG": str(path), "VAULTRELAY_WORK_QUEUE": "demo-work", "VAULTRELAY_WORK_BATCH": "1"}
    for title, args in (("vaultrelay sync --queue", ["sync", "--queue"]),
                        ("vaultrelay worker --processes 2 --drain", ["worker", "--processes", "2", "--drain"]),
                        ("again (the same items delivered once more)", ["sync", "--queue"]),
                        ("vaultrelay worker --drain", ["worker", "--drain"])):
        result = subprocess.run([*vaultrelay, *args], env=queued, cwd=ROOT, check=False, capture_output=True, text=True)  # our own CLI
        if result.returncode != 0:
            raise SystemExit(f"{title} failed with exit code {result.returncode}: {result.stderr[-500:]}")
        console.print(f"  {title}: {result.stdout.strip()}")


class NotifyReceiver:
    """An HTTPS endpoint on loopback (the sandbox's certificate) that checks each notification's
    signature and keeps the bodies."""

    def __init__(self, key: str) -> None:
        import hashlib
        import hmac
        from http.server import BaseHTTPRequestHandler

        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                signed = hmac.new(key.encode(), self.headers.get("X-VaultRelay-Timestamp", "").encode() + b"." + body, hashlib.sha256).hexdigest()
                if self.headers.get("X-VaultRelay-Signature") == f"sha256={signed}":
                    receiver.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

        self.server = serve_https(Handler)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/notify"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def reach_the_app(console: Console, client: Any, vaultrelay: list[str], env: dict[str, str], config: Path) -> None:
    """App settings as Key Vault references pinned to versions, with notifications: the site's
    identity cannot read the vault yet (reported, one signed notification), then it can (resolved,
    nothing rewritten), then a new value is a new version the app reads at once."""
    from azure.keyvault.secrets import SecretClient
    from azure.mgmt.web import WebSiteManagementClient
    from azure.mgmt.web.models import ManagedServiceIdentity, SitePatchResource

    console.rule("13. reach the running app: a Key Vault reference pinned to the version, and a notification")
    key = "demo-notify-signing-key-0123456789"
    receiver = NotifyReceiver(key)
    source = SecretClient(client.vault_url("kv-source"), client.admin_credential())
    source.set_secret("web-db-password", "web-db-password-v1")
    web = WebSiteManagementClient(client.admin_credential(), client.subscription_id, base_url=client.arm_endpoint).web_apps
    site = web.update(client.resource_group, "sandbox-web", SitePatchResource(identity=ManagedServiceIdentity(type="SystemAssigned")))
    reach = yaml.safe_load(config.read_text())
    reach["envs"] = {"web": {"WEB_DB_PASSWORD": {"from": {"store": "azure", "vault": "kv-source", "secret": "web-db-password"}}}}
    reach["targets"] = {"web-refs": {"type": "app_settings", "env": "web", "store": "azure", "site": "sandbox-web",
                                     "values": "keyvault_reference", "vault": "kv-target", "prefix": "web-ref-"}}
    reach["notify"] = {"url": receiver.url, "signing_key": key, "format": "json", "events": ["push_failed", "drift_found"], "retries": 0}
    reach.pop("access", None)
    path = config.with_name("reach.yaml")
    path.write_text(yaml.safe_dump(reach, sort_keys=False))
    run_env = {**env, "VAULTRELAY_CONFIG": str(path)}

    def sync() -> tuple[int, dict[str, Any]]:
        result = subprocess.run([*vaultrelay, "sync", "-o", "json"], env=run_env, cwd=ROOT, check=False, capture_output=True, text=True)  # our own CLI
        return result.returncode, json.loads(result.stdout)["targets"][0]

    def seen() -> tuple[str, str]:
        setting = dict(web.list_application_settings(client.resource_group, "sandbox-web").properties or {})["WEB_DB_PASSWORD"]
        return setting, str(client.site_environment("sandbox-web")["settings"]["WEB_DB_PASSWORD"])

    try:
        code, first = sync()
        console.print(f"  sync without the site's role: exit {code}, {first['outcome']}: {str(first['error'])[:150]}...")
        code, _ = sync()
        console.print(f"  the same again: exit {code}; notifications received (signature checked): {len(receiver.bodies)}")
        for body in receiver.bodies:
            console.print(f"    {body['event']} {body['subject']} at {body['at']} (names and times only)")
        if len(receiver.bodies) != 1:
            raise SystemExit(f"expected one notification, got {len(receiver.bodies)}")
        client.grant_principal(str(site.identity.principal_id), "Key Vault Secrets User", client.resource_id("vault", "kv-target"))
        code, granted = sync()
        setting, value = seen()
        console.print(f"  granted Key Vault Secrets User to the site's identity: exit {code}, {granted['writes']} writes")
        console.print(f"    setting: {setting}")
        console.print(f"    the app sees a value of {len(value)} characters (the reference resolved)")
        source.set_secret("web-db-password", "web-db-password-v2-longer")
        code, changed = sync()
        new_setting, new_value = seen()
        console.print(f"  the source changed: exit {code}, {changed['outcome']}; the setting now pins version {new_setting.rsplit('/', 1)[1][:8]}... "
                      f"(was {setting.rsplit('/', 1)[1][:8]}...); the app sees the new value at once: {new_value == 'web-db-password-v2-longer'}")
        if code != 0 or new_value != "web-db-password-v2-longer":
            raise SystemExit("the Key Vault reference did not reach the app")
    finally:
        receiver.close()


if __name__ == "__main__":
    raise SystemExit(main())
