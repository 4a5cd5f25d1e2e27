"""The push diff, pure (no sandbox): what to write, what drifted, from the push record and a
target's snapshot.  Writers here are plain objects declaring the writer features the diff reads
(`whole_bundle`, `stamped`, `holds`); nothing is pushed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from core.push import SyncEngine
from core.state.tables import Row
from core.targets.base import DesiredItem, Snapshot

diff = SyncEngine._diff

NAMES = st.sets(st.sampled_from([f"V{i}" for i in range(8)]), max_size=8)
FPS = st.sampled_from(["fp-a", "fp-b", "fp-c"])


@dataclass
class Writer:
    whole_bundle: bool = False
    stamped: bool = False
    held: frozenset[str] = frozenset()  # what `holds` answers (the names that hold exactly the desired content)

    def holds(self, desired: dict[str, DesiredItem], names: set[str]) -> set[str]:
        if self.whole_bundle:
            return set(desired) if self.held else set()
        return set(names) & set(self.held)


def desired_of(fingerprints: dict[str, str]) -> dict[str, DesiredItem]:
    return {n: DesiredItem(name=n, value=object(), fingerprint=fp) for n, fp in fingerprints.items()}


def record_of(fingerprints: dict[str, str], *, stamps: dict[str, str] | None = None, etag: str | None = None) -> Row:
    row = Row("env", "target", {"pushed_at": "2026-01-01T00:00:00Z"})
    row.set_json("fingerprints", fingerprints)
    if stamps is not None:
        row.set_json("stamps", stamps)
    if etag is not None:
        row.fields["target_etag"] = etag
    return row


@st.composite
def histories(draw: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(recorded fingerprints, desired fingerprints) over the same small name space."""
    recorded = {n: draw(FPS) for n in draw(NAMES)}
    desired = {n: draw(FPS) for n in draw(NAMES)}
    return recorded, desired


def expected_change(recorded: dict[str, str], desired: dict[str, str]) -> tuple[set[str], set[str], set[str]]:
    adds = set(desired) - set(recorded)
    updates = {n for n in desired if n in recorded and recorded[n] != desired[n]}
    return adds, updates, set(recorded) - set(desired)


@given(histories())
def test_by_value_target_as_left_changes_exactly_what_the_fingerprints_say(history: tuple[dict[str, str], dict[str, str]]) -> None:
    recorded, desired = history
    # The target holds what vaultrelay pushed last (app settings: read with their values).
    snapshot = Snapshot(fingerprints={**{n: None for n in desired}, **recorded})
    result = diff(Writer(), desired_of(desired), record_of(recorded), snapshot)
    adds, updates, removals = expected_change(recorded, desired)
    assert (set(result.change.adds), set(result.change.updates), set(result.change.removals)) == (adds, updates, removals)
    assert result.drift == set()


@given(histories())
def test_an_unchanged_env_is_an_empty_change_for_every_writer_shape(history: tuple[dict[str, str], dict[str, str]]) -> None:
    recorded, _ = history
    stamps = {n: f"stamp-{n}" for n in recorded}
    by_value = diff(Writer(), desired_of(recorded), record_of(recorded), Snapshot(fingerprints=dict(recorded)))
    stamped = diff(Writer(stamped=True), desired_of(recorded), record_of(recorded, stamps=stamps), Snapshot(stamps=dict(stamps)))
    whole = diff(Writer(whole_bundle=True), desired_of(recorded), record_of(recorded, etag="e1"), Snapshot(etag="e1"))
    for result in (by_value, stamped, whole):
        assert result.change.empty and result.drift == set(), result


@given(histories(), st.data())
def test_a_stamp_changed_since_vaultrelays_write_is_drift_unless_it_holds_what_would_be_written(
    history: tuple[dict[str, str], dict[str, str]], data: st.DataObject,
) -> None:
    recorded, desired = history
    stamps = {n: f"stamp-{n}" for n in recorded}
    edited = data.draw(st.sets(st.sampled_from(sorted(recorded))) if recorded else st.just(set()))
    held = data.draw(st.sets(st.sampled_from(sorted(edited))) if edited else st.just(set()))
    current = {n: ("edited" if n in edited else stamps[n]) for n in recorded}
    writer = Writer(stamped=True, held=frozenset(held))
    result = diff(writer, desired_of(desired), record_of(recorded, stamps=stamps), Snapshot(stamps={**{n: None for n in desired if n not in recorded}, **current}))
    held_and_desired = held & set(desired)
    assert result.drift == edited - held_and_desired
    adds, updates, removals = expected_change(recorded, desired)
    assert set(result.change.adds) == adds - held_and_desired and set(result.change.updates) == updates - held_and_desired
    assert set(result.change.removals) == removals


@given(histories())
def test_a_name_that_is_not_vaultrelays_is_never_drift(history: tuple[dict[str, str], dict[str, str]]) -> None:
    recorded, desired = history
    stamps = {n: f"stamp-{n}" for n in recorded}
    snapshot = Snapshot(stamps={n: "someone-elses" for n in recorded}, foreign=set(recorded))
    result = diff(Writer(stamped=True), desired_of(desired), record_of(recorded, stamps=stamps), snapshot)
    assert result.drift == set()


def test_a_secret_deleted_by_hand_is_drift_and_a_removal_already_gone_is_not_pushed() -> None:
    recorded = {"A": "fp-a", "B": "fp-b"}
    stamps = {"A": "s-a", "B": "s-b"}
    result = diff(Writer(stamped=True), desired_of({"A": "fp-a"}), record_of(recorded, stamps=stamps), Snapshot(stamps={"A": None, "B": None}))
    assert result.drift == {"A", "B"}  # a deletion by hand is drift (docs/config.md), whether or not the env still has it
    assert result.change.empty  # B is removed from the env and already gone: nothing to delete


@given(histories(), st.sampled_from(["same", "changed", "gone"]), st.booleans())
def test_whole_bundle_drift_is_the_whole_content(history: tuple[dict[str, str], dict[str, str]], target: str, holds: bool) -> None:
    recorded, desired = history
    snapshot = {"same": Snapshot(etag="e1"), "changed": Snapshot(etag="e2"), "gone": Snapshot(exists=False)}[target]
    result = diff(Writer(whole_bundle=True, held=frozenset({"x"} if holds else set())), desired_of(desired), record_of(recorded, etag="e1"), snapshot)
    adds, updates, removals = expected_change(recorded, desired)
    if target == "same":
        assert result.drift == set() and (set(result.change.adds), set(result.change.updates), set(result.change.removals)) == (adds, updates, removals)
    elif target == "changed" and holds and desired:  # (an empty bundle answers set(): nothing to hold)
        assert result.drift == set() and result.change.empty and result.etag == "e2"  # holds what would be written: adopted
    else:
        assert result.drift == {"(content)"}


def test_a_first_push_adds_everything_and_nothing_is_drift() -> None:
    desired = {"A": "fp-a", "B": "fp-b"}
    for writer, snapshot in ((Writer(), Snapshot(fingerprints={"A": None, "B": None})),
                             (Writer(stamped=True), Snapshot(stamps={"A": None, "B": None})),
                             (Writer(whole_bundle=True), Snapshot(exists=False))):
        result = diff(writer, desired_of(desired), None, snapshot)
        assert set(result.change.adds) == {"A", "B"} and not result.change.updates and not result.change.removals
        assert result.drift == set()
