"""A bundle's values as text: JSON, dotenv or shell, shared by the CLI and the HTTP API.

`render` only formats what it is given: callers decide whether those are revealed values or
masks.  `negotiate` picks a format from an HTTP `Accept` header.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping

FORMATS = ("json", "dotenv", "shell")

MEDIA_TYPES = {
    "json": "application/json",
    "dotenv": "text/plain",
    "shell": "text/x-shellscript",
}

# Accept media type -> format; the first listed is the default for */*.
_ACCEPTED = {
    "application/json": "json",
    "text/plain": "dotenv",
    "text/x-shellscript": "shell",
    "application/x-sh": "shell",
}


def render(values: Mapping[str, str], fmt: str) -> str:
    """`values` (name -> text) in `fmt`, sorted by name, ending with a newline.

    Raises:
        ValueError: `fmt` is not one of FORMATS.
    """
    if fmt == "json":
        return json.dumps(dict(values), indent=2, sort_keys=True) + "\n"
    if fmt == "dotenv":
        return "".join(f"{name}={dotenv_quote(value)}\n" for name, value in sorted(values.items()))
    if fmt == "shell":
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(values.items()))
    raise ValueError(f"unknown format '{fmt}' (expected {', '.join(FORMATS)})")


def dotenv_quote(value: str) -> str:
    """A dotenv value: bare when it is plain, else double-quoted with \\ " newline and $ escaped."""
    if value and all(c.isalnum() or c in "-_./:@+=," for c in value):
        return value
    return f'"{dotenv_escape(value)}"'


def dotenv_escape(value: str) -> str:
    """The inside of a double-quoted dotenv value: \\ " newline and $ escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("$", "\\$")


def negotiate(accept: str | None, default: str = "json") -> str | None:
    """The format an `Accept` header asks for: the acceptable media type with the highest q
    (ties: the order in the header), `default` for a missing header or `*/*`; None when nothing
    offered is acceptable."""
    if accept is None or not accept.strip():
        return default
    best: tuple[float, int, str] | None = None
    for position, part in enumerate(accept.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        q = 1.0
        for param in pieces[1:]:
            key, _, raw = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(raw.strip())
                except ValueError:
                    q = 0.0
        if not q > 0 or q > 1:
            continue
        if media in _ACCEPTED:
            fmt = _ACCEPTED[media]
        elif media in ("*/*", "*"):
            fmt = default
        elif media == "application/*":
            fmt = "json"
        elif media == "text/*":
            fmt = "dotenv"
        else:
            continue
        candidate = (-q, position, fmt)
        if best is None or candidate < best:
            best = candidate
    return best[2] if best else None
