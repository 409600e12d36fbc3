"""The one JSON decoder for untrusted bodies: HTTP routes, Event Grid deliveries, DevOps hooks,
the scoring endpoint and queue messages.

``loads(data)`` is ``json.loads`` with limits, and every way it can fail is a
:class:`shared.errors.ValidationError` naming the field and the problem (never a
``RecursionError``, ``ValueError`` or ``UnicodeError`` that a caller forgets to catch):

- size: more than ``limits.max_bytes`` -> :class:`BodyTooLargeError` (HTTP 413);
- encoding: UTF-8 only (a leading BOM is accepted, as Event Grid clients send one);
- nesting deeper than ``limits.max_depth`` arrays/objects;
- numbers longer than ``limits.max_number_chars`` characters (a 5,000-digit integer, ``1e400``);
- ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON; Python's decoder accepts them);
- lone UTF-16 surrogates (``"\\ud800"``) in strings or keys: they cannot be stored or encoded;
- duplicate keys are kept as the last one, like every JSON parser the peers use.

The standard library's C decoder does the parsing; the limits are checked in its hooks and in
one iterative walk over the result (no recursion, so depth is bounded by the walk, not the stack).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from shared.errors import ValidationError

__all__ = ["DEFAULT_LIMITS", "BodyTooLargeError", "JsonLimits", "loads"]

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class JsonLimits:
    max_bytes: int = 1024 * 1024  # Event Grid delivers at most 1 MB per request
    max_depth: int = 64
    max_number_chars: int = 64


DEFAULT_LIMITS = JsonLimits()


class BodyTooLargeError(ValidationError):
    """The body is larger than the limit (HTTP 413)."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message, field=field)
        self.status = 413


class _Refused(Exception):
    """Raised from a decoder hook; carries the message for the ValidationError."""


def _parse_int(text: str, limit: int) -> int:
    if len(text) > limit:
        raise _Refused(f"number with {len(text)} digits is longer than {limit} characters")
    return int(text)


def _parse_float(text: str, limit: int) -> float:
    if len(text) > limit:
        raise _Refused(f"number {text[:20]}… is longer than {limit} characters")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"number {text} is out of range")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON (numbers must be finite)")


def _check(value: Any, field: str, max_depth: int) -> None:
    """Depth and lone surrogates, walked with an explicit stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if not node.isascii() and _SURROGATE.search(node):
                raise ValidationError("a string contains a lone UTF-16 surrogate (\\ud800-\\udfff)", field=field)
        elif isinstance(node, dict):
            if depth > max_depth:
                raise ValidationError(f"JSON nested deeper than {max_depth} levels", field=field)
            for k, v in node.items():
                if not k.isascii() and _SURROGATE.search(k):
                    raise ValidationError("a key contains a lone UTF-16 surrogate (\\ud800-\\udfff)", field=field)
                if isinstance(v, (dict, list, str)):
                    stack.append((v, depth + 1))
        elif isinstance(node, list):
            if depth > max_depth:
                raise ValidationError(f"JSON nested deeper than {max_depth} levels", field=field)
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list, str)))


def loads(
    data: bytes | bytearray | memoryview | str, *, field: str = "body", limits: JsonLimits = DEFAULT_LIMITS
) -> Any:
    """Parse untrusted JSON within ``limits``; ValidationError(field=``field``) says what is wrong.

    An empty (or all-whitespace) body is refused too: callers that allow one check first.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) > limits.max_bytes:
            raise BodyTooLargeError(f"larger than {limits.max_bytes} bytes", field=field)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"not UTF-8: {exc.reason} at byte {exc.start}", field=field) from None
    else:
        text = data
        if len(text) > limits.max_bytes:  # characters ≤ bytes: a cheap first bound
            raise BodyTooLargeError(f"larger than {limits.max_bytes} bytes", field=field)
        if text.startswith("\ufeff"):
            text = text[1:]
    if not text.strip():
        raise ValidationError("empty; expected JSON", field=field)
    limit = limits.max_number_chars
    try:
        value = json.loads(
            text,
            parse_int=lambda s: _parse_int(s, limit),
            parse_float=lambda s: _parse_float(s, limit),
            parse_constant=_parse_constant,
        )
    except _Refused as exc:
        raise ValidationError(str(exc), field=field) from None
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", field=field
        ) from None
    except RecursionError:
        raise ValidationError(f"JSON nested deeper than {limits.max_depth} levels", field=field) from None
    except ValueError as exc:  # defensive: any other decoder refusal (e.g. int digit limits)
        raise ValidationError(f"not valid JSON: {str(exc)[:120]}", field=field) from None
    _check(value, field, limits.max_depth)
    return value
