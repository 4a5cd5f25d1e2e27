"""The sandbox's Table service holds Azure's entity limits (Learn, "Understanding the Table
service data model"): keys without `/ \\ # ?` or control characters and at most 1 KiB, string
properties of at most 64 KiB (Azurite enforces these itself), and entities of at most 252
properties and 1 MiB (Azurite does not: the storage proxy answers 400 `TooManyProperties` /
`EntityTooLarge` as Azure does)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from sandbox.azurite import entity_size
from sandbox.client import SandboxClient


@pytest.fixture(scope="module")
def table(sandbox: SandboxClient) -> Iterator[TableClient]:
    service = TableServiceClient(sandbox.storage_endpoint("sandboxstore", "table"), credential=sandbox.admin_credential())
    client = service.create_table(f"limits{uuid.uuid4().hex[:10]}")
    yield client
    service.delete_table(client.table_name)
    service.close()


def refused(call: Callable[[], Any]) -> tuple[int, str | None]:
    with pytest.raises(HttpResponseError) as info:
        call()
    assert info.value.response is not None
    return info.value.status_code or 0, info.value.response.headers.get("x-ms-error-code")


def row() -> str:
    return uuid.uuid4().hex


@pytest.mark.parametrize("char", ["/", "\\", "#", "?", "\t", "\n", "\x00", "\x1f", "\x7f", "\x9f"])
def test_keys_with_characters_azure_refuses_are_refused(table: TableClient, char: str) -> None:
    assert refused(lambda: table.create_entity({"PartitionKey": f"a{char}b", "RowKey": row()}))[0] == 400
    assert refused(lambda: table.create_entity({"PartitionKey": "p", "RowKey": f"a{char}{row()}"}))[0] == 400


def test_a_string_property_holds_32k_characters_and_no_more(table: TableClient) -> None:
    table.create_entity({"PartitionKey": "p", "RowKey": row(), "v": "x" * 32_768})
    assert refused(lambda: table.create_entity({"PartitionKey": "p", "RowKey": row(), "v": "x" * 32_769}))[0] == 400


def test_an_entity_over_1_mib_is_refused_as_entity_too_large_on_insert_update_and_merge(table: TableClient) -> None:
    big = {f"v{i}": "x" * 30_000 for i in range(18)}  # 18 x 60 KB: about 1.05 MiB
    small = {f"v{i}": "x" * 30_000 for i in range(17)}  # about 0.99 MiB
    assert entity_size({"PartitionKey": "p", "RowKey": "r", **big})[0] > 1024 * 1024 > entity_size({"PartitionKey": "p", "RowKey": "r", **small})[0]
    assert refused(lambda: table.create_entity({"PartitionKey": "p", "RowKey": row(), **big})) == (400, "EntityTooLarge")
    key = row()
    table.create_entity({"PartitionKey": "p", "RowKey": key, **small})  # just under the limit: stored
    assert refused(lambda: table.update_entity({"PartitionKey": "p", "RowKey": key, **big}, mode=UpdateMode.REPLACE)) == (400, "EntityTooLarge")
    assert refused(lambda: table.upsert_entity({"PartitionKey": "p", "RowKey": key, **big}, mode=UpdateMode.MERGE)) == (400, "EntityTooLarge")
    assert len(table.get_entity("p", key)) == 2 + 17  # unchanged


def test_an_entity_has_at_most_252_properties_of_its_own(table: TableClient) -> None:
    table.create_entity({"PartitionKey": "p", "RowKey": row(), **{f"p{i}": i for i in range(252)}})
    assert refused(lambda: table.create_entity({"PartitionKey": "p", "RowKey": row(), **{f"p{i}": i for i in range(253)}})) == (
        400, "TooManyProperties")
