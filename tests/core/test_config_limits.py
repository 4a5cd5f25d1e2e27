"""Config size: a file is bounded by what it expands to (nodes and bytes of text, aliases
included), refused cleanly within a small memory bound; access lists are normalized once at load."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from core.config import parse_config
from core.config.loader import MAX_EXPANDED_BYTES, load_config
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _aliased_string_config(copies: int, size: int, *, dollars: bool = True) -> str:
    """A 1 MB string (with a `$$`, which interpolation rewrites into a new string per alias)
    aliased `copies` times: the file stays ~1 MB, its expansion is copies x 1 MB."""
    text = ("$$" if dollars else "") + "a" * size
    lines = ["version: 1", "secretStores:", "  azure: {type: azure.managed_identity}", "envs:", "  prod:", f"    V0: &big {text}"]
    lines += [f"    V{i}: *big" for i in range(1, copies)]
    return "\n".join(lines) + "\n"


# Loads `argv[1]` with the CLI's validate, reports the exit code, stderr and peak RSS as JSON (VmHWM:
# the high-water mark of this program's memory; ru_maxrss would include the forked test process's).
_CHILD = """
import io, json, sys
from core.cli import main
err = io.StringIO()
code = main(["--config", sys.argv[1], "validate"], stdout=io.StringIO(), stderr=err)
with open("/proc/self/status") as status:
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"code": code, "stderr": err.getvalue(), "peak_mib": peak_kb / 1024}))
"""


def test_a_1_mb_string_aliased_3000_times_is_refused_with_exit_2_within_a_small_memory_bound(tmp_path: Path) -> None:
    path = tmp_path / "aliases.yaml"
    path.write_text(_aliased_string_config(3000, 1_000_000))
    assert path.stat().st_size < 1_100_000

    def limit() -> None:  # before the bound, interpolating the copies needed 3 GB
        resource.setrlimit(resource.RLIMIT_AS, (1536 * 1024 * 1024, 1536 * 1024 * 1024))

    child = subprocess.run([sys.executable, "-c", _CHILD, str(path)], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, preexec_fn=limit, check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    outcome = json.loads(child.stdout.strip().splitlines()[-1])
    assert outcome["code"] == 2
    assert f"{path}:" in outcome["stderr"]
    assert f"expands to more than {MAX_EXPANDED_BYTES:,} bytes" in outcome["stderr"]
    assert "Traceback" not in outcome["stderr"]
    assert outcome["peak_mib"] < 150, outcome  # an interpreter with the CLI imported is ~60 MiB


def test_the_refusal_allocates_little_more_than_the_file(tmp_path: Path) -> None:
    path = tmp_path / "aliases.yaml"
    path.write_text(_aliased_string_config(3000, 1_000_000))
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    [problem] = caught.value.problems
    assert problem.file == str(path) and problem.line is not None and "expands to more than" in problem.message
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while refusing a 1 MB file"


def test_aliases_without_a_dollar_are_bounded_too_and_a_config_under_the_bound_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expands to more than"):
        parse_config(_aliased_string_config(3000, 1_000_000, dollars=False), "plain.yaml", environ={})
    # the same string aliased 10 times (10 MB of text) is a config like any other
    loaded = parse_config(_aliased_string_config(10, 1_000_000), "ten.yaml", environ={})
    assert len(loaded.config.envs["prod"]) == 10


def test_nested_aliases_count_their_expanded_bytes(tmp_path: Path) -> None:
    row = "x" * 100_000
    text = textwrap.dedent(f"""\
        version: 1
        secretStores: {{azure: {{type: azure.managed_identity}}}}
        a0: &a0 [{row}, {row}, {row}, {row}, {row}, {row}, {row}, {row}, {row}, {row}]
        a1: &a1 [*a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0]
        a2: &a2 [*a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1]
        """)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "nested.yaml", environ={})
    assert "bytes of text" in str(caught.value) and "nested.yaml:5" in str(caught.value)


def test_access_lists_and_admins_are_normalized_once_at_load() -> None:
    loaded = parse_config(textwrap.dedent("""\
        version: 1
        secretStores: {azure: {type: azure.managed_identity}}
        envs: {prod: {LOG_LEVEL: info}}
        access:
          prod: ["  6F1C2A4E-0B7D-4C55-9A1E-3D2F8B9C0A11 ", "6f1c2a4e-0b7d-4c55-9a1e-3d2f8b9c0a11", "APP-ID", " "]
        api:
          admins: [" ADMIN-OID "]
        """), "access.yaml", environ={})
    config = loaded.config
    assert config.access == {"prod": ["6f1c2a4e-0b7d-4c55-9a1e-3d2f8b9c0a11", "app-id"]}
    assert config.api.admins == ["admin-oid"]
    # the sets requests are matched against are built once per loaded config
    assert config.access_ids is config.access_ids
    assert config.access_ids == {"prod": frozenset({"6f1c2a4e-0b7d-4c55-9a1e-3d2f8b9c0a11", "app-id"})}
    assert config.api.admin_ids is config.api.admin_ids and config.api.admin_ids == frozenset({"admin-oid"})
