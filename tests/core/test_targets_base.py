"""TargetContext: what every writer gets (pure, no network)."""

from __future__ import annotations

import pytest

from core.azure.clients import AzureClients
from core.config.cloud import NAMED_CLOUDS
from core.state.fingerprints import Fingerprinter
from core.targets.base import TargetContext, TargetError


def context(subscription: str | None) -> TargetContext:
    return TargetContext(name="site-target", clients=AzureClients(NAMED_CLOUDS["AzureCloud"]), credential=None,
                         fingerprinter=Fingerprinter(b"k" * 32), subscription=subscription)


def test_a_targets_own_subscription_wins_over_the_stores_default() -> None:
    assert context("store-sub").subscription_for("target-sub", "site app1") == "target-sub"
    assert context("store-sub").subscription_for(None, "site app1") == "store-sub"


def test_no_subscription_at_all_names_the_target_and_the_resource() -> None:
    with pytest.raises(TargetError, match=r"^target site-target: no subscription known for container app app1$"):
        context(None).subscription_for(None, "container app app1")
