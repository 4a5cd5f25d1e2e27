"""What the command line shows people: rich tables on a terminal, plain text when piped.

* `console(stream)`: a rich Console for `stream`.  Styles only on a terminal, none at all with
  `NO_COLOR` set (no bold, no italics: rich alone drops only colours) or `TERM=dumb`; never
  wrapped or truncated when piped.
* `cell(text)`: table cells as text, never as rich markup (a value holding `[bold]` prints as
  written), control characters shown escaped (`\\x1b`, `\\n`) so a value cannot move the cursor,
  change colours or retitle the terminal.
* `when(value)`: one time format for every timestamp shown (`2025-01-31 14:05:09Z`, UTC);
  `iso(value)` the same instant for JSON (`2025-01-31T14:05:09Z`).
* `progress(stream, ...)`: a progress display on a terminal, nothing when piped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_WITH_LINES = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}


def plain_requested(environ: dict[str, str] | None = None) -> bool:
    """`NO_COLOR` (any non-empty value, https://no-color.org) or `TERM=dumb`."""
    environ = dict(os.environ) if environ is None else environ
    return bool(environ.get("NO_COLOR")) or environ.get("TERM") == "dumb"


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def console(stream: TextIO, *, width: int | None = None) -> Any:
    """A rich Console writing to `stream` (styled only on a terminal without NO_COLOR)."""
    from rich.console import Console

    terminal = is_terminal(stream)
    plain = plain_requested() or not terminal
    return Console(
        file=stream, force_terminal=terminal and not plain, color_system=None if plain else "auto",
        width=width or (None if terminal else 10_000), highlight=False, emoji=False, markup=False,
        soft_wrap=not terminal,
    )


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with control characters (and bidirectional overrides) written as escapes."""
    pattern = _CONTROL if keep_newlines else _CONTROL_WITH_LINES
    return pattern.sub(lambda m: _escape(m.group(0)), text)


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def has_controls(text: str) -> bool:
    return bool(_CONTROL_WITH_LINES.search(text))


def cell(value: object) -> Any:
    """A table cell: literal text (no markup), control characters escaped."""
    from rich.text import Text

    return Text(escape_controls("" if value is None else str(value)))


def parse_time(value: object) -> datetime | None:
    """A datetime from a datetime or an ISO 8601 string (naive = UTC); None for empty/unknown."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def when(value: object) -> str:
    """`2025-01-31 14:05:09Z` (UTC), the one format for times shown; text that is not a time as it is."""
    moment = parse_time(value)
    if moment is None:
        return "" if value is None else str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def iso(value: object) -> str | None:
    """`2025-01-31T14:05:09Z` for JSON; None for no time."""
    moment = parse_time(value)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


class Progress:
    """Counts steps of a long run on a terminal (`advance(label)`); does nothing when piped."""

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self._bar = bar
        self._task = task

    def advance(self, label: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, detail=escape_controls(label))

    def total(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=count)


@contextmanager
def progress(stream: TextIO, description: str, total: int | None = None) -> Iterator[Progress]:
    """A rich progress display on `stream` while the block runs, if `stream` is a terminal."""
    if not is_terminal(stream):
        yield Progress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[detail]}")]
    with RichProgress(*columns, console=console(stream), transient=True) as bar:
        task = bar.add_task(escape_controls(description), total=total, detail="")
        yield Progress(bar, task)
