"""What a reader of a target sees of vaultrelay's tags: its marks, and a fingerprint keyed for that
target and secret alone.  Equal values in two secrets or two targets show unrelated tags, none is
the state's own fingerprint of the value, and no unkeyed digest of a guessed value matches one: a
reader who knows (or guesses) a value cannot find where else it is, nor test guesses offline."""

from __future__ import annotations

import hashlib
import hmac

from core.state.fingerprints import Fingerprinter
from sandbox.client import SandboxClient
from tests.configs import body_yaml, keyvault_target, secret_ref
from tests.world import World

SHARED = "the-same-value-123"


def test_equal_values_show_unrelated_fingerprint_tags(seeded: SandboxClient) -> None:
    world = World(seeded)
    source = world.secret("shared", SHARED)
    body = body_yaml(envs={"app": {"ONE": secret_ref(source), "TWO": secret_ref(source)}},
                     targets={"first": keyvault_target("app", prefix="vr-TAG-a-"), "second": keyvault_target("app", prefix="vr-TAG-b-")})
    engine = world.engine(body)
    assert engine.sync().ok
    secrets = [world.target.get_secret(f"vr-{world.tag}-{t}-{v}") for t in ("a", "b") for v in ("one", "two")]
    assert {s.value for s in secrets} == {SHARED}
    tags = [s.properties.tags["vaultrelay-fingerprint"] for s in secrets]
    assert len(set(tags)) == 4  # two secrets of one target, and the same secret name in two targets

    # Not what state (push records, audit) holds for the value, so the two cannot be joined either.
    state_fingerprint = engine.fingerprinter.of(SHARED)
    assert state_fingerprint not in tags
    record = engine.state.get("pushes", "app", "first")
    assert record is not None and record.json("fingerprints")["ONE"] == state_fingerprint

    # A reader's offline guesses: unkeyed digests of the value (with or without the name) match nothing.
    for secret, tag in zip(secrets, tags, strict=True):
        for message in (SHARED, f"{secret.name}\0{SHARED}", f"{secret.name.lower()}\0{SHARED}"):
            guesses = {hashlib.sha256(message.encode()).hexdigest()[:32], hmac.new(b"", message.encode(), hashlib.sha256).hexdigest()[:32]}
            assert tag not in guesses


def test_derived_fingerprinters_are_unrelated() -> None:
    root = Fingerprinter(b"k" * 32)
    one, two = root.derive("target\0one"), root.derive("target\0two")
    assert len({root.of("v"), one.of("v"), two.of("v")}) == 3
    assert root.derive("target\0one").of("v") == one.of("v")  # stable: the same purpose, the same key
    assert repr(one) == "Fingerprinter(key='***')"
