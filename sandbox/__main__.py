"""`python -m sandbox`: the local Azure.

    python -m sandbox [run] [--env-file .sandbox/env] ...   start it, write the env file, run until SIGINT/SIGTERM
    python -m sandbox seed [--config FILE] [--example] [--secret VAULT/NAME=VALUE ...]
    python -m sandbox grant [--config FILE] [--example]
    python -m sandbox identities

`seed`, `grant` and `identities` talk to a running sandbox through its env file (`--env-file`,
default `.sandbox/env`): `seed` creates what the config names (vaults, accounts, sites) and puts
its Key Vault secrets, certificates and keys in place; `grant` grants its identities the roles
`vaultrelay plan --permissions` computes, through ARM role assignments; `--example` does what
the demo does for examples/vaultrelay.yaml.  Run it with the project's interpreter:
`.venv/bin/python -m sandbox` (or `make sandbox`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from sandbox.runtime import ARM_RETRY_AFTER_S
from sandbox.server import Sandbox

COMMANDS = ("run", "seed", "grant", "identities")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sandbox [run]", description="vaultrelay's local Azure: start it and run until Ctrl-C",
                                     epilog="other commands (against a running sandbox): seed, grant, identities; "
                                            "see python -m sandbox seed --help")
    parser.add_argument("--env-file", type=Path, default=Path(".sandbox/env"), help="where to write the shell-sourceable env file (default .sandbox/env)")
    parser.add_argument("--workdir", type=Path, default=None, help="state directory (default: a temporary one, removed on exit)")
    parser.add_argument("--domain", default="vaultrelay.test", help="DNS domain of the stand-ins (default vaultrelay.test)")
    parser.add_argument("--seed", default="vaultrelay", help="seed of the tenant, subscription and identity ids")
    parser.add_argument("--no-azurite", action="store_true", help="do not start Azurite (storage endpoints then fail)")
    parser.add_argument("--quiet", action="store_true", help="print no summary")
    parser.add_argument("--arm-retry-after", type=_seconds, default=ARM_RETRY_AFTER_S, metavar="SECONDS",
                        help="ARM's Retry-After on a long-running operation still running "
                             f"(default {ARM_RETRY_AFTER_S}, the resource provider contract's minimum; tests use 0)")
    return parser.parse_args(argv)


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if not 0 <= value <= 600:
        raise argparse.ArgumentTypeError(f"must be 0-600 seconds: {value}")
    return value


async def _run(args: argparse.Namespace) -> int:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vaultrelay-sandbox-"))
    cleanup = args.workdir is None
    sandbox = Sandbox(workdir, domain=args.domain, seed=args.seed, with_azurite=not args.no_azurite,
                      arm_retry_after_s=args.arm_retry_after)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    began = time.monotonic()
    try:
        await sandbox.start()
        args.env_file.parent.mkdir(parents=True, exist_ok=True)
        sandbox.write_env_file(args.env_file)
        if not args.quiet:
            env = sandbox.env()
            print(f"sandbox up in {time.monotonic() - began:.1f}s; env file: {args.env_file}")
            for key in ("SANDBOX_AUTHORITY", "SANDBOX_ARM_ENDPOINT", "SANDBOX_VAULT_DNS_SUFFIX", "IDENTITY_ENDPOINT", "SANDBOX_BLOB_ENDPOINT", "SANDBOX_TABLE_ENDPOINT", "SANDBOX_CONTROL_URL"):
                print(f"  {key}={env[key]}")
            print("stop with Ctrl-C (SIGINT) or SIGTERM", flush=True)
        await stop.wait()
    finally:
        await sandbox.stop()
        args.env_file.unlink(missing_ok=True)
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _prepare_parser(command: str) -> argparse.ArgumentParser:
    text = {
        "seed": "create what a config names and put its Key Vault secrets, certificates and keys in place",
        "grant": "grant a config's identities the roles `vaultrelay plan --permissions` computes (ARM role assignments)",
        "identities": "list the sandbox's identities (for a config's client_id / object_id / resource_id)",
    }[command]
    parser = argparse.ArgumentParser(prog=f"python -m sandbox {command}", description=text)
    parser.add_argument("--env-file", type=Path, default=Path(".sandbox/env"), help="the running sandbox's env file (default .sandbox/env)")
    if command in ("seed", "grant"):
        parser.add_argument("--config", "-c", help="the vaultrelay config (default $VAULTRELAY_CONFIG, else vaultrelay.yaml)")
        parser.add_argument("--example", action="store_true", help="what the demo does for examples/vaultrelay.yaml (its secrets, certificate and roles)")
    if command == "seed":
        parser.add_argument("--secret", action="append", default=[], metavar="VAULT/NAME=VALUE",
                            help="set this secret to this value (repeatable); other secrets the config reads get random values")
    return parser


def _prepare(command: str, argv: list[str]) -> int:
    """seed / grant / identities against the running sandbox named by --env-file."""
    from sandbox.client import SandboxClient

    args = _prepare_parser(command).parse_args(argv)
    if not args.env_file.exists():
        print(f"no sandbox env file at {args.env_file}: start one first (make sandbox, or .venv/bin/python -m sandbox)", file=sys.stderr)
        return 2
    client = SandboxClient.from_env_file(args.env_file)
    # The SDK clients below must reach the sandbox: its names, trust and cloud settings.
    from sandbox.client import read_env_file
    from sandbox.resolver import install

    for key, value in read_env_file(args.env_file).items():
        if key != "PYTHONPATH":
            os.environ[key] = value
    install(client.env["SANDBOX_DOMAIN"])
    if command == "identities":
        print(f"{'name':<8} {'client id':<36} {'object id':<36}")
        print(f"{'system':<8} {client.env['SANDBOX_SYSTEM_CLIENT_ID']:<36} {client.env['SANDBOX_SYSTEM_PRINCIPAL_ID']:<36}")
        for name, identity in sorted(client.identities.items()):
            print(f"{name:<8} {identity.client_id:<36} {identity.object_id:<36}")
        return 0
    if args.example:
        from demo.seed import EXAMPLE_ROLES, example_environment, seed_example

        if command == "seed":
            seeded = seed_example(client)
            print(f"seeded {seeded['secrets']} Key Vault objects and granted {seeded['roles']} roles for examples/vaultrelay.yaml")
        else:
            for who, role, kind, resource in EXAMPLE_ROLES:
                client.grant(who, role, client.resource_id(kind, resource) if kind and resource else None)
            print(f"granted {len(EXAMPLE_ROLES)} roles for examples/vaultrelay.yaml")
        exports = " ".join(f"{k}={v}" for k, v in example_environment(client).items())
        print(f"the example config also needs: export {exports}")
        return 0
    from core.config import load_config
    from core.errors import ConfigError
    from sandbox.prepare import grant_config, seed_config

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    if command == "seed":
        values: dict[tuple[str, str], str] = {}
        for item in args.secret:
            where, sep, value = item.partition("=")
            vault, slash, name = where.partition("/")
            if not sep or not slash or not vault or not name:
                print(f"--secret {where!r}: expected VAULT/NAME=VALUE", file=sys.stderr)
                return 2
            values[(vault, name)] = value
        print(f"seeding the sandbox for {loaded.file}:")
        done = seed_config(client, loaded, values, say=print)
        print(f"{len(done.resources)} resources present, {len(done.objects)} Key Vault objects written")
        return 0
    print(f"granting the roles {loaded.file} needs:")
    done = grant_config(client, loaded, say=print)
    for skipped in done.skipped:
        print(f"  skipped: {skipped}", file=sys.stderr)
    print(f"{len(done.grants)} role assignments in place" + (f", {len(done.skipped)} identities skipped" if done.skipped else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if argv and argv[0] in COMMANDS[1:]:
        return _prepare(argv[0], argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    return asyncio.run(_run(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
