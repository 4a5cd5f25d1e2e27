"""App settings: everything the code reads from its environment is set by the template (or is
listed below with the reason it is not), storage is reached by identity, and the state tables
the template creates are the ones core/state/tables.py uses."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.infra.bicep import INFRA, ROOT, body, parse

CODE = [*sorted((ROOT / "core").rglob("*.py")), *sorted((ROOT / "functions").rglob("*.py")), ROOT / "function_app.py"]

# Variables the code reads that the template deliberately does not set.
NOT_SET = {
    # Named clouds are selected by VAULTRELAY_CLOUD (environment().name); these are for custom clouds.
    "VAULTRELAY_AUTHORITY_HOST": "custom clouds only",
    "VAULTRELAY_ARM_ENDPOINT": "custom clouds only",
    "VAULTRELAY_ARM_AUDIENCE": "custom clouds only",
    "VAULTRELAY_VAULT_DNS_SUFFIX": "custom clouds only",
    "VAULTRELAY_STORAGE_SUFFIX": "custom clouds only",
    "VAULTRELAY_COSMOS_SUFFIX": "custom clouds only",
    "VAULTRELAY_SQL_SUFFIX": "custom clouds only",
    # Service-principal fallbacks: never in Azure, where the managed identity is used.
    "AZURE_CLIENT_SECRET": "service-principal fallback (local development)",
    "AZURE_TENANT_ID": "VAULTRELAY_TENANT_ID is set (read first); AZURE_TENANT_ID is for service-principal fallbacks",
    "AZURE_SUBSCRIPTION_ID": "VAULTRELAY_SUBSCRIPTION_ID is set (read first)",
    # Set by the platform.
    "WEBSITE_INSTANCE_ID": "set by App Service / Functions",
    "WEBSITE_AUTH_ENABLED": "set by App Service when its Authentication is on (read-only; api.auth_mode: app_service needs it)",
    # requests' own trust-store variables, honoured by the shared HTTP session; Azure's public CAs need none.
    "REQUESTS_CA_BUNDLE": "custom CA bundle (private clouds, TLS-inspecting proxies)",
    "CURL_CA_BUNDLE": "custom CA bundle (private clouds, TLS-inspecting proxies)",
    # The command line's terminal output (core/terminal.py); the Function app draws no tables.
    "NO_COLOR": "command line only: plain terminal output",
    "TERM": "command line only: TERM=dumb means plain terminal output",
}
# Set only when its parameter is given (a Key Vault reference: the template mints no secrets).
CONDITIONAL = {"VAULTRELAY_FINGERPRINT_KEY": "fingerprintKeySecretUri"}

_READ = [
    re.compile(r"""["']((?:VAULTRELAY|AZURE)_[A-Z0-9_]+)["']"""),  # names as string constants
    re.compile(r"\$((?:VAULTRELAY|AZURE)_[A-Z0-9_]+)"),  # documented defaults: "(default $VAULTRELAY_X)"
    re.compile(r"""environ(?:\.get)?[(\[]\s*["']([A-Z][A-Z0-9_]+)["']"""),  # os.environ.get("X"), environ["X"]
    re.compile(r"""getenv\(\s*["']([A-Z][A-Z0-9_]+)["']"""),
    re.compile(r"%([A-Z][A-Z0-9_]{3,})%"),  # binding expressions such as schedule="%VAULTRELAY_SYNC_SCHEDULE%"
]


def variables_read_by_code() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in CODE:
        text = path.read_text()
        for pattern in _READ:
            for match in pattern.finditer(text):
                found.setdefault(match.group(1), str(path.relative_to(ROOT)))
    return found


def template_settings() -> dict[str, Any]:
    """Every app setting main.bicep can give the Function app (all branches of its union())."""
    main = parse(INFRA / "main.bicep")
    variables = main["variables"]
    function = body(main["modules"]["functionApp"])["params"]
    assert function["appSettings"] == "appSettings"
    settings: dict[str, Any] = {}

    def collect(node: Any) -> None:
        if isinstance(node, str) and node in variables:
            collect(variables[node]["value"])
        elif isinstance(node, dict) and "function" in node:
            for value in node["function"]["parameters"].values():
                collect(value)
        elif isinstance(node, dict) and node.get("operator", {}).get("type") == "conditional":
            operands = node["operator"]["operands"]
            collect(operands["true_value"])
            collect(operands["false_value"])
        elif isinstance(node, dict) and "operator" not in node:
            settings.update(node)

    collect(variables["appSettings"]["value"])
    # The function wrapper passes them through unchanged.
    site = body(parse(INFRA / "app" / "function.bicep")["modules"]["site"])["params"]
    assert site["configs"] == [{"name": "appsettings", "properties": "appSettings"}]
    return settings


def test_every_variable_the_code_reads_is_set_or_explained() -> None:
    read = variables_read_by_code()
    settings = template_settings()
    assert {"VAULTRELAY_CONFIG", "VAULTRELAY_STATE_ACCOUNT", "VAULTRELAY_API_AUDIENCE", "VAULTRELAY_CLOUD"} <= set(read)
    missing = {name: where for name, where in read.items() if name not in settings and name not in NOT_SET}
    assert not missing, f"read by the code but not set by infra/main.bicep (set it, or explain it in NOT_SET): {missing}"


def test_explanations_are_not_stale() -> None:
    read = variables_read_by_code()
    stale = sorted(name for name in [*NOT_SET, *CONDITIONAL] if name not in read)
    assert not stale, f"no longer read by the code: {stale}"
    settings = template_settings()
    assert not set(NOT_SET) & set(settings)


@pytest.mark.parametrize("name", ["VAULTRELAY_CONFIG", "VAULTRELAY_SYNC_SCHEDULE", "VAULTRELAY_STATE_ACCOUNT",
                                  "VAULTRELAY_API_AUDIENCE", "AZURE_CLIENT_ID", "APPLICATIONINSIGHTS_CONNECTION_STRING",
                                  "VAULTRELAY_TENANT_ID", "VAULTRELAY_CLOUD", "VAULTRELAY_SUBSCRIPTION_ID"])
def test_required_settings_are_present(name: str) -> None:
    assert name in template_settings()


def test_settings_defaults() -> None:
    main = parse(INFRA / "main.bicep")
    settings = template_settings()
    assert main["parameters"]["syncSchedule"]["default"] == "0 */15 * * * *"
    assert settings["VAULTRELAY_SYNC_SCHEDULE"] == "syncSchedule"
    assert settings["VAULTRELAY_STATE_ACCOUNT"] == "storageAccountName"
    assert settings["VAULTRELAY_CONFIG"] == "vaultrelayConfig"
    assert settings["VAULTRELAY_API_AUDIENCE"] == "apiAudience"
    assert settings["AZURE_CLIENT_ID"] == "identityClientId"  # only in the user-assigned branch
    assert settings["VAULTRELAY_FINGERPRINT_KEY"].startswith("@Microsoft.KeyVault(SecretUri=")


def test_azure_webjobs_storage_by_identity_only() -> None:
    settings = template_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    for service in ("blob", "queue", "table"):
        assert settings[f"AzureWebJobsStorage__{service}ServiceUri"] == f"https://${{storageAccountName}}.{service}.${{storageSuffix}}"
    assert "AzureWebJobsStorage" not in settings and "AzureWebJobsStorage__accountName" not in settings
    assert not any("key" in str(v).lower() and "keyvault" not in str(v).lower() for v in settings.values())


def test_flex_consumption_settings_are_not_app_settings() -> None:
    """Flex Consumption takes the runtime from functionAppConfig and rejects these settings."""
    settings = template_settings()
    for name in ("FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE", "WEBSITE_CONTENTSHARE",
                 "SCM_DO_BUILD_DURING_DEPLOYMENT"):
        assert name not in settings


def test_telemetry_is_sent_with_the_identity() -> None:
    settings = template_settings()
    auth = settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]["operator"]["operands"]
    assert auth["true_value"] == "ClientId=${identityClientId};Authorization=AAD"
    assert auth["false_value"] == "Authorization=AAD"


def test_state_tables_match_the_state_store() -> None:
    tables = pytest.importorskip("core.state.tables")
    main = parse(INFRA / "main.bicep")
    assert tuple(main["variables"]["stateTables"]["value"]) == tuple(tables.TABLES)
    assert main["parameters"]["stateTablePrefix"]["default"] == "vaultrelay"
