"""State in Azure Table Storage: push records, rotations, events, leases, audit."""

from core.state.fingerprints import Fingerprinter
from core.state.tables import Conflict, Lease, Row, StateStore, StateUnavailable

__all__ = ["Conflict", "Fingerprinter", "Lease", "Row", "StateStore", "StateUnavailable"]
