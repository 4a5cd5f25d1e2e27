"""Contract: the sandbox's App Service configuration (sandbox/arm.py) as Azure documents it.

* `PUT .../config/appsettings` replaces the whole set and takes no ETag: two writers that each
  read, merge and write lose one another's settings (the last writer wins);
* adding, removing or editing app settings restarts the app: the sandbox counts one restart per
  PUT that changes a slot's settings, none for a PUT that changes nothing;
* `config/slotConfigNames` (site level) holds the slot-sticky names, replaced as a whole by PUT; a
  change restarts the site.

Every test works on a site of its own (created through the control API), so restart counts are
exact.
"""

from __future__ import annotations

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.mgmt.web import WebSiteManagementClient
from azure.mgmt.web.models import SlotConfigNamesResource, StringDictionary

from sandbox.client import SandboxClient
from tests.sandbox.helpers import unique

READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"


def web(sandbox: SandboxClient, identity: str = "admin") -> WebSiteManagementClient:
    return WebSiteManagementClient(sandbox.credential(identity), sandbox.subscription_id, base_url=sandbox.arm_endpoint)


def new_site(sandbox: SandboxClient) -> str:
    name = unique("site")
    sandbox.create_resource("site", name)
    return name


def test_app_settings_put_restarts_only_when_it_changes_something(sandbox: SandboxClient) -> None:
    site, group = new_site(sandbox), sandbox.resource_group
    apps = web(sandbox).web_apps
    assert sandbox.site_restarts(site) == {}
    apps.update_application_settings(group, site, StringDictionary(properties={"A": "1", "B": "2"}))
    assert sandbox.site_restarts(site) == {"production": 1}
    apps.update_application_settings(group, site, StringDictionary(properties={"B": "2", "A": "1"}))  # the same set
    assert sandbox.site_restarts(site) == {"production": 1}
    apps.update_application_settings(group, site, StringDictionary(properties={"A": "1", "B": "3"}))  # an edit
    apps.update_application_settings(group, site, StringDictionary(properties={"A": "1"}))  # a removal
    assert sandbox.site_restarts(site) == {"production": 3}
    apps.update_application_settings_slot(group, site, "staging", StringDictionary(properties={"S": "1"}))
    assert sandbox.site_restarts(site) == {"production": 3, "staging": 1}
    with pytest.raises(RuntimeError, match="404"):
        sandbox.site_restarts(unique("nosite"))


def test_app_settings_are_last_writer_wins_without_etag(sandbox: SandboxClient) -> None:
    """Two read-merge-write cycles that overlap: the second PUT drops what the first one added."""
    site, group = new_site(sandbox), sandbox.resource_group
    apps = web(sandbox).web_apps
    apps.update_application_settings(group, site, StringDictionary(properties={"THEIRS": "kept"}))
    first = dict(apps.list_application_settings(group, site).properties or {})
    second = dict(apps.list_application_settings(group, site).properties or {})
    apps.update_application_settings(group, site, StringDictionary(properties={**first, "FROM_FIRST": "1"}))
    apps.update_application_settings(group, site, StringDictionary(properties={**second, "FROM_SECOND": "2"}))
    assert apps.list_application_settings(group, site).properties == {"THEIRS": "kept", "FROM_SECOND": "2"}
    # There is no ETag to make the PUT conditional: the answer carries none.
    path = sandbox.resource_id("site", site) + "/config/appsettings/list?api-version=2025-05-01"
    token = sandbox.admin_credential().get_token("https://management.azure.com/.default").token
    listed = requests.post(sandbox.arm_endpoint + path, headers={"Authorization": f"Bearer {token}"}, timeout=15)
    assert listed.status_code == 200 and "ETag" not in listed.headers and "etag" not in listed.json()


def test_slot_config_names_are_replaced_as_a_whole_and_a_change_restarts_the_site(sandbox: SandboxClient) -> None:
    site, group = new_site(sandbox), sandbox.resource_group
    apps = web(sandbox).web_apps
    empty = apps.list_slot_configuration_names(group, site)
    assert empty.name == "slotConfigNames" and empty.id == sandbox.resource_id("site", site) + "/config/slotConfigNames"
    assert (empty.app_setting_names, empty.connection_string_names) == ([], [])
    updated = apps.update_slot_configuration_names(group, site, SlotConfigNamesResource(app_setting_names=["DB_PASSWORD", "API_KEY"]))
    assert sorted(updated.app_setting_names or []) == ["API_KEY", "DB_PASSWORD"]
    assert sandbox.site_restarts(site) == {"production": 1}
    apps.update_slot_configuration_names(group, site, SlotConfigNamesResource(app_setting_names=["API_KEY", "DB_PASSWORD"]))
    assert sandbox.site_restarts(site) == {"production": 1}  # the same names: nothing changed
    apps.update_slot_configuration_names(group, site, SlotConfigNamesResource(connection_string_names=["Main"]))
    now = apps.list_slot_configuration_names(group, site)
    assert (now.app_setting_names, now.connection_string_names) == ([], ["Main"])  # replaced, not merged
    assert sandbox.site_restarts(site) == {"production": 2}


def test_slot_config_names_need_config_read_and_write(sandbox: SandboxClient) -> None:
    site, group = new_site(sandbox), sandbox.resource_group
    with pytest.raises(HttpResponseError) as denied:
        web(sandbox, "other").web_apps.list_slot_configuration_names(group, site)
    assert denied.value.status_code == 403 and "'Microsoft.Web/sites/config/read'" in str(denied.value.message)
    scope = sandbox.resource_id("site", site)
    sandbox.grant("other", "Reader", scope)
    client = web(sandbox, "other").web_apps
    assert client.list_slot_configuration_names(group, site).app_setting_names == []  # Reader reads it ...
    with pytest.raises(HttpResponseError) as write:
        client.update_slot_configuration_names(group, site, SlotConfigNamesResource(app_setting_names=["X"]))
    assert write.value.status_code == 403 and "'Microsoft.Web/sites/config/write'" in str(write.value.message)  # ... not writes it
    assert sandbox.site_restarts(site) == {}
