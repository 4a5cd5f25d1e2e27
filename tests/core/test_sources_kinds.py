"""The kind declarations (core/sources/kinds.py) and the registered sources agree: every `from:`
kind plans to registered sources only, every source is planned by exactly one kind and carries
that kind's declared features, and the config keys a kind allows are keys of a `from:` block."""

from __future__ import annotations

import pytest

from core.config.model import Reference
from core.sources.kinds import REFERENCE_KINDS, Features, reference_kind
from core.sources.registry import SourceRegistry, default_registry


def test_every_registered_source_is_planned_by_one_kind_and_carries_its_features() -> None:
    registry = default_registry()
    planned_by = {planned: kind for kind in REFERENCE_KINDS for planned in kind.planned}
    assert sorted(planned_by) == registry.kinds()
    assert sum(len(kind.planned) for kind in REFERENCE_KINDS) == len(planned_by)
    for source_kind, kind in planned_by.items():
        assert registry.features(source_kind) == kind.features, source_kind
        assert registry.get(source_kind).kind == source_kind


def test_declared_keys_are_keys_of_a_reference() -> None:
    fields = {field.alias or name for name, field in Reference.model_fields.items()}
    for kind in REFERENCE_KINDS:
        assert "store" in kind.keys
        assert kind.keys <= fields, kind.name
        assert ("rotate" in kind.keys) == kind.features.rotatable, kind.name  # `rotate:` is what rotatable declares


def test_minted_kinds_are_the_sas_and_token_kinds_and_only_they_verify_or_renew() -> None:
    minted = sorted(kind.name for kind in REFERENCE_KINDS if kind.features.minted)
    assert minted == ["sas", "token"]
    assert all(kind.features.renewal for kind in REFERENCE_KINDS if kind.features.minted)
    assert [kind.name for kind in REFERENCE_KINDS if kind.features.verify_minted] == ["sas"]
    assert sorted(kind.name for kind in REFERENCE_KINDS if kind.features.shares_account_call) == ["cosmos", "sas", "storage_key"]


def test_an_unknown_kind_is_a_key_error_in_the_registry_and_the_declarations() -> None:
    with pytest.raises(KeyError):
        default_registry().features("nosuch")
    with pytest.raises(KeyError):
        reference_kind("nosuch")


def test_a_duplicate_registration_is_refused() -> None:
    registry = SourceRegistry()
    source = default_registry().get("token")
    registry.register(source)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(source)
    assert registry.features("token") == Features(minted=True, renewal="fetched again before it expires")
