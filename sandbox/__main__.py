"""`python -m sandbox`: start the local Azure, write the env file, run until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from sandbox.server import Sandbox


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="vaultrelay's local Azure")
    parser.add_argument("--env-file", type=Path, default=Path(".sandbox/env"), help="where to write the shell-sourceable env file (default .sandbox/env)")
    parser.add_argument("--workdir", type=Path, default=None, help="state directory (default: a temporary one, removed on exit)")
    parser.add_argument("--domain", default="vaultrelay.test", help="DNS domain of the stand-ins (default vaultrelay.test)")
    parser.add_argument("--seed", default="vaultrelay", help="seed of the tenant, subscription and identity ids")
    parser.add_argument("--no-azurite", action="store_true", help="do not start Azurite (storage endpoints then fail)")
    parser.add_argument("--quiet", action="store_true", help="print no summary")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> int:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vaultrelay-sandbox-"))
    cleanup = args.workdir is None
    sandbox = Sandbox(workdir, domain=args.domain, seed=args.seed, with_azurite=not args.no_azurite)
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return asyncio.run(_run(_parse(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
