"""Reading Key Vault secrets, certificates and keys into text values.

Functions take an SDK client (behind a narrow Protocol) and return `Fetched`; the source module
binds them to config references.  Key Vault itself does not refuse to return an expired or
not-yet-valid secret, so vaultrelay checks the attributes and refuses to hand out such a value.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from core.sources.fetched import Fetched, SourceProblem

PEM_CONTENT_TYPE = "application/x-pem-file"
PKCS12_CONTENT_TYPE = "application/x-pkcs12"


class SecretReader(Protocol):
    """A Key Vault `SecretClient`: secrets are read through its pipeline with `send_request`."""

    def send_request(self, request: Any, **kwargs: Any) -> Any: ...


class KeyReader(Protocol):
    def get_key(self, name: str, version: str | None = None, **kwargs: Any) -> Any: ...


# Key Vault refuses to return a disabled object: 403 Forbidden with this inner error code.
_DISABLED_CODES = {"SecretDisabled", "KeyDisabled", "CertificateDisabled"}


def _get(kind: str, name: str, call: Any) -> Any:
    """`call()`; Key Vault's refusal to return a disabled object becomes a `disabled` problem
    (it is a 403, which would otherwise read as a missing role)."""
    from azure.core.exceptions import HttpResponseError

    try:
        return call()
    except HttpResponseError as exc:
        inner = getattr(getattr(exc, "error", None), "innererror", None)
        code = inner.get("code") if isinstance(inner, dict) else None
        if exc.status_code == 403 and code in _DISABLED_CODES:
            raise SourceProblem("disabled", f"{kind} '{name}' is disabled") from None
        raise


@dataclass(frozen=True)
class SecretBundle:
    """The fields vaultrelay uses of Key Vault's `SecretBundle` (REST JSON), dates as UTC datetimes."""

    value: str | None
    version: str | None
    content_type: str | None
    key_id: str | None
    enabled: bool | None
    not_before: datetime | None
    expires_on: datetime | None

    @classmethod
    def from_json(cls, body: Any) -> SecretBundle:
        if not isinstance(body, dict):
            raise SourceProblem("invalid", "Key Vault answered with a body that is not a secret")
        found = body.get("attributes")
        attributes: dict[str, Any] = found if isinstance(found, dict) else {}
        secret_id = body.get("id")
        # https://<vault>/secrets/<name>/<version>
        parts = urllib.parse.urlsplit(secret_id if isinstance(secret_id, str) else "").path.strip("/").split("/")
        return cls(
            value=body.get("value") if isinstance(body.get("value"), str) else None,
            version=parts[2] if len(parts) >= 3 and parts[2] else None,
            content_type=body.get("contentType") if isinstance(body.get("contentType"), str) else None,
            key_id=body.get("kid") if isinstance(body.get("kid"), str) else None,
            enabled=attributes.get("enabled") if isinstance(attributes.get("enabled"), bool) else None,
            not_before=_unix_time(attributes.get("nbf")),
            expires_on=_unix_time(attributes.get("exp")),
        )


def _unix_time(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


# The Key Vault SDK's own mapping of statuses to exception types for GetSecret.
def _raise_for(response: Any) -> None:
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceNotFoundError,
        ResourceNotModifiedError,
        map_error,
    )

    map_error(response.status_code, response, {401: ClientAuthenticationError, 404: ResourceNotFoundError,
                                               409: ResourceExistsError, 304: ResourceNotModifiedError})
    raise HttpResponseError(response=response)


def get_secret_bundle(client: SecretReader, name: str, version: str | None) -> SecretBundle:
    """GetSecret through the client's pipeline (its auth, retry, pacing and logging policies).

    `send_request` instead of `get_secret`: the SDK's model layer (typed SecretBundle, then
    KeyVaultSecret) costs about as much client CPU per secret as the whole HTTP exchange, and a
    resolve reads up to hundreds of secrets on threads that share one interpreter lock.  Errors
    are raised as `get_secret` raises them (same exception types, same parsed `error`).
    """
    from azure.core.rest import HttpRequest

    path = f"/secrets/{urllib.parse.quote(name, safe='')}/{urllib.parse.quote(version or '', safe='')}"
    response = client.send_request(HttpRequest("GET", path, headers={"Accept": "application/json"}))
    if response.status_code != 200:
        _raise_for(response)
    try:
        body = response.json()
    except ValueError:
        raise SourceProblem("invalid", f"Key Vault answered GetSecret for '{name}' with a body that is not JSON") from None
    return SecretBundle.from_json(body)


def _check_validity(kind: str, name: str, properties: Any, now: datetime) -> None:
    if properties.enabled is False:
        raise SourceProblem("disabled", f"{kind} '{name}' is disabled")
    not_before = properties.not_before
    if not_before is not None and not_before > now:
        raise SourceProblem("not_yet_valid", f"{kind} '{name}' is not valid before {not_before.isoformat()}")
    expires_on = properties.expires_on
    if expires_on is not None and expires_on <= now:
        raise SourceProblem("expired", f"{kind} '{name}' expired at {expires_on.isoformat()}")


def read_secret(client: SecretReader, name: str, version: str | None, *, now: datetime | None = None) -> Fetched:
    """The value of secret `name` (latest or `version`).

    Raises:
        SourceProblem: disabled, not yet valid, expired, or without a value.
        azure.core.exceptions.HttpResponseError: from the SDK (translated by the caller).
    """
    secret = _get("secret", name, lambda: get_secret_bundle(client, name, version))
    _check_validity("secret", name, secret, now or datetime.now(UTC))
    if secret.value is None:
        raise SourceProblem("invalid", f"secret '{name}' has no value")
    return Fetched(
        value=secret.value, version=secret.version, expires_on=secret.expires_on,
        content_type=secret.content_type, detail={"kind": "secret"},
    )


def read_certificate(client: SecretReader, name: str, version: str | None, fmt: str, *, now: datetime | None = None) -> Fetched:
    """A certificate through its backing secret, as PEM (key, certificate, chain) or base64 PFX.

    Raises:
        SourceProblem: disabled/expired, not a certificate, or an unreadable bundle.
    """
    secret = _get("certificate", name, lambda: get_secret_bundle(client, name, version))
    _check_validity("certificate", name, secret, now or datetime.now(UTC))
    content_type = (secret.content_type or "").lower()
    if content_type not in (PEM_CONTENT_TYPE, PKCS12_CONTENT_TYPE) or not secret.key_id:
        raise SourceProblem("invalid", f"'{name}' is not a certificate's backing secret (content type {secret.content_type!r})")
    raw = secret.value or ""
    if fmt == "pfx":
        value = raw if content_type == PKCS12_CONTENT_TYPE else base64.b64encode(_pem_to_pfx(raw, name)).decode()
    else:
        value = raw if content_type == PEM_CONTENT_TYPE else _pfx_to_pem(raw, name)
    return Fetched(
        value=value, version=secret.version, expires_on=secret.expires_on,
        content_type=PKCS12_CONTENT_TYPE if fmt == "pfx" else PEM_CONTENT_TYPE,
        detail={"kind": "certificate", "format": fmt},
    )


def _pfx_to_pem(b64: str, name: str) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12

    try:
        key, cert, extra = pkcs12.load_key_and_certificates(base64.b64decode(b64), None)
    except ValueError as exc:
        raise SourceProblem("invalid", f"certificate '{name}' has an unreadable PKCS#12 bundle") from exc
    parts: list[bytes] = []
    if key is not None:
        parts.append(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    if cert is not None:
        parts.append(cert.public_bytes(Encoding.PEM))
    parts.extend(c.public_bytes(Encoding.PEM) for c in extra or [])
    return b"".join(parts).decode()


def _pem_to_pfx(pem: str, name: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import NoEncryption, load_pem_private_key, pkcs12

    data = pem.encode()
    try:
        certs = x509.load_pem_x509_certificates(data)
        key_start = data.find(b"-----BEGIN")
        key = None
        for marker in (b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN RSA PRIVATE KEY-----", b"-----BEGIN EC PRIVATE KEY-----"):
            key_start = data.find(marker)
            if key_start >= 0:
                end_marker = marker.replace(b"BEGIN", b"END")
                key_end = data.find(end_marker, key_start) + len(end_marker)
                key = load_pem_private_key(data[key_start:key_end], None)
                break
    except ValueError as exc:
        raise SourceProblem("invalid", f"certificate '{name}' has an unreadable PEM bundle") from exc
    if not certs:
        raise SourceProblem("invalid", f"certificate '{name}' contains no certificate")
    return pkcs12.serialize_key_and_certificates(
        name.encode(), key, certs[0], certs[1:] or None, NoEncryption(),  # type: ignore[arg-type]
    )


def read_key(client: KeyReader, name: str, version: str | None, fmt: str, *, now: datetime | None = None) -> Fetched:
    """The public part of key `name` as JWK JSON or a PEM public key.

    Raises:
        SourceProblem: disabled/expired or an unsupported key type for PEM.
    """
    key = _get("key", name, lambda: client.get_key(name, version))
    props = key.properties
    _check_validity("key", name, props, now or datetime.now(UTC))
    jwk = key.key
    if fmt == "pem":
        value = _jwk_to_pem(jwk, name)
        content_type = PEM_CONTENT_TYPE
    else:
        public = {"kid": jwk.kid, "kty": _text(jwk.kty)}
        for field in ("n", "e", "crv", "x", "y"):
            part = getattr(jwk, field, None)
            if part is not None:
                public[field] = part if isinstance(part, str) else _b64url(part)
        if jwk.key_ops:
            public["key_ops"] = [_text(op) for op in jwk.key_ops]
        value = json.dumps(public, sort_keys=True)
        content_type = "application/jwk+json"
    return Fetched(
        value=value, version=props.version, expires_on=props.expires_on, content_type=content_type,
        detail={"kind": "key", "format": fmt},
    )


def _text(value: Any) -> str:
    """The wire value of an SDK enum (KeyType.rsa -> "RSA"); `str()` of one gives its Python name."""
    return str(getattr(value, "value", value))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwk_to_pem(jwk: Any, name: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    kty = _text(jwk.kty).upper()
    public_key: Any
    if kty.startswith("RSA"):
        public_key = rsa.RSAPublicNumbers(int.from_bytes(jwk.e, "big"), int.from_bytes(jwk.n, "big")).public_key()
    elif kty.startswith("EC"):
        curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1(), "P-256K": ec.SECP256K1()}
        curve = curves.get(_text(jwk.crv))
        if curve is None:
            raise SourceProblem("invalid", f"key '{name}' uses an unsupported curve")
        public_key = ec.EllipticCurvePublicNumbers(int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"), curve).public_key()
    else:
        raise SourceProblem("invalid", f"key '{name}' of type {kty} has no PEM public form")
    return public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
