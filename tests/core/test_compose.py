"""Composed values and reference transforms, without the network: the template stage over a
bundle, its validation (unknown names, cycles, with file:line and YAML path), and the two
properties the issue asks for: no input value ever appears in an error, and unchanged inputs give
an unchanged bundle (so zero writes)."""

from __future__ import annotations

import base64
import json
import textwrap
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.bundle import Bundle, ResolutionFailure, ResolvedValue
from core.compose import ComposeError, Composition, compose_bundle, render
from core.config.loader import parse_config
from core.errors import ConfigError
from core.plan import plan_env
from core.push import SyncEngine
from core.sources.transforms import TransformError, apply_transforms, extract
from core.state.fingerprints import Fingerprinter
from core.state.tables import Row
from core.targets.base import DesiredItem, Snapshot


def load(body: str):  # type: ignore[no-untyped-def]
    text = "secretStores:\n  azure: {type: azure.managed_identity}\n" + textwrap.dedent(body)
    return parse_config(text, "vr.yaml", environ={})


def problems_of(body: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(body)
    return [f"{p.line}: {p.path}: {p.message}" for p in caught.value.problems]


def composition(template: str, *deps: str, name: str = "OUT") -> Composition:
    return Composition(name, f"envs.e.{name}.template", template, tuple(sorted(deps)))


def bundle_of(**values: str) -> Bundle:
    bundle = Bundle("e")
    for name, value in values.items():
        bundle.values[name] = ResolvedValue.literal(name, value)
    return bundle


# ---- rendering and filters ---------------------------------------------------------------------
def test_connection_string_with_urlencoded_password() -> None:
    text = render(composition("postgresql://app:{{ PW | urlencode }}@db.internal:5432/app?sslmode=require", "PW"),
                  {"PW": "p@ss/w:rd?&="})
    assert text == "postgresql://app:p%40ss%2Fw%3Ard%3F%26%3D@db.internal:5432/app?sslmode=require"


def test_filters() -> None:
    inputs = {"A": "  hé llo ", "B": base64.b64encode(b"decoded!").decode(), "E": ""}
    assert render(composition("{{ A | trim }}", "A"), inputs) == "hé llo"
    assert render(composition("{{ A | b64encode }}", "A"), inputs) == base64.b64encode("  hé llo ".encode()).decode()
    assert render(composition("{{ B | b64decode }}", "B"), inputs) == "decoded!"
    assert json.loads(render(composition('{"a": {{ A | json }}}', "A"), inputs)) == {"a": "  hé llo "}
    assert render(composition("{{ '<&>' | tojson }}"), inputs) == '"<&>"'  # plain JSON, not HTML-escaped
    assert render(composition("{{ E | default('fallback', true) }}", "E"), inputs) == "fallback"


def test_sandbox_refuses_python_internals() -> None:
    with pytest.raises(ComposeError, match=r"sandbox forbids|does not exist"):
        render(composition("{{ A.__class__.__mro__[1].__subclasses__() }}", "A"), {"A": "x"})


def test_composed_value_expires_with_its_earliest_input_and_is_masked() -> None:
    soon, later = datetime.now(UTC) + timedelta(hours=1), datetime.now(UTC) + timedelta(days=9)
    bundle = Bundle("e")
    bundle.values["SAS"] = ResolvedValue("SAS", ResolvedValue.literal("x", "sv=1&sig=abc").value, "sas", "azure", "mi", expires_on=soon)
    bundle.values["KEY"] = ResolvedValue("KEY", ResolvedValue.literal("x", "k").value, "kv", "azure", "mi", expires_on=later)
    compose_bundle(bundle, {"URL": composition("https://a/?{{ SAS }}&{{ KEY }}", "SAS", "KEY", name="URL")})
    url = bundle.values["URL"]
    assert url.expires_on == soon and url.source == "template over KEY, SAS"
    assert "sig=abc" not in repr(url) and str(url.value) == "SecretValue('***')"
    assert bundle.as_plain_dict()["URL"] == "https://a/?sv=1&sig=abc&k"


def test_templates_over_templates_render_in_dependency_order_and_failures_propagate() -> None:
    bundle = bundle_of(A="a")
    bundle.failures["GONE"] = ResolutionFailure("GONE", "envs.e.GONE.from", "not_found", "secret 'x' not found")
    compose_bundle(bundle, {
        "C": composition("{{ B }}-c", "B", name="C"),
        "B": composition("{{ A }}-b", "A", name="B"),
        "D": composition("{{ GONE }}", "GONE", name="D"),
        "F": composition("{{ D }}", "D", name="F"),
    })
    assert bundle.as_plain_dict()["C"] == "a-b-c"
    assert bundle.failures["D"].reason == "dependency" and "GONE" in bundle.failures["D"].message
    assert bundle.failures["F"].reason == "dependency"


# ---- validation --------------------------------------------------------------------------------
def test_validate_reports_unknown_names_cycles_and_bad_templates_with_lines() -> None:
    found = problems_of("""\
        envs:
          production:
            PW: {from: {store: azure, vault: kv-source, secret: db}}
            URL:
              template: "x{{ PW | urlencode }}{{ NOPE }}"
            A: {template: "{{ B }}"}
            B: {template: "{{ C }}"}
            C: {template: "{{ A }}"}
            F: {template: "{{ PW | shout }}"}
            G: {template: "{{ PW "}
            H: {template: "{{ H }}"}
        """)
    assert "7: envs.production.URL.template: the template uses NOPE, which env 'production' does not have (variables: A, B, C, F, G, H, PW)" in found
    assert "8: envs.production.A.template: templates form a cycle: A -> B -> C -> A" in found
    assert any(p.startswith("11: envs.production.F.template: unknown filter shout") for p in found)
    assert any(p.startswith("12: envs.production.G.template: the template does not parse") for p in found)
    assert "13: envs.production.H.template: the template uses H itself" in found


def test_a_variable_is_exactly_one_of_literal_from_template() -> None:
    found = problems_of("""\
        envs:
          e:
            X: {template: "a", from: {store: azure, vault: kv-source, secret: db}}
        """)
    assert any("one of from: or template:" in p for p in found)


def test_plan_lists_dependencies_and_transforms() -> None:
    loaded = load("""\
        envs:
          e:
            DOC: {from: {store: azure, vault: kv-source, secret: doc, property: db.password}}
            RAW: {from: {store: azure, vault: kv-source, secret: doc}}
            HOST: db.internal
            URL: {template: "{{ DOC }}@{{ HOST }}"}
        """)
    plan = plan_env(loaded, "e")
    assert plan.composed["URL"].depends_on == ("DOC", "HOST")
    doc = next(r for r in plan.refs if r.name == "DOC")
    raw = next(r for r in plan.refs if r.name == "RAW")
    assert doc.transforms == (("property", "db.password"),) and doc.dedup_key == raw.dedup_key  # one fetch
    assert doc.description.endswith("| property db.password")


def test_transform_keys_apply_to_key_vault_references_only() -> None:
    found = problems_of("""\
        envs:
          e:
            K: {from: {store: azure, resource_type: storage, account: acct, property: a}}
            D: {from: {store: azure, vault: kv-source, secret: doc, decode: base32}}
        """)
    assert any("5: envs.e.K.from.property: property does not apply to a storage key reference" in p for p in found)
    assert any(p.startswith("6: envs.e.D.from.decode") for p in found)


# ---- transforms --------------------------------------------------------------------------------
def test_property_extracts_nested_keys_and_names_what_is_missing() -> None:
    doc = json.dumps({"db": {"password": "hunter2-SECRET", "port": 5432, "hosts": ["a", "b"]}})
    assert extract(doc, "db.password") == "hunter2-SECRET"
    assert extract(doc, "db.port") == "5432"
    assert extract(doc, "db.hosts.1") == "b"
    assert json.loads(extract(doc, "db")) == {"hosts": ["a", "b"], "password": "hunter2-SECRET", "port": 5432}
    with pytest.raises(TransformError) as missing:
        extract(doc, "db.user")
    assert str(missing.value) == "property db.user: key 'user' is missing in db (keys there: hosts, password, port)"
    with pytest.raises(TransformError) as deeper:
        extract(doc, "db.password.x")
    assert "hunter2" not in str(deeper.value) and "db.password is a string" in str(deeper.value)
    with pytest.raises(TransformError, match="not a JSON document"):
        extract("hunter2-SECRET", "a")


def test_decode_then_property_then_encode() -> None:
    doc = base64.b64encode(json.dumps({"k": "v1"}).encode()).decode()
    assert apply_transforms(doc, (("decode", "base64"), ("property", "k"), ("encode", "base64"))) == base64.b64encode(b"v1").decode()
    with pytest.raises(TransformError, match="not base64"):
        apply_transforms("not base64!", (("decode", "base64"),))


# ---- properties --------------------------------------------------------------------------------
TEMPLATES = [
    "{{ A | b64decode }}", "{{ A.missing }}", "{{ A[B] }}", "{{ A + 1 }}", "{{ A | int / 0 }}", "{{ B | b64decode | b64decode }}",
    "{{ A.__class__ }}", "{{ A | json | b64decode }}", "{{ A }}{{ B | urlencode }}", "{{ (A ~ B) | b64decode }}",
    "{% for c in A %}{{ c.nope }}{% endfor %}", "{{ A.encode() }}", "{{ A.format(B) }}", "{{ A[0:2] | b64decode }}",
]

secret_text = st.text(min_size=8, max_size=40)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(template=st.sampled_from(TEMPLATES), a=secret_text, b=secret_text)
@example(template="{{ A | b64decode }}", a="xxtionFailxx", b="zzzzzzzz")  # spells a piece of ResolutionFailure: not a leak
def test_no_input_value_ever_appears_in_a_template_error(template: str, a: str, b: str) -> None:
    bundle = bundle_of(A=a, B=b)
    compose_bundle(bundle, {"OUT": composition(template, "A", "B")})
    failure = bundle.failures.get("OUT")
    if failure is None:
        return
    fixed = template + "".join(_fixed_texts(template, len(a), len(b)))  # what the error says whatever the values
    for text in (str(failure), failure.message, repr(failure)):
        assert a not in text and b not in text
        for value in (a, b):  # nor a recognisable part of one (an 8-character window)
            assert not any(value[i:i + 8] in text for i in range(len(value) - 7) if value[i:i + 8] not in fixed)


def _fixed_texts(template: str, len_a: int, len_b: int) -> list[str]:
    """The error's own wording for this template (class name, message skeleton), taken from runs
    with neutral values: an input that happens to spell a piece of it (say "tionFail" of
    ResolutionFailure) is not a leak."""
    texts = []
    for a, b in (("\x00" * len_a, "\x00" * len_b), ("aGVsbG8=" * (len_a // 8 + 1), "aGVsbG8=" * (len_b // 8 + 1))):
        bundle = bundle_of(A=a, B=b)
        compose_bundle(bundle, {"OUT": composition(template, "A", "B")})
        failure = bundle.failures.get("OUT")
        if failure is not None:
            texts += [str(failure), repr(failure)]
    return texts


class _Writer:
    whole_bundle = False
    stamped = False


@settings(max_examples=150, deadline=None)
@given(values=st.dictionaries(st.sampled_from(["A", "B", "C"]), st.text(max_size=30), min_size=3, max_size=3),
       template=st.sampled_from(["{{ A }}:{{ B | urlencode }}@{{ C | b64encode }}", "{{ A | trim }}{{ B | json }}", "{{ C | default('x', true) }}"]))
def test_unchanged_inputs_give_zero_writes(values: dict[str, str], template: str) -> None:
    fingerprinter = Fingerprinter(b"k" * 32)
    compositions = {"OUT": composition(template, "A", "B", "C")}

    def desired() -> dict[str, DesiredItem]:
        bundle = bundle_of(**values)
        compose_bundle(bundle, compositions)
        return {n: DesiredItem(n, v.value, fingerprinter.of(v.value), v.expires_on, v.content_type) for n, v in bundle.values.items()}

    first = desired()
    record = Row("e", "t")
    record.set_json("fingerprints", {n: d.fingerprint for n, d in first.items()})
    snapshot = Snapshot(fingerprints={n: d.fingerprint for n, d in first.items()})
    diff = SyncEngine._diff(_Writer(), desired(), record, snapshot)
    assert diff.change.empty and not diff.drift

    changed = dict(values, A=values["A"] + "!")
    bundle = bundle_of(**changed)
    compose_bundle(bundle, compositions)
    again = {n: DesiredItem(n, v.value, fingerprinter.of(v.value)) for n, v in bundle.values.items()}
    diff = SyncEngine._diff(_Writer(), again, record, snapshot)
    composed_changed = bundle.as_plain_dict()["OUT"] != first["OUT"].value.reveal()
    assert ("OUT" in diff.change.updates) == composed_changed  # pushed exactly when the composed value changes
    assert "A" in diff.change.updates
