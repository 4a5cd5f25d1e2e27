"""Log hygiene for every entry point (the Function app, the CLI): the Azure SDK's and urllib3's
loggers kept at WARNING unless asked otherwise, and credentials redacted from every record at any
level.

* **SDK log level.** The Functions Python worker forwards every logger's records at INFO and above
  to the host, so azure-core's HTTP logging policy (one record per request and response, naming
  vaults, secrets, accounts and subscriptions) reached Application Insights: 46 records for one
  authorized `GET /api/envs/{env}`.  `configure_logging()` sets the loggers in `SDK_LOGGERS` to
  `$VAULTRELAY_SDK_LOG_LEVEL` (DEBUG, INFO, WARNING, ERROR, CRITICAL or a number), WARNING when it
  is unset or not a level.  The CLI passes its own level (`-v`/`-vv`) to `set_sdk_log_level`.
* **Redaction.** A SAS signature (`sig=`), a bearer token or any JWT, and the values of
  `client_secret`, `client_assertion`, `access_token`, `refresh_token`, `password`/`pwd`,
  `AccountKey` and `SharedAccessKey` never appear in a log line, whoever logged it and at whatever
  level (urllib3's DEBUG line for a request prints its whole URL, a SAS included).  The record
  factory is wrapped once so that every record is redacted where it is created, before any
  handler (the worker's, Azure Monitor's, a test's) sees it; handlers already on the root logger
  also get `RedactingFilter`, for records made without the factory (`logging.makeLogRecord`).

Importing this module imports nothing but the standard library (the Function app imports it at
start).  Nothing here raises to its caller.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

SDK_LOG_LEVEL_VARIABLE = "VAULTRELAY_SDK_LOG_LEVEL"
DEFAULT_SDK_LOG_LEVEL = logging.WARNING
SDK_LOGGERS = ("azure", "azure.core.pipeline.policies.http_logging_policy", "azure.identity", "msal", "urllib3")
REDACTED = "REDACTED"

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # key=value in URLs, form bodies and connection strings (a SAS's sig, an account key, a password)
    (re.compile(r"(?i)\b(sig|client_secret|client_assertion|access_token|refresh_token|id_token|password|pwd|"
                r"accountkey|sharedaccesskey)(=|%3D)(?:\{[^}]*\}|[^&;\s\"'<>,)]+)"), rf"\1\2{REDACTED}"),
    # "name": "value" in JSON bodies
    (re.compile(r"(?i)(\"(?:client_secret|client_assertion|access_token|refresh_token|id_token|password)\"\s*:\s*\")[^\"]*"),
     rf"\1{REDACTED}"),
    # Authorization headers and anything else that says Bearer
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*"), rf"\1{REDACTED}"),
    # a JWT anywhere (tokens in error messages, dumped bodies)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
)
# Cheap test before the expressions run: every rule needs one of these (lowercase).
_TRIGGERS = ("sig", "secret", "assertion", "token", "password", "pwd", "accountkey", "sharedaccesskey", "bearer", "eyj")


def redact(text: str) -> str:
    """`text` with SAS signatures, tokens and the values of secret parameters replaced by REDACTED."""
    lowered = text.lower()
    if not any(trigger in lowered for trigger in _TRIGGERS):
        return text
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def redact_record(record: logging.LogRecord) -> None:
    """Redact `record` in place: its message (arguments merged in when anything is replaced),
    its exception text and its stack; a record that cannot be formatted is left to its handler."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format: the handler reports it as it always did
        return
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        try:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        except Exception:  # noqa: S110 (the handler formats it then; the message was redacted)
            pass
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts every record it sees (and drops none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_lock = threading.Lock()
_factory_installed = False


def install_redaction() -> None:
    """Redact every record from now on: wrap the record factory (once) and filter the handlers on
    the root logger now (again on every call: a host may add its handler later)."""
    global _factory_installed
    with _lock:
        if not _factory_installed:
            previous = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                redact_record(record)
                return record

            logging.setLogRecordFactory(factory)
            _factory_installed = True
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


def sdk_log_level(environ: Mapping[str, str] | None = None) -> int:
    """The level `$VAULTRELAY_SDK_LOG_LEVEL` asks for; WARNING when unset or not a level."""
    environ = os.environ if environ is None else environ
    raw = (environ.get(SDK_LOG_LEVEL_VARIABLE) or "").strip()
    if not raw:
        return DEFAULT_SDK_LOG_LEVEL
    if raw.isdigit():
        return int(raw)
    level = logging.getLevelName(raw.upper())
    if isinstance(level, int):
        return level
    logging.getLogger("vaultrelay.logs").warning("$%s=%r is not a log level; the Azure SDK logs at WARNING", SDK_LOG_LEVEL_VARIABLE, raw[:20])
    return DEFAULT_SDK_LOG_LEVEL


def set_sdk_log_level(level: int) -> dict[str, int]:
    """Set every logger in SDK_LOGGERS to `level`; returns their levels before (to restore them)."""
    before = {name: logging.getLogger(name).level for name in SDK_LOGGERS}
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(level)
    return before


def configure_logging(environ: Mapping[str, str] | None = None) -> int:
    """What every entry point calls at start: the SDK loggers at `$VAULTRELAY_SDK_LOG_LEVEL`
    (default WARNING) and redaction on.  Returns the SDK level set."""
    level = sdk_log_level(environ)
    set_sdk_log_level(level)
    install_redaction()
    return level


def configure_sdk_logging(level: int, handlers: list[logging.Handler] | None = None) -> None:
    """The command line's form: the SDK loggers at `level` (`logging.CRITICAL + 1` silences them),
    redaction on, and a RedactingFilter on `handlers` too (handlers the CLI attaches itself)."""
    set_sdk_log_level(level)
    install_redaction()
    for handler in handlers or ():
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
