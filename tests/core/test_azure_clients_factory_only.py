"""Every Azure SDK client of the core is built by the client factory (core/azure/): none outside
it, so every client gets vaultrelay's transport, retry budget and request logging."""

from __future__ import annotations

import re
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"

# A constructor call of an SDK client class, or a client built from a connection string.
CONSTRUCTOR = re.compile(
    r"\b(?:SecretClient|CertificateClient|KeyClient"
    r"|BlobServiceClient|BlobClient|ContainerClient"
    r"|TableServiceClient|TableClient"
    r"|QueueServiceClient|QueueClient"
    r"|\w+ManagementClient|ContainerAppsAPIClient|ARMPipelineClient|PipelineClient)\("
    r"|\bfrom_(?:connection_string|blob_url|container_url|queue_url|table_url)\("
)


def constructors_outside_factory(root: Path) -> list[str]:
    """`file:line: code` of every SDK client construction in the package `root` outside its azure/."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if root / "azure" in path.parents:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if CONSTRUCTOR.search(line.split("#", 1)[0]):
                found.append(f"{path.relative_to(root.parent)}:{number}: {line.strip()}")
    return found


def test_no_sdk_client_is_built_outside_the_factory() -> None:
    assert constructors_outside_factory(CORE) == []


def test_the_check_finds_a_client_built_outside_the_factory(tmp_path: Path) -> None:
    core = tmp_path / "core"
    (core / "azure").mkdir(parents=True)
    (core / "azure" / "clients.py").write_text("client = SecretClient(url, credential)\n", encoding="utf-8")
    (core / "state").mkdir()
    (core / "state" / "tables.py").write_text(
        "import x\n"
        "service = TableServiceClient.from_connection_string(text)  # a client of its own\n"
        "mgmt = StorageManagementClient(credential, subscription)\n"
        "# BlobClient(url) in a comment is not a call\n",
        encoding="utf-8")
    assert constructors_outside_factory(core) == [
        "core/state/tables.py:2: service = TableServiceClient.from_connection_string(text)  # a client of its own",
        "core/state/tables.py:3: mgmt = StorageManagementClient(credential, subscription)",
    ]
