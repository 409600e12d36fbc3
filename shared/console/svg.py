"""Escaped SVG building blocks: every attribute value and text node goes through markupsafe.

Charts are strings of markup built here, never by formatting outside values into tags, so a
step named ``<script>`` is text in every chart (tests/unit/console check it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from markupsafe import Markup, escape

Child = Markup | str | None


def num(value: float) -> str:
    """A coordinate: at most one decimal, no exponent."""
    return f"{value:.1f}".removesuffix(".0")


def el(name: str, attrs: Mapping[str, object] | None = None, *children: Child) -> Markup:
    """``<name attr="…">children</name>``; str children are escaped, Markup ones kept, None skipped."""
    parts = [f"<{name}"]
    for key, value in (attrs or {}).items():
        if value is None or value is False:
            continue
        text = num(value) if isinstance(value, float) else str(value)
        parts.append(f' {key}="{escape(text)}"')
    inner = "".join(str(escape(c)) for c in children if c is not None)
    if not inner:
        return Markup("".join(parts) + "/>")  # noqa: S704 - names are ours, every value escaped above
    return Markup("".join(parts) + ">" + inner + f"</{name}>")  # noqa: S704 - the same


def join(items: Iterable[Markup]) -> Markup:
    return Markup("").join(items)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis (before escaping, so no entity is cut)."""
    return text if len(text) <= limit else text[: max(1, limit - 1)] + "…"


def svg(width: float, height: float, label: str, css_class: str, *children: Child) -> Markup:
    return el(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "class": css_class,
            "viewBox": f"0 0 {num(width)} {num(height)}",
            "width": width,
            "height": height,
            "role": "img",
            "aria-label": label,
        },
        el("title", None, label),
        *children,
    )
