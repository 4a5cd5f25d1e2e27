"""The shared HTTP session reads the environment once but honours it as requests would."""

from __future__ import annotations

import pytest

from core.azure.clients import _environment_once_session


def test_ca_bundle_variable_is_used_for_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/bundle.pem")
    session = _environment_once_session()
    assert session.merge_environment_settings("https://v.example", {}, None, True, None)["verify"] == "/etc/bundle.pem"
    # An explicit path or verify=False is the caller's choice and wins.
    assert session.merge_environment_settings("https://v.example", {}, None, "/other.pem", None)["verify"] == "/other.pem"
    assert session.merge_environment_settings("https://v.example", {}, None, False, None)["verify"] is False


def test_proxies_and_no_proxy_are_honoured_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    session = _environment_once_session()
    for _ in range(2):  # the second call is answered from the per-origin cache
        proxies = session.merge_environment_settings("https://kv.example/secrets/a", {}, None, True, None)["proxies"]
        assert proxies.get("https") == "http://proxy.internal:3128"
        assert "https" not in session.merge_environment_settings("https://direct.example/x", {}, None, True, None)["proxies"]
    assert session.merge_environment_settings("https://kv.example", {"no_proxy": "kv.example"}, None, True, None)["proxies"].get("https") is None
    assert session.trust_env is False  # so requests itself never re-reads the environment (or ~/.netrc)
