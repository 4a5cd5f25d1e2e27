"""The permissions matrix is consistent with the role definitions it names."""

from __future__ import annotations

import pytest

from core.permissions.matrix import MATRIX, needs_for, role_hint_for_action
from core.permissions.roles import BUILTIN_ROLES, ROLES_BY_NAME


@pytest.mark.parametrize("capability", sorted(MATRIX))
def test_each_named_role_grants_its_action(capability: str) -> None:
    for need in needs_for(capability):
        assert need.role_definition.allows(need.action, data=need.data), (capability, need.role, need.action)


@pytest.mark.parametrize("capability", sorted(MATRIX))
def test_no_need_uses_owner_or_contributor(capability: str) -> None:
    for need in needs_for(capability):
        assert need.role not in {"Owner", "Contributor", "User Access Administrator"}


def test_role_matching_is_case_insensitive_and_respects_not_actions() -> None:
    contributor = ROLES_BY_NAME["contributor"]
    assert contributor.allows("microsoft.storage/storageaccounts/listkeys/action", data=False)
    assert not contributor.allows("Microsoft.Authorization/roleAssignments/write", data=False)
    assert not contributor.allows("Microsoft.KeyVault/vaults/secrets/getSecret/action", data=True)
    reader = BUILTIN_ROLES["acdd72a7-3385-48ef-bd42-f606fba81ae7"]
    assert reader.allows("Microsoft.Storage/storageAccounts/read", data=False)
    assert not reader.allows("Microsoft.Storage/storageAccounts/listkeys/action", data=False)


def test_role_hint_for_a_known_action() -> None:
    assert role_hint_for_action("microsoft.keyvault/vaults/secrets/getsecret/action") == "Key Vault Secrets User"
    assert role_hint_for_action("Microsoft.Nothing/else") is None
