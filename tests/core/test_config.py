"""Config: the dsops format's examples validate; bad input gets precise, complete, value-free errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema_rs
import pytest
import yaml

from core.config import parse_config, resolve_cloud
from core.config.cloud import NAMED_CLOUDS
from core.config.durations import parse_duration
from core.config.schema import SCHEMA_FILE, render_schema
from core.errors import ConfigError
from core.plan import plan_env

ROOT = Path(__file__).resolve().parents[2]
ENV = {"DATA_IDENTITY_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
       "APP_IDENTITY_CLIENT_ID": "11111111-2222-3333-4444-666666666666",
       "PRIMARY_SUBSCRIPTION_ID": "sub-primary", "SHARED_SUBSCRIPTION_ID": "sub-shared"}

# The reference page's examples, each as a complete file.
DSOPS_EXAMPLES = {
    "basic": """
        version: 1
        secretStores:
          azure:
            type: azure.managed_identity
        envs:
          production:
            DATABASE_PASSWORD:
              from: {store: azure, vault: prod-keyvault, secret: database-password}
    """,
    "user_assigned": """
        version: 1
        secretStores:
          azure:
            type: azure.managed_identity
            identity:
              type: user_assigned
              resource_id: /subscriptions/SUB_ID/resourcegroups/RG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/my-identity
        envs:
          production:
            SECRET: {from: {store: azure, vault: my-keyvault, secret: app-secret}}
    """,
    "multiple_identities": """
        version: 1
        secretStores:
          azure-default: {type: azure.managed_identity}
          azure-data:
            type: azure.managed_identity
            identity: {type: user_assigned, client_id: "${DATA_IDENTITY_CLIENT_ID}"}
          azure-app:
            type: azure.managed_identity
            identity: {type: user_assigned, client_id: "${APP_IDENTITY_CLIENT_ID}"}
        envs:
          production:
            DATABASE_PASSWORD: {from: {store: azure-data, vault: data-keyvault, secret: db-password}}
            APP_SECRET: {from: {store: azure-app, vault: app-keyvault, secret: api-key}}
    """,
    "services": """
        version: 1
        secretStores:
          azure: {type: azure.managed_identity}
        envs:
          production:
            API_KEY: {from: {store: azure, vault: my-keyvault, secret: api-key}}
            TLS_CERT: {from: {store: azure, vault: my-keyvault, secret: app-certificate, type: certificate}}
            ENCRYPTION_KEY: {from: {store: azure, vault: my-keyvault, secret: data-key, type: key}}
            STORAGE_KEY: {from: {store: azure, resource_type: storage, account: mystorageaccount, key: key1}}
            STORAGE_SAS:
              from: {store: azure, resource_type: storage, account: mystorageaccount, operation: generate_sas, permissions: rl, expiry: 24h}
            SQL_CONNECTION:
              from: {store: azure, resource_type: sql, server: myserver.database.windows.net, database: mydb, format: connection_string}
            COSMOS_KEY: {from: {store: azure, resource_type: cosmosdb, account: mycosmosaccount, key: primary}}
            COSMOS_CONNECTION: {from: {store: azure, resource_type: cosmosdb, account: mycosmosaccount, format: connection_string}}
            AAD_TOKEN: {from: {store: azure, operation: get_token, resource: "https://vault.azure.net"}}
            GRAPH_TOKEN: {from: {store: azure, operation: get_token, resource: "https://graph.microsoft.com"}}
    """,
    "cross_subscription": """
        version: 1
        secretStores:
          azure:
            type: azure.managed_identity
            default_subscription: ${PRIMARY_SUBSCRIPTION_ID}
            resources:
              - type: keyvault
                name: shared-keyvault
                subscription: ${SHARED_SUBSCRIPTION_ID}
        envs:
          production:
            SHARED_SECRET:
              from: {store: azure, vault: shared-keyvault, secret: shared-api-key, subscription: "${SHARED_SUBSCRIPTION_ID}"}
    """,
    "fallback_and_tuning": """
        version: 1
        secretStores:
          azure:
            type: azure.managed_identity
            fallback:
              - type: managed_identity
              - type: azure_cli
              - type: service_principal
                client_id: ${AZURE_CLIENT_ID}
                client_secret: ${AZURE_CLIENT_SECRET}
                tenant_id: ${AZURE_TENANT_ID}
              - type: environment
                client_id_env: AZURE_CLIENT_ID
                client_secret_env: AZURE_CLIENT_SECRET
                tenant_id_env: AZURE_TENANT_ID
            cache:
              token_cache: {enabled: true, buffer: 300}
              secret_cache: {enabled: true, ttl: 600}
            performance: {max_concurrent: 10, batch_size: 25}
            preferred_regions: [eastus, westus, centralus]
            debug: {enabled: true, log_tokens: false, log_requests: true, trace_identity: true}
        envs: {}
    """,
    "legacy_keyvault": """
        version: 1
        secretStores:
          azure:
            type: azure.keyvault
            vault_name: mykeyvault
            auth:
              client_id: ${SP_ID:-11111111-2222-3333-4444-555555555555}
              client_secret: ${SP_SECRET:-not-a-real-secret}
              tenant_id: ${SP_TENANT:-tenant}
        envs:
          production:
            API_KEY: {from: {store: azure, secret: api-key}}
    """,
}


def parse(text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_config(textwrap.dedent(text), "vaultrelay.yaml", environ={**ENV, **(env or {})})


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return [str(p) for p in info.value.problems if p.severity == "error"]


@pytest.mark.parametrize("name", sorted(DSOPS_EXAMPLES))
def test_every_reference_example_validates_and_matches_the_shipped_schema(name: str) -> None:
    loaded = parse(DSOPS_EXAMPLES[name])
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA_FILE.read_text()))
    raw = yaml.safe_load(textwrap.dedent(DSOPS_EXAMPLES[name]))
    assert [e.message for e in validator.iter_errors(raw)] == []
    for env in loaded.config.envs:
        assert plan_env(loaded, env).refs or plan_env(loaded, env).literals


def test_the_shipped_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text() == render_schema(), "run python -m core.config.schema"


def test_the_example_config_validates() -> None:
    loaded = parse((ROOT / "examples" / "vaultrelay.yaml").read_text())
    assert set(loaded.config.envs["production"]) >= {"DATABASE_PASSWORD", "STORAGE_SAS", "UPLOADS_SAS", "SQL_CONNECTION"}


def test_plan_normalizes_each_kind() -> None:
    loaded = parse(DSOPS_EXAMPLES["services"])
    refs = {r.name: r for r in plan_env(loaded, "production").refs}
    assert refs["API_KEY"].kind == "keyvault_secret" and refs["API_KEY"].param("vault") == "my-keyvault"
    assert refs["TLS_CERT"].kind == "keyvault_certificate" and refs["TLS_CERT"].param("format") == "pem"
    assert refs["ENCRYPTION_KEY"].kind == "keyvault_key" and refs["ENCRYPTION_KEY"].param("format") == "jwk"
    assert refs["STORAGE_KEY"].kind == "storage_key" and refs["STORAGE_KEY"].param("key") == "key1"
    sas = refs["STORAGE_SAS"]
    assert (sas.kind, sas.param("sas_type"), sas.param("expiry_s"), sas.param("https_only")) == ("sas", "account", 86400.0, True)
    assert refs["SQL_CONNECTION"].param("format") == "ado"
    assert refs["COSMOS_KEY"].param("key") == "primary" and refs["COSMOS_KEY"].param("format") == "key"
    assert refs["COSMOS_CONNECTION"].param("format") == "connection_string"
    assert refs["AAD_TOKEN"].kind == "token"


def test_identical_references_share_a_dedup_key_whatever_their_names() -> None:
    loaded = parse("""
        version: 1
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          e:
            A: {from: {store: azure, vault: kv-one, secret: s}}
            B: {from: {secret: s, vault: kv-one, store: azure}}
            C: {from: {store: azure, vault: kv-one, secret: s, version: 0123456789abcdef0123456789abcdef}}
    """)
    refs = {r.name: r for r in plan_env(loaded, "e").refs}
    assert refs["A"].dedup_key == refs["B"].dedup_key != refs["C"].dedup_key


def test_every_problem_is_reported_at_once_with_file_line_and_path() -> None:
    found = problems("""
        version: 1
        secretStores:
          azure:
            type: azure.managed_identity
            identiy: {type: system_assigned}
        envs:
          production:
            DATABASE_PASSWORD:
              from:
                store: azure
                vault: prod_keyvault
                secert: database-password
            X:
              from: {store: azrue, vault: abc, secret: x}
    """)
    assert "vaultrelay.yaml:6: secretStores.azure.identiy: unknown key 'identiy'; did you mean 'identity'?" in found
    assert any(p.startswith("vaultrelay.yaml:12: envs.production.DATABASE_PASSWORD.from.vault: invalid value") for p in found)
    assert "vaultrelay.yaml:13: envs.production.DATABASE_PASSWORD.from.secert: unknown key 'secert'; did you mean 'secret'?" in found
    assert "vaultrelay.yaml:15: envs.production.X.from.store: unknown store 'azrue' (did you mean 'azure'?)" in found
    assert len(found) == 4


@pytest.mark.parametrize(("snippet", "expected"), [
    ("{store: azure, resource_type: storage, account: acct1, operation: generate_sas, permissions: rlz, expiry: 1h}",
     "allowed letters for an account SAS"),
    ("{store: azure, resource_type: storage, account: acct1, operation: generate_sas, permissions: r}", "needs expiry"),
    ("{store: azure, resource_type: storage, account: acct1, operation: generate_sas, permissions: r, expiry: soon}",
     "expected a duration like 30m"),
    ("{store: azure, resource_type: storage, account: acct1, operation: generate_sas, permissions: r, expiry: 1h, sas_type: user_delegation}",
     "needs container"),
    ("{store: azure, resource_type: storage, account: acct1, operation: generate_sas, permissions: r, expiry: 1h, sas_type: account, container: c}",
     "an account SAS is account-wide"),
    ("{store: azure, resource_type: storage, account: acct1, operation: generate_sas, permissions: rw, expiry: 1h, table: t}",
     "allowed letters for a service SAS are 'raud'"),
    ("{store: azure, resource_type: storage, account: Bad_Name, key: key1}", "not a valid storage account name"),
    ("{store: azure, resource_type: storage, account: acct1, key: primary}", "is not a storage key"),
    ("{store: azure, resource_type: cosmosdb, account: cosmos1, key: key1}", "is not a Cosmos DB key"),
    ("{store: azure, resource_type: sql, server: s.database.windows.net}", "needs database"),
    ("{store: azure, operation: get_token}", "exactly one of resource or scope"),
    ("{store: azure, operation: get_token, resource: https://x, vault: kv-one}", "vault does not apply to a get_token reference"),
    ("{store: azure, vault: kv-one, secret: s, type: certificate, format: jwk}", "use pem or pfx"),
    ("{store: azure, vault: kv-one}", "needs secret"),
    ("{store: azure, secret: s}", "needs vault"),
    ("{store: azure, resource_type: blob, account: a}", "expected 'storage', 'sql' or 'cosmosdb'"),
])
def test_reference_errors_name_the_reference_and_the_rule(snippet: str, expected: str) -> None:
    found = problems(f"""
        version: 1
        secretStores: {{azure: {{type: azure.managed_identity}}}}
        envs:
          e:
            V:
              from: {snippet}
    """)
    assert len(found) == 1, found
    assert found[0].startswith("vaultrelay.yaml:7: envs.e.V.from"), found
    assert expected in found[0]


@pytest.mark.parametrize(("identity", "expected"), [
    ("{type: user_assigned}", "needs one of client_id, resource_id, object_id"),
    ("{type: user_assigned, client_id: nope}", "client_id must be a GUID"),
    ("{type: user_assigned, resource_id: /subscriptions/x/whatever}", "resource_id must look like"),
    ("{type: system_assigned, client_id: 11111111-2222-3333-4444-555555555555}", "takes no client_id"),
    ("{type: both}", "expected 'system_assigned' or 'user_assigned'"),
])
def test_identity_errors(identity: str, expected: str) -> None:
    found = problems(f"""
        version: 1
        secretStores:
          azure:
            type: azure.managed_identity
            identity: {identity}
    """)
    assert len(found) == 1 and "secretStores.azure.identity" in found[0] and expected in found[0], found


def test_log_tokens_true_is_refused() -> None:
    found = problems("""
        version: 1
        secretStores:
          azure:
            type: azure.managed_identity
            debug: {enabled: true, log_tokens: true}
    """)
    assert found == ["vaultrelay.yaml:6: secretStores.azure.debug.log_tokens: "
                     "log_tokens: true is refused: vaultrelay never logs tokens or secret values"]


def test_interpolation_defaults_escapes_and_unset_variables() -> None:
    loaded = parse("""
        version: 1
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          e:
            A: ${PRIMARY_SUBSCRIPTION_ID}
            B: ${NOT_SET:-fallback-value}
            C: cost $$5 for ${SHARED_SUBSCRIPTION_ID}
    """)
    assert plan_env(loaded, "e").literals == {"A": "sub-primary", "B": "fallback-value", "C": "cost $5 for sub-shared"}
    found = problems("""
        version: 1
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          e:
            A: ${NOT_SET_AT_ALL}
    """)
    assert found == ["vaultrelay.yaml:6: envs.e.A: environment variable ${NOT_SET_AT_ALL} is not set "
                     "(write ${NOT_SET_AT_ALL:-default} for a default)"]


def test_an_unset_variable_in_a_fallback_entry_skips_that_entry_with_a_warning() -> None:
    loaded = parse(DSOPS_EXAMPLES["fallback_and_tuning"], {"AZURE_CLIENT_ID": "", "AZURE_CLIENT_SECRET": "", "AZURE_TENANT_ID": ""})
    assert loaded.skipped_fallbacks == {("azure", 2): "${AZURE_CLIENT_ID}, ${AZURE_CLIENT_SECRET}, ${AZURE_TENANT_ID} are empty"}
    unset = parse_config(textwrap.dedent(DSOPS_EXAMPLES["fallback_and_tuning"]), "vaultrelay.yaml", environ={"AZURE_CLIENT_ID": "x"})
    assert unset.skipped_fallbacks == {("azure", 2): "${AZURE_CLIENT_SECRET}, ${AZURE_TENANT_ID} are not set"}
    messages = [str(w) for w in loaded.warnings]
    assert any("secretStores.azure.fallback[2]: warning: skipped at run time" in m for m in messages)
    assert any("preferred_regions: warning: has no effect" in m for m in messages)


def test_secret_literals_never_appear_in_errors() -> None:
    secret = "Sup3r-S3cret-Value-9f8e"
    with pytest.raises(ConfigError) as info:
        parse(f"""
            version: 1
            secretStores:
              azure:
                type: azure.keyvault
                vault_name: my_bad_vault
                auth: {{client_id: [1], client_secret: {secret}, tenant_id: [t], extra: {secret}}}
        """)
    text = str(info.value) + "".join(str(p) for p in info.value.problems)
    assert secret not in text
    assert "secretStores.azure.auth.extra: unknown key 'extra'" in text
    assert "secretStores.azure.auth.client_id: expected a string, got a list" in text


def test_yaml_syntax_duplicates_and_shape_errors() -> None:
    assert problems("version: 1\nsecretStores: {a: [}\n")[0].startswith("vaultrelay.yaml:2: not valid YAML")
    assert problems("")[0].endswith("the file is empty: expected version: 1, secretStores: and envs:")
    assert problems("- a\n- b\n") == ["vaultrelay.yaml:1: expected a mapping at the top level, got a list"]
    dup = problems("""
        version: 1
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          e:
            A: one
            A: two
    """)
    assert dup == ["vaultrelay.yaml:7: envs.e.A: duplicate key 'A' (first at line 6)"]
    assert problems("version: 2\nsecretStores: {}\n") == ["vaultrelay.yaml:1: version: expected 1"]
    assert "missing required key 'type'" in problems("version: 1\nsecretStores: {azure: {identity: {}}}\n")[0]


def test_clouds_named_custom_and_from_the_environment() -> None:
    assert resolve_cloud(parse("version: 1\ncloud: AzureChinaCloud\nsecretStores: {}\n").config.cloud, {}).vault_dns_suffix == "vault.azure.cn"
    assert resolve_cloud(None, {}) == NAMED_CLOUDS["AzureCloud"]
    assert resolve_cloud(None, {"VAULTRELAY_CLOUD": "AzureUSGovernment"}).arm_endpoint == "https://management.usgovcloudapi.net"
    custom = resolve_cloud(None, {"VAULTRELAY_CLOUD": "custom", "VAULTRELAY_AUTHORITY_HOST": "https://login.x", "VAULTRELAY_ARM_ENDPOINT": "https://arm.x/",
                                  "VAULTRELAY_VAULT_DNS_SUFFIX": "vault.x", "VAULTRELAY_STORAGE_SUFFIX": "core.x"})
    assert (custom.arm_endpoint, custom.cosmos_suffix, custom.is_public) == ("https://arm.x", "documents.core.x", False)
    with pytest.raises(ConfigError, match="needs storage_suffix"):
        resolve_cloud(None, {"VAULTRELAY_CLOUD": "custom", "VAULTRELAY_AUTHORITY_HOST": "https://login.x",
                             "VAULTRELAY_ARM_ENDPOINT": "https://arm.x", "VAULTRELAY_VAULT_DNS_SUFFIX": "vault.x"})
    with pytest.raises(ConfigError, match="unknown cloud 'Mars'"):
        resolve_cloud(None, {"VAULTRELAY_CLOUD": "Mars"})
    found = problems("version: 1\ncloud: {name: AzureCloud, arm_endpoint: https://x}\nsecretStores: {}\n")
    assert "can only be set with name: custom" in found[0]


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("1w", 604800), (15, 15)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "1y", "-5m", "five", True, -1])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_keyvault_targets_never_share_a_secret() -> None:
    """Two variables that name_style maps to one secret (Key Vault names are case-insensitive),
    or two targets writing one secret of a vault, would overwrite each other on every sync."""
    found = problems("""
        version: 1
        secretStores:
          s: {type: azure.managed_identity}
        state: {store: s, account: acct}
        envs:
          prod:
            DB_PASSWORD: a
            DB__PASSWORD: b
            Api_Key: c
            API_KEY: d
          dev:
            API_KEY: e
        targets:
          kv1: {type: keyvault, env: prod, store: s, vault: kv-one, name_style: exact}
          kv2: {type: keyvault, env: prod, store: s, vault: kv-two}
          kv3: {type: keyvault, env: dev, store: s, vault: KV-Two}
          kv4: {type: keyvault, env: dev, store: s, vault: kv-three, mode: bundle, secret_name: api-key}
          kv5: {type: keyvault, env: dev, store: s, vault: kv-three}
          kv6: {type: keyvault, env: dev, store: s, vault: kv-four, prefix: %s}
          ok: {type: keyvault, env: dev, store: s, vault: kv-five, prefix: dev-}
    """ % ("p" * 124))
    assert found == [
        "vaultrelay.yaml:15: targets.kv1.name_style: variables API_KEY, Api_Key of env 'prod' all become secret 'API-KEY' "
        "(name_style exact); rename one (Key Vault names ignore case)",
        "vaultrelay.yaml:16: targets.kv2.name_style: variables API_KEY, Api_Key of env 'prod' all become secret 'api-key' "
        "(name_style kebab); rename one (Key Vault names ignore case)",
        "vaultrelay.yaml:16: targets.kv2.name_style: variables DB_PASSWORD, DB__PASSWORD of env 'prod' all become secret "
        "'db-password' (name_style kebab); rename one or use name_style: exact",
        "vaultrelay.yaml:17: targets.kv3: writes secret 'api-key' of vault KV-Two, which target 'kv2' writes too",
        "vaultrelay.yaml:19: targets.kv5: writes secret 'api-key' of vault kv-three, which target 'kv4' writes too",
        "vaultrelay.yaml:20: targets.kv6: secret name '" + "p" * 124 + "api-key' for API_KEY is not a Key Vault secret name "
        "(1-127 letters, digits and hyphens)",
    ]


# ---- issue 18: the reference page as written, YAML 1.2 literals, every problem at its own line ----
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "dsops"
REFERENCE_ENV = {**ENV, "AZURE_CLIENT_ID": "11111111-2222-3333-4444-777777777777", "AZURE_CLIENT_SECRET": "not-a-secret",
                 "AZURE_TENANT_ID": "tenant"}


@pytest.mark.parametrize("fixture", sorted(p.name for p in (FIXTURES / "full").glob("*.yaml")))
def test_every_full_example_of_the_reference_page_loads_as_written(fixture: str) -> None:
    """Copied verbatim from the page: most have no `version:` (accepted as version 1), one shows
    client_id and "or" resource_id together (client_id is used, with a warning)."""
    text = (FIXTURES / "full" / fixture).read_text()
    loaded = parse_config(text, fixture, environ=REFERENCE_ENV)
    assert loaded.config.version == 1
    errors = [w for w in loaded.warnings if w.severity == "error"]
    assert errors == []
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA_FILE.read_text()))
    assert [e.message for e in validator.iter_errors(yaml.safe_load(text))] == []


def test_the_full_examples_are_all_there_and_most_have_no_version() -> None:
    full = sorted((FIXTURES / "full").glob("*.yaml"))
    assert len(full) == 15
    assert sum("version:" not in p.read_text() for p in full) == 14


def test_the_user_assigned_example_uses_client_id_and_warns_about_resource_id() -> None:
    loaded = parse_config((FIXTURES / "full" / "03-user-assigned-identity.yaml").read_text(), "f.yaml", environ={})
    store = loaded.config.secretStores["azure"]
    assert store.identity.selectors[0] == "client_id"  # type: ignore[union-attr]
    assert [str(w) for w in loaded.warnings] == [
        "f.yaml:9: secretStores.azure.identity: warning: client_id and resource_id are both given: client_id is used and "
        "resource_id ignored (keep one)"]
    from core.config.cloud import NAMED_CLOUDS
    from core.identity import credential_spec

    spec = credential_spec(store, NAMED_CLOUDS["AzureCloud"], environ={})
    assert "client_id=12345678-1234-1234-1234-123456789012" in spec.description


@pytest.mark.parametrize(("fixture", "expected"), [
    ("05-azure-key-vault.yaml", "unknown key 'API_KEY': it looks like a variable, which belongs under envs.<env>:"),
    ("06-azure-storage.yaml", "unknown key 'STORAGE_SAS': it looks like a variable"),
    ("07-azure-sql-database.yaml", "unknown key 'SQL_CONNECTION': it looks like a variable"),
    ("11-token-management.yaml", "unknown key 'GRAPH_TOKEN': it looks like a variable"),
    ("20-cross-service-access.yaml", "missing required key 'secretStores'"),
    ("23-from-connection-strings.yaml", "duplicate key 'DATABASE_CONNECTION'"),
    ("09-create-pod-identity.yaml", "unknown key 'spec'; expected one of: access, api, cloud, envs"),
])
def test_fragments_of_the_reference_page_get_a_clear_error(fixture: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config((FIXTURES / "fragment" / fixture).read_text(), fixture, environ={})
    messages = [str(p) for p in info.value.problems]
    assert any(expected in m for m in messages), messages
    assert all(m.startswith(f"{fixture}:") for m in messages)


def test_a_missing_version_is_version_1_and_a_wrong_one_is_still_refused() -> None:
    assert parse("secretStores: {azure: {type: azure.managed_identity}}").config.version == 1
    assert problems("version: 2\nsecretStores: {}\n") == ["vaultrelay.yaml:1: version: expected 1"]


def test_literal_values_are_the_text_written_not_yaml_1_1_values() -> None:
    loaded = parse("""
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          e:
            NO: no
            ON: on
            HEX: 0x1F
            OCTAL: 017
            VERSION: 1.10
            TIME: 1:30
            DATE: 2024-01-01
            EXP: 1e3
            TRUE_AS_WRITTEN: True
            QUOTED: "1.10"
            HUGE: %s
        targets: {}
    """ % ("9" * 100_001))
    values = {k: v.value for k, v in loaded.config.envs["e"].items()}
    assert values == {"NO": "no", "ON": "on", "HEX": "0x1F", "OCTAL": "017", "VERSION": "1.10", "TIME": "1:30", "DATE": "2024-01-01",
                      "EXP": "1e3", "TRUE_AS_WRITTEN": "True", "QUOTED": "1.10", "HUGE": "9" * 100_001}


def test_typed_keys_still_take_numbers_and_booleans_and_keep_their_lines() -> None:
    loaded = parse("""
        secretStores:
          azure:
            type: azure.managed_identity
            performance: {max_concurrent: 0x10, batch_size: 10}
            cache: {secret_cache: {enabled: yes, ttl: 60}}
    """)
    store = loaded.config.secretStores["azure"]
    assert store.performance.max_concurrent == 16 and store.cache.secret_cache.enabled is True
    found = problems("""
        secretStores:
          azure:
            type: azure.managed_identity
            performance:
              max_concurrent: %s
    """ % ("9" * 100_001))
    assert found == ["vaultrelay.yaml:6: secretStores.azure.performance.max_concurrent: expected a whole number, got a number of 100,001 digits"]
    assert problems("secretStores: {azure: {type: azure.managed_identity, cache: {token_cache: {buffer: 1e400}}}}")[0].endswith(
        "secretStores.azure.cache.token_cache.buffer: a duration must be at most 100 years (36500d)")


def test_interpolation_nests_defaults_and_tells_empty_from_unset() -> None:
    env = {"HOME_DIR": "/home/me", "EMPTY": ""}
    loaded = parse("""
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          e:
            A: ${NOT_SET:-${HOME_DIR}}
            B: ${NOT_SET:-x${ALSO_NOT:-y}z}
            C: ${EMPTY:-${HOME_DIR}/cache}
            D: $${HOME_DIR}
    """, env)
    assert {k: v.value for k, v in loaded.config.envs["e"].items()} == {"A": "/home/me", "B": "xyz", "C": "/home/me/cache", "D": "${HOME_DIR}"}
    found = problems("""
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          e:
            A: ${EMPTY}
            B: ${NOT_SET_AT_ALL}
            C: ${NOT_SET:-${EMPTY}}
    """, env)
    assert found == [
        "vaultrelay.yaml:5: envs.e.A: environment variable ${EMPTY} is empty (write ${EMPTY:-default} for a default)",
        "vaultrelay.yaml:6: envs.e.B: environment variable ${NOT_SET_AT_ALL} is not set (write ${NOT_SET_AT_ALL:-default} for a default)",
        "vaultrelay.yaml:7: envs.e.C: environment variable ${EMPTY} is empty (write ${EMPTY:-default} for a default)",
    ]


def test_every_problem_of_a_reference_is_reported_each_at_its_own_line() -> None:
    found = problems("""
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          e:
            SAS:
              from:
                store: azure
                resource_type: storage
                account: Bad_Acct
                operation: generate_sas
                expiry: 0
                vault: kv-one
                container: c
                table: t
            OK: fine
            1BAD: x
            ALSO-BAD: y
    """)
    assert found == [
        "vaultrelay.yaml:6: envs.e.SAS.from: a SAS reference needs permissions",
        "vaultrelay.yaml:9: envs.e.SAS.from.account: account 'Bad_Acct' is not a valid storage account name (3-24 lowercase letters and digits)",
        "vaultrelay.yaml:11: envs.e.SAS.from.expiry: expiry must be longer than 0 (a SAS minted with it would already be expired), e.g. 1h, 24h, 7d",
        "vaultrelay.yaml:12: envs.e.SAS.from.vault: vault does not apply to a SAS reference (allowed: account, blob, container, expiry, "
        "https_only, ip, operation, permissions, resource_group, resource_type, resource_types, rotate_before, sas_type, services, "
        "subscription, table)",
        "vaultrelay.yaml:14: envs.e.SAS.from.table: table cannot be combined with container/blob",
        "vaultrelay.yaml:16: envs.e.1BAD: '1BAD' is not a valid environment variable name (letters, digits and _, not starting with a digit)",
        "vaultrelay.yaml:17: envs.e.ALSO-BAD: 'ALSO-BAD' is not a valid environment variable name (letters, digits and _, not starting with a digit)",
    ]
    assert not any("Assertion" in p for p in found)


def test_a_sas_without_permissions_says_so() -> None:
    found = problems("""
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          e:
            SAS: {from: {store: azure, resource_type: storage, account: acct1, operation: generate_sas, expiry: 1h}}
    """)
    assert found == ["vaultrelay.yaml:5: envs.e.SAS.from: a SAS reference needs permissions"]


def test_sas_lifetimes_beyond_a_cap_are_warnings_with_the_line() -> None:
    loaded = parse("""
        secretStores:
          azure: {type: azure.managed_identity}
          short: {type: azure.managed_identity, max_sas_expiry: 1d}
        envs:
          e:
            DELEGATED:
              from: {store: azure, resource_type: storage, account: acct1, operation: generate_sas, permissions: r, container: c,
                     expiry: 30d}
            ACCOUNT:
              from: {store: short, resource_type: storage, account: acct1, operation: generate_sas, permissions: r,
                     expiry: 2d}
            FINE: {from: {store: azure, resource_type: storage, account: acct1, operation: generate_sas, permissions: r, expiry: 24h}}
    """)
    assert [str(w) for w in loaded.warnings] == [
        "vaultrelay.yaml:9: envs.e.DELEGATED.from.expiry: warning: expiry 30d is capped to 1w: store 'azure' caps SAS lifetimes "
        "at max_sas_expiry 1w",
        "vaultrelay.yaml:12: envs.e.ACCOUNT.from.expiry: warning: expiry 2d is capped to 1d: store 'short' caps SAS lifetimes "
        "at max_sas_expiry 1d",
        "vaultrelay.yaml:9: envs.e.DELEGATED.from.expiry: warning: a user delegation SAS lasts at most 6d 23h (its delegation key "
        "ends an hour inside Azure's 7-day bound, which the service measures by its own clock): it will be capped",
    ]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "9" * 400, 10**12])
def test_durations_beyond_any_use_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="at most 100 years"):
        parse_duration(bad)


def test_merge_keys_share_variables_and_written_keys_override_them() -> None:
    loaded = parse("""
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          base: &common
            VERSION: 1.10
            FLAG: no
          e:
            <<: *common
            FLAG: yes
    """)
    assert {k: v.value for k, v in loaded.config.envs["e"].items()} == {"VERSION": "1.10", "FLAG": "yes"}
    assert loaded.line_of(("envs", "e", "FLAG")) == 9 and loaded.line_of(("envs", "e", "VERSION")) == 5


def test_a_string_key_takes_the_text_written_when_yaml_reads_a_number() -> None:
    """A Key Vault version of hex digits such as `0123e456...` is a float to YAML 1.2; keys that take
    a string get the text written (and a complex key is a clean YAML error, not a crash)."""
    version = "0123456789" * 3 + "e1"
    loaded = parse(f"""
        secretStores: {{azure: {{type: azure.managed_identity}}}}
        envs:
          e:
            A: {{from: {{store: azure, vault: kv-one, secret: 2024, version: {version}}}}}
    """)
    ref = loaded.config.envs["e"]["A"].from_
    assert ref is not None and (ref.version, ref.secret) == (version, "2024")
    assert problems("? [k]\n: v\n")[0].startswith("vaultrelay.yaml:1: not valid YAML")
def test_tagged_secrets_need_an_allow_list_of_accounts() -> None:
    """rotation.tagged_secrets: each entry lists the accounts its secrets may name (nothing is
    rotated without one); entries are exact resource ids or type/name/resource_group."""
    sub = "/subscriptions/s1/resourceGroups/rg/providers"
    found = problems(f"""
        version: 1
        secretStores:
          s: {{type: azure.managed_identity}}
        state: {{store: s, account: acct}}
        rotation:
          tagged_secrets:
            - {{vault: kv-one, store: s}}
            - vault: kv-two
              store: s
              accounts: []
            - vault: kv-three
              store: s
              accounts:
                - {sub}/Microsoft.KeyVault/vaults/kv-one
                - {sub}/Microsoft.Storage/storageAccounts/acct/blobServices/default
                - {{type: storage, name: acct}}
                - {{id: {sub}/Microsoft.Sql/servers/q, name: q}}
                - {{type: cosmosdb, name: rg/c, resource_group: rg}}
                - {{type: sql, name: q, resource_group: rg, secrets: []}}
                - {{type: sql, name: q, resource_group: rg, secrets: [not_a_name]}}
    """)
    assert found == [
        "vaultrelay.yaml:8: rotation.tagged_secrets[0].accounts: missing required key 'accounts': list the storage accounts, "
        "Cosmos DB accounts and SQL servers this vault's secrets may name in ProviderAddress (resource ids, or "
        "type/name/resource_group); nothing is rotated without it (docs/config.md)",
        "vaultrelay.yaml:11: rotation.tagged_secrets[1].accounts: List should have at least 1 item after validation, not 0",
        f"vaultrelay.yaml:15: rotation.tagged_secrets[2].accounts[0]: '{sub}/Microsoft.KeyVault/vaults/kv-one' is not the ARM "
        "resource id of a storage account, Cosmos DB account or SQL server (/subscriptions/<id>/resourceGroups/<group>/providers/"
        "Microsoft.Storage/storageAccounts/<name>)",
        f"vaultrelay.yaml:16: rotation.tagged_secrets[2].accounts[1]: '{sub}/Microsoft.Storage/storageAccounts/acct/blobServices/"
        "default' is not the ARM resource id of a storage account, Cosmos DB account or SQL server (/subscriptions/<id>/"
        "resourceGroups/<group>/providers/Microsoft.Storage/storageAccounts/<name>)",
        "vaultrelay.yaml:17: rotation.tagged_secrets[2].accounts[2]: an accounts entry is a resource id or has type, name and "
        "resource_group (missing resource_group)",
        "vaultrelay.yaml:18: rotation.tagged_secrets[2].accounts[3]: give either id or type/name/resource_group, not both (got id and name)",
        "vaultrelay.yaml:19: rotation.tagged_secrets[2].accounts[4]: name 'rg/c' is a name, not a path",
        "vaultrelay.yaml:20: rotation.tagged_secrets[2].accounts[5].secrets: List should have at least 1 item after validation, not 0",
        "vaultrelay.yaml:21: rotation.tagged_secrets[2].accounts[6].secrets[0]: invalid value: " + found[-1].split("invalid value: ", 1)[1],
    ]


def test_accounts_entries_match_whole_resource_ids_only() -> None:
    from core.config.model import RotatedAccount

    by_id = RotatedAccount.model_validate("/subscriptions/S1/resourceGroups/RG/providers/microsoft.storage/storageaccounts/Acct")
    assert by_id.resource_key(None) == ("storage", "s1", "rg", "acct")
    by_name = RotatedAccount.model_validate({"type": "cosmosdb", "name": "Cos", "resource_group": "rg", "secrets": ["Key-A"]})
    assert by_name.resource_key("S2") == ("cosmos", "s2", "rg", "cos")
    assert by_name.resource_key(None) is None  # no subscription known: matches nothing
    assert RotatedAccount.model_validate({"type": "sql", "name": "q", "resource_group": "rg", "subscription": "s3"}).resource_key("s2") == (
        "sql", "s3", "rg", "q")
    assert by_name.admits("key-a") and not by_name.admits("key-b") and by_id.admits("anything")


def test_the_state_vault_is_never_handed_to_others() -> None:
    """state.vault keeps user delegation keys, the fingerprint key and minted SAS tokens: validate
    refuses it as a Key Vault target's vault (either mode), as a vault envs read (through either
    store type) or as a tagged-rotation vault; and the fingerprint key may not sit in a vault a
    target writes, nor be read by an env."""
    found = problems("""
        version: 1
        secretStores:
          azure: {type: azure.managed_identity}
          kvs: {type: azure.keyvault, vault_name: kv-state, auth: {client_id: a, client_secret: b, tenant_id: c}}
        envs:
          app:
            A: {from: {store: azure, vault: KV-STATE, secret: vr-udk-x}}
            B: {from: {store: kvs, secret: y}}
            C: {from: {store: azure, vault: kv-keys, secret: fp}}
            D: {from: {store: azure, vault: kv-source, secret: fine}}
        targets:
          bundle: {type: keyvault, env: app, store: azure, vault: kv-state, mode: bundle}
          each: {type: keyvault, env: app, store: azure, vault: Kv-State, prefix: x-}
          keys: {type: keyvault, env: app, store: azure, vault: kv-keys, prefix: y-}
          ok: {type: keyvault, env: app, store: azure, vault: kv-out}
        rotation:
          tagged_secrets:
            - {vault: kv-state, store: azure, accounts: [/subscriptions/s/resourceGroups/r/providers/Microsoft.Sql/servers/q]}
        state:
          store: azure
          account: acct
          vault: kv-state
          fingerprint_key: {from: {store: azure, vault: kv-keys, secret: fp}}
    """)
    state = "user delegation keys, the fingerprint key, minted SAS tokens"
    reading = ("which keeps user delegation keys, the fingerprint key and minted SAS tokens: an env reading it hands them to whoever "
               "fetches the env or reads its targets; keep state in a vault of its own")
    own = "keep state in a vault of its own, readable by vaultrelay's identity only"
    assert found == [
        f"vaultrelay.yaml:8: envs.app.A.from.vault: vault KV-STATE is state.vault, {reading}",
        f"vaultrelay.yaml:9: envs.app.B.from.vault: vault kv-state is state.vault, {reading}",
        "vaultrelay.yaml:10: envs.app.C.from.vault: this is the fingerprint key (state.fingerprint_key): an env must not read it",
        f"vaultrelay.yaml:13: targets.bundle.vault: vault kv-state is state.vault ({state}) and a Key Vault target's vault, which the "
        f"target's readers may read: {own}",
        f"vaultrelay.yaml:14: targets.each.vault: vault Kv-State is state.vault ({state}) and a Key Vault target's vault, which the "
        f"target's readers may read: {own}",
        f"vaultrelay.yaml:19: rotation.tagged_secrets[0].vault: vault kv-state is state.vault ({state}) and a vault under tagged rotation, "
        f"whose secrets' writers and consumers work there: {own}",
        "vaultrelay.yaml:24: state.fingerprint_key.from.vault: the fingerprint key is kept in vault kv-keys, which targets.keys.vault "
        "exposes: its readers could test guesses against the fingerprint tags; keep it in state.vault or another vault only vaultrelay reads",
    ]
    # The fingerprint key in the state vault, and a target elsewhere: fine.
    parse("""
        version: 1
        secretStores:
          azure: {type: azure.managed_identity}
        envs:
          app: {A: {from: {store: azure, vault: kv-source, secret: a}}}
        targets:
          out: {type: keyvault, env: app, store: azure, vault: kv-out}
        state: {store: azure, account: acct, vault: kv-state, fingerprint_key: {from: {store: azure, vault: kv-state, secret: fp}}}
    """)
