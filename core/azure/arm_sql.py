"""Azure SQL logical servers through ARM: read a server, set its administrator password.

Two calls are all vaultrelay makes, so there is no SDK dependency (azure-mgmt-sql is a 9 MB
package for them): a plain `ARMPipelineClient` (azure-mgmt-core) sends the REST calls of
`Microsoft.Sql/servers` (GET, and PATCH `{"properties": {"administratorLoginPassword": ...}}`,
a long-running operation answered 202 + `Azure-AsyncOperation`), with vaultrelay's retry policy
and transport.  The password travels only in the PATCH body: it is write-only in Azure (never
returned) and no log line, error or exception here carries it (the pipeline has no body-logging
policy).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from core.azure.protocols import PipelineClientLike
from core.values import SecretValue

log = logging.getLogger("vaultrelay.sql")

API_VERSION = "2021-11-01"
"""The first GA api-version with today's server shape; every cloud has it (sovereign clouds lag)."""
POLL_SECONDS = 5.0
"""Wait between polls of the update operation when ARM sends no Retry-After."""
OPERATION_TIMEOUT_S = 300.0


class PasswordRefused(Exception):
    """ARM refused the update outright (a 4xx to the PATCH itself): the server's password is unchanged."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"the server refused the password update: HTTP {status} {code}")
        self.status = status
        self.code = code


class UpdateFailed(Exception):
    """The update operation was accepted but did not succeed (or could not be followed to its
    end): whether the new password is in effect is unknown."""


@dataclass(frozen=True)
class SqlServer:
    """What vaultrelay reads of a server (never a password: Azure does not return it)."""

    id: str
    name: str
    administrator_login: str
    state: str


class SqlServers:
    """`Microsoft.Sql/servers` of one subscription, over an ARM pipeline client."""

    def __init__(self, client: PipelineClientLike, subscription_id: str) -> None:
        self._client = client
        self._subscription_id = subscription_id

    def _url(self, resource_group: str, server: str) -> str:
        return (f"/subscriptions/{self._subscription_id}/resourceGroups/{resource_group}"
                f"/providers/Microsoft.Sql/servers/{server}?api-version={API_VERSION}")

    def _send(self, method: str, url: str, body: bytes | None = None) -> Any:
        from azure.core.rest import HttpRequest

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        return self._client.send_request(HttpRequest(method, self._client.format_url(url), headers=headers, content=body))

    @staticmethod
    def _raise_for(response: Any) -> None:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError, map_error
        from azure.mgmt.core.exceptions import ARMErrorFormat

        map_error(response.status_code, response, {401: ClientAuthenticationError, 404: ResourceNotFoundError})
        raise HttpResponseError(response=response, error_format=ARMErrorFormat)

    def get(self, resource_group: str, server: str) -> SqlServer:
        """The server.

        Raises:
            ResourceNotFoundError: no such server (or resource group).
            HttpResponseError: any other refusal (403 without Microsoft.Sql/servers/read, ...).
        """
        response = self._send("GET", self._url(resource_group, server))
        if response.status_code != 200:
            self._raise_for(response)
        body = response.json()
        properties = body.get("properties") or {}
        return SqlServer(str(body.get("id", "")), str(body.get("name", server)), str(properties.get("administratorLogin") or ""),
                         str(properties.get("state") or ""))

    def set_administrator_password(self, resource_group: str, server: str, password: SecretValue) -> None:
        """Set the server administrator's password (PATCH) and wait for the operation to finish.

        Raises:
            PasswordRefused: a 4xx to the PATCH (no Microsoft.Sql/servers/write, a password the
                policy rejects, another operation in progress): the password is unchanged.
            UpdateFailed: the operation failed, timed out or could not be followed; the new
                password may or may not be in effect.
        """
        from azure.core.exceptions import AzureError

        body = json.dumps({"properties": {"administratorLoginPassword": password.reveal()}}).encode()
        try:
            response = self._send("PATCH", self._url(resource_group, server), body)
        except AzureError as exc:  # connection lost after sending: the outcome is unknown
            raise UpdateFailed(f"the password update of {server} got no answer: {type(exc).__name__}") from None
        finally:
            del body
        status = response.status_code
        if 400 <= status < 500:
            code = ""
            try:
                code = str((response.json().get("error") or {}).get("code") or "")
            except ValueError:
                pass
            raise PasswordRefused(status, code or response.reason or "")
        if status == 200:
            return
        if status not in (201, 202):
            raise UpdateFailed(f"the password update of {server} answered HTTP {status}")
        self._wait(server, response)

    def _wait(self, server: str, response: Any) -> None:
        from azure.core.exceptions import AzureError

        status_url = response.headers.get("Azure-AsyncOperation")
        location = response.headers.get("Location")
        deadline = time.monotonic() + OPERATION_TIMEOUT_S
        while True:
            time.sleep(_retry_after(response))
            if time.monotonic() > deadline:
                raise UpdateFailed(f"the password update of {server} did not finish in {OPERATION_TIMEOUT_S:.0f} s")
            try:
                if status_url:
                    response = self._send("GET", status_url)
                    if response.status_code != 200:
                        raise UpdateFailed(f"the password update of {server}: operation status answered HTTP {response.status_code}")
                    state = str(response.json().get("status") or "")
                    if state.lower() == "succeeded":
                        return
                    if state.lower() in ("failed", "canceled", "cancelled"):
                        raise UpdateFailed(f"the password update of {server} ended {state}")
                elif location:
                    response = self._send("GET", location)
                    if response.status_code in (200, 204):
                        return
                    if response.status_code != 202:
                        raise UpdateFailed(f"the password update of {server}: operation result answered HTTP {response.status_code}")
                else:
                    return  # nothing to follow: ARM took the update as done
            except AzureError as exc:
                raise UpdateFailed(f"the password update of {server} could not be followed: {type(exc).__name__}") from None


def _retry_after(response: Any) -> float:
    try:
        return max(0.0, min(float(response.headers.get("Retry-After", POLL_SECONDS)), 60.0))
    except (TypeError, ValueError):
        return POLL_SECONDS


PASSWORD_LENGTH = 32
PASSWORD_SYMBOLS = "-._~!*"
"""Symbols safe in connection strings (ADO, ODBC, JDBC) and URLs without quoting."""
_PASSWORD_CLASSES = ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz", "0123456789", PASSWORD_SYMBOLS)


def new_password(login: str, length: int = PASSWORD_LENGTH) -> SecretValue:
    """A random password (the `secrets` module) that meets Azure SQL's policy with room to spare:
    `length` characters with at least one upper-case letter, lower-case letter, digit and symbol,
    never containing the login name."""
    import secrets

    alphabet = "".join(_PASSWORD_CLASSES)
    while True:
        chars = [secrets.choice(group) for group in _PASSWORD_CLASSES]
        chars += [secrets.choice(alphabet) for _ in range(max(length, 8) - len(chars))]
        secrets.SystemRandom().shuffle(chars)
        candidate = "".join(chars)
        if not login or login.lower() not in candidate.lower():
            return SecretValue(candidate)
