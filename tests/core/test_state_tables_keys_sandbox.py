"""Table keys and sizes against the sandbox (Azurite behind the storage proxy): env and target
names Table Storage refuses as keys (`/ \\ # ?`, control characters, 300 characters) sync and
re-sync unchanged; an env of 2,000 variables too (its push record spread over properties within
64 KiB each and 1 MiB in all); a row that cannot fit is refused by name before it is sent."""

from __future__ import annotations

import os
import textwrap
import uuid
from typing import Any

import pytest
from azure.data.tables import TableServiceClient
from azure.keyvault.secrets import SecretClient
from azure.storage.blob import ContainerClient
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import parse_config
from core.connections import StoreConnections
from core.push import SyncEngine
from core.state.tables import (
    MAX_KEY,
    MAX_PROPERTY_CHARS,
    Row,
    StateTooLarge,
    decode_key,
    encode_key,
    entity_fields,
    to_entity,
)
from sandbox.client import SandboxClient
from tests.configs import blob_target, body_yaml, config_yaml, keyvault_target, secret_ref, state_block

_FORBIDDEN = set("/\\#?") | {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]}



def engine_for(tag: str, body: str) -> SyncEngine:
    text = config_yaml(state=state_block(f"k{tag}")) + textwrap.dedent(body)
    return SyncEngine(StoreConnections(parse_config(text, "keys.yaml", environ=os.environ)))


def stored_entities(sandbox: SandboxClient, table: str) -> list[dict[str, Any]]:
    service = TableServiceClient(endpoint=sandbox.storage_endpoint("sandboxstore", "table"), credential=sandbox.admin_credential())
    with service:
        return [dict(e) for e in service.get_table_client(table).list_entities()]


# ---- the encoding ---------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=400))
def test_every_name_becomes_a_valid_key_and_short_ones_come_back(name: str) -> None:
    key = encode_key(name)
    assert (key or name == "") and len(key) <= MAX_KEY and not _FORBIDDEN.intersection(key)  # an empty key is valid
    if not key.startswith("~h"):
        assert decode_key(key) == name


def test_keys_vaultrelay_always_wrote_stay_the_same() -> None:
    for name in ("production", "prod-eu", "sync:prod_eu", "rotate:storage:acct", "kv-a:secret-1", "20260101", "vr-sas-app-x",
                 "9d2c5f0e-8c1b-4f7a-9a43-5d8e1f2b3c4d", "sha256-" + "0" * 64):
        assert encode_key(name) == name
    assert encode_key("prod/eu") == "prod~2Feu" and encode_key("a~b") == "a~7Eb" and encode_key("") == ""


def test_a_long_property_is_spread_and_joined_and_a_row_over_1_mib_is_refused_by_name() -> None:
    text = "é" * (MAX_PROPERTY_CHARS * 2 + 5) + "𝄞" * 10
    entity = to_entity("t", Row("p", "k", {"fingerprints": text, "n": 3}))
    assert entity["fingerprints__parts"] == 3 and all(len(v.encode("utf-16-le")) // 2 <= MAX_PROPERTY_CHARS
                                                       for k, v in entity.items() if k.startswith("fingerprints") and isinstance(v, str))
    assert entity_fields(entity) == {"fingerprints": text, "n": 3}
    with pytest.raises(StateTooLarge, match=r"pushes/prod/eu/blob would be .* bytes"):
        to_entity("pushes", Row("prod/eu", "blob", {"fingerprints": "x" * 600_000}))
    with pytest.raises(StateTooLarge, match="253 properties"):
        to_entity("pushes", Row("p", "k", {f"f{i}": "x" for i in range(253)}))


# ---- against the sandbox ------------------------------------------------------------------------
NAMES = ["prod/eu", "a\\b#c?d", "tab\there\x7f", "ünïcode-ẞ", "x" * 300]


def test_env_and_target_names_table_storage_refuses_as_keys_sync_and_resync_unchanged(seeded: SandboxClient) -> None:
    tag = uuid.uuid4().hex[:8]
    source = SecretClient(seeded.vault_url("kv-source"), seeded.admin_credential())
    secret = f"keys-{tag}"
    source.set_secret(secret, "keys-value-1")
    envs = {name: {"VALUE": secret_ref(secret), "MODE": f"mode-{i}"} for i, name in enumerate(NAMES)}
    targets = {f"blob/{name}": blob_target(name, f"e{i}.env", container=f"keys{tag}") for i, name in enumerate(NAMES)}
    targets["vault #1"] = keyvault_target("prod/eu", prefix=f"k{tag}-")
    body = body_yaml(envs=envs, targets=targets)

    first = engine_for(tag, body).sync()
    assert first.ok, first
    assert sorted(t.outcome for t in first.targets) == ["pushed"] * (len(NAMES) + 1)
    assert SecretClient(seeded.vault_url("kv-target"), seeded.admin_credential()).get_secret(f"k{tag}-value").value == "keys-value-1"
    blobs = ContainerClient(seeded.storage_endpoint("sandboxdata"), f"keys{tag}", credential=seeded.admin_credential())
    assert blobs.download_blob("e0.env").readall().decode() == 'MODE=mode-0\nVALUE=keys-value-1\n'

    engine = engine_for(tag, body)  # a fresh process
    writes = engine.state.writes
    again = engine.sync()
    assert again.ok and again.target_writes == 0 and all(t.outcome == "unchanged" for t in again.targets), again
    assert engine.state.writes == writes
    status = {(row["env"], row["target"]): row for row in engine.status()}
    assert set(status) == {(n, "blob/" + n) for n in NAMES} | {("prod/eu", "vault #1")}
    assert all(row["outcome"] == "ok" and row["variables"] == 2 for row in status.values())

    # what Table Storage holds: only valid keys, and the names come back
    rows = stored_entities(seeded, f"k{tag}pushes")
    assert len(rows) == len(NAMES) + 1
    assert all(not _FORBIDDEN.intersection(r["PartitionKey"] + r["RowKey"]) for r in rows)


def test_an_env_of_2000_variables_syncs_and_resyncs_unchanged(seeded: SandboxClient) -> None:
    tag = uuid.uuid4().hex[:8]
    variables = {f"SETTING_NUMBER_{i:05d}_OF_A_LARGE_ENV": f"value-{i}" for i in range(2000)}

    def big(variables: dict[str, str]) -> str:
        return body_yaml(envs={"big": variables},
                         targets={"blob": blob_target("big", "big.json", container=f"keys{tag}", format="json")})

    body = big(variables)
    first = engine_for(tag, body).sync()
    assert first.ok and first.targets[0].outcome == "pushed" and len(first.targets[0].adds) == 2000, first.targets[0].error
    [row] = stored_entities(seeded, f"k{tag}pushes")
    assert row["fingerprints__parts"] >= 3  # ~150,000 characters of fingerprints, spread
    assert all(len(v) <= MAX_PROPERTY_CHARS for v in row.values() if isinstance(v, str))

    engine = engine_for(tag, body)
    writes = engine.state.writes
    again = engine.sync()
    assert again.ok and again.target_writes == 0 and again.targets[0].outcome == "unchanged", again
    assert engine.state.writes == writes
    assert engine.status()[0]["variables"] == 2000

    changed = engine_for(tag, big({**variables, "SETTING_NUMBER_01999_OF_A_LARGE_ENV": "value-changed"})).sync()
    assert changed.ok and changed.targets[0].updates == ["SETTING_NUMBER_01999_OF_A_LARGE_ENV"]
