"""Reference planning, pure (no sandbox): config -> plan.  Every variable is either a literal kept
as written or one planned reference with its path; identical references plan to the same
deduplication key whatever their names; a plan is deterministic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import parse_config
from core.errors import NotFoundError
from core.plan import plan_env
from tests.configs import config_yaml, ref, secret_ref

# One reference of every planned kind, and the kind it plans to (keyed by source kind).
REFERENCES = {
    "keyvault_secret": secret_ref("db-password"),
    "keyvault_certificate": secret_ref("tls", type="certificate"),
    "keyvault_key": secret_ref("signing", type="key"),
    "storage_key": ref(resource_type="storage", account="acct", key="key2"),
    "sas": ref(resource_type="storage", account="acct", operation="generate_sas", permissions="rl", expiry="1h"),
    "cosmos": ref(resource_type="cosmosdb", account="cdb", format="connection_string"),
    "sql": ref(resource_type="sql", server="srv", database="db"),
    "token": ref(operation="get_token", resource="https://graph.microsoft.com"),
}

NAME = st.from_regex(r"[A-Z][A-Z0-9_]{0,12}", fullmatch=True)
LITERAL = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=20)


def plan(envs: dict[str, dict[str, object]], env: str = "e") -> object:
    return plan_env(parse_config(config_yaml(envs=envs), "plan.yaml", environ={}), env)


def test_every_kind_plans_to_its_source_kind_with_its_path() -> None:
    planned = plan({"e": {kind.upper(): reference for kind, reference in REFERENCES.items()}})
    assert {r.name: r.kind for r in planned.refs} == {kind.upper(): kind for kind in REFERENCES}  # type: ignore[attr-defined]
    assert {r.name: r.path for r in planned.refs} == {k.upper(): f"envs.e.{k.upper()}.from" for k in REFERENCES}  # type: ignore[attr-defined]
    assert planned.literals == {}  # type: ignore[attr-defined]


def test_the_planned_kinds_are_the_registered_sources() -> None:
    from core.sources.registry import default_registry

    assert sorted(REFERENCES) == default_registry().kinds()


def test_defaults_are_written_into_the_plan() -> None:
    planned = {r.name: r for r in plan({"e": {"S": secret_ref("s"), "C": secret_ref("c", type="certificate"), "K": secret_ref("k", type="key"),
                                               "KEY": ref(resource_type="storage", account="acct"), "Q": ref(resource_type="sql", server="s", database="d")}}).refs}  # type: ignore[attr-defined]
    assert planned["S"].param("version") is None and planned["S"].param("vault") == "kv-source"
    assert (planned["C"].param("format"), planned["K"].param("format")) == ("pem", "jwk")
    assert planned["KEY"].param("key") == "key1"
    assert planned["Q"].param("format") == "ado"


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(NAME, st.one_of(st.sampled_from(sorted(REFERENCES)), LITERAL), min_size=1, max_size=8))
def test_variables_split_into_literals_and_references(variables: dict[str, str]) -> None:
    env = {name: (REFERENCES[v] if v in REFERENCES else v) for name, v in variables.items()}
    planned = plan({"e": env})
    refs = {r.name: r for r in planned.refs}  # type: ignore[attr-defined]
    assert set(refs) | set(planned.literals) == set(variables) and not set(refs) & set(planned.literals)  # type: ignore[attr-defined]
    assert planned.literals == {n: v for n, v in variables.items() if v not in REFERENCES}  # type: ignore[attr-defined]
    assert {n: r.kind for n, r in refs.items()} == {n: v for n, v in variables.items() if v in REFERENCES}
    # identical references share one key, whatever their names; different ones never do
    by_key: dict[object, set[str]] = {}
    for r in refs.values():
        by_key.setdefault(r.dedup_key, set()).add(variables[r.name])
    assert all(len(kinds) == 1 for kinds in by_key.values())
    assert len(by_key) == len({variables[n] for n in refs})
    assert plan({"e": env}) == planned  # deterministic


def test_descriptions_name_the_object_never_a_value() -> None:
    planned = plan({"e": {"SECRET": secret_ref("db-password", version="0123456789abcdef0123456789abcdef"), "SAS": REFERENCES["sas"], "TOKEN": REFERENCES["token"]}})
    assert [r.description for r in planned.refs] == [  # type: ignore[attr-defined]
        "keyvault secret kv-source/db-password@0123456789abcdef0123456789abcdef", "account SAS acct (rl)", "token for https://graph.microsoft.com"]


def test_an_unknown_env_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="no env 'other'"):
        plan({"e": {"A": "x"}}, env="other")
