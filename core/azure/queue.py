"""The work queue: one Storage queue in the Function app's own storage account, and its poison queue.

Messages are base64 text, as the Functions queue extension (5.x) reads and writes them by
default (`extensions.queues.messageEncoding` is `base64` unless host.json says otherwise): a
message vaultrelay enqueues is what the queue trigger decodes, and a message the host moves to
`<queue>-poison` after `maxDequeueCount` failed deliveries is what `vaultrelay worker` reads.

Where the queue is follows the identity-based connection the host uses for `AzureWebJobsStorage`:
`AzureWebJobsStorage__queueServiceUri`, else `AzureWebJobsStorage__accountName` (the queue
endpoint of that account in the configured cloud).  The credential is passed in (the state
store's identity, the app's managed identity in Azure); no key or connection string is read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from core.azure.protocols import QueueClientLike

log = logging.getLogger("vaultrelay.queue")

DEFAULT_QUEUE = "vaultrelay-work"
QUEUE_SETTING = "VAULTRELAY_WORK_QUEUE"
# Azure's limit on one message (base64 text included): Put Message, "up to 64 KiB in size".
MAX_MESSAGE_BYTES = 64 * 1024
# Get Messages returns at most 32 messages; a visibility timeout is at most 7 days.
MAX_RECEIVE = 32


class QueueNotConfigured(Exception):
    """No work queue is configured; the message names the settings to set."""


@dataclass(frozen=True)
class Delivery:
    """One received message: its text, how many times it was delivered, and what deletes it."""

    id: str
    pop_receipt: str
    dequeue_count: int
    text: str


class WorkQueue(Protocol):
    """The calls vaultrelay makes on its work queue."""

    name: str

    def ensure(self) -> None: ...
    def send(self, text: str, *, delay_s: float = 0.0) -> None: ...
    def receive(self, count: int, visibility_timeout_s: int) -> list[Delivery]: ...
    def delete(self, delivery: Delivery) -> None: ...
    def release(self, delivery: Delivery, delay_s: float) -> None: ...
    def send_poison(self, text: str) -> None: ...
    def approximate_length(self) -> int: ...
    def peek_poison(self, count: int = MAX_RECEIVE) -> list[str]: ...


def queue_name(environ: Mapping[str, str]) -> str:
    """The work queue's name (`VAULTRELAY_WORK_QUEUE`, default `vaultrelay-work`)."""
    return (environ.get(QUEUE_SETTING) or DEFAULT_QUEUE).strip()


def queue_service_url(environ: Mapping[str, str], storage_url: Any) -> str:
    """The queue service endpoint of the Function app's storage.

    Raises:
        QueueNotConfigured: neither `AzureWebJobsStorage__queueServiceUri` nor `__accountName` is set.
    """
    uri = (environ.get("AzureWebJobsStorage__queueServiceUri") or "").strip()
    if uri:
        return uri.rstrip("/")
    account = (environ.get("AzureWebJobsStorage__accountName") or "").strip()
    if account:
        return str(storage_url(account, "queue"))
    raise QueueNotConfigured("no work queue: set AzureWebJobsStorage__queueServiceUri (or AzureWebJobsStorage__accountName), "
                             "the identity-based connection of the Function app's storage")


class StorageWorkQueue:
    """`WorkQueue` over azure-storage-queue clients built by the client factory."""

    def __init__(self, client: QueueClientLike, poison: QueueClientLike) -> None:
        self._client = client
        self._poison = poison
        self.name = str(client.queue_name)

    def ensure(self) -> None:
        """Create both queues if missing.  In Azure, infra creates them and the identity has only
        message roles on them: a 403 here is expected and harmless."""
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        for client in (self._client, self._poison):
            try:
                client.create_queue()
            except ResourceExistsError:
                pass
            except HttpResponseError as exc:
                if exc.status_code != 403:
                    raise
                log.debug("queue %s not created (no role to create queues; infra creates it)", client.queue_name)

    def send(self, text: str, *, delay_s: float = 0.0) -> None:
        self._client.send_message(text, visibility_timeout=max(0, round(delay_s)) or None)

    def receive(self, count: int, visibility_timeout_s: int) -> list[Delivery]:
        pages = self._client.receive_messages(messages_per_page=max(1, min(count, MAX_RECEIVE)),
                                              max_messages=max(1, min(count, MAX_RECEIVE)),
                                              visibility_timeout=visibility_timeout_s)
        return [Delivery(m.id, m.pop_receipt, int(m.dequeue_count or 1), str(m.content)) for m in pages]

    def delete(self, delivery: Delivery) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._client.delete_message(delivery.id, delivery.pop_receipt)
        except ResourceNotFoundError:  # its visibility ran out and another consumer holds it now
            log.info("message %s was taken over before it was deleted", delivery.id)

    def release(self, delivery: Delivery, delay_s: float) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._client.update_message(delivery.id, delivery.pop_receipt, visibility_timeout=max(0, round(delay_s)))
        except ResourceNotFoundError:
            log.info("message %s was taken over before it was released", delivery.id)

    def send_poison(self, text: str) -> None:
        self._poison.send_message(text)

    def approximate_length(self) -> int:
        return int(self._client.get_queue_properties().approximate_message_count or 0)

    def peek_poison(self, count: int = MAX_RECEIVE) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return [str(m.content) for m in self._poison.peek_messages(max_messages=max(1, min(count, MAX_RECEIVE)))]
        except ResourceNotFoundError:
            return []
