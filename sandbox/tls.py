"""The sandbox's private certificate authority and its server certificate.

Every HTTPS stand-in (and Azurite) serves one certificate whose names cover the sandbox domain:
`*.vault.<domain>`, `management.<domain>`, `login.<domain>`, `*.blob|table|queue.<domain>`,
`localhost` and `127.0.0.1`.  Wildcards sit on parents of at least two labels because OpenSSL
rejects a wildcard on a one-label parent.  Clients trust the sandbox through a CA bundle that is
certifi's bundle plus the sandbox CA (`REQUESTS_CA_BUNDLE`, which azure-core's requests transport
honours).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import certifi
import trustme


@dataclass(frozen=True)
class SandboxPki:
    """Paths of the PEM files the sandbox writes."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_bundle: Path


def server_names(domain: str) -> list[str]:
    """Host names the server certificate covers for `domain`."""
    return [
        f"*.vault.{domain}",
        f"management.{domain}",
        f"login.{domain}",
        f"*.blob.{domain}",
        f"*.table.{domain}",
        f"*.queue.{domain}",
        f"*.documents.{domain}",
        f"*.hooks.{domain}",
        "localhost",
        "127.0.0.1",
    ]


def create_pki(directory: Path, domain: str) -> SandboxPki:
    """Create a fresh CA and server certificate under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="vaultrelay sandbox")
    leaf = ca.issue_cert(*server_names(domain))
    pki = SandboxPki(
        ca_cert=directory / "sandbox-ca.pem",
        server_cert=directory / "server-cert.pem",
        server_key=directory / "server-key.pem",
        ca_bundle=directory / "ca-bundle.pem",
    )
    ca.cert_pem.write_to_path(str(pki.ca_cert))
    # Azurite (Node) wants the chain in the cert file and the key apart.
    with pki.server_cert.open("wb") as handle:
        for blob in leaf.cert_chain_pems:
            handle.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(pki.server_key))
    pki.ca_bundle.write_bytes(
        Path(certifi.where()).read_bytes() + b"\n" + ca.cert_pem.bytes()
    )
    return pki
