"""Scenario 7, "bad input": property-based fuzzing of what reaches vaultrelay from outside.

* The config loader (`core.config.parse_config` / `load_config`): random YAML text, random YAML
  documents, valid configs with values of the wrong type, and three hostile files run each in a
  child process under a time limit and an address-space cap: a huge file (20 MB), nesting 10,000
  levels deep and a billion-laughs alias bomb.  Only `ConfigError` (with `file:line: path`
  messages) may come out; peak memory is measured (tracemalloc in process, RSS of the children).
  Generated VALID configs (stores, envs of literals and Key Vault references, targets) must load
  without a problem, and each one mutated at one place (a bad name, an out-of-range number, an
  unknown store or env, an unknown type) must give a `ConfigError` naming that YAML path.
* The HTTP API (the functions of functions/http_api.py, called with real `azure.functions`
  requests, served by one `core.runtime.LiveRuntime`) with random env names, queries, headers
  and tokens: never a 500, never a traceback or an exception in a body.  Then with a valid token
  of a caller allowed to fetch the env: random `format`, `Accept` and other headers give 200, 400
  or 406 only, and no error body holds the env's secret value.
* Key Vault event bodies (`core.app.events.handle_event`) with random JSON and near-valid events:
  acknowledged (an outcome) or rejected cleanly, never an exception.

Hypothesis runs derandomized with a bounded number of examples (more in the long form).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resilience.common import ScenarioContext, ScenarioResult

NAME = "bad input"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
AUDIENCE = "api://vaultrelay-fuzz"
CHILD_TIMEOUT_S = 20.0
CHILD_ADDRESS_SPACE = 2 * 1024**3  # a child that needs more than this fails with MemoryError, not the machine
SLOW_S = 2.0  # one in-process example taking longer than this is a violation
MAX_CHILD_RSS_MB = 400

_CHILD = """
import json, sys, time
started = time.monotonic()
try:
    from core.config import load_config
    from core.errors import ConfigError
    load_config(sys.argv[1], environ={})
    outcome = {"outcome": "ok"}
except ConfigError as exc:
    outcome = {"outcome": "config_error", "message": str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)}
except BaseException as exc:
    outcome = {"outcome": "exception", "type": type(exc).__name__, "message": str(exc)[:200]}
outcome["seconds"] = round(time.monotonic() - started, 2)
with open("/proc/self/status") as status:  # VmHWM: this interpreter's peak RSS (rusage would include the parent's at fork)
    outcome["peak_kb"] = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
print(json.dumps(outcome))
"""


def run(ctx: ScenarioContext) -> ScenarioResult:
    result = ScenarioResult(NAME)
    examples = 600 if ctx.long else 120
    _hostile_files(ctx, result)
    _config_properties(ctx, result, examples)
    api, cleanup, value = _api(ctx)
    try:
        _http_properties(ctx, result, api, examples)
        _allowed_http_properties(ctx, result, api, examples, value)
        _event_properties(ctx, result, api, examples)
    finally:
        cleanup()
    return result


# ---- the config loader ----------------------------------------------------------------------
def _hostile_files(ctx: ScenarioContext, result: ScenarioResult) -> None:
    depth = 10_000
    variables = "\n".join(f"    V{i:07d}: value-{i:07d}-{'x' * 40}" for i in range(330_000))
    cases = {
        "huge (20 MB)": "version: 1\nsecretStores:\n  a: {type: azure.managed_identity}\nenvs:\n  big:\n" + variables + "\n",
        "deep flow nesting (10,000)": "envs: " + "[" * depth + "]" * depth + "\n",
        "deep block nesting (10,000)": "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + f"{'  ' * depth}end\n",
        "billion laughs": _alias_bomb(),
        "alias bomb in envs": _alias_bomb(prefix="version: 1\nsecretStores:\n  a: {type: azure.managed_identity}\nenvs:\n"),
    }
    peak_rss = 0.0
    for label, text in cases.items():
        path = ctx.workdir / f"hostile-{len(text)}-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(text)
        outcome, seconds, rss_mb = _load_in_child(path)
        path.unlink()
        peak_rss = max(peak_rss, rss_mb)
        key = label.split(" (")[0]
        result.figures[f"config {key}: s"] = seconds
        result.figures[f"config {key}: peak RSS MB"] = round(rss_mb)
        result.figures[f"config {key}: outcome"] = outcome.get("outcome", "?")
        if outcome.get("outcome") == "config_error":
            ctx.observe(outcome.get("message", ""))
        result.check(outcome.get("outcome") == "config_error",
                     f"config {label}: expected a ConfigError, got {outcome.get('outcome')} {outcome.get('type', '')} {outcome.get('message', '')[:120]}")
        result.check(rss_mb <= MAX_CHILD_RSS_MB, f"config {label}: peak RSS {rss_mb:.0f} MB > {MAX_CHILD_RSS_MB} MB")
    result.figures["config hostile files: peak RSS MB"] = round(peak_rss)


def _alias_bomb(prefix: str = "", levels: int = 12) -> str:
    lines = [prefix + "  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]" if prefix else 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    indent = "  " if prefix else ""
    for i in range(1, levels):
        previous = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"{indent}a{i}: &a{i} [{previous}]")
    return "\n".join(lines) + "\n"


def _load_in_child(path: Path) -> tuple[dict[str, Any], float, float]:
    """(outcome, seconds, peak RSS in MB) of loading `path` in a fresh interpreter."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))

    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, preexec_fn=limit)
    assert child.stdout is not None
    deadline = started + CHILD_TIMEOUT_S
    while True:
        if child.poll() is not None:
            break
        if time.monotonic() > deadline:
            peak_kb = _peak_kb(child.pid)
            child.kill()
            child.wait()
            return {"outcome": "timeout", "message": f"no answer in {CHILD_TIMEOUT_S:g} s"}, CHILD_TIMEOUT_S, peak_kb / 1024
        time.sleep(0.05)
    seconds = round(time.monotonic() - started, 2)
    output = child.stdout.read().decode(errors="replace").strip().splitlines()
    child.stdout.close()
    try:
        outcome = json.loads(output[-1]) if output else {"outcome": "crashed", "message": f"exit {child.returncode}"}
    except ValueError:
        outcome = {"outcome": "crashed", "message": output[-1][:200]}
    return outcome, seconds, float(outcome.get("peak_kb", 0)) / 1024


def _peak_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def _valid_config() -> dict[str, Any]:
    return {
        "version": 1,
        "secretStores": {"azure": {"type": "azure.managed_identity", "performance": {"max_concurrent": 10}}},
        "envs": {"app": {"LOG_LEVEL": "info", "DB": {"from": {"store": "azure", "vault": "kv-source", "secret": "db"}},
                         "KEY": {"from": {"store": "azure", "resource_type": "storage", "account": "acct", "key": "key1"}}}},
        "targets": {"t": {"type": "keyvault", "env": "app", "store": "azure", "vault": "kv-target"}},
        "state": {"store": "azure", "account": "acct", "table_prefix": "vr"},
    }


def _config_properties(ctx: ScenarioContext, result: ScenarioResult, examples: int) -> None:
    import yaml
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from core.config import parse_config
    from core.errors import ConfigError

    counts = {"examples": 0, "config errors": 0, "accepted": 0}
    slowest = [0.0]
    peak = [0]
    problems: list[str] = []

    def check(text: str) -> None:
        counts["examples"] += 1
        tracemalloc.start()
        started = time.monotonic()
        try:
            parse_config(text, "fuzz.yaml", environ={})
            counts["accepted"] += 1
        except ConfigError as exc:
            counts["config errors"] += 1
            message = str(exc)
            ctx.observe(message)
            for problem in exc.problems:
                if not str(problem).startswith("fuzz.yaml"):
                    problems.append(f"config error without its file: {str(problem)[:120]!r}")
        except Exception as exc:  # the finding: anything but ConfigError
            problems.append(f"config {type(exc).__name__} for input {text[:80]!r}: {str(exc)[:120]}")
        finally:
            elapsed = time.monotonic() - started
            peak[0] = max(peak[0], tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            slowest[0] = max(slowest[0], elapsed)
            if elapsed > SLOW_S:
                problems.append(f"config took {elapsed:.1f} s for input {text[:80]!r}")

    fuzz = settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
                        st.dates(), st.binary(max_size=10))
    documents = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=10), st.integers(), st.booleans()), inner, max_size=4)),
        max_leaves=20)

    @fuzz
    @given(st.text(max_size=300))
    def random_text(text: str) -> None:
        check(text)

    @fuzz
    @given(st.lists(st.sampled_from(["version: 1\n", "envs:\n", "  app:\n", "    A: {from: {store: azure}}\n", "- x\n",
                                     "&a [1]\n", "*a\n", "? [k]\n: v\n", "!!python/object:os.system x\n", "${X}\n", "<<: *a\n",
                                     "\t", "  ", ":", "{", "[", "'", '"', "%YAML 1.1\n", "---\n", "...\n", "!!binary AAAA\n"]),
                    max_size=12))
    def yaml_fragments(parts: list[str]) -> None:
        check("".join(parts))

    @fuzz
    @given(documents)
    def random_documents(document: Any) -> None:
        check(yaml.safe_dump(document))

    @fuzz
    @given(st.data())
    def wrong_types(data: Any) -> None:
        config = _valid_config()
        for _ in range(data.draw(st.integers(1, 3))):
            path = data.draw(st.sampled_from(list(_leaf_paths(config))))
            _set(config, path, data.draw(documents))
        check(yaml.safe_dump(config))

    for prop in (random_text, yaml_fragments, random_documents, wrong_types):
        prop()
    _valid_config_properties(ctx, result, examples, fuzz)
    result.figures["config examples"] = counts["examples"]
    result.figures["config errors (clean)"] = counts["config errors"]
    result.figures["config accepted"] = counts["accepted"]
    result.figures["config slowest example s"] = round(slowest[0], 3)
    result.figures["config peak traced MB"] = round(peak[0] / 1024**2, 1)
    unique = sorted(set(problems))
    result.figures["config findings"] = len(unique)
    for problem in unique[:10]:
        result.violations.append(problem)


def _valid_configs() -> Any:
    """A hypothesis strategy of valid config documents (dicts), built within the model's rules."""
    from hypothesis import strategies as st

    names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
    vaults = st.from_regex(r"[a-z][a-z0-9]{2,20}", fullmatch=True)
    secrets = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9-]{0,30}", fullmatch=True)
    variables = st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True)
    literals = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="$", exclude_categories=("Cs", "Cc")), max_size=30)

    @st.composite
    def configs(draw: Any) -> dict[str, Any]:
        stores: dict[str, Any] = {}
        for store in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
            stores[store] = {"type": "azure.managed_identity"}
            if draw(st.booleans()):
                stores[store]["performance"] = {"max_concurrent": draw(st.integers(1, 256)), "batch_size": draw(st.integers(1, 1000))}
        envs: dict[str, Any] = {}
        for env in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
            envs[env] = {}
            for variable in draw(st.lists(variables, min_size=1, max_size=5, unique=True)):
                if draw(st.booleans()):
                    envs[env][variable] = draw(literals)
                else:
                    ref: dict[str, Any] = {"store": draw(st.sampled_from(sorted(stores))), "vault": draw(vaults), "secret": draw(secrets)}
                    if draw(st.integers(0, 3)) == 0:
                        ref["version"] = draw(st.from_regex(r"[0-9a-f]{32}", fullmatch=True))
                    envs[env][variable] = {"from": ref}
        config: dict[str, Any] = {"version": 1, "secretStores": stores, "envs": envs}
        targets = {f"t{i}": {"type": "keyvault", "env": env, "store": draw(st.sampled_from(sorted(stores))),
                             "vault": draw(vaults), "prefix": f"t{i}-"}
                   for i, env in enumerate(draw(st.lists(st.sampled_from(sorted(envs)), max_size=2)))}
        if targets:  # targets keep their state in Table Storage
            config["targets"] = targets
            config["state"] = {"store": draw(st.sampled_from(sorted(stores))),
                               "account": draw(st.from_regex(r"[a-z0-9]{3,24}", fullmatch=True)),
                               "table_prefix": draw(st.from_regex(r"[A-Za-z][A-Za-z0-9]{2,12}", fullmatch=True))}
        return config

    return configs()


# (what is mutated, how the path is chosen, the bad value): each must be a ConfigError naming the path.
_MUTATIONS: list[tuple[str, str, Any]] = [
    ("max_concurrent 0", "store.performance.max_concurrent", 0),
    ("max_concurrent 257", "store.performance.max_concurrent", 257),
    ("max_concurrent not a number", "store.performance.max_concurrent", "many"),
    ("unknown store type", "store.type", "azure.nope"),
    ("unknown store", "ref.store", "no-such-store"),
    ("vault name too short", "ref.vault", "kv"),
    ("vault name with an underscore", "ref.vault", "kv_source"),
    ("vault name starting with a digit", "ref.vault", "1vault"),
    ("secret name with a space", "ref.secret", "db password"),
    ("secret name too long", "ref.secret", "s" * 128),
    ("version not hex", "ref.version", "not-a-version"),
    ("variable not a string or reference", "var", [1, 2]),
    ("target of an unknown env", "target.env", "no-such-env"),
    ("target vault name", "target.vault", "v"),
    ("unknown target type", "target.type", "kv"),
]


def _mutation_path(config: dict[str, Any], kind: str, data: Any) -> tuple[str, ...] | None:
    """A path of `config` where a mutation of `kind` applies (drawn with hypothesis), or None."""
    from hypothesis import strategies as st

    stores = sorted(config["secretStores"])
    refs = [(env, variable) for env, variables in sorted(config["envs"].items())
            for variable, value in sorted(variables.items()) if isinstance(value, dict)]
    if kind.startswith("store."):
        return ("secretStores", data.draw(st.sampled_from(stores)), *kind.split(".")[1:])
    if kind.startswith("ref."):
        if not refs:
            return None
        env, variable = data.draw(st.sampled_from(refs))
        return ("envs", env, variable, "from", kind.split(".")[1])
    if kind == "var":
        env = data.draw(st.sampled_from(sorted(config["envs"])))
        return ("envs", env, data.draw(st.sampled_from(sorted(config["envs"][env]))))
    if kind.startswith("target."):
        if not config.get("targets"):
            return None
        return ("targets", data.draw(st.sampled_from(sorted(config["targets"]))), kind.split(".")[1])
    raise AssertionError(kind)


def _valid_config_properties(ctx: ScenarioContext, result: ScenarioResult, examples: int, fuzz: Any) -> None:
    import yaml
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from core.config import parse_config
    from core.errors import ConfigError

    counts = {"valid loaded": 0, "mutations": 0, "mutations named": 0}
    problems: list[str] = []
    fuzz = settings(fuzz, max_examples=max(1, examples // 2))  # building a valid config is the slow part

    @fuzz
    @given(_valid_configs())
    def valid(config: dict[str, Any]) -> None:
        text = yaml.safe_dump(config, sort_keys=False)
        try:
            parse_config(text, "valid.yaml", environ={})
            counts["valid loaded"] += 1
        except ConfigError as exc:
            ctx.observe(str(exc))
            problems.append(f"a valid config was refused: {str(exc).splitlines()[-1].strip()[:160]}")
        except Exception as exc:
            problems.append(f"a valid config raised {type(exc).__name__}: {str(exc)[:120]}")

    @fuzz
    @given(_valid_configs(), st.sampled_from(_MUTATIONS), st.data())
    def mutated(config: dict[str, Any], mutation: tuple[str, str, Any], data: Any) -> None:
        label, kind, bad = mutation
        path = _mutation_path(config, kind, data)
        if path is None:  # nothing of that kind in this config
            return
        current: Any = config
        for key in path[:-1]:
            current = current.setdefault(key, {})
        current[path[-1]] = bad
        dotted = ".".join(path)
        counts["mutations"] += 1
        try:
            parse_config(yaml.safe_dump(config, sort_keys=False), "mutated.yaml", environ={})
        except ConfigError as exc:
            ctx.observe(str(exc))
            if any(problem.path == dotted or problem.path.startswith(dotted + ".") for problem in exc.problems):
                counts["mutations named"] += 1
            else:
                problems.append(f"{label} at {dotted}: the ConfigError names {[p.path for p in exc.problems][:3]}")
        except Exception as exc:
            problems.append(f"{label} at {dotted}: {type(exc).__name__}: {str(exc)[:120]}")
        else:
            problems.append(f"{label} at {dotted}: accepted")

    valid()
    mutated()
    result.figures["config valid generated, loaded"] = counts["valid loaded"]
    result.figures["config mutations"] = counts["mutations"]
    result.figures["config mutations named by path"] = counts["mutations named"]
    result.check(counts["valid loaded"] > 0, "no valid config was generated")
    result.check(counts["mutations"] > 0, "no mutation was applied")
    unique = sorted(set(problems))
    result.figures["config valid/mutation findings"] = len(unique)
    result.violations.extend(unique[:10])


def _leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> Any:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaf_paths(item, (*path, key))


def _set(config: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    if not path:
        config.clear()
        config["version"] = value
        return
    current: Any = config  # paths come from _leaf_paths of this very config: they exist
    for key in path[:-1]:
        current = current[key]
    current[path[-1]] = value


# ---- the HTTP API and events -----------------------------------------------------------------
class _Answer:
    def __init__(self, response: Any) -> None:
        self.status = int(response.status_code)
        self.body = bytes(response.get_body())
        self.media_type = str(response.mimetype)


class _Served:
    """The HTTP functions of functions/http_api.py (registered in an app of their own), served by
    one LiveRuntime, called with real `azure.functions` requests; and the Event Grid use case."""

    def __init__(self, live: Any) -> None:
        import azure.functions as func

        from functions.http_api import bp

        app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
        app.register_functions(bp)
        self.functions = {f.get_function_name(): f.get_user_function() for f in app.get_functions()}
        self.live = live
        self.close = live.close

    def _call(self, function: str, method: str, path: str, query: dict[str, str], headers: dict[str, str],
              route: dict[str, str]) -> _Answer:
        import azure.functions as func

        from core.runtime import set_live_runtime

        req = func.HttpRequest(method=method, url=f"http://localhost{path}", headers=headers, params=query, route_params=route, body=b"")
        old = set_live_runtime(self.live)
        try:
            return _Answer(self.functions[function](req))
        finally:
            set_live_runtime(old)

    def fetch_env(self, env: str, *, query: dict[str, str], headers: dict[str, str]) -> _Answer:
        return self._call("get_env", "GET", "/api/envs/x", query, headers, {"env": env})

    def admin(self, action: str, *, headers: dict[str, str], env: str | None = None, name: str | None = None,
              query: dict[str, str] | None = None) -> _Answer:
        if action == "sync":
            return self._call("sync_env", "POST", "/api/sync/x", query or {}, headers, {"env": env or ""})
        if action == "rotate":
            return self._call("rotate", "POST", "/api/rotate/x", query or {}, headers, {"name": name or ""})
        return self._call("status", "GET", "/api/status", query or {}, headers, {})

    def keyvault_event(self, event: Any) -> dict[str, Any]:
        from core.app.events import handle_event

        return dict(handle_event(self.live.current(), event).__dict__)


def _api(ctx: ScenarioContext) -> tuple[Any, Callable[[], None], str]:
    """The HTTP API under test, its cleanup, and the value of the env's one secret."""
    import yaml
    from azure.keyvault.secrets import SecretClient

    from core.runtime import LiveRuntime
    from core.state.audit import MemoryAuditSink

    sandbox = ctx.sandbox
    tag = uuid.uuid4().hex[:8]
    prefix = f"fz{tag}"
    config = {
        "version": 1,
        "secretStores": {"azure": {"type": "azure.managed_identity"}},
        "envs": {"app": {"LOG_LEVEL": "info", "DB": {"from": {"store": "azure", "vault": "kv-source", "secret": f"fuzz-{tag}"}}}},
        "targets": {"vault": {"type": "keyvault", "env": "app", "store": "azure", "vault": "kv-target", "prefix": f"fz-{tag}-"}},
        "state": {"store": "azure", "account": ctx.state_account, "vault": "kv-state", "table_prefix": prefix,
                  "fingerprint_key": ctx.secret(f"fuzz-fingerprint-key-{uuid.uuid4().hex}")},
        "api": {"auth_mode": "bearer", "audience": AUDIENCE, "admins": [sandbox.identities["admin"].object_id]},
        "access": {"app": [sandbox.identities["caller"].object_id]},
    }
    for table in ("pushes", "rotations", "events", "leases", "audit"):
        ctx.state_tables.add(prefix + table)
    sandbox.assign_role("system", "Storage Table Data Contributor", sandbox.resource_id("storage", ctx.state_account))
    sandbox.assign_role("system", "Key Vault Secrets User", sandbox.resource_id("vault", "kv-source"))
    value = ctx.secret(f"fuzz-value-{uuid.uuid4().hex}")
    SecretClient(sandbox.vault_url("kv-source"), sandbox.admin_credential()).set_secret(f"fuzz-{tag}", value)
    path = ctx.workdir / "fuzz-vaultrelay.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    api = _Served(LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(path)}, audit=MemoryAuditSink()))
    return api, api.close, value


def _response_problems(what: str, response: Any) -> list[str]:
    body = response.body.decode(errors="replace")
    found = []
    if response.status >= 500 and response.status not in (502, 503):
        found.append(f"{what}: HTTP {response.status}")
    if "Traceback" in body or 'File "' in body:
        found.append(f"{what}: a traceback in the body")
    if response.media_type == "application/json":
        try:
            json.loads(body)
        except ValueError:
            found.append(f"{what}: a body that is not JSON")
    return found


def _http_properties(ctx: ScenarioContext, result: ScenarioResult, api: Any, examples: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    sandbox = ctx.sandbox
    tokens = [
        sandbox.issue_token("caller", AUDIENCE, lifetime_s=-60),  # expired
        sandbox.issue_token("other", AUDIENCE),  # valid, not allowed
        sandbox.issue_token("caller", "api://someone-else"),  # wrong audience
        sandbox.issue_token("caller", AUDIENCE, claims={"roles": "not-a-list", "groups": {"x": 1}}),
        sandbox.issue_token("caller", AUDIENCE, claims={"oid": None, "tid": 42}),
    ]
    for token in tokens:
        ctx.secret(token)
    statuses: dict[int, int] = {}
    problems: list[str] = []
    count = [0]
    authorization = st.one_of(
        st.text(max_size=60), st.sampled_from(tokens).map(lambda t: f"Bearer {t}"),
        st.sampled_from(tokens).map(lambda t: f"bearer {t[:-5]}AAAAA"),
        st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=", max_size=40),
                 min_size=1, max_size=5).map(lambda parts: "Bearer " + ".".join(parts)),
        st.sampled_from(["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "Bearer \x00"]),
    )
    headers = st.dictionaries(st.sampled_from(["Authorization", "authorization", "Accept", "X-Forwarded-For", "Content-Type", "x-ms-client-principal"]),
                              st.one_of(authorization, st.text(max_size=40)), max_size=4)
    query = st.dictionaries(st.sampled_from(["format", "dry_run", "force", "deep", "x"]), st.text(max_size=12), max_size=3)
    names = st.one_of(st.sampled_from(["app", "nope", "", "../app", "app%00", "a" * 500]), st.text(max_size=40))

    fuzz = settings(max_examples=examples, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))

    def record(what: str, call: Callable[[], Any]) -> None:
        count[0] += 1
        started = time.monotonic()
        try:
            response = call()
        except Exception as exc:
            ctx.observe(str(exc))
            problems.append(f"{what}: {type(exc).__name__} escaped: {str(exc)[:120]}")
            return
        ctx.observe(response.body.decode(errors="replace"))
        statuses[response.status] = statuses.get(response.status, 0) + 1
        problems.extend(_response_problems(what, response))
        if time.monotonic() - started > SLOW_S * 5:
            problems.append(f"{what}: took {time.monotonic() - started:.1f} s")

    @fuzz
    @given(names, query, headers)
    def fetch(env: str, q: dict[str, str], h: dict[str, str]) -> None:
        record("fetch", lambda: api.fetch_env(env, query=q, headers=h))

    @fuzz
    @given(st.sampled_from(["sync", "rotate", "status"]), names, query, headers)
    def admin(action: str, name: str, q: dict[str, str], h: dict[str, str]) -> None:
        record(f"admin {action}", lambda: api.admin(action, headers=h, env=name if action == "sync" else None,
                                                    name=name if action == "rotate" else None, query=q))

    fetch()
    admin()
    result.figures["http requests"] = count[0]
    result.figures["http statuses"] = dict(sorted(statuses.items()))
    unique = sorted(set(problems))
    result.figures["http findings"] = len(unique)
    result.violations.extend(unique[:10])


def _allowed_http_properties(ctx: ScenarioContext, result: ScenarioResult, api: Any, examples: int, value: str) -> None:
    """GET /api/envs/app with a valid token of a caller the env allows: only the representation varies."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    sandbox = ctx.sandbox
    token = ctx.secret(sandbox.issue_token("caller", AUDIENCE))
    statuses: dict[int, int] = {}
    problems: list[str] = []
    count = [0]
    formats = st.one_of(st.sampled_from(["json", "dotenv", "shell", "JSON", "xml", "", " json", "json\x00", "yaml"]), st.text(max_size=12))
    media = st.sampled_from(["application/json", "text/plain", "text/x-shellscript", "*/*", "text/*", "application/*", "image/png",
                             "text/html", "application/json;q=0", "text/plain;q=0.5, application/json;q=0.9", "application/json;q=abc",
                             "", ",,,", ";q=1", "*/*;q=0"])
    accept = st.one_of(media, st.lists(media, min_size=1, max_size=3).map(", ".join), st.text(max_size=40))
    extra = st.dictionaries(st.sampled_from(["X-Forwarded-For", "Content-Type", "x-ms-client-principal", "X-Request-Id", "User-Agent",
                                             "Cookie", "If-None-Match", "Content-Length", "Host"]), st.text(max_size=40), max_size=3)
    query = st.fixed_dictionaries({}, optional={"format": formats, "dry_run": st.text(max_size=6), "x": st.text(max_size=6)})

    # Half the examples: each allowed fetch resolves the env (the short form's time budget).
    @settings(max_examples=max(1, examples // 2), derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(query, st.one_of(st.none(), accept), extra, st.sampled_from(["Authorization", "authorization"]))
    def fetch(q: dict[str, str], a: str | None, h: dict[str, str], key: str) -> None:
        headers = {**h, key: f"Bearer {token}"}
        if a is not None:
            headers["Accept"] = a
        count[0] += 1
        try:
            response = api.fetch_env("app", query=q, headers=headers)
        except Exception as exc:
            ctx.observe(str(exc))
            problems.append(f"allowed fetch: {type(exc).__name__} escaped: {str(exc)[:120]}")
            return
        body = response.body.decode(errors="replace")
        if response.status != 200:  # a 200 carries the value by design; every other body is scanned for leaks
            ctx.observe(body)
        statuses[response.status] = statuses.get(response.status, 0) + 1
        what = f"allowed fetch (format {q.get('format')!r}, Accept {a!r})"
        problems.extend(_response_problems(what, response))
        if response.status not in (200, 400, 406):
            problems.append(f"{what}: HTTP {response.status}")
        if response.status == 200 and value not in body:
            problems.append(f"{what}: 200 without the env's value")
        if response.status != 200 and value in body:
            problems.append(f"{what}: HTTP {response.status} with the secret value in its body")

    fetch()
    result.figures["allowed http requests"] = count[0]
    result.figures["allowed http statuses"] = dict(sorted(statuses.items()))
    result.check(statuses.get(200, 0) > 0, "no allowed fetch answered 200")
    unique = sorted(set(problems))
    result.figures["allowed http findings"] = len(unique)
    result.violations.extend(unique[:10])


def _event_properties(ctx: ScenarioContext, result: ScenarioResult, api: Any, examples: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    outcomes: dict[str, int] = {}
    problems: dict[str, str] = {}  # kind of failure -> the first input that showed it
    count = [0]
    json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
                               lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                               max_leaves=15)
    known_types = st.sampled_from(["Microsoft.KeyVault.SecretNewVersionCreated", "Microsoft.KeyVault.SecretNearExpiry",
                                   "Microsoft.KeyVault.SecretExpired", "Microsoft.KeyVault.KeyNewVersionCreated"])
    event_types = st.one_of(known_types, known_types, json_values)
    ids = st.one_of(st.uuids().map(str), st.uuids().map(str), st.text(max_size=40), st.sampled_from(["a/b", "x#y", "q?r", "back\\slash", "\x00\x1f", "é" * 300, "i" * 2000]),
                    json_values)
    # Near-valid events: each field is usually well-formed, so the handler gets past parsing.
    vaults = st.sampled_from(["kv-source", "KV-SOURCE", "kv-target", "elsewhere"])
    objects = st.sampled_from(["nope", "vaultrelay-fingerprint-key", "vr-sas-x", "DB"])
    data = st.one_of(st.fixed_dictionaries({
        "VaultName": st.one_of(vaults, vaults, vaults, json_values),
        "ObjectName": st.one_of(objects, objects, objects, json_values),
        "Version": st.one_of(st.none(), st.text(max_size=40), st.none(), json_values),
    }), json_values)
    events = st.one_of(st.fixed_dictionaries({"id": ids, "eventType": event_types, "data": data}),
                       st.fixed_dictionaries({"id": ids, "type": event_types, "specversion": st.just("1.0"), "data": data}), json_values)

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(events)
    def deliver(event: Any) -> None:
        count[0] += 1
        try:
            outcome = api.keyvault_event(event)
        except Exception as exc:
            ctx.observe(str(exc))
            kind = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
            problems.setdefault(kind, json.dumps(event, default=str)[:100])
            return
        ctx.observe(json.dumps(outcome, default=str))
        outcomes[str(outcome.get("outcome"))] = outcomes.get(str(outcome.get("outcome")), 0) + 1

    deliver()
    result.figures["events delivered"] = count[0]
    result.figures["event outcomes"] = dict(sorted(outcomes.items()))
    result.figures["event findings"] = len(problems)
    result.violations.extend(f"event: {kind} escaped, e.g. for {example}" for kind, example in sorted(problems.items()))
