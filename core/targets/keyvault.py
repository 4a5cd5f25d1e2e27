"""`type: keyvault` target: one secret per variable, or one JSON secret for the whole bundle.

Every secret written carries vaultrelay's marks in its tags (`managed-by: vaultrelay`, the env,
the target) and `vaultrelay-fingerprint`, an HMAC of the secret's name and value under a key
derived for this vault and target alone (equal values in two secrets or two targets show
unrelated tags), plus content type and `expires_on` for values that expire.  A name is
vaultrelay's for this target when its push record says vaultrelay wrote it, or when a version of
the secret carries those marks for this target; any other secret is never overwritten, deleted
or recovered.  Removed variables are deleted (soft delete) or kept per `deletion_policy`.

Drift is judged by stamps from the properties a sync reads anyway (the vault's listing for a sync
of many envs; one GET per secret for a work item's few envs, which must not page through a vault
holding a whole fleet's secrets): the latest version's created and updated times and its
fingerprint tag.  Key Vault keeps times
to the second; in the second of vaultrelay's write a new value still shows, because no one
without the key can tag it, so only a change in that very second that also copies vaultrelay's
tags goes unseen.

Soft delete: Key Vault deletes and recovers asynchronously (409 `ObjectIsBeingDeleted` /
`ObjectIsBeingRecovered` meanwhile) and a deleted name stays taken until it is purged or
recovered.  A write waits those states out with bounded backoff; a deleted name is recovered only
when the deleted secret is vaultrelay's own for this target.
"""

from __future__ import annotations

import base64
import contextvars
import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from core.azure.protocols import CertificateClientLike
from core.permissions.matrix import denied_note
from core.targets.base import (
    RUN_ENVS,
    TAG_FINGERPRINT,
    Change,
    DesiredItem,
    PushResult,
    Snapshot,
    TargetContext,
    TargetError,
    owned_by,
    ownership_tags,
    same_marks,
)

LISTING_TTL_S = 60.0
# Up to this many envs in a sync run, a target reads its own secrets (one GET each, in parallel)
# instead of listing the vault: a listing is 25 secrets a page, serial, and a vault a fleet
# shares holds every env's secrets (50,000 secrets are 2,000 pages for each work item).
GET_MAX_ENVS = 60
REREAD_MAX = 25  # more names to read again than one listing page holds: list the vault again instead
WRITE_CONCURRENCY = 8  # secrets written at once per target (the vault's pacer slows them on 429s)
TRANSITION_WAIT_S = 60.0  # how long one write waits for a delete or recover of its name to finish
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 4.0

# Key Vault's innererror for a write an Azure Policy assignment (Deny) refuses; Resource Manager's
# code for the same is RequestDisallowedByPolicy (docs/sandbox.md): both are read as a policy denial.
POLICY_CODES = ("ForbiddenByPolicy", "RequestDisallowedByPolicy")
PEM_CONTENT_TYPE = "application/x-pem-file"
PKCS12_CONTENT_TYPE = "application/x-pkcs12"

BEING_DELETED = "ObjectIsBeingDeleted"
BEING_RECOVERED = "ObjectIsBeingRecovered"
DELETED_BUT_RECOVERABLE = "ObjectIsDeletedButRecoverable"


DISABLED = object()  # `_read`'s answer for a disabled secret (Key Vault refuses to GET it: 403 SecretDisabled)


def _attempt(operation: Callable[[], None]) -> TargetError | None:
    try:
        operation()
    except TargetError as exc:
        return exc
    return None


def stamp_of(properties: Any) -> str | None:
    """The stamp of a secret's latest version: `<created>.<updated>.<tag>`, the times in epoch
    seconds and the first 12 characters of its fingerprint tag (`-` if none)."""
    created, updated = getattr(properties, "created_on", None), getattr(properties, "updated_on", None)
    if created is None or updated is None:
        return None
    mark = (getattr(properties, "tags", None) or {}).get(TAG_FINGERPRINT) or "-"
    return f"{int(created.timestamp())}.{int(updated.timestamp())}.{mark[:12]}"


def _inner_code(exc: Exception) -> str:
    """Key Vault's `innererror.code` of an error response ("" if there is none)."""
    response = getattr(exc, "response", None)
    try:
        body = response.json() if response is not None else None
    except Exception:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    inner = error.get("innererror") if isinstance(error, dict) else None
    return str(inner.get("code", "")) if isinstance(inner, dict) else ""


class KeyVaultTargetWriter:
    kind = "keyvault"
    ownership_in_state = False
    stamped = True

    def __init__(self, config: Any, ctx: TargetContext) -> None:
        self.config = config
        self.ctx = ctx
        self.whole_bundle = config.mode == "bundle"
        self.client = ctx.clients.secret_client(config.vault, ctx.credential)
        self.bundle_secret = str(config.bundle_secret)
        self._env = str(config.env)
        self._marks = ctx.fingerprinter.derive(f"keyvault\0{str(config.vault).lower()}\0{ctx.name}")
        self.versions: dict[str, str] = {}  # secret name (lower case) -> the version this writer last wrote
        self._static_tags = dict(getattr(config, "tags", None) or {})
        self._as_certificates = getattr(config, "certificates", "secret") == "certificate"
        self._certificates: CertificateClientLike | None = None

    # ---- what is written besides the value ---------------------------------------------------
    def shape(self, desired: dict[str, DesiredItem], now: float | None = None) -> dict[str, DesiredItem]:
        """`desired` as this target writes it: the content type (`content_type` for values without
        one of their own), the expiry (`expires`), and a fingerprint that also covers them and the
        static tags, so a change to any of them is a change to push.  With none of those keys set,
        items are as they come (the fingerprint of the value alone).

        Raises:
            TargetError: `expires: follow` and a value has no expiry of its own (nothing is written).
        """
        expires = getattr(self.config, "expires", None)
        content_type = getattr(self.config, "content_type", None)
        if expires is None and content_type is None and not self._static_tags and not self._as_certificates:
            return desired
        lacking = sorted(n for n, item in desired.items() if expires == "follow" and item.value is not None and item.expires_on is None)
        if lacking:
            raise TargetError(f"target {self.ctx.name} (env {self._env}, vault {self.config.vault}): expires: follow, but "
                              f"{', '.join(lacking)} {'has no expiry of its own' if len(lacking) == 1 else 'have no expiry of their own'} (a secret without "
                              "exp, a literal or a template over such values); set an exp on the source or use a duration; nothing written")
        shaped: dict[str, DesiredItem] = {}
        for name, item in desired.items():
            if item.value is None:
                shaped[name] = item
                continue
            item_expires = item.expires_on
            if isinstance(expires, float) and not (self._as_certificates and self._is_certificate(item)):  # a certificate's is its own
                item_expires = _period_expiry(expires, time.time() if now is None else now)
            item_type = item.content_type or (content_type if not self.whole_bundle else None)
            meta = json.dumps({"ct": item_type, "exp": _seconds(item_expires), "tags": self._static_tags,
                               "cert": self._as_certificates and self._is_certificate(item)}, sort_keys=True)
            content = item.value.reveal()
            if self._as_certificates and self._is_certificate(item) and item.version:
                # A PFX made from a PEM certificate differs byte-wise on every read (PKCS#12 salts):
                # an imported certificate changes when the source certificate's version does.
                content = f"certificate\0{item.content_type}\0{item.version}"
            shaped[name] = dataclasses.replace(item, expires_on=item_expires, content_type=item_type,
                                               fingerprint=self.ctx.fingerprinter.of(content + "\0vaultrelay-meta\0" + meta))
        return shaped

    def _is_certificate(self, item: DesiredItem) -> bool:
        return item.kind == "certificate" and (item.content_type or "") in (PEM_CONTENT_TYPE, PKCS12_CONTENT_TYPE)

    def _secret(self, variable: str) -> str:
        return str(self.config.secret_for(variable))

    def _mark(self, secret: str, value: str) -> str:
        return self._marks.of(secret.lower() + "\0" + value)

    def _list(self) -> dict[str, Any]:
        """Name -> properties of every secret in the vault.  One listing serves every target of
        a sync run on this vault for LISTING_TTL_S (a vault of 10,000 secrets is 400 pages);
        vaultrelay's own writes update it, other writers are seen by a later listing."""
        return self._listing()

    def _listing(self, *, fresh: bool = False) -> dict[str, Any]:
        key = f"keyvault-listing {self.client.vault_url}"
        cached = self.ctx.run_cache.get(key)
        if not fresh and cached is not None and time.monotonic() - cached[0] < LISTING_TTL_S:
            return dict(cached[1])
        try:
            listing = {p.name.lower(): p for p in self.client.list_properties_of_secrets()}
        except Exception as exc:
            raise TargetError(f"target {self.ctx.name}: cannot list secrets of vault {self.config.vault}: {_cause(exc)}") from None
        self.ctx.run_cache[key] = (time.monotonic(), listing)
        return dict(listing)

    def _listed(self, name: str, properties: Any) -> None:
        """What this run knows of `name` after vaultrelay wrote (or deleted: None) it."""
        cached = self.ctx.run_cache.get(f"keyvault-listing {self.client.vault_url}")
        if cached is not None:
            if properties is None:
                cached[1].pop(name.lower(), None)
            else:
                cached[1][name.lower()] = properties
        read = self.ctx.run_cache.get(f"keyvault-read {self.client.vault_url}")
        if read is not None:
            read[name.lower()] = properties

    def _existing(self, secrets: set[str]) -> dict[str, Any]:
        """Name (lower case) -> properties of those of `secrets` that exist (at least those).

        From the vault's listing when this run has one or syncs many envs; else one GET per
        secret (GET_MAX_ENVS), whose values are kept for `_matches` for this run only.

        Raises:
            TargetError: the vault could not be listed or read.
        """
        listing = self.ctx.run_cache.get(f"keyvault-listing {self.client.vault_url}")
        if (listing is not None and time.monotonic() - listing[0] < LISTING_TTL_S) or self.ctx.run_cache.get(RUN_ENVS, 0) > GET_MAX_ENVS:
            return self._list()
        read: dict[str, Any] = self.ctx.run_cache.setdefault(f"keyvault-read {self.client.vault_url}", {})
        missing = sorted({s.lower(): s for s in secrets if s.lower() not in read}.values())
        if missing:
            if len(missing) == 1:
                answers = [self._read(missing[0])]
            else:
                with ThreadPoolExecutor(max_workers=min(WRITE_CONCURRENCY, len(missing)), thread_name_prefix="vaultrelay-kv-read") as pool:
                    answers = list(pool.map(lambda n: contextvars.copy_context().run(self._read, n), missing))
            if any(answer is DISABLED for answer in answers):
                return self._list()  # a disabled secret cannot be read: its properties are in the listing
            read_at: dict[str, float] = self.ctx.run_cache.setdefault(f"keyvault-read-at {self.client.vault_url}", {})
            for name, answer in zip(missing, answers, strict=True):
                read[name.lower()] = answer
                read_at[name.lower()] = time.monotonic()
        return {name: props for name, props in read.items() if props is not None}

    def _read(self, name: str) -> Any:
        """The properties of secret `name` (None: no such secret; DISABLED: it is disabled)."""
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

        try:
            secret = self.client.get_secret(name)
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            if exc.status_code == 403 and _inner_code(exc) == "SecretDisabled":
                return DISABLED
            raise TargetError(f"target {self.ctx.name}: reading {name} in vault {self.config.vault} failed: {_cause(exc)}") from None
        except AzureError as exc:
            raise TargetError(f"target {self.ctx.name}: reading {name} in vault {self.config.vault} failed: {_cause(exc)}") from None
        self.ctx.run_cache[f"keyvault-value {self.client.vault_url} {name.lower()} {stamp_of(secret.properties)}"] = secret.value
        return secret.properties

    # ---- snapshot: stamps and ownership ------------------------------------------------------
    def snapshot(self, names: set[str], recorded: dict[str, str]) -> Snapshot:
        began = time.monotonic()
        existing = self._existing({self.bundle_secret} if self.whole_bundle else {self._secret(v) for v in names})
        existing = self._current(existing, self._unlike_record(existing, names, recorded), began)
        snapshot = Snapshot()
        if self.whole_bundle:
            props = existing.get(self.bundle_secret.lower())
            snapshot.exists = props is not None
            if props is not None:
                snapshot.etag = stamp_of(props)
                if not self._ours(self.bundle_secret, props, bool(recorded) or bool(self.ctx.recorded_etag)):
                    snapshot.foreign.add(self.bundle_secret)
            return snapshot
        for variable in names:
            props = existing.get(self._secret(variable).lower())
            snapshot.stamps[variable] = stamp_of(props) if props is not None else None
            if props is not None and not self._ours(self._secret(variable), props, variable in recorded):
                snapshot.foreign.add(variable)
        return snapshot

    def _unlike_record(self, existing: dict[str, Any], names: set[str], recorded: dict[str, str]) -> list[str]:
        """The secrets whose push record has a stamp that `existing` does not show."""
        def stamp(secret: str) -> str | None:
            props = existing.get(secret.lower())
            return stamp_of(props) if props is not None else None

        if self.whole_bundle:
            etag = self.ctx.recorded_etag
            return [self.bundle_secret] if etag and stamp(self.bundle_secret) != etag else []
        stamps = self.ctx.recorded_stamps
        return sorted(self._secret(v) for v in names if v in recorded and v in stamps and stamp(self._secret(v)) != stamps[v])

    def _current(self, existing: dict[str, Any], suspect: list[str], since: float) -> dict[str, Any]:
        """`existing` with those of `suspect` that were listed or read before `since` read again.

        What this run listed or read earlier (a vault's listing serves every env of the run; a
        read-only pass reads before the env's lease is taken) can be older than the push record
        just read: another instance may have written these names since, under the env's lease,
        and what it wrote is not drift.  Few names: one GET each; many (or a disabled secret,
        which Key Vault refuses to GET): a new listing.

        Raises:
            TargetError: the vault could not be listed or read.
        """
        listing = self.ctx.run_cache.get(f"keyvault-listing {self.client.vault_url}")
        read_at: dict[str, float] = self.ctx.run_cache.get(f"keyvault-read-at {self.client.vault_url}", {})

        def seen_at(name: str) -> float:
            if listing is not None and name.lower() not in read_at:
                return float(listing[0])
            return read_at.get(name.lower(), since)

        older = [n for n in suspect if seen_at(n) < since]
        if not older:
            return existing
        if len(older) > REREAD_MAX:
            return self._listing(fresh=True)
        current = dict(existing)
        for name in older:
            props = self._read(name)
            if props is DISABLED:
                return self._listing(fresh=True)
            self._listed(name, props)
            read_at[name.lower()] = time.monotonic()
            if props is None:
                current.pop(name.lower(), None)
            else:
                current[name.lower()] = props
        self.ctx.run_cache[f"keyvault-read-at {self.client.vault_url}"] = read_at
        return current

    def _ours(self, name: str, props: Any, recorded: bool) -> bool:
        """Whether secret `name` is vaultrelay's for this target: its latest version's tags say
        so, the push record does, or (only asked when neither does) an earlier version's tags."""
        if recorded or owned_by(props.tags, self.ctx.name):
            return True
        key = f"keyvault-history {self.client.vault_url} {name.lower()} {stamp_of(props)} {self.ctx.name}"
        known = self.ctx.run_cache.get(key)  # one answer per run while the secret is unchanged
        if known is None:
            try:
                known = any(owned_by(version.tags, self.ctx.name) for version in self.client.list_properties_of_secret_versions(name))
            except Exception as exc:
                raise TargetError(f"target {self.ctx.name}: cannot list versions of {name} in vault {self.config.vault}: {_cause(exc)}") from None
            self.ctx.run_cache[key] = known
        return bool(known)

    def holds(self, desired: dict[str, DesiredItem], names: set[str]) -> set[str]:
        """Of `names`, those whose secret is exactly what vaultrelay would write now: enabled,
        vaultrelay's tags and nothing else, the content type and expiry, and the value (one GET,
        only when all the rest matches)."""
        existing = self._existing({self.bundle_secret} if self.whole_bundle else {self._secret(v) for v in names})
        if self.whole_bundle:
            props = existing.get(self.bundle_secret.lower())
            payload = self._bundle_payload(desired)
            in_place = props is not None and self._matches(self.bundle_secret, props, self._bundle_item(desired), payload)
            return set(desired) if in_place else set()
        candidates = [(v, existing[self._secret(v).lower()], desired[v]) for v in sorted(names)
                      if v in desired and self._secret(v).lower() in existing]

        def check(candidate: tuple[str, Any, DesiredItem]) -> bool:
            variable, props, item = candidate
            return self._matches(self._secret(variable), props, item, item.value.reveal())

        if len(candidates) <= 1:
            verdicts = [check(c) for c in candidates]
        else:  # many at once (the first sync after an upgrade reads every pushed secret once)
            with ThreadPoolExecutor(max_workers=min(WRITE_CONCURRENCY, len(candidates)), thread_name_prefix="vaultrelay-kv-read") as pool:
                verdicts = list(pool.map(lambda c: contextvars.copy_context().run(check, c), candidates))
        return {variable for (variable, _, _), held in zip(candidates, verdicts, strict=True) if held}

    def _matches(self, name: str, props: Any, item: DesiredItem, value: str) -> bool:
        from azure.core.exceptions import AzureError

        mark = self._mark(name, value)
        if not (props.enabled is not False and same_marks(props.tags, self._env, self.ctx.name, mark, self._static_tags)
                and (props.content_type or None) == (item.content_type or None)
                and _seconds(props.expires_on) == _seconds(item.expires_on)):
            return False
        key = f"keyvault-holds {self.client.vault_url} {name.lower()} {stamp_of(props)} {mark}"
        known = self.ctx.run_cache.get(key)  # one read per run while the secret is unchanged
        read = self.ctx.run_cache.get(f"keyvault-value {self.client.vault_url} {name.lower()} {stamp_of(props)}")
        if known is None and read is not None:  # read by `_existing` a moment ago
            known = self.ctx.run_cache[key] = read == value
        if known is None:
            try:
                current = self.client.get_secret(name)
            except AzureError as exc:
                raise TargetError(f"target {self.ctx.name}: reading {name} in vault {self.config.vault} failed: {_cause(exc)}") from None
            known = self.ctx.run_cache[key] = stamp_of(current.properties) == stamp_of(props) and current.value == value
        return bool(known)

    # ---- push ----------------------------------------------------------------------------------
    def push(self, env: str, desired: dict[str, DesiredItem], change: Change, snapshot: Snapshot) -> PushResult:
        foreign = sorted(snapshot.foreign & (set(change.writes) | set(change.removals))) if not self.whole_bundle else sorted(snapshot.foreign)
        if foreign:
            names = ", ".join(self._secret(v) if not self.whole_bundle else v for v in foreign)
            raise TargetError(f"target {self.ctx.name}: vault {self.config.vault} has secret(s) {names} not managed by vaultrelay; refusing to overwrite")
        if self.whole_bundle:
            return self._push_bundle(env, desired)
        # One secret per write, WRITE_CONCURRENCY at a time (each variable has a secret of its
        # own: config validation refuses two variables or targets on one secret).  A failure
        # leaves the others written (each complete and tagged), which the next run finds holding
        # the bundle and does not write again.
        removals = sorted(v for v in change.removals if snapshot.stamps.get(v) is not None) if self.config.deletion_policy == "delete" else []
        stamps: dict[str, str] = {}
        operations: list[Callable[[], None]] = [
            *(functools.partial(self._set_variable, variable, desired[variable], env, stamps) for variable in sorted(change.writes)),
            *(functools.partial(self._delete, self._secret(variable)) for variable in removals),
        ]
        if len(operations) <= 1:
            outcomes = [_attempt(operation) for operation in operations]
        else:
            with ThreadPoolExecutor(max_workers=min(WRITE_CONCURRENCY, len(operations)), thread_name_prefix="vaultrelay-kv-write") as pool:
                outcomes = list(pool.map(_attempt, [functools.partial(contextvars.copy_context().run, op) for op in operations]))
        failures = [outcome for outcome in outcomes if outcome is not None]
        writes = len(operations) - len(failures)
        if failures:
            more = f"and {len(failures) - 1} more; " if len(failures) > 1 else ""
            raise TargetError(f"{failures[0]} ({more}{writes} of {len(operations)} writes done; the next run writes the rest)") from None
        return PushResult(writes=writes, stamps=stamps)

    def _set_variable(self, variable: str, item: DesiredItem, env: str, stamps: dict[str, str]) -> None:
        if self._as_certificates and self._is_certificate(item):
            stamp = self._import_certificate(self._secret(variable), variable, item, env)
        else:
            stamp = self._set(self._secret(variable), item.value.reveal(), item, env, self.ctx.recorded_stamps.get(variable), variable)
        if stamp is not None:
            stamps[variable] = stamp

    def _import_certificate(self, name: str, variable: str, item: DesiredItem, env: str) -> str | None:
        """Import `item` (a PEM bundle or a base64 PFX with its private key) as certificate `name`,
        with vaultrelay's tags, so the vault's certificate views, expiry events and policies see a
        certificate.  Key Vault puts the tags on the backing secret too, which is what the secret
        listing (snapshot, ownership, drift) reads.  Returns the backing secret's stamp.

        Raises:
            TargetError: the import failed (named, never the value).
        """
        from azure.core.exceptions import AzureError
        from azure.keyvault.certificates import CertificateContentType, CertificatePolicy

        if self._certificates is None:
            self._certificates = self.ctx.clients.certificate_client(self.config.vault, self.ctx.credential)
        value = item.value.reveal()
        pem = item.content_type == PEM_CONTENT_TYPE
        tags = {**self._static_tags, **ownership_tags(env, self.ctx.name), TAG_FINGERPRINT: self._mark(name, value)}
        # The policy's content type says how Key Vault reads the bytes (it does not sniff them) and
        # how the backing secret is served; the issuer of an imported certificate is "Unknown".
        policy = CertificatePolicy(issuer_name="Unknown", content_type=CertificateContentType.pem if pem else CertificateContentType.pkcs12)
        try:
            self._certificates.import_certificate(name, value.encode() if pem else base64.b64decode(value), policy=policy,
                                                  tags=tags, enabled=True)
            written = self.client.get_secret(name)  # the backing secret's stamp, as the listing shows it
        except AzureError as exc:
            raise TargetError(self._write_failure("importing certificate", name, variable, exc)) from None
        self._listed(name, written.properties)
        self.versions[name.lower()] = str(written.properties.version)
        return stamp_of(written.properties)

    def _write_failure(self, what: str, name: str, variable: str | None, exc: Exception) -> str:
        """The message of a failed write: target, env, variable and secret, and for an Azure Policy
        denial the policy's reason as Key Vault states it (which never holds the value)."""
        which = f"{name} (variable {variable})" if variable else name
        where = f"target {self.ctx.name} (env {self._env}): {what} {which} in vault {self.config.vault}"
        if getattr(exc, "status_code", None) == 403 and _inner_code(exc) in POLICY_CODES:
            reason = _error_message(exc)
            return f"{where} was refused by Azure Policy ({_inner_code(exc)}): {reason}"
        return f"{where} failed: {_cause(exc)}"

    def _bundle_payload(self, desired: dict[str, DesiredItem]) -> str:
        return json.dumps({name: item.value.reveal() for name, item in sorted(desired.items())}, sort_keys=True)

    def _bundle_item(self, desired: dict[str, DesiredItem]) -> DesiredItem:
        expiries = [i.expires_on for i in desired.values() if i.expires_on is not None]
        return DesiredItem(self.bundle_secret, None, "", min(expiries) if expiries else None, "application/json")

    def _push_bundle(self, env: str, desired: dict[str, DesiredItem]) -> PushResult:
        stamp = self._set(self.bundle_secret, self._bundle_payload(desired), self._bundle_item(desired), env, self.ctx.recorded_etag)
        return PushResult(etag=stamp, writes=1)

    def _set(self, name: str, value: str, item: DesiredItem, env: str, recorded_stamp: str | None, variable: str | None = None) -> str | None:
        """Write `value` as a new version of `name`, waiting out a delete or recover of the name
        that is still running (bounded), and recovering a soft-deleted `name` first when it is
        vaultrelay's own.  Returns the stamp of the version written.

        Raises:
            TargetError: the write failed, the name is soft-deleted and not vaultrelay's, or a
                transitional state outlasted TRANSITION_WAIT_S.
        """
        from azure.core.exceptions import AzureError, HttpResponseError

        tags = {**self._static_tags, **ownership_tags(env, self.ctx.name), TAG_FINGERPRINT: self._mark(name, value)}
        kwargs = {"content_type": item.content_type, "expires_on": item.expires_on, "tags": tags}
        deadline = time.monotonic() + TRANSITION_WAIT_S
        delay = BACKOFF_FIRST_S
        recovering = False
        try:
            while True:
                try:
                    written = self.client.set_secret(name, value, **kwargs)
                    break
                except HttpResponseError as exc:
                    if exc.status_code != 409:
                        raise
                    code = _inner_code(exc)
                    if code == DELETED_BUT_RECOVERABLE and not recovering:
                        recovering = self._recover_if_ours(name, recorded_stamp)
                        if recovering:
                            continue  # the next set waits while the recovery runs
                    if code not in (BEING_DELETED, BEING_RECOVERED, DELETED_BUT_RECOVERABLE):
                        raise
                    if time.monotonic() + delay > deadline:
                        state = "being recovered" if code == BEING_RECOVERED or recovering else "being deleted"
                        raise TargetError(f"target {self.ctx.name}: secret {name} in vault {self.config.vault} is still {state} "
                                          f"after {TRANSITION_WAIT_S:g} s; the next run tries again") from None
                    time.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
            self._listed(name, written.properties)
            self.versions[name.lower()] = str(written.properties.version)
        except AzureError as exc:
            raise TargetError(self._write_failure("setting", name, variable, exc)) from None
        return stamp_of(written.properties)

    def _recover_if_ours(self, name: str, recorded_stamp: str | None) -> bool:
        """Start recovering the soft-deleted secret `name` if it is vaultrelay's own for this
        target (its tags say so, or it is the very version vaultrelay recorded writing).  Returns
        True when a recover was started, False when the deleted secret is gone meanwhile (purged,
        or still being deleted: the caller waits).

        Raises:
            TargetError: the deleted secret is someone else's.
            AzureError: Key Vault failed.
        """
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            deleted = self.client.get_deleted_secret(name)
        except ResourceNotFoundError:
            return False
        props = deleted.properties
        if not (owned_by(props.tags, self.ctx.name) or (recorded_stamp is not None and stamp_of(props) == recorded_stamp)):
            raise TargetError(f"target {self.ctx.name}: secret {name} in vault {self.config.vault} is deleted but recoverable and "
                              f"not vaultrelay's (its latest version is not tagged for target {self.ctx.name}); refusing to recover "
                              "or overwrite it: recover or purge it by hand, or choose another name")
        try:
            self.client.begin_recover_deleted_secret(name)  # asynchronous: the next set waits while it runs
        except HttpResponseError as exc:
            if exc.status_code != 409 or _inner_code(exc) not in (BEING_DELETED, BEING_RECOVERED):
                raise
        return True

    def _delete(self, name: str) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            self.client.begin_delete_secret(name)
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise TargetError(f"target {self.ctx.name}: deleting {name} in vault {self.config.vault} failed: {_cause(exc)}") from None
        self._listed(name, None)


def _period_expiry(duration_s: float, now: float) -> datetime:
    """The expiry for `expires: <duration>`: the end of `duration_s` from the start of the current
    period of two thirds of it.  Stable within a period (an unchanged value is not rewritten), and a
    new period rewrites the secret while a third of its lifetime is left."""
    period = duration_s * 2 / 3
    start = math.floor(now / period) * period
    return datetime.fromtimestamp(int(start + duration_s), UTC)


def _error_message(exc: Exception) -> str:
    """The service's own error message (Key Vault names the policy and rule, never a value), bounded."""
    response = getattr(exc, "response", None)
    try:
        body = response.json() if response is not None else None
    except Exception:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    message = str(error.get("message", "")) if isinstance(error, dict) else ""
    return (message[:400] + "...") if len(message) > 400 else (message or "no reason given")


def _seconds(moment: Any) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _cause(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    return (f"HTTP {status}" if status else type(exc).__name__) + denied_note(exc, "target:keyvault")
