"""User delegation keys against Azure's 7-day bound, through the CLI: the sandbox's storage service
measures the bound by its own clock (skewed here to run behind the client's, as a real service's
may), so vaultrelay must ask for keys that end well inside it, and no later than the SAS they sign
needs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from azure.storage.blob import ContainerClient

from core.cli import EXIT_OK, main
from sandbox.client import SandboxClient
from tests.configs import body_yaml, ref
from tests.world import World, write_config

# The documented cap: an hour inside Azure's 7 days (docs/config.md).
USER_DELEGATION_SAS_MAX = timedelta(days=6, hours=23)


def run(config: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def sas_time(token: str, field: str) -> datetime:
    return datetime.strptime(parse_qs(token)[field][0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@pytest.fixture()
def service_behind(world: World) -> Iterator[World]:
    """The storage service's clock 10 minutes behind this machine's."""
    world.sandbox.set_storage_clock_skew(-600)
    yield world
    world.sandbox.set_storage_clock_skew(0)


def container(world: World) -> str:
    name = f"udb{world.tag}"
    client = ContainerClient(world.sandbox.storage_endpoint("sandboxstore"), name, credential=world.admin)
    client.create_container()
    client.upload_blob("hello.txt", b"hello")
    return name


def lists(sandbox: SandboxClient, name: str, token: str) -> list[str]:
    return [b.name for b in ContainerClient(sandbox.storage_endpoint("sandboxstore"), name, credential=token, retry_total=0).list_blobs()]


def test_a_seven_day_sas_is_capped_inside_the_bound_with_a_warning_when_the_service_clock_is_behind(
    service_behind: World, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    world = service_behind
    name = container(world)
    body = body_yaml(envs={
        "app": {
            "WEEK": ref(resource_type="storage", account="sandboxstore", operation="generate_sas", container=name,
                        permissions="rl", expiry="7d"),
        },
    })
    config = write_config(world, body, tmp_path)
    code, _, err = run(config, "validate")
    assert code == EXIT_OK
    assert "envs.app.WEEK.from.expiry: warning: a user delegation SAS lasts at most 6d 23h" in err and "it will be capped" in err

    started = datetime.now(UTC)
    with caplog.at_level(logging.WARNING, logger="vaultrelay"):
        code, out, err = run(config, "resolve", "--env", "app", "--format", "json", "--reveal")
    assert code == EXIT_OK, err
    token = json.loads(out)["WEEK"]
    # Capped an hour inside Azure's 7 days, by this clock; the key ends with the SAS.
    assert sas_time(token, "se") <= started + USER_DELEGATION_SAS_MAX + timedelta(seconds=30)
    assert sas_time(token, "se") >= started + USER_DELEGATION_SAS_MAX - timedelta(seconds=30)
    assert sas_time(token, "ske") == sas_time(token, "se")
    assert lists(world.sandbox, name, token) == ["hello.txt"]
    assert any("envs.app.WEEK.from" in r.getMessage() and "capped" in r.getMessage() for r in caplog.records)


def test_a_delegation_key_ends_shortly_after_the_sas_it_signs(service_behind: World, tmp_path: Path) -> None:
    world = service_behind
    name = container(world)
    body = body_yaml(envs={
        "app": {
            "HOUR": ref(resource_type="storage", account="sandboxstore", operation="generate_sas", container=name,
                        permissions="rl", expiry="1h"),
            "DAY": ref(resource_type="storage", account="sandboxstore", operation="generate_sas", container=name,
                       permissions="r", expiry="1d"),
        },
    })
    config = write_config(world, body, tmp_path)
    code, out, err = run(config, "resolve", "--env", "app", "--format", "json", "--reveal")
    assert code == EXIT_OK, err
    got = json.loads(out)
    for variable, slack in (("HOUR", timedelta(minutes=6)), ("DAY", timedelta(hours=1))):
        token = got[variable]
        lead = sas_time(token, "ske") - sas_time(token, "se")
        assert timedelta(0) <= lead <= slack, (variable, lead)  # 10 % of the lifetime, between 5 minutes and an hour
    assert lists(world.sandbox, name, got["HOUR"]) == ["hello.txt"]


def test_validate_says_which_user_delegation_sas_will_be_capped_or_fail(tmp_path: Path) -> None:
    def sas(expiry: str, store: str = "azure") -> dict[str, object]:
        return {"from": {"store": store, "resource_type": "storage", "account": "sandboxstore", "operation": "generate_sas",
                         "container": "c", "permissions": "r", "expiry": expiry}}

    config = tmp_path / "vaultrelay.yaml"
    config.write_text(json.dumps({
        "version": 1,
        "secretStores": {"azure": {"type": "azure.managed_identity"},
                         "long": {"type": "azure.managed_identity", "max_sas_expiry": "30d"}},
        "envs": {"app": {"CAPPED_BY_STORE": sas("10d"), "TOO_LONG": sas("10d", "long"), "FINE": sas("6d", "long")}},
    }))
    code, _, err = run(config, "validate")
    assert code == EXIT_OK
    # The store's own cap (7d) applies first: then vaultrelay's 6d 23h.
    assert "envs.app.CAPPED_BY_STORE.from.expiry: warning: a user delegation SAS lasts at most 6d 23h" in err
    assert "envs.app.TOO_LONG.from.expiry: warning: a user delegation SAS cannot outlive its delegation key" in err
    assert "will fail at run time; use at most 6d 23h" in err
    assert "FINE" not in err
