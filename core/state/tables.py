"""vaultrelay's state in Azure Table Storage: push records, rotation records, processed events,
leases and an append-only audit log.  Rows carry names, versions, times and keyed
fingerprints, never values.

Table and partition design (`<prefix>` is `state.table_prefix`, default `vaultrelay`):

| table | PartitionKey | RowKey | what |
|---|---|---|---|
| `<prefix>pushes` | env | target | last push: fingerprints and the stamp of each write per variable, target ETag or stamp, time, outcome, drift (name -> when found), last error |
| `<prefix>rotations` | kind (`storage`, `cosmos`, `sas`) | name | active key / issued, expires, next rotation, phase of an unfinished rotation |
| `<prefix>events` | day (`YYYYMMDD`) | event id | processed Event Grid events (idempotency) |
| `<prefix>leases` | `lease` | name | owner and expiry of a lease |
| `<prefix>audit` | day (`YYYYMMDD`) | inverted time + id | who, what, why (append only) |

Keys and sizes (Learn, "Understanding the Table service data model"): a PartitionKey or RowKey may
not hold `/ \\ # ?` or control characters and is at most 1 KiB; a string property is at most 64 KiB
(32K UTF-16 characters); an entity has at most 252 properties of its own and 1 MiB in all.  Names
used as keys here (envs, targets, accounts, secrets, event ids) may be anything a config allows, so
every key is escaped reversibly on its way in and unescaped on its way out (`encode_key`): letters,
digits and `- _ . :` stay as they are (every key vaultrelay wrote before stays the same), any other
character becomes `~` and the hex of its UTF-8 bytes, and a key still longer than 255 characters
becomes `~h` and its SHA-256 (the name is then kept in the row).  A string property longer than
32,000 characters is spread over `name`, `name__1`, ... (`name__parts` says how many) and joined
again on read.  A row that would still exceed 1 MiB or 252 properties is refused before it is sent
(`StateTooLarge`, naming the row and its size) instead of answering an opaque 400.

Every update of an existing row is conditional on its ETag (optimistic concurrency); creations
are conditional on absence.  A `Conflict` means another instance got there first: callers re-read.
Any other failure of the table service (5xx after retries, a dropped connection) is a
`StateUnavailable` naming the table and the HTTP status, never a row's content.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from core.azure.protocols import TableClientLike, TableServiceClientLike
from core.errors import VaultRelayError

log = logging.getLogger("vaultrelay.state")

TABLES = ("pushes", "rotations", "events", "leases", "audit")
# Partitions of the rotations table.  They predate the source kinds they resemble: `sas` holds the
# records of every minted value (SAS and access tokens), `storage` and `cosmos` the account key
# rotations, `tagged` the rotations of sample-tagged secrets, `warning` what a rotation reported.
MINTED_RECORDS = "sas"
STORAGE_KEY_RECORDS = "storage"
COSMOS_KEY_RECORDS = "cosmos"
ACCOUNT_KEY_RECORDS = (STORAGE_KEY_RECORDS, COSMOS_KEY_RECORDS)
ROTATION_PARTITIONS = (*ACCOUNT_KEY_RECORDS, MINTED_RECORDS, "tagged", "warning")
# "no more than 15 discrete comparisons are permitted within a $filter string" (Learn: Querying
# tables and entities, Supported query options).
FILTER_COMPARISONS = 15


class Conflict(Exception):
    """A conditional write lost: the row changed (or appeared) since it was read."""


class StateUnavailable(VaultRelayError):
    """The state table could not be read or written (service error or connection failure)."""


class StateTooLarge(StateUnavailable):
    """A row would exceed what Table Storage holds in one entity (1 MiB, 252 properties)."""


def _unavailable(table: str, doing: str, exc: Exception) -> StateUnavailable:
    from core.permissions.matrix import denied_note

    status = getattr(exc, "status_code", None)
    cause = f"HTTP {status}" if status else type(exc).__name__
    return StateUnavailable(f"state table {table} unavailable ({doing}): {cause}{denied_note(exc, 'state:tables')}")


@dataclass
class Row:
    """A state row: its keys, its fields and the ETag it was read with (None = new)."""

    partition: str
    key: str
    fields: dict[str, Any] = field(default_factory=dict)
    etag: str | None = None

    def json(self, name: str, default: Any = None) -> Any:
        raw = self.fields.get(name)
        return json.loads(raw) if isinstance(raw, str) and raw else default

    def set_json(self, name: str, value: Any) -> None:
        self.fields[name] = json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Lease:
    name: str
    owner: str
    expires_at: float
    etag: str


def _utcnow() -> datetime:
    return datetime.now(UTC)


class StateStore:
    """Typed access to the state tables through azure-data-tables clients."""

    def __init__(self, table_service: TableServiceClientLike, prefix: str = "vaultrelay", *, clock: Callable[[], float] = time.time) -> None:
        self._service = table_service
        self.prefix = prefix
        self._clock = clock
        self._tables: dict[str, TableClientLike] = {}
        self._ensured = False
        self.writes = 0  # state writes made by this instance (status, benchmarks)

    # ---- plumbing -----------------------------------------------------------------------
    def table(self, name: str) -> TableClientLike:
        client = self._tables.get(name)
        if client is None:
            client = self._tables[name] = self._service.get_table_client(self.prefix + name)
        return client

    def ensure_tables(self, **options: Any) -> None:
        """Create the tables if they do not exist (idempotent, once per process); `options` are
        per-call SDK options (a retry budget)."""
        if self._ensured:
            return
        from azure.core.exceptions import AzureError, ResourceExistsError

        for name in TABLES:
            try:
                self._service.create_table(self.prefix + name, **options)
            except ResourceExistsError:
                pass
            except AzureError as exc:
                raise _unavailable(self.prefix + name, "creating", exc) from None
        self._ensured = True

    def get(self, table: str, partition: str, key: str, **options: Any) -> Row | None:
        """The row, or None; `options` are per-call SDK options (a retry budget).

        Raises:
            StateUnavailable: the table service failed.
        """
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            entity = self.table(table).get_entity(encode_key(partition), encode_key(key), **options)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _unavailable(self.prefix + table, "reading", exc) from None
        return Row(partition, key, entity_fields(entity), entity.metadata.get("etag"))

    def put(self, table: str, row: Row, **options: Any) -> Row:
        """Create `row` (etag None: must not exist) or replace it (etag: must be unchanged);
        `options` are per-call SDK options (a retry budget).

        Raises:
            Conflict: another writer created or changed the row first.
            StateUnavailable: the table service failed.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        entity = to_entity(self.prefix + table, row)
        client = self.table(table)
        try:
            if row.etag is None:
                result = client.create_entity(entity, **options)
            else:
                result = client.update_entity(entity, mode=UpdateMode.REPLACE, etag=row.etag, match_condition=MatchConditions.IfNotModified,
                                              **options)
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise Conflict(f"{table}/{row.partition}/{row.key} changed concurrently") from exc
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):
                raise Conflict(f"{table}/{row.partition}/{row.key} changed concurrently") from exc
            raise _unavailable(self.prefix + table, "writing", exc) from None
        except AzureError as exc:
            raise _unavailable(self.prefix + table, "writing", exc) from None
        self.writes += 1
        return Row(row.partition, row.key, dict(row.fields), result.get("etag"))

    def delete(self, table: str, row: Row) -> None:
        """Delete `row` if unchanged since read.

        Raises:
            Conflict: the row changed.
            StateUnavailable: the table service failed.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError

        try:
            self.table(table).delete_entity(encode_key(row.partition), encode_key(row.key), etag=row.etag,
                                            match_condition=MatchConditions.IfNotModified)
        except ResourceModifiedError as exc:
            raise Conflict(f"{table}/{row.partition}/{row.key} changed concurrently") from exc
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise _unavailable(self.prefix + table, "deleting", exc) from None
        self.writes += 1

    def query(self, table: str, partition: str | None = None) -> Iterator[Row]:
        """Rows of `partition` (or of the whole table).

        Raises:
            StateUnavailable: the table service failed.
        """
        from azure.core.exceptions import AzureError

        client = self.table(table)
        entities: Iterable[Any] = (
            client.query_entities("PartitionKey eq @pk", parameters={"pk": encode_key(partition)})
            if partition is not None else client.list_entities()
        )
        rows: list[Row] = []
        try:
            for entity in entities:
                rows.append(Row(*entity_keys(entity), entity_fields(entity), entity.metadata.get("etag")))
        except AzureError as exc:
            raise _unavailable(self.prefix + table, "reading", exc) from None
        yield from rows

    def query_partitions(self, table: str, partitions: Iterable[str]) -> list[Row]:
        """Rows of the given partitions: one query per FILTER_COMPARISONS partitions (Table
        Storage allows at most 15 discrete comparisons in one $filter), not a scan of the table.

        Raises:
            StateUnavailable: the table service failed.
        """
        from azure.core.exceptions import AzureError

        client = self.table(table)
        wanted = sorted({encode_key(p) for p in partitions})
        rows: list[Row] = []
        try:
            for start in range(0, len(wanted), FILTER_COMPARISONS):
                chunk = wanted[start:start + FILTER_COMPARISONS]
                parameters = {f"p{n}": pk for n, pk in enumerate(chunk)}
                query = " or ".join(f"PartitionKey eq @p{n}" for n in range(len(chunk)))
                for entity in client.query_entities(query, parameters=parameters):
                    rows.append(Row(*entity_keys(entity), entity_fields(entity), entity.metadata.get("etag")))
        except AzureError as exc:
            raise _unavailable(self.prefix + table, "reading", exc) from None
        return rows

    def batch(self, table: str, rows: list[Row]) -> None:
        """Upsert rows of one partition in transactions of at most 100 (unconditional: for rows
        that only this caller writes, like audit entries)."""
        for start in range(0, len(rows), 100):
            chunk = rows[start:start + 100]
            if not chunk:
                continue
            assert len({r.partition for r in chunk}) == 1, "a batch must stay in one partition"
            from azure.core.exceptions import AzureError

            try:
                self.table(table).submit_transaction(
                    [("upsert", to_entity(self.prefix + table, r), {"mode": "replace"}) for r in chunk])
            except AzureError as exc:
                raise _unavailable(self.prefix + table, "writing a batch", exc) from None
            self.writes += 1

    def with_call_options(self, **options: Any) -> CallOptions:
        """This store's rows read and written with per-call SDK `options` (the fetch audit's short
        retry budget): the same store, table clients and write counter."""
        return CallOptions(self, options)

    # ---- leases -------------------------------------------------------------------------
    def acquire_lease(self, name: str, owner: str, seconds: float, *, stale: Callable[[str], bool] | None = None) -> Lease | None:
        """The lease `name` for `seconds`, or None while another owner holds it.

        `stale(owner)` may declare a holder dead before its lease expires (a process on this host
        that no longer exists); its lease is then taken over at once.
        """
        now = self._clock()
        current = self.get("leases", "lease", name)
        row = Row("lease", name, {"owner": owner, "expires_at": now + seconds, "acquired_at": now})
        if current is not None:
            holder = str(current.fields.get("owner", ""))
            alive = float(current.fields.get("expires_at", 0)) > now and not (stale is not None and stale(holder))
            if holder != owner and alive:
                return None
            row.etag = current.etag
        try:
            written = self.put("leases", row)
        except Conflict:
            return None
        assert written.etag is not None
        return Lease(name, owner, now + seconds, written.etag)

    def release_lease(self, lease: Lease) -> None:
        """Give `lease` back; if the table cannot be written it simply expires."""
        try:
            self.delete("leases", Row("lease", lease.name, etag=lease.etag))
        except Conflict:
            log.info("lease %s was taken over before release", lease.name)
        except StateUnavailable as exc:
            log.warning("lease %s not released (it expires on its own): %s", lease.name, exc)

    # ---- events -------------------------------------------------------------------------
    def event_seen(self, event_id: str) -> bool:
        """Whether event `event_id` was already handled (today's or yesterday's partition:
        redeliveries can cross midnight)."""
        today = _utcnow()
        key = event_key(event_id)
        return any(self.get("events", day.strftime("%Y%m%d"), key) is not None for day in (today, today - timedelta(days=1)))

    def record_event(self, event_id: str, detail: dict[str, str]) -> None:
        """Mark event `event_id` handled (another instance having done so too is fine)."""
        try:
            self.put("events", Row(_utcnow().strftime("%Y%m%d"), event_key(event_id), {"seen_at": self._clock(), **detail}))
        except Conflict:
            pass

    # ---- poisoned work items ----------------------------------------------------------
    # One row per env whose work item went to the poison queue (events table, partition
    # "poison"): env, cause (variable names and failure reasons), item id, trigger; never values.
    def poisoned(self) -> list[Row]:
        """The envs whose last work item was poisoned (a read; nothing is written)."""
        return sorted(self.query("events", "poison"), key=lambda r: r.key)

    def record_poisoned(self, env: str, fields: dict[str, Any]) -> None:
        """Record that `env`'s work item went to the poison queue (replaces an earlier record)."""
        for _ in range(3):
            current = self.get("events", "poison", env)
            try:
                self.put("events", Row("poison", env, dict(fields), current.etag if current else None))
                return
            except Conflict:
                continue

    def clear_poisoned(self, envs: Iterable[str], known: Iterable[Row] | None = None) -> list[str]:
        """Drop the poison records of `envs` (synced successfully since); returns those cleared.
        `known` is a listing read before (so an env with no record costs no request)."""
        rows = {r.key: r for r in (known if known is not None else self.poisoned())}
        cleared = []
        for env in envs:
            row = rows.get(env)
            if row is None:
                continue
            try:
                self.delete("events", row)
                cleared.append(env)
            except Conflict:  # poisoned again meanwhile: a newer failure stays visible
                pass
        return cleared

    # ---- audit --------------------------------------------------------------------------
    def audit(self, actor: str, action: str, subject: str, detail: dict[str, Any] | None = None) -> None:
        """Append an audit entry (who, what, on what, why; never values)."""
        try:
            self.put("audit", audit_row(actor, action, subject, detail or {}))
        except Exception as exc:  # auditing must not break the operation it records
            log.error("audit write failed for %s %s: %s", action, subject, type(exc).__name__)

    def recent_audit(self, limit: int = 50) -> list[Row]:
        day = _utcnow().strftime("%Y%m%d")
        rows = list(self.query("audit", day))
        rows.sort(key=lambda r: r.key)
        return rows[:limit]


class CallOptions:
    """A StateStore's `get` and `put` with per-call options (`StateStore.with_call_options`)."""

    def __init__(self, store: StateStore, options: dict[str, Any]) -> None:
        self.store = store
        self.options = options

    def get(self, table: str, partition: str, key: str) -> Row | None:
        return self.store.get(table, partition, key, **self.options)

    def put(self, table: str, row: Row) -> Row:
        return self.store.put(table, row, **self.options)


def audit_row(actor: str, action: str, subject: str, detail: dict[str, Any]) -> Row:
    """An audit table row: PartitionKey the day `YYYYMMDD`, RowKey inverted milliseconds and a random
    suffix (newest first), `detail` as JSON (names, versions, fingerprints; never values)."""
    now = _utcnow()
    inverted = f"{10**13 - int(now.timestamp() * 1000):013d}"
    return Row(now.strftime("%Y%m%d"), f"{inverted}-{uuid.uuid4().hex[:12]}", {
        "actor": actor, "action": action, "subject": subject, "at": now.isoformat(),
        "detail": json.dumps(detail, sort_keys=True, default=str),
    })


_KEY_FORBIDDEN = frozenset("/\\#?") | frozenset(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))
MAX_EVENT_KEY = 255


def event_key(event_id: str) -> str:
    """The events table's RowKey for `event_id`: the id itself when Table Storage accepts it as a
    key, else `sha256-<hex>` of it (keys may not hold / \\ # ? or control characters and are at
    most 1 KiB; Event Grid ids are GUIDs, but a delivered body may carry anything)."""
    if len(event_id) <= MAX_EVENT_KEY and not _KEY_FORBIDDEN.intersection(event_id) and not event_id.startswith("sha256-"):
        return event_id
    import hashlib

    return "sha256-" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()


# ---- keys and sizes --------------------------------------------------------------------------
_KEY_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")
MAX_KEY = 255  # characters of an encoded key (Table Storage takes 1 KiB; a short key is kinder to every URL)
HASHED_KEY = "~h"
ORIGINAL_PARTITION = "vr_partition"  # the names behind hashed keys
ORIGINAL_ROW = "vr_row"
MAX_PROPERTY_CHARS = 32_000  # UTF-16 code units of one string property (the service takes 32,768)
MAX_ENTITY_BYTES = 1024 * 1024
MAX_PROPERTIES = 252  # besides PartitionKey, RowKey and Timestamp
PARTS = "__parts"


def encode_key(name: str) -> str:
    """`name` as a PartitionKey or RowKey: unchanged when it is made of letters, digits and
    `- _ . :` only, else every other character as `~` and the hex of its UTF-8 bytes (`~` itself
    too: the escape is reversible); longer than MAX_KEY, `~h` and the SHA-256 of `name`."""
    if name and len(name) <= MAX_KEY and _KEY_SAFE.issuperset(name):
        return name
    encoded = "".join(ch if ch in _KEY_SAFE else "".join(f"~{b:02X}" for b in ch.encode("utf-8", "surrogatepass")) for ch in name)
    if len(encoded) > MAX_KEY:
        import hashlib

        return HASHED_KEY + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return encoded


def decode_key(stored: str) -> str:
    """The name `encode_key` turned into `stored` (a hashed key cannot be decoded: its row keeps the name).

    Raises:
        ValueError: `stored` is not an encoded key.
    """
    if "~" not in stored:
        return stored
    if stored.startswith(HASHED_KEY):
        raise ValueError("a hashed key: the name is kept in the row")
    out = bytearray()
    i = 0
    while i < len(stored):
        ch = stored[i]
        if ch == "~":
            out.append(int(stored[i + 1:i + 3], 16))
            i += 3
        else:
            out.extend(ch.encode())
            i += 1
    return out.decode("utf-8", "surrogatepass")


def entity_keys(entity: dict[str, Any]) -> tuple[str, str]:
    """(partition, key) of a stored entity, as the names vaultrelay wrote."""
    def name(stored: str, original: str) -> str:
        if stored.startswith(HASHED_KEY):
            return str(entity.get(original, stored))
        try:
            return decode_key(stored)
        except ValueError:  # a key not written by this module: shown as it is
            return stored

    return name(entity["PartitionKey"], ORIGINAL_PARTITION), name(entity["RowKey"], ORIGINAL_ROW)


def entity_fields(entity: dict[str, Any]) -> dict[str, Any]:
    """A stored entity's fields without its keys, spread properties joined again."""
    fields = {k: v for k, v in entity.items() if k not in ("PartitionKey", "RowKey", ORIGINAL_PARTITION, ORIGINAL_ROW)}
    for marker in [k for k in fields if k.endswith(PARTS)]:
        name = marker[:-len(PARTS)]
        count = int(fields.pop(marker))
        fields[name] = "".join(str(fields.pop(name if i == 0 else f"{name}__{i}", "")) for i in range(count))
    return fields


def _utf16_units(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


def _split(text: str) -> list[str]:
    """`text` in pieces of at most MAX_PROPERTY_CHARS UTF-16 code units (a surrogate pair is never cut)."""
    if text.isascii():
        return [text[i:i + MAX_PROPERTY_CHARS] for i in range(0, len(text), MAX_PROPERTY_CHARS)]
    pieces: list[str] = []
    start = units = 0
    for i, ch in enumerate(text):
        width = 2 if ord(ch) > 0xFFFF else 1
        if units + width > MAX_PROPERTY_CHARS:
            pieces.append(text[start:i])
            start, units = i, 0
        units += width
    pieces.append(text[start:])
    return pieces


def _value_bytes(value: Any) -> int:
    """Bytes a property value takes in an entity (the table design guide's estimate)."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float | datetime):
        return 8
    if isinstance(value, bytes):
        return 4 + len(value)
    return 4 + 2 * _utf16_units(str(value))


def to_entity(table: str, row: Row) -> dict[str, Any]:
    """`row` as the entity to send: keys encoded, long strings spread over properties.

    Raises:
        StateTooLarge: the entity would exceed 1 MiB or 252 properties.
    """
    partition, key = encode_key(row.partition), encode_key(row.key)
    entity: dict[str, Any] = {"PartitionKey": partition, "RowKey": key}
    if partition.startswith(HASHED_KEY):
        entity[ORIGINAL_PARTITION] = row.partition
    if key.startswith(HASHED_KEY):
        entity[ORIGINAL_ROW] = row.key
    for name, value in row.fields.items():
        if isinstance(value, str) and len(value) > MAX_PROPERTY_CHARS // 2 and _utf16_units(value) > MAX_PROPERTY_CHARS:
            pieces = _split(value)
            entity[name] = pieces[0]
            for i, piece in enumerate(pieces[1:], start=1):
                entity[f"{name}__{i}"] = piece
            entity[f"{name}{PARTS}"] = len(pieces)
        else:
            entity[name] = value
    size = 4 + 2 * (len(partition) + len(key))
    for name, value in entity.items():
        if name not in ("PartitionKey", "RowKey"):
            size += 8 + 2 * len(name) + _value_bytes(value)
    properties = len(entity) - 2
    if size > MAX_ENTITY_BYTES or properties > MAX_PROPERTIES:
        raise StateTooLarge(
            f"state row {table}/{row.partition}/{row.key} would be {size:,} bytes in {properties} properties; Table Storage "
            f"holds at most {MAX_ENTITY_BYTES:,} bytes and {MAX_PROPERTIES} properties in one row")
    return entity
