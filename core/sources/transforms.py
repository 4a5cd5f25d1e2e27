"""Transforms on a reference's value: `decode: base64`, `property: a.b`, `encode: base64`.

They run after the fetch, per variable, in that order (decode, then extract, then encode), so two
variables reading two keys of one JSON secret fetch it once.  An error names the reference's YAML
path and the key path that is missing, never the document or the value.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


class TransformError(Exception):
    """A transform could not be applied; the message never contains a value."""


def apply_transforms(value: str, transforms: tuple[tuple[str, str], ...]) -> str:
    """`value` shaped by `transforms` ((name, argument) pairs, in order).

    Raises:
        TransformError: not base64, not JSON, a missing key, or a key that holds no text.
    """
    for name, argument in transforms:
        if name == "decode":
            value = _b64decode(value)
        elif name == "encode":
            value = base64.b64encode(value.encode()).decode()
        elif name == "property":
            value = extract(value, argument)
        else:  # the config model allows no other
            raise TransformError(f"unknown transform {name}")
    return value


def _b64decode(value: str) -> str:
    try:
        raw = base64.b64decode("".join(value.split()).encode(), validate=True)
    except (binascii.Error, ValueError):
        raise TransformError("decode: base64: the value is not base64") from None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise TransformError("decode: base64: the decoded bytes are not UTF-8 text") from None


def extract(document: str, path: str) -> str:
    """The key `path` (`a.b.c`; a number indexes a list) of the JSON `document`; a string as it
    is, anything else (number, object, list, true/false/null) as JSON.

    Raises:
        TransformError: not JSON, or a key missing (named up to where it is missing).
    """
    try:
        node: Any = json.loads(document)
    except (ValueError, RecursionError):
        raise TransformError(f"property {path}: the value is not a JSON document") from None
    walked: list[str] = []
    for key in path.split("."):
        where = ".".join(walked) or "the document"
        if isinstance(node, dict):
            if key not in node:
                present = "" if len(node) > 50 else f" (keys there: {', '.join(sorted(map(str, node))) or 'none'})"
                raise TransformError(f"property {path}: key '{key}' is missing in {where}{present}")
            node = node[key]
        elif isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise TransformError(f"property {path}: {where} is a list of {len(node)} items; '{key}' is not an index of it")
            node = node[int(key)]
        else:
            raise TransformError(f"property {path}: {where} is a {_kind(node)}, not an object; it has no key '{key}'")
        walked.append(key)
    return node if isinstance(node, str) else json.dumps(node, sort_keys=True)


def _kind(node: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", type(None): "null"}.get(type(node), "value")
