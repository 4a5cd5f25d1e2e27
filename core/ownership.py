"""The tag that marks what vaultrelay wrote: `managed-by: vaultrelay`.

Pushed secrets, minted SAS, kept delegation keys and the fingerprint key carry it; an item
without it is never overwritten or deleted, and a tagged secret that has it is not rotated as
one of Microsoft's sample-tagged secrets.
"""

MANAGED_BY = "managed-by"
MANAGED_BY_VALUE = "vaultrelay"
# The same mark in blob metadata, whose names must be C# identifiers (no hyphen).
MANAGED_BY_METADATA = "managed_by"
