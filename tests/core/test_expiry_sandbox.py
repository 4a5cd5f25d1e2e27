"""The expiry watch: `status` lists what expires within a window, from which vault, used by which
envs, and whether vaultrelay renews it; `status --expiring WINDOW` fails (exit 1) when something it
cannot renew expires inside the window.  The HTTP API's status carries the same view."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.cli import EXIT_CONFIG, EXIT_OK, EXIT_RESOLUTION, main
from core.expiry import expiring, parse_window
from tests.configs import body_yaml, keyvault_target, ref, secret_ref
from tests.world import World, write_config


def cli(config: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), *args], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def body(world: World) -> str:
    now = datetime.now(UTC)
    soon, later = f"soon-{world.tag}", f"later-{world.tag}"
    world.source.set_secret(soon, "soon-value", expires_on=now + timedelta(days=10))
    world.source.set_secret(later, "later-value", expires_on=now + timedelta(days=60))
    plain = world.secret("plain", "plain-value")
    return body_yaml(envs={
        "app": {
            "SOON": secret_ref(soon),
            "LATER": secret_ref(later),
            "PLAIN": secret_ref(plain),
            "GRAPH_TOKEN": ref(operation="get_token", resource="https://graph.microsoft.com"),
        },
        "other": {"ALSO_SOON": secret_ref(soon)},
    }, targets={
        "vault": keyvault_target("app", prefix="vr-TAG-"),
        "other": keyvault_target("other", prefix="vr-TAG-o-"),
    })


def test_status_lists_what_expires_and_expiring_fails_only_on_what_vaultrelay_cannot_renew(world: World, tmp_path: Path) -> None:
    config = write_config(world, body(world), tmp_path)
    assert cli(config, "sync")[0] == EXIT_OK  # the token is minted (and kept in the state vault)
    code, out, err = cli(config, "status", "-o", "json")
    assert code == EXIT_OK, err
    document = json.loads(out)
    assert document["expiry_window_seconds"] == 30 * 86400
    by_name = {i["name"]: i for i in document["expiring"]}
    soon = by_name[f"kv-source/soon-{world.tag}"]
    assert soon["envs"] == ["app.SOON", "other.ALSO_SOON"] and soon["where"] == "kv-source" and soon["kind"] == "keyvault_secret"
    assert soon["renewable"] is False and soon["expired"] is False
    assert f"kv-source/later-{world.tag}" not in by_name and not any("plain" in n for n in by_name)
    token = by_name["https://graph.microsoft.com"]
    assert token["renewable"] is True and token["envs"] == ["app.GRAPH_TOKEN"]
    assert "soon-value" not in out

    code, out, _ = cli(config, "status", "--expiring", "30d", "-o", "json")
    assert code == EXIT_RESOLUTION and json.loads(out)["ok"] is False
    code, out, _ = cli(config, "status", "--expiring", "5d", "-o", "json")  # only the token (renewed by vaultrelay)
    assert code == EXIT_OK, out
    assert [i["name"] for i in json.loads(out)["expiring"]] == ["https://graph.microsoft.com"]
    code, out, _ = cli(config, "status", "--expiring", "90d")
    assert code == EXIT_RESOLUTION and f"later-{world.tag}" in out and "expiring within 90 days" in out
    code, _, err = cli(config, "status", "--expiring", "soon")
    assert code == EXIT_CONFIG and "--expiring" in err


def test_an_expired_secret_is_listed_as_expired(world: World) -> None:
    gone = f"gone-{world.tag}"
    world.source.set_secret(gone, "x", expires_on=datetime.now(UTC) - timedelta(hours=1))
    engine = world.engine(body_yaml(envs={"app": {"GONE": secret_ref(gone)}},
                                    targets={"vault": keyvault_target("app", prefix="vr-TAG-")}))
    [item] = expiring(engine, parse_window("1d"))
    assert (item.name, item.expired, item.renewable, item.envs) == (f"kv-source/{gone}", True, False, ["app.GONE"])


def test_windows_parse() -> None:
    assert parse_window("30d") == timedelta(days=30) and parse_window("12h") == timedelta(hours=12) and parse_window("2w") == timedelta(weeks=2)
    assert parse_window("7") == timedelta(days=7)
    for bad in ("", "d", "-1d", "0h", "soon"):
        with pytest.raises(ValueError):
            parse_window(bad)
