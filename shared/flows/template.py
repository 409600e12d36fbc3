"""``${...}`` templating of step params.

``render(params, scope)`` walks dicts and lists and renders every string:

- ``${a.b.c}`` looks ``a.b.c`` up in ``scope``: dict keys by name, list items by number
  (``${steps.split.outputs.files.0}`` or ``${steps.split.outputs.files[0]}``).
- A string that is exactly one reference keeps the value's type (int, float, bool, dict,
  list, None): ``timeout: ${trigger.params.timeout}`` renders to ``30``, not ``"30"``.
- References embedded in longer text are turned into text: strings as they are, dicts and
  lists as JSON, datetimes as ISO 8601, None as the empty string, anything else ``str()``.
- ``$${`` is a literal ``${`` (``echo $${HOME}`` renders to ``echo ${HOME}``).
- An unknown reference raises :class:`TemplateError` naming the field inside params
  (``params.inputs[0]``), the reference, and the keys that exist where the lookup failed.

Rendering is pure: the inputs are not modified and containers taken from the scope are
copied, so a rendered value never aliases run state.

The engine's scope: ``{"trigger": TriggerContext.template_scope(), "steps": {name: {"outputs":
{...}, "remote_id": ..., "state": ...}}, "run": {"id": ..., "flow": ...}, "flow": {"name": ...,
"model": {...}}}``; a for_each step's outputs are the list of its instances' outputs in item
order, and inside a for_each step ``item`` (the instance's item) and ``index`` (its position)
are in the scope too.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from shared.errors import ValidationError

__all__ = [
    "SCOPE_ROOTS",
    "TemplateError",
    "lookup",
    "normalize_reference",
    "references",
    "references_by_field",
    "render",
    "render_string",
    "render_text",
    "to_text",
]

SCOPE_ROOTS = ("trigger", "steps", "run", "flow", "item", "index")

# ``$${`` (escape) | ``${path}`` | ``${`` with no closing brace
_ESCAPE = "$${"
_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_INDEX = re.compile(r"\[(\d+)\]")
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")


class TemplateError(ValidationError):
    """A reference could not be rendered. ``field`` is the path inside params."""

    def __init__(self, message: str, *, field: str | None = None, reference: str | None = None):
        super().__init__(message, field=field)
        self.reference = reference


def _split(path: str) -> list[str]:
    """``a.b[0].c`` -> ``["a", "b", "0", "c"]``."""
    return [p.strip() for p in _INDEX.sub(r".\1", path.strip()).split(".")]


def _normalize(path: str, field: str) -> str:
    parts = _split(path)
    if not path.strip() or any(not _SEGMENT.match(p) for p in parts):
        raise TemplateError(
            f"malformed reference ${{{path}}}: use dotted names such as ${{steps.train.outputs.model_uri}}",
            field=field,
            reference=path,
        )
    return ".".join(parts)


def _keys_hint(node: Any) -> str:
    if isinstance(node, Mapping):
        keys = sorted(str(k) for k in node)
        return f"known: {', '.join(keys)}" if keys else "it is empty"
    if isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        return f"it is a list of {len(node)} item(s)" if node else "it is an empty list"
    return f"it is a value of type {type(node).__name__}, not a mapping"


def _lookup(scope: Mapping[str, Any], path: str, field: str) -> Any:
    parts = path.split(".")
    node: Any = scope
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the scope"
        if isinstance(node, Mapping):
            if part in node:
                node = node[part]
                continue
        elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)) and part.isdigit():
            idx = int(part)
            if idx < len(node):
                node = node[idx]
                continue
        raise TemplateError(
            f"unknown reference ${{{path}}}: no {part!r} in {where} ({_keys_hint(node)})",
            field=field,
            reference=path,
        )
    return node


def _to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, default=str, separators=(",", ":"), sort_keys=False)
    return str(value)


def render_string(text: str, scope: Mapping[str, Any], *, field: str = "params") -> Any:
    """Render one string (see the module doc). Returns the raw value for a lone reference."""
    matches = list(_TOKEN.finditer(text))
    if not matches:
        return text
    if len(matches) == 1 and matches[0].group(1) is not None and matches[0].span() == (0, len(text)):
        value = _lookup(scope, _normalize(matches[0].group(1), field), field)
        return copy.deepcopy(value)
    out: list[str] = []
    pos = 0
    for m in matches:
        out.append(text[pos : m.start()])
        pos = m.end()
        if m.group(0) == _ESCAPE:
            out.append("${")
        elif m.group(1) is None:
            raise TemplateError(
                f"unterminated reference in {text!r}: '${{' needs a closing '}}' (write '$${{' for a literal '${{')",
                field=field,
            )
        else:
            out.append(_to_text(_lookup(scope, _normalize(m.group(1), field), field)))
    out.append(text[pos:])
    return "".join(out)


def render_text(text: str, scope: Mapping[str, Any], *, field: str = "params") -> str:
    """Render one string to text: like :func:`render_string`, but a lone reference is turned
    into text too (``${trigger.params.n}`` with ``n = 5`` gives ``"5"``): for values that
    become one argument or one environment value."""
    return to_text(render_string(text, scope, field=field))


def lookup(scope: Mapping[str, Any], path: str, field: str = "params") -> Any:
    """The value at a normalised reference ``path`` (``a.b.0``); TemplateError naming ``field``."""
    return _lookup(scope, path, field)


def normalize_reference(path: str, field: str = "params") -> str:
    """``a.b[0]`` -> ``a.b.0``; TemplateError for a malformed reference."""
    return _normalize(path, field)


def to_text(value: Any) -> str:
    """A value as text the way references embedded in text render it (None -> "", JSON for containers)."""
    return _to_text(value)


def render(value: Any, scope: Mapping[str, Any], *, field: str = "params") -> Any:
    """Render every string inside ``value`` (dicts and lists recursively; keys are left as is)."""
    if isinstance(value, str):
        return render_string(value, scope, field=field)
    if isinstance(value, Mapping):
        return {k: render(v, scope, field=_child(field, k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [render(v, scope, field=f"{field}[{i}]") for i, v in enumerate(value)]
    return value


def _child(field: str, key: Any) -> str:
    k = str(key)
    if _SEGMENT.match(k):
        return f"{field}.{k}" if field else k
    return f"{field}[{json.dumps(k)}]"


def references(value: Any) -> set[str]:
    """Every reference path inside ``value``, normalised (``a.b.0``); escapes are not references.

    Raises :class:`TemplateError` for malformed or unterminated references.
    """
    found: set[str] = set()
    _collect(value, "params", found)
    return found


def references_by_field(value: Any, field: str = "params") -> dict[str, set[str]]:
    """Like :func:`references`, keyed by the field each reference sits in (``params.inputs[0]``)."""
    out: dict[str, set[str]] = {}
    _collect(value, field, None, out)
    return out


def _collect(value: Any, field: str, found: set[str] | None, by_field: dict[str, set[str]] | None = None) -> None:
    if isinstance(value, str):
        for m in _TOKEN.finditer(value):
            if m.group(0) == _ESCAPE:
                continue
            if m.group(1) is None:
                raise TemplateError(
                    f"unterminated reference in {value!r}: '${{' needs a closing '}}'",
                    field=field,
                )
            ref = _normalize(m.group(1), field)
            if found is not None:
                found.add(ref)
            if by_field is not None:
                by_field.setdefault(field, set()).add(ref)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _collect(v, _child(field, k), found, by_field)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _collect(v, f"{field}[{i}]", found, by_field)
