"""`vaultrelay`: the local command line over the same engine the Function app uses.

    vaultrelay [global options] COMMAND [options]       (global options also after COMMAND)

    validate                       check the config statically (no network)
    plan --env E | --permissions   what an env resolves / which roles each identity needs
    resolve --env E                resolve and print (masked unless --reveal)
    exec --env E -- CMD ARGS...    run a command with the env's variables
    sync | rotate | status         push to targets, rotate keys, show what happened
    accept-drift [--env E] [--target T] [NAME...]   stop reporting what a target holds now
    completion bash|zsh|fish       shell completion script

Global options: `--config FILE` (`-` = standard input, or an https blob URL; default
`$VAULTRELAY_CONFIG`, else `vaultrelay.yaml`), `-v` (vaultrelay's steps), `-vv` (plus the SDKs'
HTTP traffic, redacted), `--output json` (validate, plan, sync, rotate, status: one documented
shape each, see schema/cli/), `--version`.

Exit codes: 0 ok, 1 resolution or run-time errors, 2 config or usage errors; `exec` passes the
child's status (128 + n when a signal n ended it); 130 when interrupted.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from core.errors import ConfigError, ConfigProblem, NotFoundError
from core.render import FORMATS, UnrepresentableValue, render
from core.state.tables import StateUnavailable

log = logging.getLogger("vaultrelay.cli")

EXIT_OK, EXIT_RESOLUTION, EXIT_CONFIG = 0, 1, 2
EXIT_INTERRUPTED = 130
MASK = "********"
PROG = "vaultrelay"
OUTPUT_COMMANDS = ("validate", "plan", "sync", "rotate", "status", "worker")
# Loggers whose warnings repeat what the command line reports itself (each failure once).
_REPORTED_BY_CLI = ("vaultrelay.resolve", "vaultrelay.sync", "vaultrelay.rotate", "vaultrelay.tagged")


class _Exit(Exception):
    """Leave main() with an exit code (help, version, usage errors)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# ---- the parser ---------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse writing to the streams main() was given, exiting through _Exit, suggesting
    commands for typos."""

    streams: tuple[TextIO, TextIO] = (sys.stdout, sys.stderr)

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            out, err = _Parser.streams
            (err if file is None or file is sys.stderr else out).write(message)

    def exit(self, status: int = 0, message: str | None = None) -> Any:  # type: ignore[override]
        if message:
            self._print_message(message, sys.stderr)
        raise _Exit(status)

    def error(self, message: str) -> Any:  # type: ignore[override]
        if "invalid choice:" in message:
            wrong = message.split("'")[1] if "'" in message else ""
            choices = message.split("(choose from ")[-1].rstrip(")").replace("'", "").split(", ")
            guess = difflib.get_close_matches(wrong, choices, n=1, cutoff=0.6)
            if guess:
                message += f"; did you mean '{guess[0]}'?"
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


class _Once(argparse.Action):
    """An option that may be given once: `-e a -e b` is an error, not a silent last-one-wins."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        given: set[str] = namespace.__dict__.setdefault("_given", set())
        if self.dest in given and getattr(namespace, self.dest) != values:
            parser.error(f"{'/'.join(self.option_strings)} given twice ({getattr(namespace, self.dest)!r} and {values!r}): give it once")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vaultrelay")
    except PackageNotFoundError:
        return "0+unknown"


def _global_options(suffix: str) -> _Parser:
    """--config, --verbose and --output, accepted before and after the command (stored apart,
    then merged: a value given both places must agree)."""
    options = _Parser(add_help=False)
    group = options.add_argument_group("global options (before or after the command)")
    group.add_argument("--config", "-c", dest=f"config{suffix}", metavar="FILE", action=_Once, default=argparse.SUPPRESS,
                       help="the config: a file, - for standard input, or an https://<account>.blob.<suffix>/<container>/<blob> "
                            "URL read with the managed identity (default: $VAULTRELAY_CONFIG, else vaultrelay.yaml)")
    group.add_argument("--verbose", "-v", dest=f"verbose{suffix}", action="count", default=argparse.SUPPRESS,
                       help="-v: vaultrelay's steps; -vv: also the Azure SDKs' HTTP traffic (redacted); never values")
    group.add_argument("--output", "-o", dest=f"output{suffix}", choices=("text", "json"), action=_Once, default=argparse.SUPPRESS,
                       help="json: one document on stdout (validate, plan, sync, rotate, status; resolve: same as --format json)")
    return options


_COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("check the config statically: every problem with file:line and YAML path (no network)",
                 "examples:\n  vaultrelay validate\n  vaultrelay validate --config prod.yaml --output json\n"
                 "  cat vaultrelay.yaml | vaultrelay validate --config -"),
    "plan": ("what an env resolves, from which store and identity (no values); --permissions: the roles each identity needs",
             "examples:\n  vaultrelay plan --env production\n  vaultrelay plan --permissions --output json\n"
             "  vaultrelay plan --permissions --bicep-params infra/main.parameters.json"),
    "resolve": ("resolve an env and print it (values masked unless --reveal)",
                "examples:\n  vaultrelay resolve --env production\n  vaultrelay resolve --env production --reveal --format dotenv > .env\n"
                "  eval \"$(vaultrelay resolve --env production --reveal --format shell)\""),
    "exec": ("run a command with the env's variables set; signals are passed on, its exit status is returned",
             "examples:\n  vaultrelay exec --env production -- ./app --port 8080\n  vaultrelay exec -e production -- sh -c 'echo $API_KEY | wc -c'"),
    "sync": ("push envs to their targets, only what changed (needs a state: section)",
             "examples:\n  vaultrelay sync\n  vaultrelay sync --env production --dry-run\n  vaultrelay sync --output json > sync.json"),
    "rotate": ("rotate storage / Cosmos DB keys and tagged secrets that are due (needs a state: section)",
               "examples:\n  vaultrelay rotate\n  vaultrelay rotate --name storage:myaccount --force"),
    "status": ("per env and target: last push, drift, last error; rotations (needs a state: section)",
               "examples:\n  vaultrelay status\n  vaultrelay status --output json | jq '.targets[] | select(.outcome == \"error\")'"),
    "accept-drift": ("accept drift: what a target holds now becomes the baseline and is no longer reported (audited)",
                     "examples:\n  vaultrelay accept-drift --env production\n"
                     "  vaultrelay accept-drift --env production --target prod-vault DATABASE_PASSWORD"),
    "worker": ("consume the work queue outside the Functions host: sync the work items planners enqueued",
               "examples:\n  vaultrelay worker\n  vaultrelay worker --processes 4 --drain\n  vaultrelay sync --queue && vaultrelay worker --drain"),
    "completion": ("print a shell completion script",
                   "examples:\n  vaultrelay completion bash > ~/.local/share/bash-completion/completions/vaultrelay\n"
                   "  vaultrelay completion zsh > \"${fpath[1]}/_vaultrelay\"\n"
                   "  vaultrelay completion fish > ~/.config/fish/completions/vaultrelay.fish"),
}


def _env_completer(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Env names of the config the command line names (for shell completion)."""
    from core.config import load_config

    location = getattr(parsed_args, "config_sub", None) or getattr(parsed_args, "config_top", None)
    try:
        loaded = load_config(location)
    except Exception:
        return []
    return [env for env in loaded.config.envs if env.startswith(prefix)]


def _parser() -> _Parser:
    parser = _Parser(prog=PROG, parents=[_global_options("_top")], formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Resolve, push and rotate secrets with the host's managed identity.",
                     epilog="Exit codes: 0 ok, 1 resolution or run-time errors, 2 config or usage errors, 130 interrupted; "
                            "exec returns the command's.\nRun 'vaultrelay COMMAND --help' for a command's options and examples.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub: dict[str, argparse.ArgumentParser] = {}
    for name, (summary, examples) in _COMMANDS.items():
        sub[name] = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".", epilog=examples,
                                        parents=[_global_options("_sub")], formatter_class=argparse.RawDescriptionHelpFormatter)

    def env_option(command: str, required: bool, text: str) -> None:
        action = sub[command].add_argument("--env", "-e", action=_Once, required=required, metavar="ENV", help=text)
        action.completer = _env_completer  # type: ignore[attr-defined]

    env_option("plan", False, "the env to plan (required unless --permissions; with it, limits the report to this env)")
    sub["plan"].add_argument("--permissions", action="store_true", help="which roles each identity needs where (no network)")
    sub["plan"].add_argument("--bicep-params", metavar="FILE", action=_Once,
                             help="with --permissions: write infra/main.bicep parameters granting them (- for stdout)")
    env_option("resolve", True, "the env to resolve (a key of envs: in the config)")
    sub["resolve"].add_argument("--format", "-f", choices=("table", "json", "dotenv", "shell"), default=None, action=_Once,
                                help="default: table on a terminal, dotenv when piped")
    shown = sub["resolve"].add_mutually_exclusive_group()
    shown.add_argument("--reveal", action="store_true", help="print the values")
    shown.add_argument("--masked", action="store_true",
                       help="print placeholders (********) even when the output is not a terminal (refused otherwise)")
    sub["resolve"].add_argument("--allow-partial", action="store_true", help="print what resolved even if some variables failed")
    env_option("exec", True, "the env whose variables the command gets")
    sub["exec"].add_argument("--allow-partial", action="store_true", help="run even if some variables failed")
    sub["exec"].add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command and its arguments")
    env_option("sync", False, "one env (default: every env with targets)")
    sub["sync"].add_argument("--dry-run", action="store_true", help="show adds/updates/removals and drift; write nothing")
    sub["sync"].add_argument("--force-mint", action="store_true", help="re-mint SAS tokens even if not due")
    sub["sync"].add_argument("--queue", action="store_true",
                             help="enqueue work items to the work queue instead of syncing here (a worker or the Function app syncs them)")
    sub["worker"].add_argument("--processes", "-p", type=int, default=1, action=_Once, metavar="N",
                               help="worker processes consuming the queue (default 1)")
    sub["worker"].add_argument("--drain", action="store_true", help="stop once the queue is empty (default: run until interrupted)")
    sub["worker"].add_argument("--visibility-timeout", type=int, default=120, action=_Once, metavar="S",
                               help="seconds a received item stays invisible to other consumers (default 120)")
    sub["rotate"].add_argument("--name", "-n", action=_Once, help="one rotation, e.g. storage:myaccount (see status)")
    sub["rotate"].add_argument("--force", action="store_true", help="rotate even if not due")
    env_option("accept-drift", False, "the env (default: every env)")
    sub["accept-drift"].add_argument("--target", "-t", action=_Once, help="one target (default: every target of the env)")
    sub["accept-drift"].add_argument("names", nargs="*", metavar="NAME", help="only these variables (default: every drifted one)")
    sub["status"].add_argument("--expiring", nargs="?", const="30d", default=None, metavar="WINDOW",
                               help="exit 1 when something vaultrelay cannot renew expires within WINDOW (default 30d; e.g. 12h, 2w)")
    sub["completion"].add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell")
    return parser


def parse_args(argv: Sequence[str] | None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> argparse.Namespace:
    """The command line, with global options merged from before and after the command.

    Raises:
        _Exit: --help, --version, or a usage error (exit 2, message written to `err`).
    """
    parser = _parser()
    _Parser.streams = (out, err)
    if "_ARGCOMPLETE" in os.environ:  # shell completion: argcomplete answers and exits
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    for key in ("config", "output"):
        top, sub = getattr(args, f"{key}_top", None), getattr(args, f"{key}_sub", None)
        if top is not None and sub is not None and top != sub:
            parser.error(f"--{key} given twice ({top!r} and {sub!r}): give it once")
        setattr(args, key, sub if sub is not None else top)
    args.verbose = getattr(args, "verbose_top", 0) + getattr(args, "verbose_sub", 0)
    args.output = args.output or "text"
    if args.output == "json" and args.command not in (*OUTPUT_COMMANDS, "resolve"):
        parser.error(f"{args.command} has no --output json (commands with it: {', '.join(OUTPUT_COMMANDS)}, resolve)")
    if args.command == "resolve" and args.output == "json":
        if args.format not in (None, "json"):
            parser.error(f"--output json and --format {args.format} disagree: give one")
        args.format = "json"
    if args.command == "sync" and args.queue and args.dry_run:
        parser.error("--queue and --dry-run: a dry run is read-only and runs here; give one")
    if args.command == "worker" and not 1 <= args.processes <= 64:
        parser.error("--processes must be between 1 and 64")
    if args.command == "worker" and not 1 <= args.visibility_timeout <= 7 * 24 * 3600:
        parser.error("--visibility-timeout must be between 1 and 604800 seconds")
    if args.command == "plan" and args.output == "json" and args.bicep_params == "-":
        parser.error("--bicep-params - writes to stdout, which --output json uses: name a file")
    return args


# ---- main ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    verbosity = 0
    try:
        args = parse_args(argv, out, err)
        verbosity = args.verbose
        with _logging(verbosity, err):
            return _run(args, out, err)
    except _Exit as exc:
        return exc.code
    except KeyboardInterrupt:
        # A second Ctrl-C while threads wind down ends the process quietly (the default action).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _say(err, "interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to write anywhere.
        _silence(out)
        return EXIT_RESOLUTION
    except Exception as exc:  # the last line of defence: no traceback reaches a user
        from core.logs import redact

        _say(err, f"error: internal error ({type(exc).__name__}: {redact(str(exc)).splitlines()[0][:300] if str(exc) else 'no detail'}); "
                  "please report it" + ("" if verbosity >= 2 else " with the output of -vv"))
        if verbosity >= 2:
            err.write(redact("".join(traceback.format_exception(exc))))
        return EXIT_RESOLUTION


def console_main() -> None:
    """The `vaultrelay` console script.  Ctrl-C (SIGINT) ends it at once with 130 and one line,
    rather than after the requests in flight on worker threads (what was pushed is recorded as it
    happens, so an interrupted sync is like a crashed one: the next run converges).  `exec` reads
    SIGINT itself while its command runs and passes it on."""
    signal.signal(signal.SIGINT, _interrupted)
    sys.exit(main())


def _interrupted(_signo: int, _frame: object) -> None:
    try:
        os.write(2, b"interrupted\n")
    finally:
        os._exit(EXIT_INTERRUPTED)


def _say(stream: TextIO, line: str) -> None:
    from core.terminal import escape_controls

    try:
        stream.write(escape_controls(line, keep_newlines=True) + "\n")
        stream.flush()
    except (BrokenPipeError, ValueError):
        pass


def _silence(stream: TextIO) -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "completion":
        import argcomplete

        out.write(argcomplete.shellcode([PROG], shell=args.shell))
        return EXIT_OK
    json_output = args.output == "json" and args.command in OUTPUT_COMMANDS
    document_name = "plan-permissions" if args.command == "plan" and (args.permissions or args.bicep_params) else args.command
    try:
        loaded = _load(args.config, err)
    except ConfigError as exc:
        return _config_failure(exc, document_name if json_output else None, out, err)
    _apply_debug_block(loaded)
    config = loaded.config
    log.info("config %s: %s, %s, %s, %s", loaded.file, _plural(len(config.secretStores), "store"), _plural(len(config.envs), "env"),
             _plural(sum(len(v) for v in config.envs.values()), "variable"), _plural(len(config.targets), "target"))
    try:
        return _dispatch(args, loaded, document_name, json_output, out, err)
    except NotFoundError as exc:
        return _failure(document_name if json_output else None, loaded, str(exc), EXIT_CONFIG, out, err)
    except StateUnavailable as exc:
        # The state table (or its account) is down or refuses us: say which, no traceback.
        return _failure(document_name if json_output else None, loaded, str(exc), EXIT_RESOLUTION, out, err)
    except ConfigError as exc:
        return _config_failure(exc, document_name if json_output else None, out, err, loaded)


def _dispatch(args: argparse.Namespace, loaded: Any, document_name: str, json_output: bool, out: TextIO, err: TextIO) -> int:
    if not json_output:
        for warning in loaded.warnings:
            _say(err, str(warning))
    if args.command == "validate":
        return _validate(loaded, json_output, out)
    if args.command == "plan":
        if document_name == "plan-permissions":
            return _plan_permissions(loaded, args, json_output, out, err)
        if not args.env:
            return _failure("plan" if json_output else None, loaded, "plan needs --env ENV (or --permissions)", EXIT_CONFIG, out, err)
        return _plan(loaded, args.env, json_output, out)
    if args.command == "resolve":
        return _resolve(loaded, args, out, err)
    if args.command == "exec":
        return _exec(loaded, args, err)
    if loaded.config.state is None:
        raise ConfigError([ConfigProblem(loaded.file, None, "state", f"{args.command} needs a state: section (Table Storage; see "
                                                                     "docs/config.md#state): there is nothing to push to or record without it")])
    return _write_side(loaded, args, json_output, out, err)


# ---- config -------------------------------------------------------------------------------
def _load(location: str | None, err: TextIO) -> Any:
    """The config named by --config, $VAULTRELAY_CONFIG or the default: a file, standard input
    (`-`) or a blob URL read with the managed identity, as the Function app reads it.

    Raises:
        ConfigError: it cannot be read or is invalid.
    """
    from core.config import load_config
    from core.config.source import config_location

    location = location or config_location()
    if location.lower().startswith(("https://", "http://")):
        return _load_blob(location)
    if location == "-" and sys.stdin is not None and sys.stdin.isatty():
        _say(err, "reading the config from the terminal; end it with Ctrl-D")
    return load_config(location)


def _load_blob(url: str) -> Any:
    from core.config.source import BlobConfigSource, ConfigSourceError, load_snapshot

    try:
        source = BlobConfigSource(url, interval_s=0)
    except ConfigSourceError as exc:
        raise ConfigError([ConfigProblem(url, None, "", str(exc))]) from None
    try:
        snapshot = source.snapshot()
    except ConfigSourceError as exc:
        raise ConfigError([ConfigProblem(url, None, "", str(exc))]) from None
    finally:
        source.close()
    return load_snapshot(snapshot)


def _config_failure(exc: ConfigError, document: str | None, out: TextIO, err: TextIO, loaded: Any = None) -> int:
    if document is not None:
        from core.cli_json import DOCUMENTS, problem

        errors = [problem(p) for p in exc.problems if p.severity == "error"]
        warnings = [problem(p) for p in exc.problems if p.severity != "error"]
        if loaded is not None:
            warnings = [problem(p) for p in loaded.warnings] + warnings
        _emit(out, DOCUMENTS[document](ok=False, problems=errors, warnings=warnings))
    else:
        for item in exc.problems:
            _say(err, str(item))
    return EXIT_CONFIG


def _failure(document: str | None, loaded: Any, message: str, code: int, out: TextIO, err: TextIO) -> int:
    if document is not None:
        from core.cli_json import DOCUMENTS, problem

        _emit(out, DOCUMENTS[document](ok=False, error=message, warnings=[problem(p) for p in loaded.warnings]))
    else:
        _say(err, f"error: {message}")
    return code


def _emit(out: TextIO, document: Any) -> None:
    out.write(document.model_dump_json(indent=2) + "\n")


def _apply_debug_block(loaded: Any) -> None:
    """The stores' `debug:` blocks: `enabled` shows vaultrelay's debug steps, `log_requests` one
    line per Azure request, `trace_identity` which identity produced each token."""
    from core.config.model import ManagedIdentityStore

    debug = [s.debug for s in loaded.config.secretStores.values() if isinstance(s, ManagedIdentityStore)]
    if any(d.enabled for d in debug):
        logging.getLogger("vaultrelay").setLevel(logging.DEBUG)
        for name in _REPORTED_BY_CLI:
            logging.getLogger(name).setLevel(logging.NOTSET)
    if any(d.log_requests for d in debug):
        logging.getLogger("vaultrelay.requests").setLevel(logging.INFO)
    if any(d.trace_identity for d in debug):
        logging.getLogger("vaultrelay.identity").setLevel(logging.INFO)


class _LogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        from core.terminal import escape_controls

        text = f"{record.levelname.lower()}: {record.name}: {record.getMessage()}"
        if record.exc_text:
            text += "\n" + record.exc_text
        return escape_controls(text, keep_newlines=True)


@contextmanager
def _logging(verbosity: int, err: TextIO) -> Iterator[None]:
    """Log records to `err` at the verbosity asked for, redacted; the previous logging setup is
    restored afterwards (main() may run several times in one process)."""
    from core.logs import SDK_LOGGERS, configure_sdk_logging

    handler = logging.StreamHandler(err)
    handler.setFormatter(_LogFormatter())
    root = logging.getLogger()
    names = ("vaultrelay", *_REPORTED_BY_CLI, "vaultrelay.requests", "vaultrelay.identity", *SDK_LOGGERS)
    saved = {name: logging.getLogger(name).level for name in names}
    saved_root = root.level
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    logging.getLogger("vaultrelay").setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))
    for name in _REPORTED_BY_CLI:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1 if verbosity == 0 else logging.NOTSET)
    sdk_level = {0: logging.CRITICAL + 1, 1: logging.CRITICAL + 1, 2: logging.INFO}.get(verbosity, logging.DEBUG)
    configure_sdk_logging(sdk_level, [handler])
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


# ---- validate and plan --------------------------------------------------------------------
def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _validate(loaded: Any, json_output: bool, out: TextIO) -> int:
    config = loaded.config
    count = sum(len(v) for v in config.envs.values())
    if json_output:
        from core.cli_json import ValidateDocument, problem

        _emit(out, ValidateDocument(ok=True, file=loaded.file, stores=len(config.secretStores), envs=len(config.envs), variables=count,
                                    targets=len(config.targets), warnings=[problem(p) for p in loaded.warnings]))
        return EXIT_OK
    out.write(f"{loaded.file}: ok ({_plural(len(config.secretStores), 'store')}, {_plural(len(config.envs), 'env')}, "
              f"{_plural(count, 'variable')})\n")
    return EXIT_OK


def _plan(loaded: Any, env: str, json_output: bool, out: TextIO) -> int:
    from rich.table import Table

    from core.connections import StoreConnections
    from core.terminal import cell, console

    broker = StoreConnections(loaded)
    try:
        plan = broker.plan(env)
    finally:
        broker.close()
    unique = len({r.dedup_key for r in plan.refs})
    if json_output:
        from core.cli_json import PlanDocument, PlannedVariable, problem

        variables = [PlannedVariable(name=name, kind="literal", description="literal value from the config") for name in sorted(plan.literals)]
        variables += [PlannedVariable(name=r.name, kind=r.kind, description=r.description, store=r.store, identity=plan.stores.get(r.store))
                      for r in sorted(plan.refs, key=lambda r: r.name)]
        variables += [PlannedVariable(name=c.name, kind="template", description=_composed_description(c), depends_on=list(c.depends_on))
                      for c in sorted(plan.composed.values(), key=lambda c: c.name)]
        _emit(out, PlanDocument(ok=True, env=env, variables=variables, references=len(plan.refs), unique=unique,
                                literals=len(plan.literals), composed=len(plan.composed), warnings=[problem(p) for p in loaded.warnings]))
        return EXIT_OK
    table = Table(title=f"plan for env {env}", show_lines=False)
    for column in ("variable", "kind", "what", "store", "identity"):
        table.add_column(column, overflow="fold")
    for name, _ in sorted(plan.literals.items()):
        table.add_row(cell(name), cell("literal"), cell("(literal value from the config)"), cell(""), cell(""))
    for ref in sorted(plan.refs, key=lambda r: r.name):
        table.add_row(cell(ref.name), cell(ref.kind), cell(ref.description), cell(ref.store), cell(plan.stores.get(ref.store, "")))
    for composition in sorted(plan.composed.values(), key=lambda c: c.name):
        table.add_row(cell(composition.name), cell("template"), cell(_composed_description(composition)), cell(""), cell(""))
    console(out).print(table)
    composed = f", {_plural(len(plan.composed), 'composed value')}" if plan.composed else ""
    out.write(f"{_plural(len(plan.refs), 'reference')} ({unique} unique), {_plural(len(plan.literals), 'literal')}{composed}\n")
    return EXIT_OK


def _composed_description(composition: Any) -> str:
    """What a composed variable depends on (the template is config; it is not shown, values never are)."""
    return f"template over {', '.join(composition.depends_on)}" if composition.depends_on else "template (no variables)"


def _plan_permissions(loaded: Any, args: argparse.Namespace, json_output: bool, out: TextIO, err: TextIO) -> int:
    """`plan --permissions [--env E] [--bicep-params FILE]`: needs per identity and scope, least roles."""
    from core.permissions.matrix import compute_permissions, format_permissions, render_bicep_parameters

    if args.env and args.env not in loaded.config.envs:
        raise NotFoundError(f"no env '{args.env}' in {loaded.file} (envs: {', '.join(sorted(loaded.config.envs)) or 'none'})")
    report = compute_permissions(loaded, envs=[args.env] if args.env else None)
    written: str | None = None
    params_warnings: list[str] = []
    params_text = ""
    if args.bicep_params:
        document, params_warnings = render_bicep_parameters(report, loaded.config)
        params_text = json.dumps(document, indent=2) + "\n"
        if args.bicep_params != "-":
            try:
                with open(args.bicep_params, "w", encoding="utf-8") as handle:
                    handle.write(params_text)
            except OSError as exc:
                message = f"cannot write {args.bicep_params}: {exc.strerror or type(exc).__name__}"
                return _failure("plan-permissions" if json_output else None, loaded, message, EXIT_CONFIG, out, err)
            written = args.bicep_params
    if json_output:
        from core.cli_json import PermissionGrant, PermissionsDocument, problem

        data = report.as_dict()
        _emit(out, PermissionsDocument(ok=True, file=loaded.file, env=args.env, grants=[PermissionGrant(**g) for g in data["grants"]],
                                       notes=data["notes"], permission_warnings=data["warnings"] + params_warnings,
                                       bicep_params=written, warnings=[problem(p) for p in loaded.warnings]))
        return EXIT_OK
    out.write(format_permissions(report))
    if args.bicep_params == "-":
        out.write(params_text)
    elif written:
        out.write(f"wrote {written}\n")
    for warning in params_warnings:
        _say(err, f"warning: {warning}")
    return EXIT_OK


# ---- resolve and exec ---------------------------------------------------------------------
def _resolve_bundle(loaded: Any, env: str, err: TextIO) -> tuple[Any, dict[str, str]]:
    """The env's bundle, and the identity of each store its references use (for failures)."""
    from core.connections import StoreConnections
    from core.terminal import is_terminal

    broker = StoreConnections(loaded)
    try:
        if is_terminal(err):
            from core.terminal import console

            with console(err).status(f"resolving env {env}..."):
                bundle = broker.resolve(env)
        else:
            bundle = broker.resolve(env)
        stats = broker.last_stats
        if stats is not None:
            log.info("resolved env %s: %s (%d unique, %d fetched, %d from cache), %d failed in %.2f s", env, _plural(stats.references, "reference"),
                     stats.unique, stats.fetched, stats.cache_hits, len(bundle.failures), stats.seconds)
        identities: dict[str, str] = {}
        for store in {_store_of(loaded, env, name) for name in bundle.failures} - {None}:
            try:
                identities[str(store)] = broker.store(str(store)).identity_description
            except (ValueError, NotFoundError):
                identities[str(store)] = "no usable credential"
        return bundle, identities
    finally:
        broker.close()


def _store_of(loaded: Any, env: str, name: str) -> str | None:
    variable = loaded.config.envs.get(env, {}).get(name)
    return variable.from_.store if variable is not None and variable.from_ is not None else None


def _report_failures(loaded: Any, bundle: Any, identities: dict[str, str], err: TextIO) -> None:
    """One line per failure: a failing identity once (naming it, the store, the endpoint's answer
    and what to check, then the variables it left unresolved), every other failure per variable."""
    by_identity: dict[tuple[str, str, str], list[str]] = {}
    for name in sorted(bundle.failures):
        failure = bundle.failures[name]
        store = _store_of(loaded, bundle.env, name)
        if failure.reason == "identity" and store is not None:
            hint = f"; {failure.hint}" if failure.hint else ""
            by_identity.setdefault((store, failure.message, hint), []).append(name)
            continue
        _say(err, f"error: {name}: {failure}")
    for (store, message, hint), names in by_identity.items():
        _say(err, f"error: identity {identities.get(store, '?')} of store '{store}': {message}{hint}; "
                  f"{_plural(len(names), 'variable')} not resolved: {', '.join(names)}")


def _resolve(loaded: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from core.terminal import is_terminal

    fmt = args.format or ("table" if is_terminal(out) else "dotenv")
    if not args.reveal and not args.masked and not is_terminal(out):
        _say(err, f"error: values are masked and the output is not a terminal: pass --reveal to write the values, "
                  f"or --masked to write {MASK} placeholders (nothing written)")
        return EXIT_CONFIG
    bundle, identities = _resolve_bundle(loaded, args.env, err)
    _report_failures(loaded, bundle, identities, err)
    if bundle.failures and not args.allow_partial:
        _say(err, f"{len(bundle.failures)} of {len(bundle.failures) + len(bundle.values)} variables failed; nothing printed (use --allow-partial)")
        return EXIT_RESOLUTION
    values = bundle.as_plain_dict() if args.reveal else {name: MASK for name in bundle.values}
    if not args.reveal and not is_terminal(out):
        _say(err, f"note: {_plural(len(values), 'value')} written masked as {MASK} (--masked); --reveal writes them")
    if fmt in FORMATS:
        try:
            text = render(values, fmt)
        except UnrepresentableValue as exc:
            _say(err, f"error: env {args.env}: {exc}; nothing printed (--format json carries any value)")
            return EXIT_RESOLUTION
        if is_terminal(out):
            from core.terminal import escape_controls, has_controls

            if has_controls(text.replace("\n", "")):
                _say(err, "note: control characters in values are shown escaped on a terminal; redirect the output for the exact bytes")
            lines = text.split("\n")
            text = "\n".join(escape_controls(line) for line in lines)
        out.write(text)
    else:
        from rich.table import Table

        from core.terminal import cell, console, when

        table = Table(title=f"env {args.env}")
        table.add_column("variable", overflow="fold")
        table.add_column("value", overflow="fold")
        for column in ("source", "version", "expires"):
            table.add_column(column, overflow="fold")
        for name, item in sorted(bundle.values.items()):
            table.add_row(cell(name), cell(values[name]), cell(item.source), cell(item.version or ""), cell(when(item.expires_on)))
        console(out).print(table)
    return EXIT_RESOLUTION if bundle.failures else EXIT_OK


def _exec(loaded: Any, args: argparse.Namespace, err: TextIO) -> int:
    from core import child_process

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        _say(err, "error: exec needs a command: vaultrelay exec --env E -- CMD ARGS...")
        return EXIT_CONFIG
    bundle, identities = _resolve_bundle(loaded, args.env, err)
    _report_failures(loaded, bundle, identities, err)
    if bundle.failures and not args.allow_partial:
        _say(err, f"{_plural(len(bundle.failures), 'variable')} failed; not running {argv[0]} (use --allow-partial)")
        return EXIT_RESOLUTION
    values = bundle.as_plain_dict()
    holding_nul = sorted(name for name, value in values.items() if "\0" in value)
    if holding_nul:
        _say(err, f"error: {', '.join(holding_nul)} {'holds' if len(holding_nul) == 1 else 'hold'} a NUL character, which an environment "
                  f"variable cannot carry; not running {argv[0]} (resolve --format json shows such values escaped)")
        return EXIT_RESOLUTION
    if any("\0" in part for part in argv):
        _say(err, "error: an argument holds a NUL character; not running it")
        return EXIT_CONFIG
    env = dict(os.environ)
    env.update(values)
    err.flush()
    try:
        return child_process.run(argv, env)
    except FileNotFoundError:
        _say(err, f"exec: command not found: {argv[0]}")
        return 127
    except PermissionError:
        _say(err, f"exec: permission denied: {argv[0]}")
        return 126
    except OSError as exc:
        _say(err, f"exec: cannot run {argv[0]}: {exc.strerror or type(exc).__name__}")
        return 126


# ---- sync, rotate, status -----------------------------------------------------------------
def _write_side(loaded: Any, args: argparse.Namespace, json_output: bool, out: TextIO, err: TextIO) -> int:
    from core.runtime import Runtime

    # One runtime for the command; `sync --queue` fans out to the work queue, the rest runs inline.
    runtime = Runtime(loaded, environ=os.environ, queue=args.command == "sync" and bool(getattr(args, "queue", False)))
    try:
        if args.command == "sync":
            return _sync(runtime, args, json_output, out, err)
        if args.command == "rotate":
            return _rotate(runtime, args, json_output, out, err)
        if args.command == "accept-drift":
            return _accept_drift(runtime, args, out, err)
        if args.command == "worker":
            return _worker(runtime, args, json_output, out, err)
        return _status(runtime, loaded, json_output, out, err, getattr(args, "expiring", None))
    finally:
        runtime.close()


def _queue_failure(exc: Exception, command: str, runtime: Any, json_output: bool, out: TextIO, err: TextIO) -> int:
    return _failure(command if json_output else None, runtime.loaded, str(exc), EXIT_CONFIG, out, err)


def _sync_queue(runtime: Any, args: argparse.Namespace, json_output: bool, out: TextIO, err: TextIO) -> int:
    from core.app.sync import fanout, sync
    from core.azure.queue import QueueNotConfigured

    try:
        queue = fanout(runtime)
    except QueueNotConfigured as exc:
        return _queue_failure(exc, "sync", runtime, json_output, out, err)
    assert queue is not None
    if args.env and args.env not in runtime.envs_with_targets():
        raise NotFoundError(f"env '{args.env}' has no targets (envs with targets: {', '.join(runtime.envs_with_targets()) or 'none'})")
    items = sync(runtime, args.env, force_mint=args.force_mint, trigger="cli").items or []
    if json_output:
        from core.cli_json import EnqueuedItem, SyncDocument, problem

        _emit(out, SyncDocument(ok=True, enqueued=[EnqueuedItem(id=i.id, envs=i.envs) for i in items],
                                warnings=[problem(p) for p in runtime.loaded.warnings]))
        return EXIT_OK
    out.write(f"enqueued {_plural(len(items), 'work item')} ({_plural(sum(len(i.envs) for i in items), 'env')}) "
              f"to queue {queue.queue.name}\n")
    return EXIT_OK


def _worker(runtime: Any, args: argparse.Namespace, json_output: bool, out: TextIO, err: TextIO) -> int:
    from core.app.sync import work_queue
    from core.app.worker import can_fork, consume, run_forked, run_processes, warm_imports
    from core.azure.queue import QueueNotConfigured
    from core.runtime import Runtime

    try:
        queue = work_queue(runtime)
    except QueueNotConfigured as exc:
        return _queue_failure(exc, "worker", runtime, json_output, out, err)
    queue.ensure()
    if args.processes > 1 and can_fork():
        loaded = runtime.loaded
        warm_imports()

        def work() -> Any:  # in each process: its own runtime (clients, credentials, connections)
            mine = Runtime(loaded, environ=os.environ)
            try:
                return consume(mine, work_queue(mine), drain=args.drain, visibility_timeout_s=args.visibility_timeout)
            finally:
                mine.close()

        stats = run_forked(args.processes, work)
    elif args.processes > 1:
        stats = run_processes(args.processes, config=args.config, drain=args.drain, visibility_timeout=args.visibility_timeout,
                              verbose=args.verbose)
    else:
        stats = consume(runtime, queue, drain=args.drain, visibility_timeout_s=args.visibility_timeout)
    if json_output:
        from core.cli_json import WorkerDocument, problem

        _emit(out, WorkerDocument(ok=stats.failed == 0 and stats.poisoned == 0, processes=args.processes, **stats.as_dict(),
                                  warnings=[problem(p) for p in runtime.loaded.warnings]))
    else:
        out.write(f"{_plural(stats.items, 'work item')}, {_plural(stats.envs, 'env')}, {_plural(stats.target_writes, 'target write')}, "
                  f"{stats.requeued} re-enqueued, {stats.failed} failed, {stats.poisoned} poisoned in {stats.seconds:.2f}s\n")
    return EXIT_OK if stats.failed == 0 and stats.poisoned == 0 else EXIT_RESOLUTION


def _sync(runtime: Any, args: argparse.Namespace, json_output: bool, out: TextIO, err: TextIO) -> int:
    from core.app.sync import sync
    from core.terminal import progress

    if args.queue:
        return _sync_queue(runtime, args, json_output, out, err)
    envs = [args.env] if args.env else runtime.envs_with_targets()
    with progress(err, "sync" + (" (dry run)" if args.dry_run else ""), total=len(envs)) as shown:
        report = sync(runtime, args.env, dry_run=args.dry_run, force_mint=args.force_mint, progress=shown.advance).report
    assert report is not None
    if json_output:
        from core.cli_json import SyncDocument, SyncTarget, problem

        _emit(out, SyncDocument(ok=report.ok, dry_run=args.dry_run, targets=[SyncTarget(**t.as_dict()) for t in report.targets],
                                failures=report.failures, minted=report.minted, target_writes=report.target_writes,
                                seconds=round(report.seconds, 3), warnings=[problem(p) for p in runtime.loaded.warnings]))
        return EXIT_OK if report.ok else EXIT_RESOLUTION
    from rich.table import Table

    from core.terminal import cell, console

    if not report.targets:
        out.write("no targets: nothing to push (add targets: to the config)\n")
        return EXIT_OK
    table = Table(title="sync" + (" (dry run)" if args.dry_run else ""))
    for column in ("env", "target", "outcome", "adds", "updates", "removals", "drift", "writes"):
        table.add_column(column, overflow="fold")
    for t in report.targets:
        table.add_row(*(cell(v) for v in (t.env, t.target, t.outcome, ", ".join(t.adds), ", ".join(t.updates), ", ".join(t.removals),
                                          ", ".join(t.drift) + (" (repaired)" if t.repaired else ""), str(t.writes))))
    console(out).print(table)
    for env, failing in report.failures.items():
        _say(err, f"error: env {env}: {'; '.join(failing)}")
    for t in report.targets:
        if t.error and t.outcome != "skipped":
            _say(err, f"error: {t.env} -> {t.target}: {t.error}")
    if report.minted:
        out.write(f"minted: {', '.join(report.minted)}\n")
    out.write(f"{_plural(report.target_writes, 'target write')} in {report.seconds:.2f}s\n")
    return EXIT_OK if report.ok else EXIT_RESOLUTION


def _rotate(runtime: Any, args: argparse.Namespace, json_output: bool, out: TextIO, err: TextIO) -> int:
    from core.app.rotate import rotate
    from core.terminal import iso, progress, when

    with progress(err, "rotate") as shown:
        reports = rotate(runtime, args.name, force=args.force, progress=shown.advance)
    failed = any(r.outcome == "error" for r in reports)
    if json_output:
        from core.cli_json import RotateDocument, RotationResult, problem

        results = [RotationResult(name=r.name, outcome=r.outcome, old_active=r.old_active, new_active=r.new_active, repushed=list(r.repushed),
                                  next_due=iso(r.next_due), error=r.error) for r in reports]
        _emit(out, RotateDocument(ok=not failed, rotations=results, warnings=[problem(p) for p in runtime.loaded.warnings]))
        return EXIT_RESOLUTION if failed else EXIT_OK
    from rich.table import Table

    from core.terminal import cell, console

    if not reports:
        out.write("nothing to rotate: no rotate: references and no rotation.tagged_secrets in the config\n")
        return EXIT_OK
    table = Table(title="rotate")
    for column in ("rotation", "outcome", "from", "to", "re-pushed", "next due"):
        table.add_column(column, overflow="fold")
    for r in reports:
        table.add_row(*(cell(v) for v in (r.name, r.outcome, r.old_active or "", r.new_active or "", ", ".join(r.repushed), when(r.next_due))))
    console(out).print(table)
    for r in reports:
        if r.error:
            _say(err, f"error: {r.name}: {r.error}")
    return EXIT_RESOLUTION if failed else EXIT_OK


def _accept_drift(runtime: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from core.app.drift import accept_drift

    if args.names and not (args.env and args.target):
        _say(err, "error: accept-drift NAME... needs --env and --target")
        return EXIT_CONFIG
    accepted = accept_drift(runtime, args.env, args.target, args.names)
    for t in accepted:
        if t.outcome == "accepted":
            out.write(f"{t.env} -> {t.target}: accepted drift of {', '.join(t.drift)}\n")
        elif t.outcome == "busy":
            _say(err, f"error: {t.env} -> {t.target}: a sync of env {t.env} is running; try again")
        elif t.error:
            _say(err, f"error: {t.env} -> {t.target}: {t.error}")
        else:
            out.write(f"{t.env} -> {t.target}: no drift to accept\n")
    return EXIT_RESOLUTION if any(t.outcome in ("busy", "error") for t in accepted) else EXIT_OK


def _rotation_row(record: dict[str, Any]) -> dict[str, Any]:
    """A rotation record in the shape `status` shows (whatever kind wrote it)."""
    fields = {k: v for k, v in record.items() if k not in ("kind", "name")}
    return {
        "kind": record["kind"], "name": record["name"],
        "active": str(fields.get("active") or fields.get("variable") or "") or None,
        "since": fields.get("rotated_at") or fields.get("issued") or fields.get("at") or None,
        "next": fields.get("next_due") or fields.get("expires") or None,
        "phase": (str(fields.get("phase") or "") + (f" ({fields['operation_status']})" if fields.get("phase") and fields.get("operation_status") else "")) or None,
        "detail": str(fields.get("detail") or "") or None,
        "fields": {k: v if isinstance(v, str | int | float | bool) or v is None else str(v) for k, v in fields.items()},
    }


def _status(runtime: Any, loaded: Any, json_output: bool, out: TextIO, err: TextIO | None = None, expiring_window: str | None = None) -> int:
    from core.app.status import status
    from core.expiry import DEFAULT_WINDOW, blocking, parse_window
    from core.terminal import iso, when

    window = DEFAULT_WINDOW
    if expiring_window is not None:
        try:
            window = parse_window(expiring_window)
        except ValueError as exc:
            _say(err or sys.stderr, f"error: --expiring: {exc}")
            return EXIT_CONFIG
    found = status(runtime, window)
    rows, poisoned, soon = found.targets, found.poisoned, found.expiring
    rotations = [_rotation_row(r) for r in found.rotations]
    expiry_error = None
    if found.expiry_error is not None:  # the expiry view needs the sources; status itself reads state only
        expiry_error = f"expiry view unavailable: {type(found.expiry_error).__name__}: {found.expiry_error}"
    # --expiring: usable in CI: 1 when something vaultrelay cannot renew expires inside the window.
    failing = expiring_window is not None and (bool(blocking(soon)) or expiry_error is not None)
    code = EXIT_RESOLUTION if failing else EXIT_OK
    if json_output:
        from core.cli_json import ExpiringItem, PoisonedItem, RotationStatus, StatusDocument, problem

        _emit(out, StatusDocument(
            ok=code == EXIT_OK, error=expiry_error, targets=_target_statuses(rows, iso), warnings=[problem(p) for p in loaded.warnings],
            rotations=[RotationStatus(**{**r, "since": iso(r["since"]), "next": iso(r["next"])}) for r in rotations],
            poisoned=[PoisonedItem(**{**p, "at": iso(p["at"])}) for p in poisoned],
            expiry_window_seconds=int(window.total_seconds()), expiring=[ExpiringItem(**i.as_dict()) for i in soon]))
        return code
    _status_tables(out, rows, rotations, poisoned, when)
    from rich.table import Table

    from core.terminal import cell, console

    table = Table(title=f"expiring within {_window_text(window)}")
    for column in ("expires", "kind", "name", "used by", "renewed by vaultrelay"):
        table.add_column(column, overflow="fold")
    for i in soon:
        table.add_row(*(cell(v) for v in ("expired" if i.expired and i.expires_on is None else when(i.expires_on.isoformat() if i.expires_on else ""),
                                          i.kind, i.name, ", ".join(sorted(i.envs)), "yes: " + i.renewal if i.renewable else "no: " + i.renewal)))
    console(out).print(table)
    if expiry_error:
        _say(err or sys.stderr, f"warning: {expiry_error}")
    return code


def _window_text(window: Any) -> str:
    days = window.total_seconds() / 86400
    return f"{days:g} days" if days >= 1 else f"{window.total_seconds() / 3600:g} hours"


def _target_statuses(rows: list[dict[str, Any]], iso: Any) -> list[Any]:
    from core.cli_json import TargetStatus

    return [TargetStatus(env=r["env"], target=r["target"], kind=r["kind"], last_push=iso(r["last_push"]), outcome=r["outcome"],
                         variables=int(r["variables"]), drift=[d for d in str(r["drift"]).split(", ") if d],
                         drift_found={n: iso(w) or "" for n, w in r["drift_found"].items()}, drift_since=iso(r["drift_since"]),
                         drift_policy=r["drift_policy"], last_error=r["last_error"] or None) for r in rows]


def _status_tables(out: TextIO, rows: list[dict[str, Any]], rotations: list[dict[str, Any]], poisoned: list[dict[str, Any]], when: Any) -> None:
    from rich.table import Table

    from core.terminal import cell, console

    shown = console(out)
    table = Table(title="targets")
    for column in ("env", "target", "kind", "last push", "outcome", "variables", "drift", "last error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        drift = ", ".join(f"{n} (since {when(t)})" if t else n for n, t in row["drift_found"].items())
        table.add_row(*(cell(v) for v in (row["env"], row["target"], row["kind"], when(row["last_push"]), row["outcome"], str(row["variables"]),
                                          drift, row["last_error"])))
    shown.print(table)
    table = Table(title="rotations")
    for column in ("kind", "name", "active / variable", "rotated / issued", "next due / expires", "phase"):
        table.add_column(column, overflow="fold")
    for r in rotations:
        table.add_row(*(cell(v) for v in (r["kind"], r["name"], r["active"] or "", when(r["since"]), when(r["next"]), r["phase"] or r["detail"] or "")))
    shown.print(table)
    if poisoned:
        table = Table(title="poisoned work items (cleared by the env's next successful sync)")
        for column in ("env", "cause", "trigger", "at", "deliveries"):
            table.add_column(column, overflow="fold")
        for p in poisoned:
            table.add_row(*(cell(v) for v in (p["env"], p["cause"], p["trigger"], when(p["at"]), str(p["deliveries"]))))
        shown.print(table)


if __name__ == "__main__":
    console_main()
