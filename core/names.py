"""Azure's naming rules that more than one part of vaultrelay checks (config, sources)."""

GUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
STORAGE_ACCOUNT = r"^[a-z0-9]{3,24}$"
COSMOS_ACCOUNT = r"^[a-z0-9][a-z0-9-]{1,42}[a-z0-9]$"
