"""Durations as the config writes them: `90s`, `30m`, `24h`, `7d`, `1w` or plain seconds."""

from __future__ import annotations

import math
import re
from typing import Any

# Longer than any lifetime or schedule a config means (and than `timedelta` holds): 100 years.
MAX_DURATION_S = 100 * 365 * 86400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(value: Any) -> float:
    """Seconds in `value`.

    Raises:
        ValueError: not a number or a number with one of the units s, m, h, d, w.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30m, 24h or 7d")
    seconds: float | None = None
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        seconds = float(value) if not isinstance(value, int) or value <= MAX_DURATION_S else math.inf
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds is None:
        raise ValueError("expected a duration like 30m, 24h or 7d (units s, m, h, d, w) or seconds")
    if math.isnan(seconds) or seconds > MAX_DURATION_S:
        raise ValueError("a duration must be at most 100 years (36500d)")
    return seconds


def format_duration(seconds: float) -> str:
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
