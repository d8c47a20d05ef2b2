"""JSON text in and out: orjson's speed, with exactly the values and errors of Python's `json` module.

orjson is several times faster, but turns integers beyond 64 bits into floats and refuses some text `json`
accepts (lone surrogate escapes, UTF-16, a byte order mark, NaN). Such bodies, and any with a run of digits
long enough to hold such an integer, are parsed by `json` as before; values only `json` can write are
written by it.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Final

import orjson

_DIGITS: Final = bytes.maketrans(b"0123456789", b"\x01" * 10)
_LONG_NUMBER: Final = b"\x01" * 19  # 18 digits always fit in 64 bits; 19 may not


def loads(body: bytes | str, exact: dict[str, Any] | None = None) -> object:
    """The document in `body`; `exact` are `json.loads` arguments for the bodies orjson does not take."""
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    if _LONG_NUMBER not in raw.translate(_DIGITS):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body, **(exact or {}))


def dumps(document: object, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact UTF-8 JSON."""
    try:
        return orjson.dumps(document, default=default)
    except TypeError:  # integers beyond 64 bits, lone surrogates, keys that are not strings: json writes them
        return json.dumps(document, default=default, separators=(",", ":")).encode()
