"""403 hints: the missing role and where, from Key Vault and ARM answers (which name the action and
resource) and from refused storage requests (whose answers name neither).  Against the real SDK
errors, see tests/infra/test_least_privilege_sandbox.py."""

from __future__ import annotations

from types import SimpleNamespace

from core.permissions.matrix import denied_note, denied_role_hint, describe_resource, is_access_denied

SUB = "/subscriptions/0000/resourceGroups/rg/providers"


class Refused(Exception):
    """The attributes azure-core's HttpResponseError carries that the hints read."""

    def __init__(self, message: str, *, method: str = "GET", url: str = "", code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status_code = 403
        self.error_code = code
        self.response = SimpleNamespace(request=SimpleNamespace(method=method, url=url), headers={})


def test_resources_are_named_as_people_say_them() -> None:
    assert describe_resource(f"{SUB}/Microsoft.KeyVault/vaults/kv-a/secrets/x") == "key vault kv-a"
    assert describe_resource(f"{SUB}/Microsoft.Storage/storageAccounts/st/blobServices/default/containers/c") == "blob container st/c"
    assert describe_resource(f"{SUB}/Microsoft.Storage/storageAccounts/st/tableServices/default/tables/t") == "table st/t"
    assert describe_resource(f"{SUB}/Microsoft.Web/sites/web") == "site web"
    assert describe_resource("/subscriptions/0000/resourceGroups/rg") == "resource group rg"
    assert describe_resource("/subscriptions/0000") == "subscription 0000"


def test_key_vault_and_arm_answers_name_action_and_resource() -> None:
    kv = Refused("Caller is not authorized to perform action on resource.\r\n"
                 "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\n"
                 f"Resource: '{SUB.lower()}/microsoft.keyvault/vaults/kv-a/secrets/x'\r\n")
    assert denied_role_hint(kv) == "needs 'Key Vault Secrets User' on key vault kv-a (denied: Microsoft.KeyVault/vaults/secrets/getSecret/action)"
    # What the caller was doing decides: the state vault is written too, so the role is Officer.
    assert denied_role_hint(kv, "state:vault") == (
        "needs 'Key Vault Secrets Officer' on key vault kv-a (denied: Microsoft.KeyVault/vaults/secrets/getSecret/action)")
    arm = Refused("The client 'c' with object id 'o' does not have authorization to perform action "
                  f"'Microsoft.Storage/storageAccounts/listkeys/action' over scope '{SUB}/Microsoft.Storage/storageAccounts/st' or the scope is invalid.")
    assert denied_role_hint(arm) == (
        "needs 'Storage Account Key Operator Service Role' on storage account st (denied: Microsoft.Storage/storageAccounts/listkeys/action)")


def test_storage_answers_are_explained_from_the_request() -> None:
    mismatch = "This request is not authorized to perform this operation using this permission."
    udk = Refused(mismatch, method="POST", url="https://st.blob.core.windows.net/?restype=service&comp=userdelegationkey")
    assert denied_role_hint(udk) == (
        "needs 'Storage Blob Delegator' on storage account st (denied: Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action)")
    read = Refused(mismatch, method="HEAD", url="https://st.blob.core.windows.net/bundles/prod.env")
    # A blob target reads before it writes: the role it needs is the writer's.
    assert denied_note(read, "target:blob") == (
        ": needs 'Storage Blob Data Contributor' on blob container st/bundles (denied: Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read)")
    tables = Refused(mismatch, method="POST", url="https://st.table.core.windows.net/Tables")
    assert denied_note(tables, "state:tables") == (
        ": needs 'Storage Table Data Contributor' on storage account st (denied: Microsoft.Storage/storageAccounts/tableServices/tables/write)")


def test_other_403s_get_no_role_hint() -> None:
    assert not is_access_denied(Refused("Operation get is not allowed on a disabled secret.", code="SecretDisabled"))
    assert not is_access_denied(Refused("Server failed to authenticate the request.", code="AuthenticationFailed"))
    assert denied_note(Refused("signature did not match", code="AuthenticationFailed"), "target:blob") == ""
    assert denied_role_hint(Refused("no detail at all")) is None
