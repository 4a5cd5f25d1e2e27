"""Log levels of the Azure SDKs and a redaction filter, shared by the command line and the Function app.

The SDKs log a lot: azure-core's HTTP logging policy writes every request and response with their
headers at INFO, azure-identity writes a WARNING for every failed token request (which vaultrelay
reports itself, with the identity and what to check), MSAL and urllib3 write at DEBUG.
`configure_sdk_logging(level)` sets all of them to one level in one place, and puts a
`RedactingFilter` on the handlers that will print their records.

`redact(text)` removes what looks like a credential: bearer tokens and JWTs, SAS signatures,
account keys, client secrets, passwords and `access_token`/`refresh_token` fields.  azure-core's
logging policy already replaces header and query values it does not know with `REDACTED`; the
filter is the second line for messages the policy does not cover (an exception text, a URL in
a message).  Secret *values* never reach a log call in vaultrelay's own code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# Loggers of the libraries under vaultrelay: azure-core (HTTP traffic), azure-identity,
# the management and data-plane SDKs, MSAL (token requests) and urllib3 (connections).
SDK_LOGGERS = ("azure", "msal", "urllib3")

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization: Bearer <token> (and any Bearer in text)
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*"), r"\1 ***"),
    # JWTs anywhere (three base64url segments, the first a JSON header)
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), "***"),
    # SAS signatures, account keys, secrets and tokens as query parameters, connection string
    # parts or JSON fields
    (re.compile(r"(?i)\b(sig|signature|accountkey|sharedaccesskey|client_secret|password|pwd|"
                r"access_token|refresh_token|id_token|client_assertion)(\"?\s*[=:]\s*\"?)([^&;,\s'\"]+)"), r"\1\2***"),
]


def redact(text: str) -> str:
    """`text` without anything that looks like a credential."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Formats each record's message once and redacts it (a filter on a *handler*, so that it
    sees the records of every logger that handler prints, child loggers included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: print it as it is, redacted
            message = str(record.msg)
        redacted = redact(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def add_redaction(handlers: Iterable[logging.Handler]) -> None:
    """Put one RedactingFilter on each handler (idempotent)."""
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def configure_sdk_logging(level: int, handlers: Iterable[logging.Handler] | None = None) -> None:
    """Set the SDK loggers (`SDK_LOGGERS`) to `level` and redact what `handlers` print (default:
    the root logger's handlers).  `logging.CRITICAL + 1` silences the SDKs entirely."""
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(level)
    add_redaction(logging.getLogger().handlers if handlers is None else handlers)
