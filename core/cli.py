"""`vaultrelay`: the local command line over the same engine the Function app uses.

    vaultrelay validate [--config F]
    vaultrelay plan --env E
    vaultrelay resolve --env E [--format json|dotenv|shell] [--reveal] [--allow-partial]
    vaultrelay exec --env E [--allow-partial] -- CMD ARGS...
    vaultrelay sync | rotate | status | accept-drift [--env E] [--target T] [NAME...]

The config file is `--config`, else `$VAULTRELAY_CONFIG`, else `vaultrelay.yaml`.
Exit codes: 0 ok, 1 resolution errors, 2 config or usage errors; `exec` passes the child's code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from core.engine.render import FORMATS, UnrepresentableValue, render
from core.errors import ConfigError, NotFoundError
from core.state.tables import StateUnavailable

EXIT_OK, EXIT_RESOLUTION, EXIT_CONFIG = 0, 1, 2
MASK = "********"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaultrelay", description="Resolve secret references with the host's managed identity.")
    parser.add_argument("--config", "-c", help="config file (default: $VAULTRELAY_CONFIG or vaultrelay.yaml)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log progress to stderr (never values)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("validate", help="check the config statically (no network)")
    plan = commands.add_parser("plan", help="what an env would resolve, from which store and identity (no values)")
    plan.add_argument("--env", "-e", help="the env (required unless --permissions; with it, limits the report to this env)")
    plan.add_argument("--permissions", action="store_true", help="which roles each identity needs where (no network)")
    plan.add_argument("--bicep-params", metavar="FILE", help="with --permissions: write infra/main.bicep parameters granting them")
    resolve = commands.add_parser("resolve", help="resolve an env and print it")
    resolve.add_argument("--env", "-e", required=True)
    resolve.add_argument("--format", "-f", choices=("table", "json", "dotenv", "shell"), default=None,
                         help="default: table on a terminal, dotenv when piped")
    resolve.add_argument("--reveal", action="store_true", help="print values (masked otherwise)")
    resolve.add_argument("--allow-partial", action="store_true", help="print what resolved even if some variables failed")
    sync = commands.add_parser("sync", help="push envs to their targets, only what changed")
    sync.add_argument("--env", "-e", help="one env (default: every env with targets)")
    sync.add_argument("--dry-run", action="store_true", help="show adds/updates/removals and drift; write nothing")
    sync.add_argument("--force-mint", action="store_true", help="re-mint SAS tokens even if not due")
    rotate = commands.add_parser("rotate", help="rotate storage / Cosmos DB keys that are due")
    rotate.add_argument("--name", "-n", help="one rotation, e.g. storage:myaccount (see status)")
    rotate.add_argument("--force", action="store_true", help="rotate even if not due")
    commands.add_parser("status", help="per env and target: last push, drift, last error; rotations")
    accept = commands.add_parser("accept-drift", help="accept drift: what a target holds now is no longer reported (audited)")
    accept.add_argument("--env", "-e", help="the env (default: every env)")
    accept.add_argument("--target", "-t", help="one target (default: every target of the env)")
    accept.add_argument("names", nargs="*", help="only these variables (default: every drifted one)")
    exec_ = commands.add_parser("exec", help="run a command with the env's variables set")
    exec_.add_argument("--env", "-e", required=True)
    exec_.add_argument("--allow-partial", action="store_true", help="run even if some variables failed")
    exec_.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose, err)
    from core.config import load_config

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            err.write(f"{problem}\n")
        return EXIT_CONFIG
    for warning in loaded.warnings:
        err.write(f"{warning}\n")
    try:
        if args.command == "validate":
            return _validate(loaded, out)
        if args.command == "plan":
            if args.permissions or args.bicep_params:
                return _plan_permissions(loaded, args, out, err)
            if not args.env:
                err.write("plan needs --env (or --permissions)\n")
                return EXIT_CONFIG
            return _plan(loaded, args.env, out)
        if args.command == "resolve":
            return _resolve(loaded, args, out, err)
        if args.command in ("sync", "rotate", "status", "accept-drift"):
            return _write_side(loaded, args, out, err)
        return _exec(loaded, args, err)
    except NotFoundError as exc:
        err.write(f"{exc}\n")
        return EXIT_CONFIG
    except StateUnavailable as exc:
        # The state table (or its account) is down or refuses us: say which, no traceback.
        err.write(f"error: {exc}\n")
        return EXIT_RESOLUTION
    except ConfigError as exc:
        for problem in exc.problems:
            err.write(f"{problem}\n")
        return EXIT_CONFIG


def _configure_logging(verbose: bool, err: TextIO) -> None:
    import logging

    if verbose and not logging.getLogger().handlers:
        logging.basicConfig(stream=err, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _validate(loaded: Any, out: TextIO) -> int:
    config = loaded.config
    count = sum(len(v) for v in config.envs.values())
    out.write(f"{loaded.file}: ok ({len(config.secretStores)} stores, {len(config.envs)} envs, {count} variables)\n")
    return EXIT_OK


def _plan(loaded: Any, env: str, out: TextIO) -> int:
    from rich.console import Console
    from rich.table import Table

    from core.engine.plan import Broker

    broker = Broker(loaded)
    try:
        plan = broker.plan(env)
    finally:
        broker.close()
    table = Table(title=f"plan for env {env}", show_lines=False)
    for column in ("variable", "kind", "what", "store", "identity"):
        table.add_column(column)
    for name, _ in sorted(plan.literals.items()):
        table.add_row(name, "literal", "(literal value from the config)", "", "")
    for ref in sorted(plan.refs, key=lambda r: r.name):
        table.add_row(ref.name, ref.kind, ref.description, ref.store, plan.stores.get(ref.store, ""))
    unique = len({r.dedup_key for r in plan.refs})
    Console(file=out, width=200 if not out.isatty() else None).print(table)
    out.write(f"{len(plan.refs)} references ({unique} unique), {len(plan.literals)} literals\n")
    return EXIT_OK


def _resolve_bundle(loaded: Any, env: str, err: TextIO) -> Any:
    from core.engine.plan import Broker

    broker = Broker(loaded)
    try:
        if err.isatty():
            from rich.console import Console

            with Console(file=err).status(f"resolving env {env}..."):
                return broker.resolve(env)
        return broker.resolve(env)
    finally:
        broker.close()


def _report_failures(bundle: Any, err: TextIO) -> None:
    for name in sorted(bundle.failures):
        err.write(f"error: {name}: {bundle.failures[name]}\n")


def _resolve(loaded: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    bundle = _resolve_bundle(loaded, args.env, err)
    _report_failures(bundle, err)
    if bundle.failures and not args.allow_partial:
        err.write(f"{len(bundle.failures)} of {len(bundle.failures) + len(bundle.values)} variables failed; nothing printed (use --allow-partial)\n")
        return EXIT_RESOLUTION
    values = bundle.as_plain_dict() if args.reveal else {name: MASK for name in bundle.values}
    fmt = args.format or ("table" if out.isatty() else "dotenv")
    if fmt in FORMATS:
        try:
            text = render(values, fmt)
        except UnrepresentableValue as exc:
            err.write(f"error: env {args.env}: {exc}; nothing printed (--format json carries any value)\n")
            return EXIT_RESOLUTION
        out.write(text)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"env {args.env}")
        for column in ("variable", "value", "source", "version", "expires"):
            table.add_column(column)
        for name, item in sorted(bundle.values.items()):
            expires = item.expires_on.strftime("%Y-%m-%d %H:%M:%SZ") if item.expires_on else ""
            table.add_row(name, values[name], item.source, item.version or "", expires)
        Console(file=out, width=None if out.isatty() else 160).print(table)
    return EXIT_RESOLUTION if bundle.failures else EXIT_OK


def _write_side(loaded: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from rich.console import Console
    from rich.table import Table

    from core.engine.plan import Broker
    from core.engine.sync import SyncEngine

    console = Console(file=out, width=None if out.isatty() else 160)
    broker = Broker(loaded)
    engine = SyncEngine(broker)
    try:
        if args.command == "sync":
            report = engine.sync(args.env, dry_run=args.dry_run, force_mint=args.force_mint)
            table = Table(title="sync" + (" (dry run)" if args.dry_run else ""))
            for column in ("env", "target", "outcome", "adds", "updates", "removals", "drift", "writes"):
                table.add_column(column)
            for t in report.targets:
                table.add_row(t.env, t.target, t.outcome, ", ".join(t.adds), ", ".join(t.updates), ", ".join(t.removals),
                              ", ".join(t.drift) + (" (repaired)" if t.repaired else ""), str(t.writes))
            console.print(table)
            for env, failing in report.failures.items():
                err.write(f"error: env {env}: {'; '.join(failing)}\n")
            for t in report.targets:
                if t.error:
                    err.write(f"error: {t.env} -> {t.target}: {t.error}\n")
            if report.minted:
                out.write(f"minted: {', '.join(report.minted)}\n")
            out.write(f"{report.target_writes} target writes in {report.seconds:.2f}s\n")
            return EXIT_OK if report.ok else EXIT_RESOLUTION
        if args.command == "rotate":
            from core.engine.rotate import KeyRotation

            try:
                reports = KeyRotation(engine).rotate(args.name, force=args.force)
            except KeyError as exc:
                err.write(f"{exc.args[0]}\n")
                return EXIT_CONFIG
            table = Table(title="rotate")
            for column in ("rotation", "outcome", "from", "to", "re-pushed", "next due"):
                table.add_column(column)
            for r in reports:
                table.add_row(r.name, r.outcome, r.old_active or "", r.new_active or "", ", ".join(r.repushed), r.next_due or "")
            console.print(table)
            for r in reports:
                if r.error:
                    err.write(f"error: {r.name}: {r.error}\n")
            return EXIT_RESOLUTION if any(r.outcome == "error" for r in reports) else EXIT_OK
        if args.command == "accept-drift":
            if args.names and not (args.env and args.target):
                err.write("accept-drift NAME... needs --env and --target\n")
                return EXIT_CONFIG
            accepted = engine.accept_drift(args.env, args.target, args.names)
            for t in accepted:
                if t.outcome == "accepted":
                    out.write(f"{t.env} -> {t.target}: accepted drift of {', '.join(t.drift)}\n")
                elif t.outcome == "busy":
                    err.write(f"error: {t.env} -> {t.target}: a sync of env {t.env} is running; try again\n")
                elif t.error:
                    err.write(f"error: {t.env} -> {t.target}: {t.error}\n")
                else:
                    out.write(f"{t.env} -> {t.target}: no drift to accept\n")
            return EXIT_RESOLUTION if any(t.outcome in ("busy", "error") for t in accepted) else EXIT_OK
        table = Table(title="targets")
        rows = engine.status()
        for column in ("env", "target", "kind", "last push", "outcome", "variables", "drift", "last error"):
            table.add_column(column)
        for row in rows:
            drift = ", ".join(f"{n} (since {t})" if t else n for n, t in row["drift_found"].items())
            table.add_row(row["env"], row["target"], row["kind"], row["last_push"], row["outcome"], str(row["variables"]), drift, row["last_error"])
        console.print(table)
        rotations = Table(title="rotations")
        for column in ("kind", "name", "active / variable", "rotated / issued", "next due / expires", "phase"):
            rotations.add_column(column)
        for rec in engine.rotation_status():
            rotations.add_row(rec["kind"], rec["name"], str(rec.get("active") or rec.get("variable", "")), str(rec.get("rotated_at") or rec.get("issued", "")),
                              str(rec.get("next_due") or rec.get("expires", "")),
                              str(rec.get("phase", "")) + (f" ({rec['operation_status']})" if rec.get("phase") and rec.get("operation_status") else ""))
        console.print(rotations)
        return EXIT_OK
    finally:
        broker.close()


def _exec(loaded: Any, args: argparse.Namespace, err: TextIO) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        err.write("exec needs a command: vaultrelay exec --env E -- CMD ARGS...\n")
        return EXIT_CONFIG
    bundle = _resolve_bundle(loaded, args.env, err)
    _report_failures(bundle, err)
    if bundle.failures and not args.allow_partial:
        err.write(f"{len(bundle.failures)} variables failed; not running {argv[0]} (use --allow-partial)\n")
        return EXIT_RESOLUTION
    env = dict(os.environ)
    env.update(bundle.as_plain_dict())
    try:
        completed = subprocess.run(argv, env=env, check=False)
    except FileNotFoundError:
        err.write(f"exec: command not found: {argv[0]}\n")
        return 127
    except PermissionError:
        err.write(f"exec: permission denied: {argv[0]}\n")
        return 126
    code = completed.returncode
    return 128 - code if code < 0 else code


def _plan_permissions(loaded: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`plan --permissions [--env E] [--bicep-params FILE]`: needs per identity and scope, least roles."""
    import json

    from core.permissions import compute_permissions, format_permissions, render_bicep_parameters

    if args.env and args.env not in loaded.config.envs:
        raise NotFoundError(f"no env '{args.env}' in {loaded.file} (envs: {', '.join(sorted(loaded.config.envs)) or 'none'})")
    report = compute_permissions(loaded, envs=[args.env] if args.env else None)
    out.write(format_permissions(report))
    if args.bicep_params:
        document, warnings = render_bicep_parameters(report, loaded.config)
        text = json.dumps(document, indent=2) + "\n"
        if args.bicep_params == "-":
            out.write(text)
        else:
            with open(args.bicep_params, "w", encoding="utf-8") as handle:
                handle.write(text)
            out.write(f"wrote {args.bicep_params}\n")
        for warning in warnings:
            err.write(f"warning: {warning}\n")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
