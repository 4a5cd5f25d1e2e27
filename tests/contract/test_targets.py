"""Contract suite over every registered target (in the manner of dapr's conformance tests).

Parametrized from the target registry (core/targets/registry.py): a kind registered without a
case in CASES fails the suite.  Each case says how to configure the kind, read back what it holds,
edit it by hand and plant an object vaultrelay does not own.  Every target:

* writes what the env resolves to on a first push;
* writes nothing on an unchanged push (no write request reaches the sandbox);
* never overwrites (or deletes) a name it does not own: the push fails naming it;
* notices a hand edit of what it pushed (drift), reports it without writing;
* follows its deletion policy for variables removed from the env (per-variable targets: `delete`
  removes vaultrelay's own, `keep` keeps it; whole-bundle targets rewrite the bundle without it).

A webhook receiver holds nothing vaultrelay can read back, so its case declares that it has no
ownership marks and no drift (`reads_back=False`); what it receives is checked instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.web import WebSiteManagementClient
from azure.mgmt.web.models import StringDictionary
from azure.storage.blob import ContainerClient

from core.targets.registry import default_targets
from sandbox.client import SandboxClient
from sandbox.receiver import serve_https
from tests.configs import app_settings_target, blob_target, body_yaml, keyvault_target, secret_ref, webhook_target
from tests.world import World, is_write, target_writes

SITE = "sandbox-web"


class Receiver:
    """A webhook receiver on loopback (HTTPS with the sandbox's certificate) that keeps each body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0")))))
                self.send_response(204)
                self.end_headers()

        self.server = serve_https(Handler)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Case:
    """How one target kind is configured and observed in the sandbox."""

    world: World
    receiver: Receiver
    per_variable: bool = True  # False: whole-bundle (any change rewrites the target)
    reads_back: bool = True  # False: the target cannot be read (webhook)

    def target(self, env: str, **extra: Any) -> dict[str, Any]:
        raise NotImplementedError

    def read(self) -> dict[str, str]:
        """Variable name -> value, as the target holds them now (this world's names only)."""
        raise NotImplementedError

    def edit(self, name: str, value: str) -> None:
        """A hand edit of the pushed variable `name` (as someone with access would make it)."""
        raise NotImplementedError

    def plant(self, name: str, value: str) -> None:
        """An object vaultrelay does not own, where variable `name` would be pushed."""
        raise NotImplementedError


class KeyVaultCase(Case):
    def target(self, env: str, **extra: Any) -> dict[str, Any]:
        return keyvault_target(env, prefix=f"vr-{self.world.tag}-", **extra)

    def _secret(self, name: str) -> str:
        return f"vr-{self.world.tag}-{name.lower().replace('_', '-')}"

    def read(self) -> dict[str, str]:
        prefix = f"vr-{self.world.tag}-"
        held = {}
        for props in self.world.target.list_properties_of_secrets():
            if props.name and props.name.startswith(prefix):
                held[props.name[len(prefix):].upper().replace("-", "_")] = self.world.target.get_secret(props.name).value or ""
        return held

    def edit(self, name: str, value: str) -> None:
        self.world.target.set_secret(self._secret(name), value)

    def plant(self, name: str, value: str) -> None:
        self.world.target.set_secret(self._secret(name), value)


class BlobCase(Case):
    def target(self, env: str, **extra: Any) -> dict[str, Any]:
        extra.pop("deletion_policy", None)  # a whole bundle has no removed names to keep
        return blob_target(env, f"contract-{self.world.tag}.json", format="json", **extra)

    def _blob(self) -> Any:
        return ContainerClient(self.world.sandbox.storage_endpoint("sandboxdata"), "bundles",
                               credential=self.world.admin).get_blob_client(f"contract-{self.world.tag}.json")

    def read(self) -> dict[str, str]:
        try:
            return dict(json.loads(self._blob().download_blob().readall()))
        except ResourceNotFoundError:
            return {}

    def edit(self, name: str, value: str) -> None:
        blob = self._blob()
        metadata = blob.get_blob_properties().metadata
        blob.upload_blob(json.dumps({**self.read(), name: value}).encode(), overwrite=True, metadata=metadata)

    def plant(self, name: str, value: str) -> None:
        self._blob().upload_blob(json.dumps({name: value}).encode(), overwrite=True)


class AppSettingsCase(Case):
    def target(self, env: str, **extra: Any) -> dict[str, Any]:
        return app_settings_target(env, site=SITE, **extra)

    def _web(self) -> Any:
        return WebSiteManagementClient(self.world.admin, self.world.sandbox.subscription_id, base_url=self.world.sandbox.arm_endpoint)

    def _all(self) -> dict[str, str]:
        return dict(self._web().web_apps.list_application_settings(self.world.sandbox.resource_group, SITE).properties or {})

    def read(self) -> dict[str, str]:
        return {k: v for k, v in self._all().items() if k.endswith(f"_{self.world.tag.upper()}")}

    def edit(self, name: str, value: str) -> None:
        settings = {**self._all(), name: value}
        self._web().web_apps.update_application_settings(self.world.sandbox.resource_group, SITE, StringDictionary(properties=settings))

    plant = edit


class ContainerAppCase(Case):
    """The env's variables as a container app's secrets (kebab names), the app made on first use."""

    _app: str | None = None

    def _client(self) -> Any:
        from azure.mgmt.appcontainers import ContainerAppsAPIClient

        sandbox = self.world.sandbox
        if self._app is None:
            self._app = f"ca-{self.world.tag}"
            sandbox.create_resource("containerapp", self._app)
            sandbox.grant("system", "Container Apps Contributor", sandbox.resource_id("containerapp", self._app))
        return ContainerAppsAPIClient(self.world.admin, sandbox.subscription_id, base_url=sandbox.arm_endpoint, polling_interval=0)

    def target(self, env: str, **extra: Any) -> dict[str, Any]:
        self._client()
        return {"type": "container_app", "env": env, "store": "azure", "app": self._app, **extra}

    def _secrets(self) -> dict[str, str]:
        listed = self._client().container_apps.list_secrets(self.world.sandbox.resource_group, self._app).value
        return {s.name: s.value for s in listed}

    def read(self) -> dict[str, str]:
        return {k.upper().replace("-", "_"): v for k, v in self._secrets().items()}

    def edit(self, name: str, value: str) -> None:
        secrets = {**self._secrets(), name.lower().replace("_", "-"): value}
        body = {"properties": {"configuration": {"secrets": [{"name": k, "value": v} for k, v in secrets.items()]}}}
        self._client().container_apps.begin_update(self.world.sandbox.resource_group, self._app, body).result()

    plant = edit


class WebhookCase(Case):
    def target(self, env: str, **extra: Any) -> dict[str, Any]:
        extra.pop("deletion_policy", None)
        extra.pop("drift_policy", None)
        return webhook_target(env, self.receiver.url, retries=0, **extra)

    def read(self) -> dict[str, str]:
        return dict(self.receiver.bodies[-1]["values"]) if self.receiver.bodies else {}


CASES: dict[str, type[Case]] = {
    "keyvault": KeyVaultCase,
    "blob": BlobCase,
    "app_settings": AppSettingsCase,
    "webhook": WebhookCase,
    "container_app": ContainerAppCase,
}
SHAPES: dict[str, dict[str, bool]] = {"blob": {"per_variable": False}, "webhook": {"per_variable": False, "reads_back": False}}
REGISTERED = default_targets().kinds()


def test_every_case_is_a_registered_target() -> None:
    assert not set(CASES) - set(REGISTERED), f"cases for unregistered kinds: {sorted(set(CASES) - set(REGISTERED))}"


@pytest.fixture()
def receiver(sandbox: SandboxClient) -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


def case_for(kind: str, world: World, receiver: Receiver) -> Case:
    if kind not in CASES:
        pytest.fail(f"target kind {kind!r} is registered but has no contract case in tests/contract/test_targets.py")
    return CASES[kind](world, receiver, **SHAPES.get(kind, {}))


@pytest.fixture(params=REGISTERED)
def case(request: pytest.FixtureRequest, world: World, receiver: Receiver) -> Case:
    return case_for(str(request.param), world, receiver)


def test_a_registered_kind_without_a_case_fails_the_suite(world: World, receiver: Receiver) -> None:
    with pytest.raises(pytest.fail.Exception, match="'new_kind' is registered but has no contract case"):
        case_for("new_kind", world, receiver)


def names(case: Case) -> tuple[str, str]:
    """Variable names of this world: app settings are shared by every test, so they carry the tag."""
    if isinstance(case, AppSettingsCase):
        return f"ALPHA_{case.world.tag.upper()}", f"BETA_{case.world.tag.upper()}"
    return "ALPHA", "BETA"


def body(case: Case, *, drop: str | None = None, **target: Any) -> str:
    world = case.world
    alpha, beta = names(case)
    variables = {alpha: secret_ref(f"alpha-{world.tag}"), beta: secret_ref(f"beta-{world.tag}")}
    if drop:
        variables.pop(drop)
    return body_yaml(envs={"app": variables}, targets={"contract": case.target("app", **target)})


def short(name: str, case: Case) -> str:
    return name.removesuffix(f"_{case.world.tag.upper()}") if isinstance(case, AppSettingsCase) else name


def seed(case: Case) -> None:
    case.world.secret("alpha", "alpha-value-1")
    case.world.secret("beta", "beta-value-1")


def all_writes(sandbox: SandboxClient) -> dict[str, int]:
    """Every write request, state tables included."""
    return {k: v for k, v in sandbox.counters()["by_endpoint"].items() if is_write(k)}


def test_a_first_push_writes_the_env(case: Case) -> None:
    seed(case)
    (report,) = case.world.engine(body(case)).sync().targets
    assert report.outcome == "pushed" and report.writes >= 1, report
    assert {short(k, case): v for k, v in case.read().items()} == {"ALPHA": "alpha-value-1", "BETA": "beta-value-1"}


def test_an_unchanged_push_writes_nothing(case: Case) -> None:
    seed(case)
    assert case.world.engine(body(case)).sync().ok
    posts = len(case.receiver.bodies)
    engine = case.world.engine(body(case))  # a fresh process: no caches
    state_writes = engine.state.writes
    case.world.sandbox.reset_counters()
    (report,) = engine.sync().targets
    assert (report.outcome, report.writes) == ("unchanged", 0), report
    assert all_writes(case.world.sandbox) == {} and engine.state.writes == state_writes
    assert len(case.receiver.bodies) == posts


def test_a_name_it_does_not_own_is_never_overwritten(case: Case) -> None:
    if not case.reads_back:
        pytest.skip("declared: a webhook receiver holds nothing vaultrelay could overwrite or read")
    seed(case)
    alpha, _ = names(case)
    case.plant(alpha, "someone-elses")
    for policy in ("report", "repair"):
        (report,) = case.world.engine(body(case, drift_policy=policy)).sync().targets
        assert report.outcome == "error" and "not managed by vaultrelay" in (report.error or ""), report
        assert {short(k, case): v for k, v in case.read().items()}.get("ALPHA") == "someone-elses"


def test_a_hand_edit_is_drift_reported_without_writing(case: Case) -> None:
    if not case.reads_back:
        pytest.skip("declared: a webhook receiver cannot be read back, so it cannot drift")
    seed(case)
    assert case.world.engine(body(case)).sync().ok
    alpha, _ = names(case)
    case.edit(alpha, "edited-by-hand")
    case.world.sandbox.reset_counters()
    (report,) = case.world.engine(body(case, drift_policy="report")).sync().targets
    assert report.drift and report.writes == 0, report
    assert target_writes(case.world.sandbox) == {}
    assert {short(k, case): v for k, v in case.read().items()}["ALPHA"] == "edited-by-hand"
    (repaired,) = case.world.engine(body(case, drift_policy="repair")).sync().targets
    assert repaired.outcome == "pushed" and repaired.repaired, repaired
    assert {short(k, case): v for k, v in case.read().items()}["ALPHA"] == "alpha-value-1"


@pytest.mark.parametrize("policy", ["delete", "keep"])
def test_a_removed_variable_follows_the_deletion_policy(case: Case, policy: str) -> None:
    seed(case)
    assert case.world.engine(body(case, deletion_policy=policy)).sync().ok
    _, beta = names(case)
    (report,) = case.world.engine(body(case, drop=beta, deletion_policy=policy)).sync().targets
    held = {short(k, case): v for k, v in case.read().items()}
    assert held["ALPHA"] == "alpha-value-1"
    if not case.per_variable:  # the bundle is rewritten without it, whatever the policy
        assert report.outcome == "pushed" and "BETA" not in held, (report, held)
    elif policy == "delete":
        assert report.removals == [beta] and "BETA" not in held, (report, held)
    else:
        assert report.writes == 0 and held["BETA"] == "beta-value-1", (report, held)
